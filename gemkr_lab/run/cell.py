"""One ablation cell end to end: train -> decode its split (test, or validation) -> score -> a run directory.

The jobs around it live beside it: identity and run directories (`run.identity`), provenance (`run.provenance`),
W&B (`run.track`), decoding and scoring (`run.evaluate`).

A run is its resolved config. Run directories are `<root>/<cell>/seed-<s>/<fingerprint>/`, where the
fingerprint covers everything that changes the result: the resolved experiment config (not where files are,
not tracking) and the prepared data's stamp (its prepare-time settings, tokenizer and input files). The same
cell and seed with another config is another run, never the old metrics. A run directory holds the resolved
config, the overrides, a manifest (code version, package versions, hardware, data and index fingerprints,
status), checkpoints, per-query records, the TREC run and the metrics. A complete run is never overwritten;
an incomplete one is resumed (training continues from its last checkpoint).
"""

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gemkr_lab.config.experiment import ExperimentConfig, to_dict
from gemkr_lab.io import lock, write_json, write_text  # not kb.storage: numpy must not load before a refusal
from gemkr_lab.run.evaluate import (  # noqa: F401 (re-exported: callers read a run through the cell)
    DECODING_PREFIX,
    INTERMEDIATE,
    decode_and_score,
    evaluate_cell,
    intermediate_callback,
    load_trained,
    read_intermediate,
    relevance_for,
)
from gemkr_lab.run.identity import (  # noqa: F401 (re-exported: callers read a run through the cell)
    AT_TEST_TIME,
    LAST_CHECKPOINT,
    MANIFEST,
    NOT_IDENTITY,
    NOT_TRAINING,
    RUN_LOCK,
    check_prepared,
    find_run,
    prepare_command,
    prepared_tokenizer,
    read_manifest,
    read_metrics,
    run_dir,
    run_fingerprint,
    seed_dir,
    split_file,
    tokenizer_dir,
    training_fingerprint,
    with_seed,
)
from gemkr_lab.run.provenance import earlier_train_seconds, new_manifest, now, peak_gpu_memory
from gemkr_lab.run.track import start_logger, tracking_skipped

if TYPE_CHECKING:  # Lightning loads only where a run trains
    from gemkr_lab.run.intermediate import IntermediateEvaluation


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
    from gemkr_lab.model.pairing import check_tokenizer_pairs_with_llm

    config = with_seed(config, seed)
    stamp = check_prepared(config, overrides or ())
    tokenizer = load_tokenizer(tokenizer_dir(config))
    check_tokenizer_pairs_with_llm(  # the real cause first: a tokenizer that is not the LLM's
        tokenizer,
        tokenizer_dir(config),
        config.model.llm,
        fix=f"leave `tokenizer` unset to use the LLM's own and prepare data with it: "
        f"{prepare_command(config, overrides or (), new_folder=True, leave_out=('tokenizer',))}",
    )
    if tokenizer_fingerprint(tokenizer) != stamp["tokenizer_fingerprint"]:
        raise DataError(
            f"{config.name} uses the tokenizer in {tokenizer_dir(config)} ({tokenizer_fingerprint(tokenizer)}), "
            f"but {config.prepared} was prepared with another one ({prepared_tokenizer(config)}, "
            f"{stamp['tokenizer_fingerprint']}); its token ids mean nothing to this LLM. Prepare the data with "
            f"this tokenizer into a new folder: {prepare_command(config, overrides or (), new_folder=True)} "
            "(then train with prepared=NEW_FOLDER)"
        )
    out = run_dir(root, config)
    if not is_global_zero():  # a DDP process Lightning started beside rank 0: it trains and writes nothing
        _train_beside_rank_zero(config, out, tokenizer)
        return {}
    out.mkdir(parents=True, exist_ok=True)
    # One trainer per run directory: a second fails at once (train exits 2, run-cell 75), naming the holder; it
    # would have nothing to do but wait and then find the run complete. A DDP rank > 0 is the holder's own child.
    rank = int(os.environ.get("LOCAL_RANK") or 0)
    held = lock(out / RUN_LOCK, what=f"run {out}", until_exit=lock_until_exit) if not rank else None
    with held or contextlib.nullcontext():
        return _run_locked(config, seed, out, stamp, tokenizer, overrides, intermediate)


