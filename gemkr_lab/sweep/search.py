"""Optuna search sweeps: tune on the validation split, report the test split once, at the end.

    name: lr-search
    root: runs/lr-search
    base: tiny-cpu/full
    seed: 0
    overrides: [train.max_steps=300, data.validation_size=0.2]   # a validation split is required
    search:
      space:
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        model.attention_flow: {type: categorical, choices: [dual, joint]}
      enqueue: [{train.lr: 2.0e-3, model.attention_flow: dual}]  # optional: trials to run first
      objective: R@5            # measured on validation
      n_trials: 8
      sampler: tpe              # tpe | random | grid
      pruner: median            # none | median | successive_halving | hyperband
      eval_every_n_steps: 100   # decode `eval_queries` validation queries every 100 steps for the pruner
      final_seeds: [0, 1]       # the selected configuration on test

Why validation: a configuration chosen by its test score has seen the test queries; its test number is then
an optimistic estimate, which a reviewer rightly rejects. So a trial is a run with `split=validation` (it
decodes only the validation queries held out of the training questions by `data.validation_size`), its
intermediate values are decoded validation objectives (`gemkr_lab.run.intermediate`), and only when every
trial is done (or `sweep --finalize`) is the best trial's configuration run with `split=test`, over
`final_seeds`, as ordinary runs named `<base>@selected`. A final run whose seed is the search's seed decodes
the best trial's own checkpoint (the split is not part of a training's identity): nothing is trained twice.

Trials run like grid cells: a fresh `run-cell` process each, in the sweep's storage, run directories keyed by
trial number. Search settings are checked like every config (`gemkr_lab.config.search.SearchSettings`): an
unknown key, a bad value or a space key that is not a config field stops with the file and line.
"""

import dataclasses
import hashlib
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from gemkr_lab.config.experiment import ConfigError, load_experiment
from gemkr_lab.config.search import SearchSettings
from gemkr_lab.io import lock as lock_file
from gemkr_lab.io import lock_holder, write_json, write_text
from gemkr_lab.run.cell import RUN_LOCK, read_intermediate, read_manifest, run_dir, with_seed
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.search_file import (  # noqa: F401  (re-exported: the file reading was defined here)
    SearchSweep,
    distributions,
    is_search,
    load_search,
    load_search_file,
)
from gemkr_lab.sweep.variants import prepared_overrides

PRUNED_EXIT = 3
_ENV = ("GEMKR_OPTUNA_STORAGE", "GEMKR_OPTUNA_STUDY", "GEMKR_OPTUNA_TRIAL")
_SETTINGS_ENV = "GEMKR_SEARCH_SETTINGS"
"""The search settings and the trials' step budget, as JSON: a trial process rebuilds the same pruner from
them (Optuna keeps pruners out of its storage; a study loaded without one would prune by Optuna's defaults)."""
SELECTED = "selected.yaml"
"""The selected configuration, written as an experiment preset (`gemkr-lab train ROOT/selected.yaml`)."""
FINAL = "final.json"
"""The final test-split evaluation of the selected configuration: trial, params, seeds, run dirs, means."""


def _sampler(sweep: SearchSweep, salt: str = "") -> optuna.samplers.BaseSampler:
    """The sweep's sampler, seeded by its seed (and `salt`: processes proposing at once need streams of their own).

    One seeded stream is reproducible trial for trial where one process asks (local workers share it under a
    lock); several Slurm jobs each seeded alike would propose the same parameters, so each salts its seed with
    its job id: such a search is exactly-once and resumable, but its proposals depend on the jobs' timing (use
    `sampler: grid` or `enqueue` for proposals fixed in advance).
    """
    seed = sweep.seed if not salt else int(hashlib.sha256(f"{sweep.seed}:{salt}".encode()).hexdigest()[:8], 16)
    if sweep.settings.sampler == "grid":
        grid = {k: list(v["choices"]) for k, v in sweep.space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if sweep.settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(s: SearchSettings, max_steps: int) -> optuna.pruners.BasePruner:
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_steps
        )
    if s.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.eval_every_n_steps)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=s.eval_every_n_steps, max_resource=max_steps)
    return optuna.pruners.NopPruner()


