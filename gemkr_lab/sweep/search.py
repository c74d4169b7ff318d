"""Optuna search sweeps: a space over config keys, an objective, a sampler and a pruner.

    name: lr-search
    root: runs/lr-search
    base: tiny-cpu/full
    seed: 0
    overrides: [train.max_steps=300]
    search:
      space:
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        model.attention_flow: {type: categorical, choices: [dual, joint]}
      objective: R@5
      direction: maximize
      n_trials: 8
      sampler: tpe        # tpe | random
      pruner: median      # median | none

Trials run like grid cells (a fresh process each, in the same storage, the same run directories keyed by
trial number). Pruning: the training process reports the negated training loss of every epoch to its trial
through a Lightning callback and stops when the pruner says so (there is no validation loop to monitor,
which optuna-integration's callback needs).
"""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import yaml
from optuna.trial import TrialState

from gemkr_lab.config.experiment import ConfigError, load_experiment
from gemkr_lab.run.cell import read_manifest, run_dir, with_seed
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.variants import prepared_overrides

PRUNED_EXIT = 3
_ENV = ("GEMKR_OPTUNA_STORAGE", "GEMKR_OPTUNA_STUDY", "GEMKR_OPTUNA_TRIAL")


@dataclass(frozen=True)
class SearchSweep:
    """An Optuna search read from a sweep file."""

    name: str
    root: str
    base: str
    seed: int
    space: dict[str, dict[str, Any]]
    objective: str = "R@5"
    direction: str = "maximize"
    n_trials: int = 10
    sampler: str = "tpe"
    pruner: str = "median"
    overrides: tuple[str, ...] = field(default_factory=tuple)


def load_search(raw: dict, path: Path) -> SearchSweep:
    """Validate a search sweep (space, objective, sampler, pruner); every error names the file."""
    search = raw.get("search") or {}
    unknown = set(search) - {"space", "objective", "direction", "n_trials", "sampler", "pruner"}
    if unknown:
        raise ConfigError(f"{path}: unknown search keys {sorted(unknown)}")
    sweep = SearchSweep(
        name=str(raw["name"]),
        root=str(raw.get("root", f"runs/{raw['name']}")),
        base=str(raw.get("base", "")),
        seed=int(raw.get("seed", 0)),
        space=search.get("space") or {},
        objective=search.get("objective", "R@5"),
        direction=search.get("direction", "maximize"),
        n_trials=int(search.get("n_trials", 10)),
        sampler=search.get("sampler", "tpe"),
        pruner=search.get("pruner", "median"),
        overrides=tuple(raw.get("overrides") or ()),
    )
    if not sweep.base:
        raise ConfigError(f"{path}: a search sweep needs `base:` (the experiment it searches around)")
    if not sweep.space:
        raise ConfigError(f"{path}: search.space is empty")
    if sweep.direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: search.direction must be maximize or minimize")
    if sweep.sampler not in ("tpe", "random") or sweep.pruner not in ("median", "none"):
        raise ConfigError(f"{path}: search.sampler is tpe|random and search.pruner is median|none")
    if sweep.objective not in {f"{m}@{k}" for m in ("P", "R", "Recall", "MRR") for k in (1, 5, 10)}:
        raise ConfigError(f"{path}: search.objective {sweep.objective!r} is not a reported metric (e.g. R@5)")
    distributions(sweep, path)  # validates every entry of the space
    return sweep