def _run_locked(
    config: ExperimentConfig, seed: int, out: Path, stamp: dict, tokenizer, overrides, intermediate=None
) -> dict:
    manifest = read_manifest(out)
    metrics = read_metrics(out) if manifest and manifest.get("status") == "complete" else None
    if metrics is not None:
        return metrics["means"]  # a complete run that lost its metrics.json decodes its checkpoint again
    earlier = earlier_train_seconds(manifest, out)
    write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    write_text(out / "overrides.txt", "\n".join(overrides or []) + "\n")
    manifest = new_manifest(config, seed, stamp, previous=manifest)
    manifest["train_seconds_attempts"] = earlier
    write_json(out / MANIFEST, manifest)
    try:
        metrics = _train_decode_score(config, out, manifest, tokenizer, intermediate)
    except BaseException as exc:
        status = ended_as(exc)
        manifest.update(status=status, error=f"{type(exc).__name__}: {exc}", finished=now())
        if status == "failed":  # a stop from outside (preemption, cancellation, a stopped worker) is not a failure
            manifest["failures"] = manifest.get("failures", 0) + 1
        write_json(out / MANIFEST, manifest)
        raise
    manifest.update(status="complete", finished=now())
    write_json(out / MANIFEST, manifest)
    return metrics


class RunStopped(SystemExit):
    """SIGTERM arrived outside training (while decoding): the run stops, its manifest says stopped."""

    def __init__(self) -> None:
        super().__init__(143)  # the exit status of a process ended by SIGTERM


def ended_as(exc: BaseException) -> str:
    """The status a run ends with after `exc`: pruned, stopped or failed.

    Pruned: a search stopped it. Stopped: SIGTERM (preempted, cancelled, its worker stopped); training stops at a
    checkpoint, decoding at once. Failed: anything else, the only outcome counted in `failures`.
    """
    if type(exc).__name__ == "TrialPruned":
        return "pruned"
    if isinstance(exc, RunStopped) or type(exc).__name__ == "SIGTERMException":  # Lightning's, during fit
        return "stopped"
    return "failed"


@contextlib.contextmanager
def stop_on_sigterm():
    """Outside Lightning's fit nothing catches SIGTERM: the process would die and leave `status: running`."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise RunStopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def _train_decode_score(config: ExperimentConfig, out: Path, manifest: dict, tokenizer, intermediate=None) -> dict:
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.tokenize import tokenizer_fingerprint

    index = open_index(Path(config.prepared) / "index", tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    logger = start_logger(config, out, manifest)
    manifest["attempt_started_at"] = time.time()  # lets the next attempt count this one if it is killed
    write_json(out / MANIFEST, manifest)  # the W&B run id is on disk before training starts
    trained = _trained_elsewhere(config, out, manifest)
    if trained is not None:  # a run of the same training and another decoding: decode its model, train nothing
        manifest["trained_in"] = str(trained)
        manifest["train_seconds"] = round(sum(manifest["train_seconds_attempts"]), 2)  # its cost is the other's
        write_json(out / MANIFEST, manifest)
        module, datamodule = load_trained(config, trained / "checkpoints" / LAST_CHECKPOINT, tokenizer)
        with stop_on_sigterm():
            return _decode_score_log(config, module.model, datamodule, index, tokenizer, out, manifest, logger)
    manifest["training"] = True  # committed to train: runs waiting for this one may wait (never the reverse)
    write_json(out / MANIFEST, manifest)
    started = time.perf_counter()
    try:
        callbacks = [] if intermediate is None else [intermediate_callback(config, index, tokenizer, intermediate, out)]
        module = _fit(config, out, tokenizer, logger=logger or False, callbacks=callbacks)
    finally:  # every attempt's training time counts (cost columns), a failed or stopped one's too
        manifest["train_seconds_attempts"].append(round(time.perf_counter() - started, 2))
        manifest["train_seconds"] = round(sum(manifest["train_seconds_attempts"]), 2)
    if module.resumed_from_step is not None:  # the proof that a resume continued instead of starting over
        manifest.setdefault("resumed_from_steps", []).append(module.resumed_from_step)
    with stop_on_sigterm():
        return _decode_score_log(config, module.model, module.datamodule, index, tokenizer, out, manifest, logger)


def _decode_score_log(config, model, datamodule, index, tokenizer, out: Path, manifest: dict, logger) -> dict:
    manifest["trainable_parameters"] = dict(model.components())
    evaluation, records, ms = decode_and_score(config, model, datamodule, index, tokenizer, out)
    manifest["decode_ms_per_query"] = ms
    manifest["peak_gpu_memory_gib"] = peak_gpu_memory()
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
            tracking_skipped(manifest, "could not log the evaluation to W&B", exc)
    return evaluation.means


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
