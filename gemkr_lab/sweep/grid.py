"""Ablation grids: cells x seeds, each run exactly once, in fresh processes, resumable.

A sweep file (`sweeps/*.yaml`):

    name: demo
    root: runs/demo                  # run directories go here
    cells: [tiny-cpu/full, tiny-cpu/text-only]
    seeds: [0, 1]
    overrides: [train.max_steps=300] # applied to every cell
    reference: tiny-cpu/full         # the row deltas and significance are computed against

Running the same command again skips complete runs and resumes incomplete ones. A lock file per run
directory (created exclusively) keeps two sweep commands started at once from running a cell twice; a lock
whose process is gone is taken over.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from gemkr_lab.config.experiment import ConfigError, load_experiment
from gemkr_lab.run.cell import read_manifest, run_dir


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


def run_sweep(sweep: GridSweep, workers: int = 1, retries: int = 1, progress: bool | None = None) -> dict:
    """Run every pending (cell, seed), each in a fresh process, `workers` at a time; failures are retried."""
    todo = pending(sweep)
    done, failed = [], []
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", disable=None if progress is None else not progress)

    def one(item: tuple[str, int]) -> None:
        cell, seed = item
        for _ in range(retries + 1):
            status = _run_locked(sweep, cell, seed)
            if status in ("complete", "busy"):
                break
        (done if status in ("complete", "busy") else failed).append((cell, seed, status))
        bar.update(1)

    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, todo))
    return {"ran": len(todo), "complete": len(done), "failed": failed}


def _run_locked(sweep: GridSweep, cell: str, seed: int) -> str:
    out = run_dir(sweep.root, cell, seed)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / "run.lock"
    if not _acquire(lock):
        return "busy"  # another sweep command runs it
    try:
        manifest = read_manifest(out)
        if manifest and manifest.get("status") == "complete":
            return "complete"
        cmd = [
            sys.executable,
            "-m",
            "gemkr_lab.cli",
            "run-cell",
            cell,
            *sweep.overrides,  # before the options: argparse takes no positionals after them
            "--seed",
            str(seed),
            "--root",
            sweep.root,
        ]
        log = open(out / "log.txt", "a", encoding="utf-8")  # noqa: SIM115 - the child writes to it
        with log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        manifest = read_manifest(out) or {}
        return "complete" if code == 0 and manifest.get("status") == "complete" else f"failed (exit {code})"
    finally:
        lock.unlink(missing_ok=True)


def _acquire(lock: Path) -> bool:
    """Create the lock exclusively; take it over if the process that held it is gone."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = json.loads(lock.read_text()).get("pid")
            except (OSError, ValueError):
                pid = None
            if pid and _alive(pid):
                return False
            lock.unlink(missing_ok=True)  # a dead worker's lock
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "since": time.time()}, fh)
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