def trial_overrides(sweep: SearchSweep, params: dict[str, Any], name: str, split: str) -> list[str]:
    """The overrides of one run of the search: its params, the split it decodes, grouped under the search."""
    return [
        *sweep.overrides,
        *(f"{k}={json.dumps(v)}" for k, v in params.items()),
        f"split={split}",
        f"name={name}",
        f"tracking.group={json.dumps(sweep.name)}",
    ]


def run_search(
    sweep: SearchSweep,
    workers: int = 1,
    storage: str | None = None,
    new_study: bool = False,
    gpus_per_trial: int = 0,
    finalize: bool | None = None,
    stop: threading.Event | None = None,
    linger: bool = True,
    claim_attrs: dict | None = None,
) -> dict:
    """Run trials until `n_trials` are finished (complete, pruned or failed), `workers` at a time; then finalize.

    Each trial runs exactly once, also under faults: a trial whose worker is gone (killed command, lost Slurm
    job) or stopped (`stop`: scancel, preemption, time limit) is given back: failed as given back (it does not
    count) and queued again with its parameters and run name, so its run resumes from its last checkpoint under
    its run lock. This is also the loop of a Slurm worker job (`gemkr_lab.sweep.slurm`): `stop`, `linger=False`
    (leave when nothing is left to start instead of waiting on other workers' trials) and its job in
    `claim_attrs`.

    `finalize` (default: the file's `search.finalize`): when every trial is finished, run the selected
    configuration on the test split (`finalize_search`, once: serialised by a lock, complete runs read back).
    Returns the trial states, the best trial and the final result (None until finalized).
    """
    from gemkr_lab.sweep.grid import POLL_SECONDS, STOPPED, _Either, _gpu_groups, launch

    store = study_mod.open_storage(storage, Path(sweep.root))
    study = _search_study(sweep, store, new_study)
    if claim_attrs and claim_attrs.get("slurm_job"):  # each job its own proposals (one seed would repeat them)
        study.sampler = _sampler(sweep, salt=str(claim_attrs["slurm_job"]))
    dists = distributions(sweep, sweep.name)
    groups = _gpu_groups(workers, gpus_per_trial)
    lock = threading.Lock()
    url = storage or f"journal:{Path(sweep.root).resolve() / study_mod.JOURNAL}"
    s = sweep.settings
    eval_env = {}
    if s.eval_every_n_steps is not None:
        max_steps = load_experiment(sweep.base, sweep.overrides).train.max_steps
        eval_env[_SETTINGS_ENV] = json.dumps({"settings": dataclasses.asdict(s), "max_steps": max_steps})

    def worker(slot: int) -> None:
        while stop is None or not stop.is_set():
            with lock:
                requeue_dead(sweep, study, store)
                trial = _next_trial(sweep, study, dists)
                if trial is None:
                    if linger and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                        time.sleep(POLL_SECONDS)  # another command's trials: run them if their worker dies
                        continue
                    return
                name = trial.user_attrs.get("name") or f"{sweep.base}@trial-{trial.number:04d}"
                overrides = trial_overrides(sweep, trial.params, name, "validation")
                # prepared one at a time (and transformers' lazy imports are not thread-safe)
                overrides += prepared_overrides(load_experiment(sweep.base, overrides), sweep.root)
                out = run_dir(sweep.root, with_seed(load_experiment(sweep.base, overrides), sweep.seed))
                attrs = {**(claim_attrs or {}), "name": name, "run": str(out), "host": socket.gethostname()}
                for key, value in (attrs | {"pid": os.getpid(), "heartbeat": time.time()}).items():
                    study_mod.retrying(store.set_trial_user_attr, trial._trial_id, key, value)
                for entry in read_intermediate(out) if trial.user_attrs.get("resumes") is not None else ():
                    study_mod.retrying(trial.report, entry["means"][s.objective], step=entry["step"])
            env = dict(zip(_ENV, (url, sweep.name, str(trial._trial_id)), strict=True)) | eval_env
            if lock_holder(out / RUN_LOCK):  # its stopped trainer is still ending: never two trainers of one run
                with lock_file(out / RUN_LOCK, wait=None, what=f"run {out}"):
                    pass
            lost = threading.Event()
            ended = lost if stop is None else _Either(lost, stop)
            with study_mod.Heartbeat(store, trial._trial_id, on_lost=lost.set) as beat:
                code = launch(sweep.base, overrides, sweep.seed, sweep.root, out, groups[slot], env, stop=ended)
            if beat.lost.is_set():  # judged dead by another command, which gave it back: run stopped
                continue
            manifest = read_manifest(out) or {}
            if stop is not None and stop.is_set() and manifest.get("status") != "complete" and code != PRUNED_EXIT:
                with lock:
                    give_back(study, store, study_mod.retrying(store.get_trial, trial._trial_id), STOPPED)
                return
            _tell(study, store, trial, code, out, s)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(worker, range(max(1, workers))))
    states = [t.state.name for t in counted_trials(study)]
    result = {st: states.count(st) for st in sorted(set(states))} | {"best": _best(study, s), "final": None}
    stopped = stop is not None and stop.is_set()
    if (s.finalize if finalize is None else finalize) and not stopped and _all_finished(sweep, study):
        with lock_file(Path(sweep.root) / ".finalize.lock", wait=None, what=f"the final step of {sweep.name}"):
            result["final"] = finalize_search(sweep, storage, workers=workers, gpus_per_trial=gpus_per_trial)
    return result