def distributions(sweep: SearchSweep, where: Path | str) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the space; each key must be a valid config path (checked by composing)."""
    out = {}
    for key, spec in sweep.space.items():
        kind = (spec or {}).get("type")
        try:
            if kind == "float":
                dist = optuna.distributions.FloatDistribution(
                    float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
                )
                sample = dist.low
            elif kind == "int":
                dist = optuna.distributions.IntDistribution(
                    int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
                )
                sample = dist.low
            elif kind == "categorical":
                choices = list(spec["choices"])
                if not choices:
                    raise ValueError("no choices")
                dist = optuna.distributions.CategoricalDistribution(choices)
                sample = choices[0]
            else:
                raise ValueError(f"type must be float, int or categorical, got {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: search.space[{key!r}] is invalid ({exc})") from exc
        load_experiment(sweep.base, [*sweep.overrides, f"{key}={json.dumps(sample)}"])  # a wrong key fails here
        out[key] = dist
    return out


def run_search(
    sweep: SearchSweep, workers: int = 1, storage: str | None = None, new_study: bool = False, gpus_per_trial: int = 0
) -> dict:
    """Run trials until `n_trials` exist (complete, pruned or failed), `workers` at a time."""
    from gemkr_lab.sweep.grid import _gpu_groups, launch

    store = study_mod.open_storage(storage, Path(sweep.root))
    fp = study_mod.fingerprint([sweep.base], [sweep.seed], [*sweep.overrides, json.dumps(sweep.space, sort_keys=True)])
    sampler = (
        optuna.samplers.TPESampler(seed=sweep.seed)
        if sweep.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=sweep.seed)
    )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if sweep.pruner == "median" else optuna.pruners.NopPruner()
    study = _search_study(sweep, store, fp, sampler, pruner, new_study)
    study_mod.requeue_stale(study, store, retries=0)
    dists = distributions(sweep, sweep.name)
    groups = _gpu_groups(workers, gpus_per_trial)
    lock = threading.Lock()
    url = storage or f"journal:{Path(sweep.root).resolve() / 'optuna-journal.log'}"

    def worker(slot: int) -> None:
        while True:
            with lock:
                started = len(
                    study.get_trials(
                        deepcopy=False,
                        states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING),
                    )
                )
                if started >= sweep.n_trials:
                    return
                trial = study.ask(dists)
            name = f"{sweep.base}@trial-{trial.number:04d}"
            overrides = [*sweep.overrides, *(f"{k}={json.dumps(v)}" for k, v in trial.params.items()), f"name={name}"]
            env = {
                "GEMKR_OPTUNA_STORAGE": url,
                "GEMKR_OPTUNA_STUDY": sweep.name,
                "GEMKR_OPTUNA_TRIAL": str(trial._trial_id),
            }
            overrides += prepared_overrides(load_experiment(sweep.base, overrides), sweep.root)
            out = run_dir(sweep.root, with_seed(load_experiment(sweep.base, overrides), sweep.seed))
            stop = threading.Event()
            with study_mod.Heartbeat(store, trial._trial_id, on_lost=stop.set) as beat:
                code = launch(sweep.base, overrides, sweep.seed, sweep.root, out, groups[slot], env, stop=stop)
            if beat.lost.is_set():  # judged dead by another command, which finished the trial: run stopped
                continue
            manifest = read_manifest(out) or {}
            try:
                if code == 0 and manifest.get("status") == "complete":
                    means = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]
                    study_mod.retrying(study.tell, trial, means[sweep.objective], skip_if_finished=True)
                elif code == PRUNED_EXIT:
                    study_mod.retrying(study.tell, trial, state=TrialState.PRUNED, skip_if_finished=True)
                else:
                    error = manifest.get("error", f"exit {code}")
                    study_mod.retrying(store.set_trial_user_attr, trial._trial_id, "error", error)
                    study_mod.retrying(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished by someone else meanwhile

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(worker, range(max(1, workers))))
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return {s: states.count(s) for s in sorted(set(states))} | {"best": _best(study)}


def _best(study: optuna.Study) -> dict | None:
    try:
        best = study.best_trial
    except ValueError:
        return None
    return {"number": best.number, "value": best.value, "params": best.params}


def _search_study(sweep, store, fp, sampler, pruner, new_study) -> optuna.Study:
    """Load or create the search's study; a study still being created by another command is waited for."""
    study = study_mod.settled_study(sweep.name, store, fp, sampler=sampler, pruner=pruner)
    if study is not None and study.user_attrs.get("fingerprint") != fp:
        if not new_study:
            raise ConfigError(f"the sweep file changed since study {sweep.name!r} was made; pass --new-study")
        optuna.delete_study(study_name=sweep.name, storage=store)
        study = None
    if study is None:
        try:
            study = optuna.create_study(
                study_name=sweep.name, storage=store, direction=sweep.direction, sampler=sampler, pruner=pruner
            )
        except optuna.exceptions.DuplicatedStudyError:  # another command created it a moment ago: wait for it
            return _search_study(sweep, store, fp, sampler, pruner, new_study=False)
        study.set_user_attr("fingerprint", fp)
    return study


class TrialReporter(L.Callback):
    """Reports each epoch's training loss (negated when maximising) to the trial; prunes when told to."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.trial = optuna.trial.Trial(study, trial_id)
        self.sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def on_train_epoch_end(self, trainer, module) -> None:
        """Report the epoch's loss; raise TrialPruned when the pruner stops the trial."""
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            return
        self.trial.report(self.sign * float(loss), step=trainer.current_epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {trainer.current_epoch}")


def reporter_from_env() -> TrialReporter | None:
    """The pruning callback of a trial process (set up by `run_search` through environment variables)."""
    if not all(os.environ.get(k) for k in _ENV):
        return None
    url = os.environ["GEMKR_OPTUNA_STORAGE"]
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage

        store = JournalStorage(study_mod.journal_file(url[len("journal:") :]))
    else:
        store = optuna.storages.RDBStorage(study_mod.storage_url(url))
    study = optuna.load_study(study_name=os.environ["GEMKR_OPTUNA_STUDY"], storage=store)
    return TrialReporter(study, int(os.environ["GEMKR_OPTUNA_TRIAL"]))


def is_search(path: str | Path) -> bool:
    """Whether a sweep file describes a search (it has `search:`) rather than a grid."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return "search" in raw
