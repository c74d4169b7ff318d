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

from gemkr_lab.config.experiment import ConfigError, load_experiment
from gemkr_lab.run.cell import read_manifest, run_dir
from gemkr_lab.sweep import study as study_mod


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
    """Read and validate a sweep file (every cell composes before anything runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    allowed = {"name", "root", "cells", "seeds", "overrides", "reference", "paper"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a grid sweep has {sorted(allowed)}")
    missing = {"name", "cells", "seeds"} - set(raw)
    if missing:
        raise ConfigError(f"{path}: missing {sorted(missing)}")
    sweep = GridSweep(
        name=str(raw["name"]),
        root=str(raw.get("root", f"runs/{raw['name']}")),
        cells=tuple(raw["cells"]),
        seeds=tuple(int(s) for s in raw["seeds"]),
        overrides=tuple(raw.get("overrides") or ()),
        reference=raw.get("reference"),
        paper=raw.get("paper") or {},
    )
    for cell in sweep.cells:
        load_experiment(cell, sweep.overrides)  # fail before starting anything
    if sweep.reference is not None and sweep.reference not in sweep.cells:
        raise ConfigError(f"{path}: reference {sweep.reference!r} is not one of the cells")
    return sweep


def pending(sweep: GridSweep) -> list[tuple[str, int]]:
    """(cell, seed) pairs without a complete run."""
    out = []
    for cell in sweep.cells:
        for seed in sweep.seeds:
            manifest = read_manifest(run_dir(sweep.root, cell, seed))
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
    store = study_mod.open_storage(storage, Path(sweep.root))
    study = study_mod.grid_study(sweep.name, store, sweep.cells, sweep.seeds, sweep.overrides, new_study)
    study_mod.requeue_stale(study, store, retries)
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
                status, value = _run_process(sweep, cell, seed, groups[slot])
            study_mod.finish(study, store, trial, status == "complete", value, status, retries)
            outcome.append((cell, seed, status))
            bar.update(1)

    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(worker, range(max(1, workers))))
    failed = [o for o in outcome if o[2] != "complete" and (o[0], o[1]) in set(pending(sweep))]
    return {"ran": len(outcome), "complete": sum(o[2] == "complete" for o in outcome), "failed": failed}


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


def _run_process(sweep: GridSweep, cell: str, seed: int, gpus: str | None) -> tuple[str, float | None]:
    """One grid run; returns its status and objective (R@5)."""
    out = run_dir(sweep.root, cell, seed)
    code = launch(cell, sweep.overrides, seed, sweep.root, out, gpus)
    manifest = read_manifest(out) or {}
    if code == 0 and manifest.get("status") == "complete":
        means = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]
        return "complete", means.get("R@5")
    return f"failed (exit {code}): {manifest.get('error', 'see log.txt')}", None
