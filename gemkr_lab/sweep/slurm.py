"""Grid sweeps on a Slurm cluster: worker jobs, submitted through submitit, pull trials from the sweep's storage.

`gemkr-lab sweep SWEEP.yaml --launcher slurm` (or `launcher: {name: slurm, ...}` in the sweep file) prepares the
data variants, creates or loads the sweep's study (`gemkr_lab.sweep.study`) and submits a job array of at most
`max_jobs` workers. Each worker job runs the local worker loop (`grid.run_sweep`, one worker): it claims a trial,
trains, decodes and scores it in a fresh `gemkr-lab run-cell` process, and so on until no trial is queued. The
storage must be reachable from the nodes: the journal file under the sweep root on a shared filesystem, or
PostgreSQL (its URL travels in the job's environment, never written to disk).

Exactly once, as for local workers: a claim is atomic, the trainer holds its run's lock, a job that is lost
(cancelled, preempted, timed out, its node failed) leaves a trial whose worker is gone; the next queue upkeep of
any worker or sweep command re-queues it (at once on the same host, once its heartbeat is stale elsewhere) and
the next attempt resumes from the run's last checkpoint.

Stops from outside: on SIGTERM (scancel, preemption, the time limit) the trainer checkpoints at its next optimizer
step and ends (`gemkr_lab.model.checkpoints.CheckpointOnStop`), and the worker gives its trial back to the queue
without counting an attempt and leaves. On submitit's requeue signal (USR2, `SIGNAL_DELAY_SECONDS` before the time
limit, or on preemption where Slurm sends it) the worker does the same and submitit requeues the job (same job id),
which comes back and pulls trials again. Why submitit's checkpointing hook rather than Lightning's SLURM
environment plugin: the signalled process is the worker, which owns the claim; Lightning's plugin lives in the
trainer (a child process of the worker, one of several trials a job runs), would requeue the whole job from
inside one trial without giving the claim back, writes its own `hpc_ckpt_*.ckpt` beside the run's atomic
checkpoints, and makes Lightning take the trainer for an srun task (ranks from SLURM_NTASKS) instead of
launching its own DDP ranks as a local run does. So trainers inside a job run as local processes
(SLURM_NTASKS is removed from their environment) and Lightning's SLURM plugin never engages.

Sweep commands: without `--wait` a command submits workers only for what is left (queued or running pairs minus
worker jobs pending or running; never more than `max_jobs` at once, also with several commands at once) and
returns; run again, it reports the state and submits the missing workers. With `--wait` it shows progress, and
every few seconds re-queues lost jobs' trials and submits workers for them, until the grid is complete. Job ids,
states, the trials each ran and their logs are kept in `<root>/slurm/jobs.json` (logs under `<root>/slurm/<job>/`),
named in the sweep's report.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import submitit
from optuna.trial import TrialState
from submitit.helpers import Checkpointable, DelayedSubmission

from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.io import lock, write_json
from gemkr_lab.sweep.grid import POLL_SECONDS, GridSweep, open_grid, pending, run_sweep, write_failed
from gemkr_lab.sweep.launcher import (  # re-exported: the launcher settings were defined here
    LAUNCHERS,
    SlurmOptions,
    launcher_section,
    parse_mem,
    parse_slurm_arg,
    parse_time,
    slurm_options,
)

JOBS_DIR = "slurm"
"""Under the sweep root: submitit's folder (one sub-folder of logs and pickles per job) and `jobs.json`."""
JOBS_FILE = "jobs.json"
STORAGE_ENV = "GEMKR_SWEEP_STORAGE"
"""The storage URL, handed to the worker jobs through their environment (a password never lands on disk)."""
SIGNAL_DELAY_SECONDS = 120
"""submitit's requeue signal (USR2) comes this long before the time limit: time to checkpoint and give back."""
STOP_WAIT_SECONDS = 90.0
"""How long the requeue hook waits for the running trial to checkpoint and be given back."""
MAX_REQUEUES = 100
"""How often a worker job may requeue itself at its time limit (each time it gives its trial back first)."""
WORKER_FAILURES = 3
"""`--wait` gives up after this many worker jobs of its own ended FAILED (not a trial's failure: the worker's)."""
ACTIVE_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "PREEMPTED",
    "RESV_DEL_HOLD",
}
# --- the worker job -------------------------------------------------------------------------------------------