def counted_trials(study: optuna.Study) -> list:
    """The search's trials, less those given back (each has a successor, naming it in `resumes`, in its place)."""
    trials = study.get_trials(deepcopy=False)
    back = given_back_numbers(trials)
    return [t for t in trials if t.number not in back]


def given_back_numbers(trials) -> set[int]:
    """The numbers of the trials given back: those a successor resumes."""
    return {t.user_attrs["resumes"] for t in trials if t.user_attrs.get("resumes") is not None}


def _next_trial(sweep: SearchSweep, study: optuna.Study, dists):
    """A queued trial (enqueued or given back), else a new one while fewer than `n_trials` exist; else None."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting and len(counted_trials(study)) >= sweep.settings.n_trials:
        return None
    return study.ask(dists)


def _all_finished(sweep: SearchSweep, study: optuna.Study) -> bool:
    trials = counted_trials(study)
    return len(trials) >= sweep.settings.n_trials and all(t.state.is_finished() for t in trials)


def give_back(study: optuna.Study, store, trial, reason: str, failed: bool = False) -> bool:
    """Fail a trial as given back and queue its successor: the same parameters and run name (the run resumes).

    `failed`: the caller has failed it already (`requeue_stale`). Returns False, changing nothing, when the
    trial was finished meanwhile (by its worker or another command).
    """
    try:
        study_mod.retrying(store.set_trial_user_attr, trial._trial_id, "error", reason)
        if not failed and not study_mod.retrying(store.set_trial_state_values, trial._trial_id, TrialState.FAIL):
            return False
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False
    attrs = {"name": trial.user_attrs.get("name"), "resumes": trial.number}
    study_mod.retrying(study.enqueue_trial, trial.params, user_attrs=attrs, skip_if_exists=False)
    return True


def requeue_dead(sweep: SearchSweep, study: optuna.Study, store) -> int:
    """Give back the RUNNING trials whose worker is gone (never one whose trainer still holds its run lock)."""

    def busy(attrs: dict) -> bool:
        return bool(attrs.get("run")) and lock_holder(Path(attrs["run"]) / RUN_LOCK) is not None

    def successor(trial) -> None:  # requeue_stale failed it already
        give_back(study, store, trial, "worker stopped (no heartbeat)", failed=True)

    return study_mod.requeue_stale(study, store, retries=0, busy=busy, requeue=successor)


def _tell(study: optuna.Study, store, trial, code: int, out: Path, settings: SearchSettings) -> None:
    manifest = read_manifest(out) or {}
    objective = settings.objective
    try:
        if code == 0 and manifest.get("status") == "complete":
            metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            if metrics.get("split") != "validation":  # never: a trial's objective is a validation number
                raise RuntimeError(f"{out}: a search trial scored split {metrics.get('split')!r}")
            reported = store.get_trial(trial._trial_id).intermediate_values
            if settings.cost is None and not reported:  # a run found complete (reused): its record stands in
                for entry in read_intermediate(out):
                    study_mod.retrying(trial.report, entry["means"][objective], step=entry["step"])
            value = metrics["means"][objective]
            values = value if settings.cost is None else [value, float(manifest[settings.cost])]
            study_mod.retrying(study.tell, trial, values, skip_if_finished=True)
        elif code == PRUNED_EXIT:
            study_mod.retrying(study.tell, trial, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            error = manifest.get("error", f"exit {code}")
            study_mod.retrying(store.set_trial_user_attr, trial._trial_id, "error", error)
            study_mod.retrying(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # finished by someone else meanwhile


def _best(study: optuna.Study, settings: SearchSettings) -> dict | None:
    best = selected_trial(study, settings, required=False)
    return None if best is None else {"number": best.number, "values": best.values, "params": best.params}


def selected_trial(study: optuna.Study, settings: SearchSettings, required: bool = True):
    """The trial `settings.selection_rule()` chooses among the complete ones (None if none, unless `required`)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        if required:
            raise ConfigError(f"search {study.study_name!r} has no complete trial to select")
        return None
    sign = 1.0 if settings.direction == "maximize" else -1.0
    if settings.cost is None:
        return max(complete, key=lambda t: (sign * t.values[0], -t.number))
    front = study.best_trials
    best = max(sign * t.values[0] for t in front)
    close = [t for t in front if sign * t.values[0] >= best - settings.select_within]
    return min(close, key=lambda t: (t.values[1], t.number))


