"""Ablation grids: cells x seeds, each run exactly once, in fresh processes, resumable.

A sweep file (`sweeps/*.yaml`):

    name: demo
    root: runs/demo                  # run directories go here
    cells: [tiny-cpu/full, tiny-cpu/text-only]
    seeds: [0, 1]
    overrides: [train.max_steps=300] # applied to every cell
    reference: tiny-cpu/full         # the row deltas and significance are computed against

Coordination goes through an Optuna storage (`gemkr_lab.sweep.study`): each (cell, seed) is one queued trial,
claimed atomically, so two sweep commands (or machines) at once never run a cell twice. Running the same
command again re-queues the runs of dead workers and resumes incomplete run directories.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from optuna.trial import TrialState
from tqdm.auto import tqdm

from gemkr_lab.config.experiment import ConfigError, ExperimentConfig, load_experiment
from gemkr_lab.run.cell import read_manifest, run_dir, run_fingerprint, with_seed
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.variants import prepared_overrides


@dataclass(frozen=True)
class GridSweep:
    """An ablation grid read from a sweep file."""

    name: str
    root: str
    cells: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    reference: str | None = None
    paper: dict = field(default_factory=dict)
    """Published numbers per cell and metric, with the tolerance of the reproduction status."""


def load_sweep(path: str | Path) -> GridSweep:
    """Read and validate a sweep file (every cell composes before anything runs).

    Refused, naming the line: unknown keys, duplicate cells or seeds, seeds that are not integers >= 0,
    unknown presets, and a reference that is not one of the cells.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (name, cells, seeds, ...)")
    lines = _item_lines(node)
    allowed = {"name", "root", "cells", "seeds", "overrides", "reference", "paper"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a grid sweep has {sorted(allowed)}")
    missing = {"name", "cells", "seeds"} - set(raw)
    if missing:
        raise ConfigError(f"{path}: missing {sorted(missing)}")
    for key in ("cells", "seeds", "overrides"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], list):
            raise ConfigError(f"{path}:{lines.get(key, [0])[0]}: {key} must be a list")
    for i, seed in enumerate(raw["seeds"]):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{path}:{lines['seeds'][i]}: seed {seed!r} is not an integer >= 0")
    for key in ("cells", "seeds"):
        seen: dict = {}
        for i, item in enumerate(raw[key]):
            if item in seen:
                raise ConfigError(
                    f"{path}:{lines[key][i]}: {key[:-1]} {item!r} is listed twice (first on line {seen[item]}); "
                    "each would count as a separate run"
                )
            seen[item] = lines[key][i]
    sweep = GridSweep(
        name=str(raw["name"]),
        root=str(raw.get("root", f"runs/{raw['name']}")),
        cells=tuple(str(c) for c in raw["cells"]),
        seeds=tuple(raw["seeds"]),
        overrides=tuple(str(o) for o in raw.get("overrides") or ()),
        reference=raw.get("reference"),
        paper=raw.get("paper") or {},
    )
    for i, cell in enumerate(sweep.cells):
        try:
            load_experiment(cell, sweep.overrides)  # fail before starting anything
        except ConfigError as exc:
            raise ConfigError(f"{path}:{lines['cells'][i]}: cell {cell!r}: {exc}") from exc
    if sweep.reference is not None and sweep.reference not in sweep.cells:
        raise ConfigError(
            f"{path}:{lines.get('reference', [0])[0]}: reference {sweep.reference!r} is not one of the cells"
        )
    return sweep


def _item_lines(node) -> dict[str, list[int]]:
    """Top-level key -> the 1-based lines of its list items (or of the key itself when not a list)."""
    out: dict[str, list[int]] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(value, yaml.SequenceNode):
                out[key.value] = [item.start_mark.line + 1 for item in value.value]
            else:
                out[key.value] = [key.start_mark.line + 1]
    return out


def cell_run(sweep: GridSweep, cell: str, seed: int, prepare: bool = False) -> tuple[ExperimentConfig, list[str]]:
    """The resolved config of one (cell, seed) of the sweep and the overrides that make it.

    The overrides are the sweep's, plus `prepared=...` when the cell needs its own prepared-data variant
    (prepared here first when `prepare`).
    """
    overrides = [*sweep.overrides, *prepared_overrides(load_experiment(cell, sweep.overrides), sweep.root, prepare)]
    return with_seed(load_experiment(cell, overrides), seed), overrides


def current_run(sweep: GridSweep, cell: str, seed: int) -> Path | None:
    """The run directory of the sweep's current config for (cell, seed); None while its data is unprepared."""
    from gemkr_lab.data.queries import DataError

    try:
        return run_dir(sweep.root, cell_run(sweep, cell, seed)[0])
    except DataError:
        return None


def pending(sweep: GridSweep) -> list[tuple[str, int]]:
    """(cell, seed) pairs without a complete run of their current config."""
    out = []
    for cell in sweep.cells:
        for seed in sweep.seeds:
            run = current_run(sweep, cell, seed)
            manifest = read_manifest(run) if run is not None else None
            if not manifest or manifest.get("status") != "complete":
                out.append((cell, seed))
    return out


