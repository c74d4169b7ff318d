"""One ablation cell end to end: train -> decode the test split -> score -> a run directory.

Run directories are keyed by cell and seed (`<root>/<cell>/seed-<s>/`), never by time. They hold the
resolved config, the overrides, a manifest (code version, package versions, hardware, data and index
fingerprints, status), checkpoints, per-query records, the TREC run and the metrics. A complete run is never
overwritten; an incomplete one is resumed (training continues from its last checkpoint).
"""

import dataclasses
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from gemkr_lab.config.experiment import ExperimentConfig, to_dict
from gemkr_lab.kb.storage import write_json, write_text

MANIFEST = "manifest.json"
PACKAGES = ("torch", "transformers", "peft", "lightning", "open_clip_torch", "numpy", "numba", "gemkr_lab")


def run_dir(root: str | Path, cell: str, seed: int) -> Path:
    """Where a cell's seed lives."""
    return Path(root) / cell.replace("/", "__") / f"seed-{seed}"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The run's manifest, or None if it has not started."""
    path = directory / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_cell(config: ExperimentConfig, seed: int, root: str | Path, overrides: list[str] | None = None) -> dict:
    """Train, decode and score one cell for one seed; returns the mean metrics."""
    from gemkr_lab.data.queries import DataError

    out = run_dir(root, config.name, seed)
    manifest = read_manifest(out)
    if manifest and manifest.get("status") == "complete":
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]
    prepared = Path(config.prepared)
    if not (prepared / "stamps" / "index.json").is_file():
        raise DataError(f"{prepared}: not prepared; run gemkr-lab prepare {config.data.dataset} first")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    write_text(out / "overrides.txt", "\n".join(overrides or []) + "\n")
    manifest = _manifest(config, seed, previous=manifest)
    write_json(out / MANIFEST, manifest)
    try:
        metrics = _train_decode_score(config, out, manifest)
    except BaseException as exc:
        pruned = type(exc).__name__ == "TrialPruned"  # an Optuna search stopped this trial early
        manifest.update(status="pruned" if pruned else "failed", error=f"{type(exc).__name__}: {exc}", finished=_now())
        write_json(out / MANIFEST, manifest)
        raise
    manifest.update(status="complete", finished=_now())
    write_json(out / MANIFEST, manifest)
    return metrics


