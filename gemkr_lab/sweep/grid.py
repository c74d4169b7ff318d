"""Ablation grids: cells x seeds, each run exactly once, in fresh processes, resumable.

A sweep file (`sweeps/*.yaml`):

    name: demo
    root: runs/demo                  # run directories go here
    cells: [tiny-cpu/full, tiny-cpu/text-only]
    seeds: [0, 1]
    overrides: [train.max_steps=300] # applied to every cell
    reference: tiny-cpu/full         # the row deltas and significance are computed against
    launcher:                        # optional: run the workers as Slurm jobs (gemkr_lab.sweep.slurm)
      name: slurm                    # local (the default) | slurm; --launcher overrides
      partition: gpu
      time: "4:00:00"                # per worker job; minutes or [D-]HH:MM:SS
      gpus_per_trial: 1
      cpus_per_trial: 8
      mem: 64G
      max_jobs: 8                    # worker jobs at once
      slurm_args: {account: lab}     # any other sbatch options

Coordination goes through an Optuna storage (`gemkr_lab.sweep.study`): each (cell, seed) is one queued trial,
claimed atomically, so two sweep commands (or machines) at once never run a cell twice. Running the same
command again re-queues the runs of dead workers and resumes incomplete run directories.

Exactly once under faults: the process that trains holds its run directory's lock (`run.lock`) and ends when
its launcher dies (`exit_with_launcher`); a run whose lock is held is never launched again (the worker waits),
nor its trial judged dead. Every worker, at start and before it leaves, re-queues dead workers' trials and
queues each (cell, seed) left without a complete run or a queued/running trial; it leaves only when no trial
is queued or running. A (cell, seed) whose retries are exhausted is not queued again: it is listed per cell in
the result and in `<root>/failed.json` (shown by the report), and `retry_failed` queues it again.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gemkr_lab.config.experiment import ConfigError, ExperimentConfig, load_experiment, read_yaml_file
from gemkr_lab.io import lock_holder, write_json
from gemkr_lab.run.cell import RUN_LOCK, read_manifest, run_dir, seed_dir, with_seed
from gemkr_lab.sweep.launcher import launcher_section
from gemkr_lab.sweep.names import check_sweep_name

# Optuna, tqdm and the data preparation (numba) load inside the functions that run a grid: reading and
# checking a sweep file, and `exit_with_launcher`, stay light so that bad input is answered at once (#25).


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
    launcher: str = "local"
    """How workers are started: local (processes of the sweep command) or slurm (worker jobs)."""
    slurm: dict = field(default_factory=dict)
    """The `launcher:` section's Slurm settings, checked (`gemkr_lab.sweep.slurm.SlurmOptions` fields)."""