def run_sweep(
    sweep: GridSweep,
    workers: int = 1,
    retries: int = 1,
    storage: str | None = None,
    new_study: bool = False,
    gpus_per_trial: int = 0,
    progress: bool | None = None,
) -> dict:
    """Run every queued (cell, seed) of the sweep's study, each in a fresh process, `workers` at a time.

    Args:
        sweep: the grid.
        workers: concurrent runs; with `gpus_per_trial`, each worker owns its own group of GPUs.
        retries: how often a failed run (exception, out of memory, killed worker) is queued again.
        storage: an Optuna RDB URL (PostgreSQL for several machines); default: a journal file under the root.
        new_study: start over when the sweep file changed since its study was made.
        gpus_per_trial: GPUs per run, pinned through CUDA_VISIBLE_DEVICES.
        progress: progress bar (default: only on a terminal).
    """
    store = study_mod.open_storage(storage, Path(sweep.root))  # an unreachable storage stops us before any work
    plan = {}  # each distinct data variant is prepared once, before any cell runs
    for cell in sweep.cells:
        for seed in sweep.seeds:
            config, overrides = cell_run(sweep, cell, seed, prepare=True)
            plan[cell, seed] = (overrides, run_fingerprint(config))
    study = study_mod.grid_study(sweep.name, store, sweep.cells, sweep.seeds, sweep.overrides, new_study)
    study_mod.requeue_stale(study, store, retries)
    _queue_changed_configs(study, store, plan)
    groups = _gpu_groups(workers, gpus_per_trial)
    todo = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    bar = tqdm(total=todo, desc=f"sweep {sweep.name}", disable=None if progress is None else not progress)
    outcome: list[tuple[str, int, str]] = []

    def worker(slot: int) -> None:
        while True:
            trial = study_mod.claim(study, store)
            if trial is None:
                return
            cell, seed = trial.user_attrs["cell"], int(trial.user_attrs["seed"])
            with study_mod.Heartbeat(store, trial._trial_id):
                status, value = _run_process(sweep, cell, seed, plan[cell, seed][0], groups[slot])
            study_mod.finish(study, store, trial, status == "complete", value, status, retries)
            outcome.append((cell, seed, status))
            bar.update(1)

    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(worker, range(max(1, workers))))
    failed = [o for o in outcome if o[2] != "complete" and (o[0], o[1]) in set(pending(sweep))]
    return {"ran": len(outcome), "complete": sum(o[2] == "complete" for o in outcome), "failed": failed}


def _queue_changed_configs(study, store, plan: dict) -> None:
    """Tie each queued trial to the run fingerprint it stands for; queue pairs whose config changed.

    A (cell, seed) whose current config has no trial yet (a preset or its prepared data changed since the
    study was made) gets one, so that a changed config is run again, never answered with the old metrics.
    """
    trials = study.get_trials(deepcopy=False)
    for (cell, seed), (_, fingerprint) in plan.items():
        mine = [t for t in trials if t.user_attrs.get("cell") == cell and int(t.user_attrs.get("seed", -1)) == seed]
        if any(t.user_attrs.get("run") == fingerprint for t in mine):
            continue
        fresh = [t for t in mine if t.state == TrialState.WAITING and "run" not in t.user_attrs]
        if fresh:
            store.set_trial_user_attr(fresh[0]._trial_id, "run", fingerprint)
        else:
            study.enqueue_trial({}, user_attrs={"cell": cell, "seed": seed, "attempt": 1, "run": fingerprint})


def _gpu_groups(workers: int, gpus_per_trial: int) -> list[str | None]:
    if gpus_per_trial <= 0:
        return [None] * max(1, workers)
    import torch

    n = torch.cuda.device_count()
    if n < workers * gpus_per_trial:
        raise ConfigError(
            f"{workers} workers x {gpus_per_trial} GPUs need {workers * gpus_per_trial} GPUs; {n} visible"
        )
    return [",".join(str(g) for g in range(w * gpus_per_trial, (w + 1) * gpus_per_trial)) for w in range(workers)]


def launch(
    experiment: str, overrides, seed: int, root: str, out: Path, gpus: str | None, env: dict | None = None
) -> int:
    """Run one cell in a fresh `gemkr-lab run-cell` process logging to `out/log.txt`; returns its exit code."""
    out.mkdir(parents=True, exist_ok=True)
    # the overrides go before the options: argparse takes no positionals after them
    cmd = [
        sys.executable,
        "-m",
        "gemkr_lab.cli",
        "run-cell",
        experiment,
        *overrides,
        "--seed",
        str(seed),
        "--root",
        root,
    ]
    full_env = dict(os.environ, **(env or {}))
    if gpus is not None:
        full_env["CUDA_VISIBLE_DEVICES"] = gpus
    with open(out / "log.txt", "a", encoding="utf-8") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, check=False).returncode


def _run_process(
    sweep: GridSweep, cell: str, seed: int, overrides: list[str], gpus: str | None
) -> tuple[str, float | None]:
    """One grid run; returns its status and objective (R@5)."""
    out = run_dir(sweep.root, with_seed(load_experiment(cell, overrides), seed))
    code = launch(cell, overrides, seed, sweep.root, out, gpus)
    manifest = read_manifest(out) or {}
    if code == 0 and manifest.get("status") == "complete":
        means = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]
        return "complete", means.get("R@5")
    return f"failed (exit {code}): {manifest.get('error', 'see log.txt')}", None