def _train_decode_score(config: ExperimentConfig, out: Path, manifest: dict) -> dict:
    from gemkr_lab.decoding import write_records, write_records_run
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint
    from gemkr_lab.metrics import evaluate
    from gemkr_lab.model.infer import decode_batches
    from gemkr_lab.model.train import fit

    tok_dir = Path(config.tokenizer) if config.tokenizer else Path(config.data_root) / "tokenizer"
    tokenizer = load_tokenizer(tok_dir)
    index = open_index(Path(config.prepared) / "index", tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    logger = _logger(config, out, manifest)
    write_json(out / MANIFEST, manifest)  # the W&B run id is on disk before training starts
    started = time.perf_counter()
    module = fit(
        config.prepared,
        config.data_root,
        tokenizer,
        out,
        model_config=config.model,
        data_config=config.data,
        train_config=config.train,
        limit_train=config.limit_train,
        logger=logger or False,
        callbacks=_search_callbacks(),
    )
    manifest["train_seconds"] = round(time.perf_counter() - started, 2)
    manifest["trainable_parameters"] = dict(module.model.components())
    started = time.perf_counter()
    batches = module.datamodule.test_dataloader()
    records = decode_batches(module.model, batches, index, config.decoding, tokenizer)
    manifest["decode_ms_per_query"] = round(1000 * (time.perf_counter() - started) / max(len(records), 1), 2)
    write_records(out / "records.jsonl", records)
    write_records_run(out / "run.txt", records, tag=config.name)
    ranked = {r.qid: r.ranked_ids for r in records}
    evaluation = evaluate(ranked, relevance_for(config, ranked), ks=(1, 5, 10))
    metrics = {"means": evaluation.means, "per_query": evaluation.per_query}
    write_json(out / "metrics.json", metrics)
    if logger is not None:
        from gemkr_lab.tracking.wandb_run import log_evaluation

        log_evaluation(
            logger,
            evaluation.means | {"decode_ms_per_query": manifest["decode_ms_per_query"]},
            out / "run.txt",
            records,
        )
    return evaluation.means


def _search_callbacks() -> list:
    """The pruning reporter when this process runs a trial of an Optuna search."""
    from gemkr_lab.sweep.search import reporter_from_env

    reporter = reporter_from_env()
    return [reporter] if reporter is not None else []


def _logger(config: ExperimentConfig, out: Path, manifest: dict):
    """The run's WandbLogger (same id when resumed), or None when tracking is off."""
    if not config.tracking.wandb or config.tracking.mode == "disabled":
        return None
    from gemkr_lab.tracking.wandb_run import make_logger, new_run_id

    manifest["wandb_run_id"] = manifest.get("wandb_run_id") or new_run_id()
    return make_logger(
        out,
        manifest["wandb_run_id"],
        project=config.tracking.project,
        group=config.name,
        name=f"{config.name}-seed{manifest['seed']}",
        tags=[config.name, config.data.dataset, *config.tracking.tags],
        config=to_dict(config),
        mode=config.tracking.mode,
    )


def relevance_for(config: ExperimentConfig, ranked: dict[str, list[str]]):
    """Gold passages (ReMuQ, the synthetic world) or answer strings (OK-VQA), as the benchmark defines.

    For answers, only the texts of the ranked documents are read (streaming the corpus once).
    """
    from gemkr_lab.data.datasets import LAYOUTS, Dataset
    from gemkr_lab.metrics import AnswerRelevance, QrelsRelevance
    from gemkr_lab.metrics.relevance import texts_for

    rows = [json.loads(x) for x in (Path(config.prepared) / "queries_test.jsonl").read_text().splitlines() if x]
    layout = LAYOUTS[config.data.dataset]
    if layout.relevance == "gold":
        return QrelsRelevance({r["qid"]: {p: 1 for p in r["positives"]} for r in rows})
    corpus = Dataset(config.data.dataset, config.data_root).corpus
    texts = texts_for(corpus, {d for docs in ranked.values() for d in docs})
    return AnswerRelevance({r["qid"]: list(r["answers"]) for r in rows}, texts, layout.match)


def _manifest(config: ExperimentConfig, seed: int, previous: dict | None) -> dict[str, Any]:
    from gemkr_lab.data.prepare import file_fingerprint

    prepared = Path(config.prepared)
    index_meta = json.loads((prepared / "index" / "meta.json").read_text(encoding="utf-8"))
    return {
        "cell": config.name,
        "seed": seed,
        "status": "running",
        "started": (previous or {}).get("started", _now()),
        "attempts": (previous or {}).get("attempts", 0) + 1,
        "git": _git(),
        "packages": {p: _version(p) for p in PACKAGES},
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(), "host": platform.node(), "gpus": _gpus()},
        "dataset": {
            "name": config.data.dataset,
            "data_root": str(config.data_root),
            "queries_fingerprint": file_fingerprint(prepared / "queries_test.jsonl"),
        },
        "index": {
            "corpus_fingerprint": index_meta["corpus_fingerprint"],
            "tokenizer_fingerprint": index_meta["tokenizer_fingerprint"],
        },
        "wandb_run_id": (previous or {}).get("wandb_run_id"),
    }


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def evaluate_cell(config: ExperimentConfig, seed: int, root: str | Path) -> dict:
    """Decode and score a trained run again with this config's decoding knobs (no retraining).

    Results go to `<run>/eval/<decoding fingerprint>/` (records, run, metrics), next to the training's own.
    """
    import hashlib

    import torch

    from gemkr_lab.decoding import write_records, write_records_run
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.tokenize import load_tokenizer
    from gemkr_lab.metrics import evaluate
    from gemkr_lab.model.datamodule import GeMKRDataModule
    from gemkr_lab.model.infer import decode_batches
    from gemkr_lab.model.module import GeMKRModule

    src = run_dir(root, config.name, seed)
    ckpt = src / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no trained checkpoint; run gemkr-lab train {config.name} --seed {seed}")
    tokenizer = load_tokenizer(Path(config.tokenizer) if config.tokenizer else Path(config.data_root) / "tokenizer")
    module = GeMKRModule(config.model, config.train, len(tokenizer))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=False)
    data = GeMKRDataModule(
        config.prepared,
        config.data_root,
        tokenizer,
        config.data,
        module.model.vision,
        config.train.batch_size,
        seed=seed,
    )
    data.setup()
    index = open_index(Path(config.prepared) / "index")
    key = hashlib.sha256(json.dumps(dataclasses.asdict(config.decoding), sort_keys=True).encode()).hexdigest()[:10]
    out = src / "eval" / key
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "decoding.json", dataclasses.asdict(config.decoding))
    records = decode_batches(module.model, data.test_dataloader(), index, config.decoding, tokenizer)
    write_records(out / "records.jsonl", records)
    write_records_run(out / "run.txt", records, tag=config.name)
    ranked = {r.qid: r.ranked_ids for r in records}
    evaluation = evaluate(ranked, relevance_for(config, ranked), ks=(1, 5, 10))
    write_json(out / "metrics.json", {"means": evaluation.means, "per_query": evaluation.per_query})
    return evaluation.means