class SlurmWorker(Checkpointable):
    """One worker job: the local worker loop (`run_sweep`, one worker) until no trial is queued.

    Pickled by submitit at submission; what it holds is plain data (the sweep, retries, the submitter's working
    directory) and, for other kinds of sweeps, the loop to run (a module-level function, pickled by name, e.g.
    `gemkr_lab.sweep.search.run_search`, called with the sweep and the keyword arguments `workers`, `storage`,
    `stop`, `linger` and `claim_attrs`). The storage URL comes from the job's environment (`STORAGE_ENV`).
    """

    def __init__(self, sweep, retries: int, cwd: str, loop=None) -> None:
        self.sweep, self.retries, self.cwd, self.loop = sweep, retries, cwd, loop

    def __call__(self, index: int = 0) -> dict:
        """Run trials until none is queued; returns `run_sweep`'s summary."""
        os.chdir(self.cwd)  # the sweep root and data paths are as the sweep command saw them
        for name in ("SLURM_NTASKS", "SLURM_NPROCS"):  # trainers are local processes, not srun tasks (see above)
            os.environ.pop(name, None)
        job = submitit.JobEnvironment().job_id
        self._stop = threading.Event()
        signal.signal(signal.SIGTERM, self._on_sigterm)  # submitit ignores SIGTERM; a stop gives the trial back
        result: dict = {}
        errors: list[BaseException] = []

        def body() -> None:
            common = {
                "workers": 1,
                "storage": os.environ.get(STORAGE_ENV) or None,
                "stop": self._stop,
                "linger": False,
                "claim_attrs": {"slurm_job": job, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")},
            }
            try:
                if self.loop is None:
                    result.update(run_sweep(self.sweep, retries=self.retries, progress=False, **common))
                else:
                    result.update(self.loop(self.sweep, **common))
            except BaseException as exc:  # raised again in the main thread, so that the job fails
                errors.append(exc)

        self._runner = threading.Thread(target=body, name="sweep-worker")
        self._runner.start()
        while self._runner.is_alive():
            self._runner.join(0.5)  # short waits: the main thread takes signals between them
        if errors:
            raise errors[0]
        print(f"worker {job}: {result}", flush=True)
        return result

    def _on_sigterm(self, signum, frame) -> None:
        print("SIGTERM: the running trial checkpoints and goes back to the queue; leaving", flush=True)
        self._stop.set()

    def checkpoint(self, *args, **kwargs):
        """The requeue hook of submitit: stop the running trial (checkpointed, given back), then requeue this job."""
        stop, runner = getattr(self, "_stop", None), getattr(self, "_runner", None)
        if stop is not None and runner is not None:
            print("requeue signal: the running trial checkpoints and goes back to the queue", flush=True)
            stop.set()
            runner.join(STOP_WAIT_SECONDS)
        return DelayedSubmission(SlurmWorker(self.sweep, self.retries, self.cwd, self.loop), *args, **kwargs)


# --- the ledger of worker jobs --------------------------------------------------------------------------------


def jobs_dir(root: str | Path) -> Path:
    """The sweep's submitit folder: `<root>/slurm`."""
    return Path(root) / JOBS_DIR


def read_jobs(root: str | Path) -> dict:
    """`<root>/slurm/jobs.json` ({} when the sweep never ran on Slurm)."""
    try:
        return json.loads((jobs_dir(root) / JOBS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def job_name(sweep: GridSweep) -> str:
    """The Slurm job name of the sweep's workers: its name and a hash of its root (unique per sweep)."""
    digest = hashlib.sha256(str(Path(sweep.root).resolve()).encode()).hexdigest()[:8]
    return f"gemkr-{re.sub(r'[^A-Za-z0-9_.-]', '_', sweep.name)[:40]}-{digest}"


class SlurmQueryError(ConfigError):
    """squeue kept failing (after `SQUEUE_TRIES` tries with backoff): Slurm is unreachable from here."""


SQUEUE_TRIES = 5
"""How often a failing or slow squeue is tried (waits 1, 2, 4, 8 s between): one slow answer is not an outage."""


def active_jobs(name: str, tries: int | None = None) -> dict[str, str]:
    """Job id -> state of the sweep's worker jobs that Slurm still holds (pending, running, requeued, ...).

    A failing or timed-out squeue is tried again with backoff (`SQUEUE_TRIES`); `SlurmQueryError` after that.
    """
    tries = SQUEUE_TRIES if tries is None else tries
    delay = 1.0
    for attempt in range(tries):
        try:
            out = subprocess.run(
                ["squeue", "--noheader", "--array", "--name", name, "--format", "%i %T"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            break
        except (OSError, subprocess.SubprocessError) as exc:
            if attempt + 1 >= tries:
                raise SlurmQueryError(
                    f"squeue failed {tries} times ({_why(exc)}); is Slurm reachable from here?"
                ) from None
            print(f"squeue failed ({_why(exc)}); trying again in {delay:.0f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay *= 2
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in ACTIVE_STATES:
            found[parts[0]] = parts[1]
    return found


def _why(exc: BaseException) -> str:
    text = getattr(exc, "stderr", None) or str(exc)
    return " ".join(str(text).split())[:300]


def _final_states(folder: Path, ids: list[str]) -> dict[str, str]:
    """Job id -> its state in Slurm's accounting (through submitit, which reads sacct); UNKNOWN when none."""
    if not ids:
        return {}
    jobs = [submitit.SlurmJob(folder=folder / "%j", job_id=i) for i in ids]
    jobs[0].get_info(mode="force")  # one sacct call for every registered job
    return {j.job_id: (j.watcher.get_state(j.job_id, mode="cache").split() or ["UNKNOWN"])[0] for j in jobs}


def _log_paths(folder: Path, job: str) -> dict[str, str]:
    return {
        "stdout": str(folder / job / f"{job}_0_log.out"),
        "stderr": str(folder / job / f"{job}_0_log.err"),
    }


@contextlib.contextmanager
def ledger_lock(sweep: GridSweep):
    """Serialises submissions and ledger writes of all sweep commands on this sweep."""
    folder = jobs_dir(sweep.root)
    folder.mkdir(parents=True, exist_ok=True)
    with lock(folder / ".submit.lock", wait=None):
        yield


def update_jobs(sweep: GridSweep, study, new: list[str] = (), command: str = "") -> dict:
    """Refresh `<root>/slurm/jobs.json`: every worker job of the sweep with its state, logs and trials run.

    Call it under `ledger_lock`: two commands writing at once would drop each other's new jobs.
    """
    folder = jobs_dir(sweep.root)
    ledger = read_jobs(sweep.root) or {"format": 1, "sweep": sweep.name, "jobs": []}
    known = {j["job"]: j for j in ledger["jobs"]}
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for job in new:
        known[job] = {"job": job, "submitted": now, "command": command, **_log_paths(folder, job)}
    active = active_jobs(job_name(sweep))
    ended = [j for j, rec in known.items() if j not in active and rec.get("state") not in _TERMINAL]
    final = _final_states(folder, ended)
    trials: dict[str, list[dict]] = {}
    for t in study.get_trials(deepcopy=False):
        job = t.user_attrs.get("slurm_job")
        if job:
            trials.setdefault(str(job), []).append(
                {
                    "trial": t.number,
                    "name": t.user_attrs.get("name"),
                    "cell": t.user_attrs.get("cell"),
                    "seed": t.user_attrs.get("seed"),
                    "attempt": t.user_attrs.get("attempt", 1),
                    "gpus": t.user_attrs.get("gpus", ""),
                    "state": t.state.name,
                    **({"error": t.user_attrs["error"]} if t.state == TrialState.FAIL else {}),
                }
            )
    for job, rec in known.items():
        if job in active:
            rec["state"] = active[job]
        elif job in final:
            rec["state"] = final[job] if final[job] != "UNKNOWN" else "ENDED"
        rec["trials"] = trials.get(job, [])
    ledger.update(sweep=sweep.name, folder=str(folder), job_name=job_name(sweep), jobs=list(known.values()))
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / JOBS_FILE, ledger)
    return ledger


_TERMINAL = {
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "ENDED",
}


# --- submitting and following --------------------------------------------------------------------------------


def check_slurm() -> None:
    missing = [c for c in ("sbatch", "srun", "squeue", "sacct") if shutil.which(c) is None]
    if missing:
        raise ConfigError(
            f"--launcher slurm needs Slurm's commands on PATH ({', '.join(missing)} not found): run the sweep "
            "command on a login node of the cluster, or use --launcher local"
        )


@contextlib.contextmanager
def _storage_in_environment(storage: str | None):
    """The storage URL in this process's environment while sbatch runs (sbatch hands it to the job)."""
    before = os.environ.get(STORAGE_ENV)
    if storage:
        os.environ[STORAGE_ENV] = storage
    else:
        os.environ.pop(STORAGE_ENV, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STORAGE_ENV, None)
        else:
            os.environ[STORAGE_ENV] = before


def submit_workers(sweep, options: SlurmOptions, retries: int, storage: str | None, n: int, loop=None) -> list[str]:
    """Submit `n` worker jobs (an array when n > 1) running `loop` (default: the grid's); their job ids."""
    folder = jobs_dir(sweep.root)
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=MAX_REQUEUES)
    params: dict[str, Any] = {
        "job_name": job_name(sweep),
        "time": options.time,
        "signal_delay_s": SIGNAL_DELAY_SECONDS,
        "array_parallelism": options.max_jobs,
    }
    if options.partition:
        params["partition"] = options.partition
    if options.cpus_per_trial:
        params["cpus_per_task"] = options.cpus_per_trial
    if options.gpus_per_trial:
        params["gpus_per_node"] = options.gpus_per_trial
    extra = dict(options.slurm_args)
    if options.mem:
        extra["mem"] = options.mem
    if extra:
        params["additional_parameters"] = extra
    executor.update_parameters(**params)
    worker = SlurmWorker(sweep, retries, os.getcwd(), loop)
    try:
        with _storage_in_environment(storage):
            jobs = executor.map_array(worker, range(n)) if n > 1 else [executor.submit(worker, 0)]
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
        raise ConfigError(f"sbatch refused the worker jobs: {_why(exc)}") from None
    return [j.job_id for j in jobs]


def _left(study) -> tuple[int, int]:
    """(queued, running) trials of the study."""
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return waiting, running


def _top_up(sweep, options: SlurmOptions, study, retries: int, storage: str | None, command: str) -> tuple[list, dict]:
    """Submit workers for what is left; returns (ids submitted, ledger). Serialised across sweep commands."""
    with ledger_lock(sweep):
        active = active_jobs(job_name(sweep))
        waiting, running = _left(study)
        n = min(options.max_jobs, waiting + running) - len(active)
        new = submit_workers(sweep, options, retries, storage, n) if n > 0 and waiting > 0 else []
        return new, update_jobs(sweep, study, new, command)


def run_slurm(
    sweep: GridSweep,
    options: SlurmOptions,
    retries: int = 1,
    storage: str | None = None,
    new_study: bool = False,
    retry_failed: bool = False,
    wait: bool = False,
    progress: bool | None = None,
    command: str = "",
) -> dict:
    """Submit worker jobs for what is left of the grid; with `wait`, follow until the grid is complete.

    Returns:
        submitted: job ids this command submitted; active: job id -> state of the sweep's jobs Slurm holds;
        grid_complete / grid_total: (cell, seed) pairs; queued / running: trials; failed_for_good: as
        `run_sweep`'s; jobs_file: the ledger of jobs and logs.
    """
    check_slurm()
    _, plan, study, queue = open_grid(sweep, storage, new_study, retries, retry_failed)
    submitted, _ = _top_up(sweep, options, study, retries, storage, command)
    if wait:
        submitted += _follow(sweep, options, study, queue, retries, storage, progress, command)
    queue.reconcile()
    left = set(pending(sweep))
    waiting, running = _left(study)
    given_up = write_failed(sweep, queue.exhausted)
    with ledger_lock(sweep):
        update_jobs(sweep, study)
    return {
        "submitted": submitted,
        "active": active_jobs(job_name(sweep)),
        "grid_complete": len(plan) - len(left),
        "grid_total": len(plan),
        "queued": waiting,
        "running": running,
        "failed_for_good": given_up,
        "jobs_file": str(jobs_dir(sweep.root) / JOBS_FILE),
    }


def _follow(sweep, options, study, queue, retries, storage, progress, command) -> list[str]:
    """Until no trial is queued or running: re-queue lost jobs' trials, submit workers for them, show progress."""
    from tqdm.auto import tqdm

    total = len(sweep.cells) * len(sweep.seeds)
    submitted: list[str] = []
    shown: tuple = ()
    bar = tqdm(total=total, desc=f"sweep {sweep.name} (slurm)", disable=None if progress is None else not progress)
    with bar:
        while True:
            queue.reconcile()  # lost jobs' trials re-queued, forgotten pairs queued
            try:
                new, ledger = _top_up(sweep, options, study, retries, storage, command)
            except SlurmQueryError as exc:  # its jobs may still run: keep following, never exit on it
                bar.write(f"{exc}; following on")
                time.sleep(POLL_SECONDS)
                continue
            submitted += new
            if new:
                bar.write(f"submitted {len(new)} worker job(s): {' '.join(new)}")
            waiting, running = _left(study)
            done = total - len(pending(sweep))
            bar.update(done - bar.n)
            jobs = ledger["jobs"]
            active = sum(j.get("state") in ACTIVE_STATES for j in jobs)
            state = f"queued {waiting}, running {running}, worker jobs {active}"
            bar.set_postfix_str(state)
            if bar.disable and (done, state) != shown:  # no terminal (a log, nohup): one line per change
                print(f"grid: {done}/{total} (cell, seed) pairs complete; {state}", flush=True)
                shown = (done, state)
            crashed = [j for j in jobs if j.get("state") == "FAILED" and j["job"] in submitted]
            if len(crashed) >= WORKER_FAILURES:
                raise ConfigError(
                    f"{len(crashed)} worker jobs failed (the workers themselves, not their trials: can the nodes run "
                    f"{sys.executable} and reach the storage?); see {crashed[-1]['stderr']}"
                )
            if not waiting and not running:
                return submitted
            time.sleep(POLL_SECONDS)


def slurm_note(sweep: GridSweep) -> list[str]:
    """The report's note on the sweep's worker jobs: how many, their ids and states, and where their logs are."""
    ledger = read_jobs(sweep.root)
    jobs = ledger.get("jobs") or []
    if not jobs:
        return []
    shown = ", ".join(f"{j['job']} ({j.get('state', '?')})" for j in jobs[:20])
    more = f" and {len(jobs) - 20} more" if len(jobs) > 20 else ""
    where = jobs_dir(sweep.root)
    return [
        f"Slurm: {len(jobs)} worker jobs ran this sweep: {shown}{more}; ids, states, the trials each ran and its "
        f"logs: {where / JOBS_FILE} (logs under {where}/<job>/)."
    ]


def describe(result: dict, sweep: GridSweep) -> list[str]:
    """The lines a sweep command prints for `run_slurm`'s result."""
    jobs = result["active"]
    if result["submitted"]:
        head = f"submitted {len(result['submitted'])} worker job(s): {' '.join(result['submitted'])}"
    elif result["grid_complete"] == result["grid_total"]:
        head = "nothing to submit: the grid is complete"
    else:
        head = f"submitted nothing: {len(jobs)} worker job(s) active for what is left"
    states = ", ".join(f"{j} {s.lower()}" for j, s in sorted(jobs.items()))
    return [
        f"sweep {sweep.name} (slurm): {head}",
        f"grid: {result['grid_complete']}/{result['grid_total']} (cell, seed) pairs complete, "
        f"{result['queued']} queued, {result['running']} running" + (f"; worker jobs: {states}" if states else ""),
        f"jobs and logs: {result['jobs_file']}",
    ]


__all__ = [
    "LAUNCHERS",
    "SlurmOptions",
    "SlurmWorker",
    "describe",
    "launcher_section",
    "parse_mem",
    "parse_slurm_arg",
    "parse_time",
    "read_jobs",
    "run_slurm",
    "slurm_note",
    "slurm_options",
]