def finalize_search(sweep: SearchSweep, storage: str | None = None, workers: int = 1, gpus_per_trial: int = 0) -> dict:
    """The test split, touched once: the selected configuration trained and scored on test over `final_seeds`.

    Refused while trials are still running or to run. Writes `ROOT/selected.yaml` (the configuration as an
    experiment preset) and `ROOT/final.json` (trial, params, seeds, run directories and their test means).
    Final runs are ordinary runs (`split: test`); run again, complete ones are read back, never rerun.
    """
    from gemkr_lab.sweep.grid import _gpu_groups, launch

    store = study_mod.open_storage(storage, Path(sweep.root))
    study = _search_study(sweep, store, new_study=False)
    trials = study.get_trials(deepcopy=False)
    unfinished = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    if len(trials) < sweep.settings.n_trials or unfinished:
        raise ConfigError(
            f"search {sweep.name}: {len(trials)} of {sweep.settings.n_trials} trials started"
            + (f", {unfinished} still running" if unfinished else "")
            + "; the test split is evaluated once, after every trial: run the search to its end first"
        )
    best = selected_trial(study, sweep.settings)
    overrides = trial_overrides(sweep, best.params, sweep.selected_cell, "test")
    prepared = prepared_overrides(load_experiment(sweep.base, overrides), sweep.root)
    overrides += prepared
    preset = Path(sweep.root) / SELECTED
    write_selected_preset(sweep, best.params, preset, extra=prepared, trial=best.number, values=best.values)
    groups = _gpu_groups(workers, gpus_per_trial)
    results: dict[int, dict] = {}
    failed: dict[int, str] = {}
    lock = threading.Lock()
    seeds = list(sweep.final_seeds)

    def worker(slot: int) -> None:
        while True:
            with lock:
                if not seeds:
                    return
                seed = seeds.pop(0)
            out = run_dir(sweep.root, with_seed(load_experiment(sweep.base, overrides), seed))
            code = launch(sweep.base, overrides, seed, sweep.root, out, groups[slot])
            manifest = read_manifest(out) or {}
            if code != 0 or manifest.get("status") != "complete":
                error = manifest.get("error", f"exit {code}")
                failed[seed] = f"{error}; see {out / 'log.txt'}"
                continue
            metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            results[seed] = {"run": str(out), "split": metrics["split"], "means": metrics["means"]}

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(seeds)))) as pool:
        list(pool.map(worker, range(max(1, min(workers, len(seeds))))))
    if failed:
        listed = "; ".join(f"seed {k}: {v}" for k, v in sorted(failed.items()))
        raise FinalRunError(f"search {sweep.name}: final test runs failed ({listed}); run --finalize again to resume")
    final = {
        "trial": best.number,
        "name": best.user_attrs.get("name"),
        "params": best.params,
        "validation": dict(zip(value_names(sweep.settings), best.values, strict=True)),
        "rule": sweep.settings.selection_rule(),
        "split": "test",
        "seeds": {str(k): results[k] for k in sorted(results)},
    }
    write_json(Path(sweep.root) / FINAL, final)
    return final


