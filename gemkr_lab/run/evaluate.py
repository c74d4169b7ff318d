"""Decoding and scoring a trained model, and rebuilding one from its checkpoint.

The run's split at the end of training, a validation subset while training (a search's intermediate values),
and re-evaluation of a trained run with other decoding knobs (`evaluate_cell`).
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gemkr_lab.config.experiment import ConfigError, ExperimentConfig, apply_overrides, build
from gemkr_lab.config.metric_names import CUTOFFS
from gemkr_lab.io import write_json  # not kb.storage: numpy must not load before a refusal
from gemkr_lab.run.identity import RUN_FORMAT, check_prepared, read_manifest, split_file, tokenizer_dir

if TYPE_CHECKING:  # Lightning loads only where a run trains
    from gemkr_lab.run.intermediate import IntermediateEvaluation


DECODING_PREFIX = "decoding."


def load_trained(config: ExperimentConfig, ckpt: Path, tokenizer):
    """The trained model of a checkpoint, rebuilt exactly (seeded as training was), and its data module."""
    import torch

    from gemkr_lab.model.build import build_model_and_data
    from gemkr_lab.model.checkpoints import check_fits

    module, data = build_model_and_data(  # the one builder training used, seeded as it was
        config.prepared,
        config.data_root,
        tokenizer,
        model_config=config.model,
        data_config=config.data,
        train_config=config.train,
        limit_train=config.limit_train,
    )
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    expected = {f"model.{k}" for k in module.model.checkpoint_state_dict()}
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(f"{ckpt}: lacks {len(missing)} parameters of the model (e.g. {missing[0]}); retrain the run")
    check_fits(state, module, ckpt)  # other shapes: one error naming the file and keys, not torch's traceback
    module.load_state_dict(state, strict=False)
    data.setup()
    return module, data


def decode_and_score(config: ExperimentConfig, model, datamodule, index, tokenizer, out: Path):
    """Decode the config's split with `config.decoding`, write records, run and metrics into `out`."""
    from gemkr_lab.decoding import write_records, write_records_run
    from gemkr_lab.metrics import evaluate
    from gemkr_lab.metrics.score import means_by_match
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
    evaluation = evaluate(ranked, relevance, ks=CUTOFFS)
    payload = {
        "format": RUN_FORMAT,
        "split": config.split,
        "means": evaluation.means,
        "per_query": evaluation.per_query,
    }
    by_match = means_by_match(ranked, relevance, ks=CUTOFFS)
    if by_match is not None:  # answer-based relevance: the headline match and the other one beside it
        payload |= {"match": relevance.match, "means_by_match": by_match}
    write_json(out / "metrics.json", payload)
    return evaluation, records, ms


def relevance_for(
    config: ExperimentConfig, ranked: dict[str, list[str]], split: str | None = None, only_ranked: bool = False
):
    """Gold passages (ReMuQ, the synthetic world) or answer strings (OK-VQA), as the benchmark defines.

    The queries of `split` (default: the config's); with `only_ranked`, only those in `ranked` are judged (a
    subset decoded on purpose; otherwise a query missing from the run counts as a miss). For answers, only the
    texts of the ranked documents are read (streaming the corpus once).
    """
    from gemkr_lab.data.datasets import Dataset
    from gemkr_lab.data.relevance import benchmark_relevance, judged_by_answers, wanted_texts
    from gemkr_lab.metrics.relevance import texts_for

    path = Path(config.prepared) / split_file(split or config.split)
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
    if only_ranked:
        rows = [r for r in rows if r["qid"] in ranked]
    texts = None
    if judged_by_answers(config.data.dataset):
        corpus = Dataset(config.data.dataset, config.data_root).corpus
        crs = config.data.carriage_returns_to_spaces
        texts = texts_for(corpus, wanted_texts(ranked.values()), carriage_returns_to_spaces=crs)
    gold = {r["qid"]: r.get("positives", []) for r in rows}
    return benchmark_relevance(config.data.dataset, gold, {r["qid"]: r.get("answers", []) for r in rows}, texts)


INTERMEDIATE = "intermediate.json"
"""The decoded intermediate evaluations of a run, [{step, queries, means}] (a search's pruning record)."""


def intermediate_callback(config: ExperimentConfig, index, tokenizer, plan: "IntermediateEvaluation", out: Path):
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
        return evaluate(ranked, relevance, ks=CUTOFFS).means

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
    evaluation, _, _ = decode_and_score(config, module.model, data, index, tokenizer, out)
    return evaluation.means


def _run_config(run: Path, overrides) -> ExperimentConfig:
    """The run's resolved config with decoding overrides applied (checked like any other)."""
    values = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    sources: dict[str, str] = {}
    apply_overrides(values, sources, overrides)
    return build(ExperimentConfig, values, where=str(run / "config.yaml"), sources=sources)