def load_sweep(path: str | Path) -> GridSweep:
    """Read and validate a sweep file (every cell composes before anything runs).

    Refused, naming the line: unknown keys, duplicate cells or seeds, seeds that are not integers >= 0,
    unknown presets, a reference that is not one of the cells, and a bad `launcher:` section
    (`gemkr_lab.sweep.slurm.launcher_section`).
    """
    path = Path(path)
    raw, node = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (name, cells, seeds, ...)")
    lines = _item_lines(node)
    allowed = {"name", "root", "cells", "seeds", "overrides", "reference", "paper", "launcher"}
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
    check_sweep_name(raw["name"], f"{path}:{lines.get('name', [0])[0]}")
    launcher, slurm = "local", {}
    if "launcher" in raw:
        launcher, slurm = launcher_section(raw["launcher"], path, node)
    sweep = GridSweep(
        name=str(raw["name"]),
        root=str(raw.get("root", f"runs/{raw['name']}")),
        cells=tuple(str(c) for c in raw["cells"]),
        seeds=tuple(raw["seeds"]),
        overrides=tuple(str(o) for o in raw.get("overrides") or ()),
        reference=raw.get("reference"),
        paper=raw.get("paper") or {},
        launcher=launcher,
        slurm=slurm,
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
    from gemkr_lab.sweep.variants import prepared_overrides

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


POLL_SECONDS = 3.0
"""How often an idle worker looks again for trials to claim, dead workers' trials and released run locks."""
FAILED = "failed.json"
"""Under the sweep root: the (cell, seed) pairs whose retries are exhausted, per cell (written by `run_sweep`)."""


def open_grid(sweep: GridSweep, storage: str | None, new_study: bool, retries: int, retry_failed: bool = False):
    """The sweep's storage, plan, study and queue, its data variants prepared and its queue reconciled.

    Returns (store, plan, study, queue); plan: (cell, seed) -> (overrides, run directory).
    """
    from gemkr_lab.sweep import study as study_mod

    root = Path(sweep.root)
    store = study_mod.open_storage(storage, root)  # an unreachable storage stops us before any work
    plan = {}  # each distinct data variant is prepared once, before any cell runs
    for cell in sweep.cells:
        for seed in sweep.seeds:
            config, overrides = cell_run(sweep, cell, seed, prepare=True)
            plan[cell, seed] = (overrides, run_dir(sweep.root, config))
    with study_mod.queue_lock(root):
        study = study_mod.grid_study(sweep.name, store, sweep.cells, sweep.seeds, sweep.overrides, new_study)
    queue = _Queue(sweep, study, store, plan, retries)
    queue.reconcile(retry_failed=retry_failed)
    return store, plan, study, queue


STOPPED = "released: its worker was stopped (Slurm job cancelled, preempted or at its time limit)"
"""The error of a trial given back to the queue by a stopped worker (`stop`), without counting an attempt."""


class _Either:
    """Set when either event is set (the run's lost claim, or its worker's stop)."""

    def __init__(self, *events) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def run_sweep(
    sweep: GridSweep,
    workers: int = 1,
    retries: int = 1,
    storage: str | None = None,
    new_study: bool = False,
    gpus_per_trial: int = 0,
    progress: bool | None = None,
    retry_failed: bool = False,
    stop: threading.Event | None = None,
    linger: bool = True,
    claim_attrs: dict | None = None,
) -> dict:
    """Run every queued (cell, seed) of the sweep's study, each in a fresh process, `workers` at a time.

    Returns when no trial is queued or running (also not in other commands: dead workers' trials are re-queued
    once stale, and run), so that a (cell, seed) is either complete or failed for good. This is also the loop
    of a Slurm worker job (`gemkr_lab.sweep.slurm`), with `stop`, `linger=False` and its job in `claim_attrs`.

    Args:
        sweep: the grid.
        workers: concurrent runs; with `gpus_per_trial`, each worker owns its own group of GPUs.
        retries: how often a failed run (exception, out of memory, killed worker) is queued again.
        storage: an Optuna RDB URL (PostgreSQL for several machines); default: a journal file under the root.
        new_study: start over when the sweep file changed since its study was made.
        gpus_per_trial: GPUs per run, pinned through CUDA_VISIBLE_DEVICES.
        progress: progress bar (default: only on a terminal).
        retry_failed: queue again the (cell, seed) pairs whose retries were exhausted, with a fresh count.
        stop: when set, no more trials are claimed and the running ones are stopped (their trainer checkpoints
            at its next step and ends) and given back to the queue without counting an attempt.
        linger: wait for other workers' running trials (to run them if their worker dies); False: leave as soon
            as no trial is queued (a Slurm job does not hold its allocation idle; the sweep command re-queues a
            lost job's trial and submits workers for it).
        claim_attrs: written into each trial this command claims (e.g. its Slurm job).

    Returns:
        ran / complete: trials this command ran and completed; failed: (cell, seed, status) of its runs that
        failed and are still not complete; failed_for_good: cell -> [{seed, attempts, error}] of pairs whose
        retries are exhausted (also written to `<root>/failed.json`); grid_complete / grid_total: pairs.
    """
    from optuna.trial import TrialState

    from gemkr_lab.progress import tqdm
    from gemkr_lab.sweep import study as study_mod

    root = Path(sweep.root)
    store, plan, study, queue = open_grid(sweep, storage, new_study, retries, retry_failed)
    groups = _gpu_groups(workers, gpus_per_trial)
    todo = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    bar = tqdm(total=todo, desc=f"sweep {sweep.name}", disable=None if progress is None else not progress)
    outcome: list[tuple[str, int, str]] = []

    def worker(slot: int) -> None:
        while stop is None or not stop.is_set():
            trial = study_mod.claim(study, store, claim_attrs)
            if trial is None:
                if queue.reconcile():  # dead workers' trials re-queued, forgotten pairs queued
                    continue
                busy = (TrialState.RUNNING, TrialState.WAITING) if linger else (TrialState.WAITING,)
                if not study.get_trials(deepcopy=False, states=busy):
                    return
                time.sleep(POLL_SECONDS)  # runs of other workers: wait for them (or for them to go stale)
                continue
            cell, seed = trial.user_attrs["cell"], int(trial.user_attrs["seed"])
            overrides, out = plan[cell, seed]
            lost = threading.Event()
            with study_mod.Heartbeat(store, trial._trial_id, on_lost=lost.set) as beat:
                status, value, bad_input = _run_process(
                    cell, seed, overrides, sweep.root, out, groups[slot], _Either(lost, stop)
                )
            if beat.lost.is_set():  # judged dead and re-queued by another command: its run was stopped
                outcome.append((cell, seed, "stopped: another worker took over its trial"))
                continue
            if stop is not None and stop.is_set() and status != "complete":  # stopped from outside: give it back
                with study_mod.queue_lock(root):
                    study_mod.release(study, store, trial, STOPPED)
                outcome.append((cell, seed, "released: its worker was stopped"))
                return
            with study_mod.queue_lock(root):  # a failure and its retry are one step for every other command
                study_mod.finish(study, store, trial, status == "complete", value, status, retries, bad_input)
            outcome.append((cell, seed, status))
            bar.update(1)

    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(worker, range(max(1, workers))))
    queue.reconcile()  # before leaving: nothing forgotten
    left = set(pending(sweep))
    failed = [o for o in outcome if o[2] != "complete" and (o[0], o[1]) in left]
    given_up = write_failed(sweep, queue.exhausted)
    return {
        "ran": len(outcome),
        "complete": sum(o[2] == "complete" for o in outcome),
        "failed": failed,
        "failed_for_good": given_up,
        "grid_complete": len(plan) - len(left),
        "grid_total": len(plan),
    }


