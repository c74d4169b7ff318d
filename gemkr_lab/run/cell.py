"""One ablation cell end to end: train -> decode its split (test, or validation) -> score -> a run directory.

A run is its resolved config. Run directories are `<root>/<cell>/seed-<s>/<fingerprint>/`, where the
fingerprint covers everything that changes the result: the resolved experiment config (not where files are,
not tracking) and the prepared data's stamp (its prepare-time settings, tokenizer and input files). The same
cell and seed with another config is another run, never the old metrics. A run directory holds the resolved
config, the overrides, a manifest (code version, package versions, hardware, data and index fingerprints,
status), checkpoints, per-query records, the TREC run and the metrics. A complete run is never overwritten;
an incomplete one is resumed (training continues from its last checkpoint).
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gemkr_lab.config.checks import test_time_defaults
from gemkr_lab.config.experiment import ConfigError, ExperimentConfig, apply_overrides, build, to_dict
from gemkr_lab.io import lock, write_json, write_text  # not kb.storage: numpy must not load before a refusal
from gemkr_lab.numerics import hardware

if TYPE_CHECKING:  # Lightning loads only where a run trains
    from gemkr_lab.run.intermediate import IntermediateEvaluation

MANIFEST = "manifest.json"
RUN_LOCK = "run.lock"
"""Held (an OS lock, `gemkr_lab.io.lock`) by the one process training the run, for the whole of `run_cell`."""
PACKAGES = ("torch", "transformers", "peft", "lightning", "open_clip_torch", "numpy", "numba", "gemkr_lab")
NOT_IDENTITY = ("name", "data_root", "prepared", "tokenizer", "tracking")
"""Fields that say where things are or how they are shown, not what is computed: left out of a run's identity
(the prepared data's content is in it through its stamp)."""


def seed_dir(root: str | Path, cell: str, seed: int) -> Path:
    """Where a cell's runs for one seed live (one subfolder per resolved config)."""
    return Path(root) / cell.replace("/", "__") / f"seed-{seed}"


def with_seed(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The config of one seed of a cell."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))


def _fingerprint(
    config: ExperimentConfig, stamp: dict[str, Any], leave_out: tuple[str, ...], as_default: dict | None = None
) -> str:
    identity = {k: v for k, v in to_dict(config).items() if k not in leave_out}
    # dotted sub-fields at their defaults: a cell differing from another only in them shares its training
    for key, default in (as_default or {}).items():
        section, name = key.rsplit(".", 1)
        identity[section] = dict(identity[section], **{name: default})
    payload = json.dumps({"config": identity, "prepared": stamp["fingerprint"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_fingerprint(config: ExperimentConfig) -> str:
    """What identifies a run's result: the resolved config and the prepared data's stamp (checked first)."""
    return _fingerprint(config, check_prepared(config), NOT_IDENTITY)


NOT_TRAINING = (*NOT_IDENTITY, "decoding", "split")
"""Fields that change what a trained model is asked, not the model: decoding and the split it decodes."""
AT_TEST_TIME = test_time_defaults(ExperimentConfig)
"""Sub-fields marked TEST_TIME (e.g. data.zero_region_features_at_test): counted at their defaults in training."""


def training_fingerprint(config: ExperimentConfig, stamp: dict[str, Any]) -> str:
    """What identifies a run's trained model: the resolved config but decoding, split and test-time fields.

    Cells that differ only in decoding (beam size, search, constraint, clue-to-document policy, 8-bit, ...), in
    the split they decode (a search trial on validation, the selected configuration on test) or in test-time
    inputs (zeroed region features at test) share it, so one training serves them all (`_trained_elsewhere`).
    """
    return _fingerprint(config, stamp, NOT_TRAINING, AT_TEST_TIME)


def run_dir(root: str | Path, config: ExperimentConfig) -> Path:
    """The run directory of this exact config (its seed is `config.train.seed`)."""
    return seed_dir(root, config.name, config.train.seed) / run_fingerprint(config)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The run's manifest, or None if it has not started."""
    path = directory / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_prepared(config: ExperimentConfig, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The stamp of the config's prepared data; refuses data that is missing or was prepared otherwise."""
    from gemkr_lab.data.prepare import read_stamp, stamp_differences
    from gemkr_lab.data.queries import DataError

    fix = prepare_command(config, overrides)
    stamp = read_stamp(config.prepared)
    if stamp is None:
        raise DataError(f"{config.prepared}: not prepared for {config.name}; run: {fix}")
    diffs = stamp_differences(stamp, config.data)
    if diffs:
        listed = "; ".join(f"data.{k}: prepared {a!r}, {config.name} wants {b!r}" for k, a, b in diffs)
        raise DataError(
            f"{config.prepared}: prepared with other settings than {config.name} ({listed}); "
            f"prepare matching data into another folder: {fix} --set prepared=NEW_FOLDER"
        )
    if config.split == "validation" and not (Path(config.prepared) / split_file("validation")).is_file():
        raise DataError(
            f"{config.prepared}: no validation split to decode (split=validation); hold one out of the training "
            f"questions: set data.validation_size (e.g. 0.2) and prepare: {fix} --set data.validation_size=0.2 "
            "--set prepared=NEW_FOLDER"
        )
    return stamp


def split_file(split: str) -> str:
    """The prepared queries file of an evaluation split."""
    return f"queries_{split}.jsonl"


def prepare_command(config: ExperimentConfig, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The `gemkr-lab prepare` command that makes the data this experiment needs."""
    sets = " ".join(f"--set {o}" for o in overrides)
    return f"gemkr-lab prepare --experiment {config.name} {sets}".rstrip()


def run_cell(
    config: ExperimentConfig,
    seed: int,
    root: str | Path,
    overrides: list[str] | None = None,
    *,
    lock_until_exit: bool = False,
    intermediate: "IntermediateEvaluation | None" = None,
) -> dict:
    """Train, decode and score one cell for one seed; returns the mean metrics.

    `lock_until_exit`: hold the run's lock until this process ends, not only while in here (the `run-cell`
    process a sweep launches: its lock then also covers its teardown, so a free lock means it is gone).
    `intermediate`: decode a validation subset every N steps while training and report it (a search trial's
    pruning; built by the caller, which decides what a report does).
    """
    from gemkr_lab.data.queries import DataError
    from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint

    config = with_seed(config, seed)
    stamp = check_prepared(config, overrides or ())
    tokenizer = load_tokenizer(tokenizer_dir(config))
    if tokenizer_fingerprint(tokenizer) != stamp["tokenizer_fingerprint"]:
        raise DataError(
            f"{config.name} uses the tokenizer in {tokenizer_dir(config)} ({tokenizer_fingerprint(tokenizer)}), "
            f"but {config.prepared} was prepared with another one ({_prepared_tokenizer(config)}, "
            f"{stamp['tokenizer_fingerprint']}); its token ids mean nothing to this LLM. Prepare the data with "
            f"this tokenizer into a new folder: {prepare_command(config, overrides or ())} --set prepared=NEW_FOLDER "
            "(then train with prepared=NEW_FOLDER)"
        )
    out = run_dir(root, config)
    if not is_global_zero():  # a DDP process Lightning started beside rank 0: it trains and writes nothing
        _train_beside_rank_zero(config, out, tokenizer)
        return {}
    out.mkdir(parents=True, exist_ok=True)
    # One trainer per run directory: a second fails at once (exit 2), naming the holder; it would have nothing
    # to do but wait and then find the run complete. A DDP rank > 0 is the holder's own child.
    rank = int(os.environ.get("LOCAL_RANK") or 0)
    held = lock(out / RUN_LOCK, what=f"run {out}", until_exit=lock_until_exit) if not rank else None
    with held or contextlib.nullcontext():
        return _run_locked(config, seed, out, stamp, tokenizer, overrides, intermediate)


def _run_locked(
    config: ExperimentConfig, seed: int, out: Path, stamp: dict, tokenizer, overrides, intermediate=None
) -> dict:
    manifest = read_manifest(out)
    if manifest and manifest.get("status") == "complete":
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]
    earlier = _earlier_train_seconds(manifest, out)
    write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    write_text(out / "overrides.txt", "\n".join(overrides or []) + "\n")
    manifest = _manifest(config, seed, stamp, previous=manifest)
    manifest["train_seconds_attempts"] = earlier
    write_json(out / MANIFEST, manifest)
    try:
        metrics = _train_decode_score(config, out, manifest, tokenizer, intermediate)
    except BaseException as exc:
        pruned = type(exc).__name__ == "TrialPruned"  # an Optuna search stopped this trial early
        manifest.update(status="pruned" if pruned else "failed", error=f"{type(exc).__name__}: {exc}", finished=_now())
        write_json(out / MANIFEST, manifest)
        raise
    manifest.update(status="complete", finished=_now())
    write_json(out / MANIFEST, manifest)
    return metrics


def is_global_zero() -> bool:
    """Whether this process is the run's rank 0 (Lightning's DDP launcher sets the ranks of the others)."""
    return int(os.environ.get("LOCAL_RANK") or 0) == 0 and int(os.environ.get("NODE_RANK") or 0) == 0


def _train_beside_rank_zero(config: ExperimentConfig, out: Path, tokenizer) -> None:
    """A DDP rank > 0: join rank 0's training; the manifest, decoding, metrics and W&B are rank 0's alone."""
    _fit(config, out, tokenizer)


def _fit(config: ExperimentConfig, out: Path, tokenizer, logger=False, callbacks=()):
    """Train (or resume) this config's model into `out`."""
    from gemkr_lab.model.train import fit

    return fit(
        config.prepared,
        config.data_root,
        tokenizer,
        out,
        model_config=config.model,
        data_config=config.data,
        train_config=config.train,
        limit_train=config.limit_train,
        logger=logger,
        callbacks=list(callbacks),
    )


def tokenizer_dir(config: ExperimentConfig) -> Path:
    """The LLM's tokenizer directory: `tokenizer`, else the LLM checkpoint's own, else DATA_ROOT/tokenizer.

    An LLM and its tokenizer are tied: a local checkpoint directory brings its tokenizer; the random "tiny-llama"
    has none and uses the prepared world's.
    """
    if config.tokenizer:
        return Path(config.tokenizer)
    if config.model.llm != "tiny-llama":
        return Path(config.model.llm)
    return Path(config.data_root) / "tokenizer"


def _prepared_tokenizer(config: ExperimentConfig) -> str:
    """Where the prepared data's tokenizer came from (the index records it), for messages."""
    try:
        meta = json.loads((Path(config.prepared) / "index" / "meta.json").read_text(encoding="utf-8"))
        return str(meta.get("extra", {}).get("tokenizer_path") or "a tokenizer not recorded")
    except (OSError, ValueError):
        return "a tokenizer not recorded"


def _train_decode_score(config: ExperimentConfig, out: Path, manifest: dict, tokenizer, intermediate=None) -> dict:
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.tokenize import tokenizer_fingerprint

    index = open_index(Path(config.prepared) / "index", tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    logger = _logger(config, out, manifest)
    manifest["attempt_started_at"] = time.time()  # lets the next attempt count this one if it is killed
    write_json(out / MANIFEST, manifest)  # the W&B run id is on disk before training starts
    trained = _trained_elsewhere(config, out, manifest)
    if trained is not None:  # a run of the same training and another decoding: decode its model, train nothing
        manifest["trained_in"] = str(trained)
        manifest["train_seconds"] = round(sum(manifest["train_seconds_attempts"]), 2)  # its cost is the other's
        write_json(out / MANIFEST, manifest)
        module, datamodule = load_trained(config, trained / "checkpoints" / LAST_CHECKPOINT, tokenizer)
        return _decode_score_log(config, module.model, datamodule, index, tokenizer, out, manifest, logger)
    manifest["training"] = True  # committed to train: runs waiting for this one may wait (never the reverse)
    write_json(out / MANIFEST, manifest)
    started = time.perf_counter()
    try:
        callbacks = (
            [] if intermediate is None else [_intermediate_callback(config, index, tokenizer, intermediate, out)]
        )
        module = _fit(config, out, tokenizer, logger=logger or False, callbacks=callbacks)
    finally:  # every attempt's training time counts (cost columns), a failed or stopped one's too
        manifest["train_seconds_attempts"].append(round(time.perf_counter() - started, 2))
        manifest["train_seconds"] = round(sum(manifest["train_seconds_attempts"]), 2)
    if module.resumed_from_step is not None:  # the proof that a resume continued instead of starting over
        manifest.setdefault("resumed_from_steps", []).append(module.resumed_from_step)
    return _decode_score_log(config, module.model, module.datamodule, index, tokenizer, out, manifest, logger)


def _decode_score_log(config, model, datamodule, index, tokenizer, out: Path, manifest: dict, logger) -> dict:
    manifest["trainable_parameters"] = dict(model.components())
    evaluation, records, ms = _decode_and_score(config, model, datamodule, index, tokenizer, out)
    manifest["decode_ms_per_query"] = ms
    manifest["peak_gpu_memory_gib"] = _peak_gpu_memory()
    if logger is not None:
        from gemkr_lab.tracking.wandb_run import log_evaluation

        try:
            log_evaluation(
                logger,
                evaluation.means | {"decode_ms_per_query": manifest["decode_ms_per_query"]},
                out / "run.txt",
                records,
            )
        except Exception as exc:  # the metrics are written already: tracking never fails a run
            _tracking_skipped(manifest, "could not log the evaluation to W&B", exc)
    return evaluation.means


LAST_CHECKPOINT = "last.ckpt"


def _trained_elsewhere(config: ExperimentConfig, out: Path, manifest: dict) -> Path | None:
    """A complete run under the same root with this run's training fingerprint, whose model this run can decode.

    A run that is training right now (its manifest says `training` and its lock is held) is waited for. Only
    runs committed to training are waited for, and those never wait themselves, so no two runs wait on each
    other. Returns the run directory that holds the trained checkpoint, or None (then this run trains).
    """
    from gemkr_lab.io import lock, lock_holder

    root = out.parents[2]
    wanted = manifest["training_fingerprint"]
    for path in sorted(root.glob(f"*/seed-{config.train.seed}/*/{MANIFEST}")):
        other = path.parent
        found = read_manifest(other) or {}
        if other == out or found.get("training_fingerprint") != wanted or found.get("trained_in"):
            continue
        if found.get("status") == "running" and found.get("training") and lock_holder(other / RUN_LOCK):
            with lock(other / RUN_LOCK, wait=None, what=f"the training of {other}"):
                found = read_manifest(other) or {}  # it finished (or died): look again
        if found.get("status") == "complete" and (other / "checkpoints" / LAST_CHECKPOINT).is_file():
            return other
    return None


def load_trained(config: ExperimentConfig, ckpt: Path, tokenizer):
    """The trained model of a checkpoint, rebuilt exactly (seeded as training was), and its data module."""
    import lightning as L
    import torch

    from gemkr_lab.model.datamodule import GeMKRDataModule
    from gemkr_lab.model.module import GeMKRModule

    L.seed_everything(config.train.seed, workers=True, verbose=False)  # as training built it
    module = GeMKRModule(config.model, config.train, len(tokenizer))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    expected = {f"model.{k}" for k in module.model.checkpoint_state_dict()}
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(f"{ckpt}: lacks {len(missing)} parameters of the model (e.g. {missing[0]}); retrain the run")
    module.load_state_dict(state, strict=False)
    data = GeMKRDataModule(
        config.prepared,
        config.data_root,
        tokenizer,
        config.data,
        module.model.vision,
        config.train.batch_size,
        seed=config.train.seed,
    )
    data.setup()
    return module, data


def _decode_and_score(config: ExperimentConfig, model, datamodule, index, tokenizer, out: Path):
    """Decode the config's split with `config.decoding`, write records, run and metrics into `out`."""
    from gemkr_lab.decoding import write_records, write_records_run
    from gemkr_lab.metrics import evaluate
    from gemkr_lab.metrics.relevance import means_by_match
    from gemkr_lab.model.infer import decode_batches
    from gemkr_lab.model.train import run_device

    if not config.decoding.llm_in_8bit:  # 8-bit decoding quantises on the GPU itself; an 8-bit LLM cannot move
        model = model.to(run_device(config.train))  # Lightning hands the module back on the CPU after fit
    started = time.perf_counter()
    records = decode_batches(model, datamodule.eval_dataloader(config.split), index, config.decoding, tokenizer)
    ms = round(1000 * (time.perf_counter() - started) / max(len(records), 1), 2)
    write_records(out / "records.jsonl", records)
    write_records_run(out / "run.txt", records, tag=config.name)
    ranked = {r.qid: r.ranked_ids for r in records}
    relevance = relevance_for(config, ranked)
    evaluation = evaluate(ranked, relevance, ks=(1, 5, 10))
    payload = {"split": config.split, "means": evaluation.means, "per_query": evaluation.per_query}
    by_match = means_by_match(ranked, relevance, ks=(1, 5, 10))
    if by_match is not None:  # answer-based relevance: the headline match and the other one beside it
        payload |= {"match": relevance.match, "means_by_match": by_match}
    write_json(out / "metrics.json", payload)
    return evaluation, records, ms


INTERMEDIATE = "intermediate.json"
"""The decoded intermediate evaluations of a run, [{step, queries, means}] (a search's pruning record)."""


def _intermediate_callback(config: ExperimentConfig, index, tokenizer, plan: "IntermediateEvaluation", out: Path):
    """The Lightning callback that decodes `plan.queries` validation queries every `plan.every_n_steps` steps.

    Each evaluation is recorded in `out/intermediate.json` before it is reported (a report may stop the run).
    """
    from gemkr_lab.metrics import evaluate
    from gemkr_lab.model.infer import decode_batches
    from gemkr_lab.run.intermediate import DecodedEvaluationCallback

    def decoded_means(model, datamodule) -> dict[str, float]:
        loader = datamodule.eval_dataloader("validation", limit=plan.queries)
        records = decode_batches(model, loader, index, config.decoding, tokenizer, progress=False)
        ranked = {r.qid: r.ranked_ids for r in records}
        relevance = relevance_for(config, ranked, "validation", only_ranked=True)  # the subset's queries
        return evaluate(ranked, relevance, ks=(1, 5, 10)).means

    def record_and_report(step: int, means: dict[str, float]) -> None:
        done = read_intermediate(out)
        kept = [e for e in done if e["step"] < step]  # a resumed run evaluates its steps after the checkpoint again
        write_json(out / INTERMEDIATE, [*kept, {"step": step, "queries": plan.queries, "means": means}])
        plan.report(step, means)

    return DecodedEvaluationCallback(dataclasses.replace(plan, report=record_and_report), decoded_means)


def read_intermediate(out: Path) -> list[dict]:
    """A run's recorded intermediate evaluations (empty when it had none)."""
    path = out / INTERMEDIATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def _logger(config: ExperimentConfig, out: Path, manifest: dict):
    """The run's WandbLogger (same id when resumed), or None when tracking is off or W&B could not start.

    Tracking is optional: W&B is started here, before training, and any failure to start it (its service not
    answering in time, a full disk, a version clash) is one warning; the run goes on untracked and its manifest
    says why (`tracking`).
    """
    if not config.tracking.wandb or config.tracking.mode == "disabled":
        manifest["tracking"] = {"wandb": "off"}
        return None
    from gemkr_lab.tracking.wandb_run import make_logger, new_run_id

    manifest["wandb_run_id"] = manifest.get("wandb_run_id") or new_run_id()
    try:
        logger = make_logger(
            out,
            manifest["wandb_run_id"],
            project=config.tracking.project,
            group=config.tracking.group or config.name,
            name=f"{config.name}-seed{manifest['seed']}",
            tags=[config.name, config.data.dataset, *config.tracking.tags],
            config=to_dict(config),
            mode=config.tracking.mode,
        )
        logger.experiment  # noqa: B018 - starts W&B now (its service, the run's files), not inside training
    except Exception as exc:  # tracking never fails a run
        _tracking_skipped(manifest, "could not start W&B", exc)
        return None
    manifest["tracking"] = {"wandb": config.tracking.mode}
    return logger


def _tracking_skipped(manifest: dict, what: str, exc: BaseException) -> None:
    import warnings

    why = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
    warnings.warn(f"tracking skipped, the run goes on: {what} ({why})", RuntimeWarning, stacklevel=3)
    manifest["tracking"] = {"wandb": "skipped", "why": f"{what}: {why}"}


def relevance_for(
    config: ExperimentConfig, ranked: dict[str, list[str]], split: str | None = None, only_ranked: bool = False
):
    """Gold passages (ReMuQ, the synthetic world) or answer strings (OK-VQA), as the benchmark defines.

    The queries of `split` (default: the config's); with `only_ranked`, only those in `ranked` are judged (a
    subset decoded on purpose; otherwise a query missing from the run counts as a miss). For answers, only the
    texts of the ranked documents are read (streaming the corpus once).
    """
    from gemkr_lab.data.datasets import LAYOUTS, Dataset
    from gemkr_lab.metrics import AnswerRelevance, QrelsRelevance
    from gemkr_lab.metrics.relevance import texts_for

    path = Path(config.prepared) / split_file(split or config.split)
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
    if only_ranked:
        rows = [r for r in rows if r["qid"] in ranked]
    layout = LAYOUTS[config.data.dataset]
    if layout.relevance == "gold":
        return QrelsRelevance({r["qid"]: {p: 1 for p in r["positives"]} for r in rows})
    corpus = Dataset(config.data.dataset, config.data_root).corpus
    wanted = {d for docs in ranked.values() for d in docs}
    texts = texts_for(corpus, wanted, carriage_returns_to_spaces=config.data.carriage_returns_to_spaces)
    return AnswerRelevance({r["qid"]: list(r["answers"]) for r in rows}, texts, layout.match)


def _manifest(config: ExperimentConfig, seed: int, stamp: dict, previous: dict | None) -> dict[str, Any]:
    from gemkr_lab.data.prepare import file_fingerprint

    prepared = Path(config.prepared)
    index_meta = json.loads((prepared / "index" / "meta.json").read_text(encoding="utf-8"))
    return {
        "cell": config.name,
        "seed": seed,
        "status": "running",
        "split": config.split,
        "started": (previous or {}).get("started", _now()),
        "attempts": (previous or {}).get("attempts", 0) + 1,
        "git": _git(),
        "packages": {p: _version(p) for p in PACKAGES},
        "hardware": hardware(config, gpus=_gpus()),  # CPU, numerics, threads, determinism (gemkr_lab.numerics)
        "dataset": {
            "name": config.data.dataset,
            "data_root": str(config.data_root),
            "queries_fingerprint": file_fingerprint(prepared / split_file(config.split)),
        },
        "index": {
            "corpus_fingerprint": index_meta["corpus_fingerprint"],
            "tokenizer_fingerprint": index_meta["tokenizer_fingerprint"],
        },
        "prepared": {"path": str(prepared), "fingerprint": stamp["fingerprint"]},
        "fingerprint": _fingerprint(config, stamp, NOT_IDENTITY),  # the stamp is checked already
        "training_fingerprint": training_fingerprint(config, stamp),
        "wandb_run_id": (previous or {}).get("wandb_run_id"),
    }


def _earlier_train_seconds(previous: dict | None, out: Path) -> list[float]:
    """Training seconds of the run's earlier attempts; a killed one (no record) counts until its last write."""
    seconds = list((previous or {}).get("train_seconds_attempts") or [])
    if previous and previous.get("status") == "running" and previous.get("attempt_started_at"):
        mine = (RUN_LOCK, "log.txt")  # written by this attempt (and its launcher) already
        last = max((p.stat().st_mtime for p in out.rglob("*") if p.is_file() and p.name not in mine), default=0.0)
        seconds.append(round(max(0.0, last - previous["attempt_started_at"]), 2))
    return seconds


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


def _peak_gpu_memory() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _gpus() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


DECODING_PREFIX = "decoding."


def find_run(target: str, seed: int, root: str | Path) -> Path:
    """A trained run: a run directory given as such, or the one run of cell `target` and `seed` under `root`."""
    path = Path(target)
    if (path / "config.yaml").is_file():
        return path
    runs = sorted(p for p in seed_dir(root, target, seed).glob("*/config.yaml"))
    if not runs:
        raise FileNotFoundError(
            f"{seed_dir(root, target, seed)}: no trained run of {target} seed {seed}; "
            f"run gemkr-lab train {target} --seed {seed} --root {root}"
        )
    if len(runs) > 1:
        listed = ", ".join(str(p.parent) for p in runs)
        raise ConfigError(
            f"{target} seed {seed} has {len(runs)} runs with different configs ({listed}); pass one run directory"
        )
    return runs[0].parent


def evaluate_cell(run: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Decode and score a trained run again, exactly as it was trained, with other decoding knobs.

    The model is rebuilt from the run's own `config.yaml` and checkpoint (which holds the trained parameters
    and any frozen part that was randomly initialised), so unchanged decoding reproduces the run's metrics
    exactly. Only `decoding.*` overrides are accepted. Results go to `<run>/eval/<decoding fingerprint>/`.
    """
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint

    src = Path(run)
    others = [o for o in overrides if not o.strip().startswith(DECODING_PREFIX)]
    if others:
        raise ConfigError(
            f"evaluate changes decoding only; not accepted: {', '.join(others)} "
            "(train a new run with them: gemkr-lab train EXPERIMENT KEY=VALUE ...)"
        )
    config = _run_config(src, overrides)
    ckpt = src / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no trained checkpoint; train the run first")
    stamp = check_prepared(config)
    manifest = read_manifest(src) or {}
    if manifest.get("prepared", {}).get("fingerprint") not in (None, stamp["fingerprint"]):
        raise ConfigError(f"{config.prepared}: the prepared data changed since {src} was trained; prepare it again")
    tokenizer = load_tokenizer(tokenizer_dir(config))
    module, data = load_trained(config, ckpt, tokenizer)
    index = open_index(Path(config.prepared) / "index", tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    decoding = dataclasses.asdict(config.decoding)
    key = hashlib.sha256(json.dumps(decoding, sort_keys=True).encode()).hexdigest()[:10]
    out = src / "eval" / key
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "decoding.json", decoding)
    evaluation, _, _ = _decode_and_score(config, module.model, data, index, tokenizer, out)
    return evaluation.means


def _run_config(run: Path, overrides) -> ExperimentConfig:
    """The run's resolved config with decoding overrides applied (checked like any other)."""
    values = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    sources: dict[str, str] = {}
    apply_overrides(values, sources, overrides)
    return build(ExperimentConfig, values, where=str(run / "config.yaml"), sources=sources)