def value_names(settings: SearchSettings) -> list[str]:
    """What a trial's values are: the objective, and the cost in a multi-objective search."""
    return [settings.objective] + ([settings.cost] if settings.cost else [])


class FinalRunError(RuntimeError):
    """A final test-split run of the selected configuration failed (its log is named)."""


def read_final(sweep: SearchSweep) -> dict | None:
    """The search's final test-split result, or None before `finalize_search` has run."""
    path = Path(sweep.root) / FINAL
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_selected_preset(
    sweep: SearchSweep, params: dict[str, Any], path: Path, extra: list[str] = (), **note: Any
) -> None:
    """The selected configuration as an experiment preset over the search's base (its overrides and params).

    `extra`: further overrides, e.g. where the final runs found their prepared data.
    """
    values: dict[str, Any] = {"base": sweep.base}
    for item in [*sweep.overrides, *(f"{k}={json.dumps(v)}" for k, v in params.items()), *extra]:
        key, _, raw = item.partition("=")
        node = values
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw else None
    said = ", ".join(f"{k} {v}" for k, v in note.items())
    header = f"# Selected by search {sweep.name} ({said}, on the validation split).\n"
    header += f"#   gemkr-lab train {path}\n"
    write_text(path, header + yaml.safe_dump(values, sort_keys=False))


def _search_study(sweep: SearchSweep, store, new_study: bool) -> optuna.Study:
    """Load or create the search's study (its fingerprint: base, seed, overrides, space and steering)."""
    fp = study_mod.fingerprint(
        [sweep.base], [sweep.seed], [*sweep.overrides, json.dumps(_identity(sweep), sort_keys=True)]
    )
    max_steps = load_experiment(sweep.base, sweep.overrides).train.max_steps
    sampler, pruner = _sampler(sweep), _pruner(sweep.settings, max_steps)
    return open_search_study(
        sweep.name, sweep.settings.directions, store, fp, sampler, pruner, new_study, enqueue=sweep.enqueue
    )