class _Queue:
    """The queue upkeep every worker does at start, when idle and before leaving (under the root's queue lock)."""

    def __init__(self, sweep: GridSweep, study, store, plan: dict, retries: int) -> None:
        self.sweep, self.study, self.store, self.plan, self.retries = sweep, study, store, plan, retries
        self.exhausted: dict = {}

    def busy(self, attrs: dict) -> bool:
        """Whether a trainer holds the run lock of this trial's run (alive, whatever its heartbeat says)."""
        if "cell" not in attrs or "run" not in attrs:
            return False
        cell, seed = str(attrs["cell"]), int(attrs.get("seed", -1))
        planned = self.plan.get((cell, seed))
        seeds = planned[1].parent if planned is not None else seed_dir(self.sweep.root, cell, seed)
        return lock_holder(seeds / str(attrs["run"]) / RUN_LOCK) is not None

    def reconcile(self, retry_failed: bool = False) -> int:
        """Re-queue dead workers' trials, tie fresh trials to their run, queue forgotten pairs; how many queued."""
        from gemkr_lab.sweep import study as study_mod

        with study_mod.queue_lock(self.sweep.root):
            n = study_mod.requeue_stale(self.study, self.store, self.retries, busy=self.busy)
            _tag_fresh_trials(self.study, self.store, self.plan)
            done = {pair for pair, (_, out) in self.plan.items() if _complete(out)}
            runs = {pair: out.name for pair, (_, out) in self.plan.items()}
            queued, self.exhausted = study_mod.queue_missing(self.study, runs, done, self.retries, retry_failed)
        return n + len(queued)


def _complete(out: Path) -> bool:
    return (read_manifest(out) or {}).get("status") == "complete"


def _tag_fresh_trials(study, store, plan: dict) -> None:
    """Tie each queued trial without a run to the run fingerprint of its (cell, seed)'s current config.

    A (cell, seed) whose current config has no trial (a preset or its prepared data changed since the study was
    made) is queued by `queue_missing`, so that a changed config is run again, never answered with old metrics.
    """
    from optuna.trial import TrialState

    from gemkr_lab.sweep import study as study_mod

    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        planned = plan.get((t.user_attrs.get("cell"), int(t.user_attrs.get("seed", -1))))
        if planned is not None and "run" not in t.user_attrs:
            study_mod.retrying(store.set_trial_user_attr, t._trial_id, "run", planned[1].name)


def write_failed(sweep: GridSweep, exhausted: dict) -> dict[str, list[dict]]:
    """Write `<root>/failed.json`: per cell, the seeds whose retries are exhausted; returns that mapping."""
    given_up: dict[str, list[dict]] = {}
    for (cell, seed), trial in sorted(exhausted.items()):
        error = trial.user_attrs.get("error", "failed")
        given_up.setdefault(cell, []).append(
            {"seed": seed, "attempts": int(trial.user_attrs.get("attempt", 1)), "error": error}
        )
    Path(sweep.root).mkdir(parents=True, exist_ok=True)
    write_json(Path(sweep.root) / FAILED, {"format": 1, "sweep": sweep.name, "failed": given_up})
    return given_up


def failed_for_good(sweep: GridSweep) -> dict[str, list[dict]]:
    """The (cell, seed) pairs of `<root>/failed.json` that are still not complete, per cell ({} when none)."""
    path = Path(sweep.root) / FAILED
    try:
        given_up = json.loads(path.read_text(encoding="utf-8")).get("failed", {})
    except (OSError, ValueError):
        return {}
    left = {}
    for cell, seeds in given_up.items():
        still = [s for s in seeds if cell in sweep.cells and not _complete_now(sweep, cell, int(s["seed"]))]
        if still:
            left[cell] = still
    return left


def _complete_now(sweep: GridSweep, cell: str, seed: int) -> bool:
    run = current_run(sweep, cell, seed)
    return run is not None and _complete(run)


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


LAUNCHER_ENV = "GEMKR_LAUNCHER_PID"
STOP_GRACE_SECONDS = 30.0
"""How long a stopped run is given to end on SIGTERM before it is killed."""


def launch(
    experiment: str,
    overrides,
    seed: int,
    root: str,
    out: Path,
    gpus: str | None,
    env: dict | None = None,
    stop: threading.Event | _Either | None = None,
) -> int:
    """Run one cell in a fresh `gemkr-lab run-cell` process logging to `out/log.txt`; returns its exit code.

    The process ends when this one dies (`exit_with_launcher`), and is stopped (SIGTERM, then SIGKILL after
    `STOP_GRACE_SECONDS`) when `stop` is set.
    """
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
    full_env[LAUNCHER_ENV] = str(os.getpid())
    if gpus is not None:
        full_env["CUDA_VISIBLE_DEVICES"] = gpus
    with open(out / "log.txt", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        try:
            while True:
                try:
                    return proc.wait(timeout=None if stop is None else 0.5)
                except subprocess.TimeoutExpired:
                    if stop is not None and stop.is_set():
                        _end(proc)
        except BaseException:
            _end(proc)
            raise


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exit_with_launcher() -> None:
    """In a process a sweep launched: end (SIGTERM) as soon as the launcher dies, even by SIGKILL.

    So a run never trains on unobserved beside the one a restarted sweep would start. Linux: the kernel sends
    the signal (prctl PR_SET_PDEATHSIG); elsewhere a watchdog thread polls the parent. Lightning turns the
    SIGTERM into a stop at the next step (the run is marked failed, and resumed later). This process's own
    children (DDP ranks) follow it in turn.
    """
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if not launcher.isdigit():
        return
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != int(launcher):  # it died before the signal was armed
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == int(launcher):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()


def _run_process(
    cell: str,
    seed: int,
    overrides: list[str],
    root: str,
    out: Path,
    gpus: str | None,
    stop: threading.Event | _Either,
) -> tuple[str, float | None, bool]:
    """One grid run; returns its status, objective (R@5) and whether it failed on bad input (not retried).

    Never a second trainer: while another process holds the run's lock (a trainer of a killed sweep, a manual
    `train`), the worker waits for it (heartbeat going) and launches only then (the run is then complete or
    resumed).
    """
    while True:
        while lock_holder(out / RUN_LOCK) is not None and not stop.is_set():
            time.sleep(POLL_SECONDS)
        if stop.is_set():
            return "stopped: its claim was lost", None, False
        code = launch(cell, overrides, seed, root, out, gpus, stop=stop)
        manifest = read_manifest(out) or {}
        if code == 0 and manifest.get("status") == "complete":
            means = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]
            return "complete", means.get("R@5"), False
        if code != 0 and not stop.is_set() and lock_holder(out / RUN_LOCK) is not None:
            continue  # another trainer took the lock first: wait for it, then launch again
        error = manifest.get("error") or _last_line(out / "log.txt") or "see log.txt"
        if code == INPUT_ERROR_EXIT:
            return f"failed on bad input, not retried (exit {code}): {error}", None, True
        return f"failed (exit {code}): {error}", None, False


INPUT_ERROR_EXIT = 2
"""A run's exit status for bad input (`gemkr_lab.cli.USER_ERROR`: config, data, damaged or mismatched files),
which fails the same way every time; other failures (a crash, a signal, out of memory, an OS error, exit 75) may
pass on a retry."""


def _last_line(log: Path) -> str | None:
    """The last line of a run's log: its one-line error where it failed before its manifest was written."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1].removeprefix("gemkr-lab: error: ") if lines else None