def open_search_study(
    name: str, directions, store, fp: str, sampler, pruner, new_study: bool, enqueue=()
) -> optuna.Study:
    """Load or create a study; a study still being created by another command is waited for.

    Race-free with other commands starting at the same moment: one creates it (the storage refuses a second
    study of the same name), enqueues its first trials and sets the fingerprint last; the others wait for that.
    """
    study = study_mod.settled_study(name, store, fp, sampler=sampler, pruner=pruner)
    if study is not None and study.user_attrs.get("fingerprint") != fp:
        if not new_study:
            raise ConfigError(f"the sweep file changed since study {name!r} was made; pass --new-study")
        optuna.delete_study(study_name=name, storage=store)
        study = None
    if study is None:
        try:
            study = optuna.create_study(
                study_name=name, storage=store, directions=list(directions), sampler=sampler, pruner=pruner
            )
        except optuna.exceptions.DuplicatedStudyError:  # another command created it a moment ago: wait for it
            return open_search_study(name, directions, store, fp, sampler, pruner, False, enqueue)
        for params in enqueue:
            study.enqueue_trial(params)
        study.set_user_attr("fingerprint", fp)
    return study


def _identity(sweep: SearchSweep) -> dict:
    """What makes a study: the space, enqueued trials and the settings that steer the trials."""
    s = sweep.settings
    steering = {k: getattr(s, k) for k in ("objective", "direction", "cost", "sampler", "pruner", "eval_every_n_steps")}
    return {"space": sweep.space, "enqueue": list(sweep.enqueue), **steering, "eval_queries": s.eval_queries}


def intermediate_from_env():
    """A trial's intermediate evaluation (`run.intermediate.IntermediateEvaluation`), or None outside a search.

    Set up by `run_search` through the environment of the trial's `run-cell` process: each decoded validation
    subset's objective goes to the trial, and a pruner's verdict stops the run (`optuna.TrialPruned`).
    """
    if not all(os.environ.get(k) for k in (*_ENV, _SETTINGS_ENV)):
        return None
    given = json.loads(os.environ[_SETTINGS_ENV])
    settings = SearchSettings(**given["settings"])
    from gemkr_lab.run.intermediate import IntermediateEvaluation

    url = os.environ["GEMKR_OPTUNA_STORAGE"]
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage

        store = JournalStorage(study_mod.journal_file(url[len("journal:") :]))
    else:
        store = optuna.storages.RDBStorage(study_mod.storage_url(url))
    pruner = _pruner(settings, given["max_steps"])
    study = optuna.load_study(study_name=os.environ["GEMKR_OPTUNA_STUDY"], storage=store, pruner=pruner)
    trial = optuna.trial.Trial(study, int(os.environ["GEMKR_OPTUNA_TRIAL"]))
    return IntermediateEvaluation(
        every_n_steps=settings.eval_every_n_steps,
        queries=settings.eval_queries,
        report=TrialReport(trial, settings.objective),
    )


class TrialReport:
    """Reports a decoded validation objective to an Optuna trial; raises TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.trial.Trial, objective: str) -> None:
        self.trial, self.objective = trial, objective

    def __call__(self, step: int, means: dict[str, float]) -> None:
        """Report `means[objective]` at `step`; stop the run if pruned."""
        value = means[self.objective]
        study_mod.retrying(self.trial.report, value, step=step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.objective} {value:.4f} on the validation subset)")


# --- on Slurm ------------------------------------------------------------------------------------------------


def run_search_slurm(
    sweep: SearchSweep,
    options,
    storage: str | None = None,
    new_study: bool = False,
    wait: bool = False,
    progress: bool | None = None,
    command: str = "",
) -> dict:
    """Submit worker jobs for what is left of the search; with `wait`, follow until it is finished (and final).

    Each worker job runs `run_search` (one worker, `linger=False`): it starts queued or new trials until
    `n_trials` exist, giving its running trial back when Slurm stops it (scancel, preemption, the time limit:
    the trainer checkpoints, the successor resumes). The job that finds every trial finished runs the final
    test-split step. Without `wait` the command returns after submitting; run again it submits workers only for
    what is left. With `wait` it re-queues lost jobs' trials (`requeue_dead`) and submits workers for them.
    """
    from gemkr_lab.sweep import slurm as sl
    from gemkr_lab.sweep.grid import POLL_SECONDS

    sl.check_slurm()
    store = study_mod.open_storage(storage, Path(sweep.root))
    study = _search_study(sweep, store, new_study)
    submitted = _top_up_slurm(sweep, options, study, storage, command)
    shown = None
    while wait:
        with study_mod.queue_lock(sweep.root):
            requeue_dead(sweep, study, store)
        try:
            submitted += _top_up_slurm(sweep, options, study, storage, command)
        except sl.SlurmQueryError as exc:  # its jobs may still run: keep following, never exit on it
            print(f"{exc}; following on", file=sys.stderr, flush=True)
            time.sleep(POLL_SECONDS)
            continue
        left = _slurm_left(sweep, study)
        line = _progress_line(sweep, study, left)
        if progress is not False and line != shown:
            print(line, flush=True)
            shown = line
        if not any(left.values()):
            break
        try:
            active = sl.active_jobs(sl.job_name(sweep))
        except sl.SlurmQueryError:
            active = {"?": "UNKNOWN"}  # Slurm unreachable: assume jobs live, never give up on them here
        crashed = [j for j in sl.read_jobs(sweep.root).get("jobs", []) if j.get("state") == "FAILED"]
        if len(crashed) >= sl.WORKER_FAILURES and not active:
            raise ConfigError(
                f"{len(crashed)} worker jobs failed (the workers themselves); see {crashed[-1]['stderr']}"
            )
        time.sleep(POLL_SECONDS)
    with sl.ledger_lock(sweep):
        sl.update_jobs(sweep, study)
    states = [t.state.name for t in counted_trials(study)]
    return {
        "submitted": submitted,
        "active": sl.active_jobs(sl.job_name(sweep)),
        **{st: states.count(st) for st in sorted(set(states))},
        "left": _slurm_left(sweep, study),
        "best": _best(study, sweep.settings),
        "final": read_final(sweep),
        "jobs_file": str(sl.jobs_dir(sweep.root) / sl.JOBS_FILE),
    }


def _slurm_left(sweep: SearchSweep, study: optuna.Study) -> dict[str, int]:
    """What is left: trials to start (new or queued), running, and the final step (1 while it is missing)."""
    trials = counted_trials(study)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    new = max(0, sweep.settings.n_trials - len(trials))
    final = int(sweep.settings.finalize and read_final(sweep) is None)
    return {"to_start": new + waiting, "running": running, "final": final}


def _top_up_slurm(sweep: SearchSweep, options, study, storage: str | None, command: str) -> list[str]:
    """Submit worker jobs for what is left, never more than `max_jobs` at once (serialised across commands)."""
    from gemkr_lab.sweep import slurm as sl

    with sl.ledger_lock(sweep):
        active = sl.active_jobs(sl.job_name(sweep))
        left = _slurm_left(sweep, study)
        wanted = left["to_start"] + left["running"] or left["final"]  # the final step: one job, once trials end
        n = min(options.max_jobs, wanted) - len(active)
        new = []
        if n > 0 and (left["to_start"] or (left["final"] and not left["running"])):
            new = sl.submit_workers(sweep, options, 0, storage, n, loop=run_search)
        sl.update_jobs(sweep, study, new, command)
        return new


def _progress_line(sweep: SearchSweep, study: optuna.Study, left: dict[str, int]) -> str:
    states = [t.state.name.lower() for t in counted_trials(study) if t.state.is_finished()]
    done = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "none finished"
    final = "final step pending" if left["final"] else "final step done"
    return (
        f"search {sweep.name}: {len(states)}/{sweep.settings.n_trials} trials finished ({done}); "
        f"{left['to_start']} to start, {left['running']} running; {final}"
    )
