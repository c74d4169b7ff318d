"""Grid sweeps through `--launcher slurm`, against a real single-node Slurm with accounting (`.ci/slurm.sh`).

CI sources .ci/slurm.sh, which exports GEMKR_TEST_SLURM_CONF; elsewhere the `slurm` fixture starts one the same
way (as root, with the packages installed), and the Slurm tests are skipped, with the reason, only where it
cannot be started. The settings tests need no Slurm.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState

from gemkr_lab.cli import main
from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.report.table import COSTS as COST_COLUMNS
from gemkr_lab.report.table import notes, write_report
from gemkr_lab.run.cell import read_manifest
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.grid import STOPPED, current_run, load_sweep
from gemkr_lab.sweep.slurm import (
    SlurmOptions,
    parse_mem,
    parse_slurm_arg,
    parse_time,
    read_jobs,
    slurm_options,
)

from .test_faults import Trainers, _assert_each_pair_complete_once, _trials, _wait

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
COSTS = ["train_s", "gpu_hours", "decode_ms_per_query"]
"""Timings: in runs.json (as COST_COLUMNS in the table), different on every machine and every run."""


# --- a real Slurm ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm():
    """The environment in which Slurm's clients reach the test cluster (SLURM_CONF)."""
    conf = os.environ.get("GEMKR_TEST_SLURM_CONF")
    if conf:
        yield dict(os.environ, SLURM_CONF=conf)
        return
    why = _why_no_slurm()
    holder = None
    if why is None:  # start one here as CI does, its daemons stopped when the holder shell ends
        holder = subprocess.Popen(
            ["bash", "-c", 'source .ci/slurm.sh >&2 && echo "$GEMKR_TEST_SLURM_CONF" && read -r _'],
            cwd=REPO,
            env=dict(os.environ, GEMKR_SLURM_NO_INSTALL="1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        conf = holder.stdout.readline().strip()
        if not conf:
            why = f"Slurm did not start: {holder.communicate(timeout=120)[1].strip()[-800:]}"
    if why is not None:
        assert os.environ.get("CI") != "true", f"CI must run a Slurm (.ci/slurm.sh): {why}"
        pytest.skip(f"no Slurm here ({why}); `source .ci/slurm.sh` as root starts one")
    try:
        yield dict(os.environ, SLURM_CONF=conf)
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)


def _why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "starting the daemons takes root"
    missing = [c for c in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "munged", "mariadbd") if not _which(c)]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm slurmdbd munge mariadb-server)"
    return None


def _which(command: str) -> bool:
    return shutil.which(command) is not None or shutil.which(command, path="/usr/sbin") is not None


def _sweep_file(path: Path, sweep_file, cells, seeds, name: str, extra=(), steps: int = 4) -> Path:
    return sweep_file(path, cells, seeds, name=name, steps=steps, overrides=extra, reference=cells[0])


def _sweep(path, env, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "gemkr_lab.cli", "sweep", str(path), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _squeue(env, name: str) -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--name", name, "--format", "%i %T"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _comparable(report: Path) -> tuple[pd.DataFrame, list]:
    """A report's numbers and runs without what differs from machine to machine (timings)."""
    table = pd.read_csv(report / "table.csv")
    table = table.drop(columns=[c for c in table.columns if c in COST_COLUMNS])
    runs = json.loads((report / "runs.json").read_text())["runs"]
    return table, [{k: v for k, v in r.items() if k not in COSTS} for r in runs]


@pytest.mark.slow
def test_a_grid_through_slurm_runs_each_pair_once_survives_scancel_and_reports_as_local(tmp_path, sweep_file, slurm):
    cells, seeds, name = ["tiny-cpu/full", "tiny-cpu/text-only"], [0, 1], f"slurm-{uuid.uuid4().hex[:8]}"
    path = _sweep_file(tmp_path / "slurm" / "sweep.yaml", sweep_file, cells, seeds, name)
    sweep = load_sweep(path)
    launcher = ["--launcher", "slurm", "--max-jobs", "2", "--gpus-per-trial", "1"]
    with Trainers(sweep.root) as trainers:
        first = _sweep(path, slurm, *launcher)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "submitted 2 worker job(s)" in first.stdout and "0/4 (cell, seed) pairs complete" in first.stdout
        jobs = [j["job"] for j in read_jobs(sweep.root)["jobs"]]
        assert len(jobs) == 2
        job_name = read_jobs(sweep.root)["job_name"]

        second = _sweep(path, slurm, *launcher)  # while they run: reports, submits nothing
        assert second.returncode == 0, second.stdout + second.stderr
        assert "submitted nothing: 2 worker job(s) active" in second.stdout, second.stdout
        assert [j["job"] for j in read_jobs(sweep.root)["jobs"]] == jobs
        assert set(_squeue(slurm, job_name)) == set(jobs)

        def claimed():  # a trial a job has claimed (its trainer starting): a cancel now always loses its run
            for t in _trials(sweep, None):
                if t.state == TrialState.RUNNING and t.user_attrs.get("slurm_job"):
                    return t
            return None

        victim = _wait(claimed, 600, "a job to claim a trial")
        job, key = victim.user_attrs["slurm_job"], (victim.user_attrs["cell"], victim.user_attrs["seed"])
        subprocess.run(["scancel", job], env=slurm, check=True)
        _wait(lambda: job not in _squeue(slurm, job_name), 120, "the cancelled job to end")

        final = _sweep(path, slurm, *launcher, "--wait")
    assert final.returncode == 0, final.stdout + final.stderr
    assert "grid: 4/4 (cell, seed) pairs complete" in final.stdout
    assert set(trainers.most.values()) == {1}, trainers.overlaps  # never two trainers of one run, also across jobs
    trials = _assert_each_pair_complete_once(sweep, None)
    mine = [t for t in trials if (t.user_attrs.get("cell"), t.user_attrs.get("seed")) == key]
    assert [t.state for t in mine] == [TrialState.FAIL, TrialState.COMPLETE]  # given back (or found dead), re-run
    assert mine[0].user_attrs["slurm_job"] == job and mine[1].user_attrs["slurm_job"] != job
    assert all(t.user_attrs.get("slurm_job") for t in trials if t.state == TrialState.COMPLETE)  # all ran in jobs
    assert {t.user_attrs.get("gpus") for t in trials if t.state == TrialState.COMPLETE} <= {"0", "1"}  # fake GPUs
    ledger = {j["job"]: j for j in read_jobs(sweep.root)["jobs"]}
    assert ledger[job]["state"] == "CANCELLED" and Path(ledger[job]["stdout"]).is_file()
    assert sum(len([t for t in j["trials"] if t["state"] == "COMPLETE"]) for j in ledger.values()) == 4

    local_path = _sweep_file(tmp_path / "local" / "sweep.yaml", sweep_file, cells, seeds, name)
    local = _sweep(local_path, dict(os.environ), "--workers", "2")
    assert local.returncode == 0, local.stdout + local.stderr
    write_report(sweep, tmp_path / "report-slurm")
    write_report(load_sweep(local_path), tmp_path / "report-local")
    (slurm_table, slurm_runs), (local_table, local_runs) = (
        _comparable(tmp_path / "report-slurm"),
        _comparable(tmp_path / "report-local"),
    )
    pd.testing.assert_frame_equal(slurm_table, local_table)  # metrics, seeds, statistics
    assert slurm_runs == local_runs and len(slurm_runs) == 4  # every run, its status and metrics
    for cell in cells:
        for seed in seeds:  # the same runs: same resolved configs, same fingerprints
            assert current_run(sweep, cell, seed).name == current_run(load_sweep(local_path), cell, seed).name
    slurm_notes = [n for n in notes(sweep) if n.startswith("Slurm:")]
    assert len(slurm_notes) == 1 and str(Path(sweep.root) / "slurm" / "jobs.json") in slurm_notes[0]
    assert job in slurm_notes[0] and "slurm" in (tmp_path / "report-slurm" / "table.md").read_text()
    assert not [n for n in notes(load_sweep(local_path)) if n.startswith("Slurm:")]


@pytest.mark.slow
def test_requeued_and_cancelled_jobs_checkpoint_give_their_trial_back_and_it_resumes(tmp_path, sweep_file, slurm):
    """USR2 (before the time limit, or a preemption): the job requeues itself; scancel: a new worker takes over."""
    name = f"slurm-requeue-{uuid.uuid4().hex[:8]}"
    extra = ["train.checkpoint_every_n_steps=5"]
    path = _sweep_file(tmp_path / "sweep.yaml", sweep_file, ["tiny-cpu/full"], [0], name, extra, steps=80)
    sweep = load_sweep(path)
    run = current_run(sweep, "tiny-cpu/full", 0)
    first = _sweep(path, slurm, "--launcher", "slurm")
    assert first.returncode == 0 and "submitted 1 worker job(s)" in first.stdout, first.stdout + first.stderr
    (job,) = [j["job"] for j in read_jobs(sweep.root)["jobs"]]
    job_name = read_jobs(sweep.root)["job_name"]

    def step() -> int:
        ckpt = run / "checkpoints" / "last.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] if ckpt.is_file() else -1

    def given_back(n: int):
        failed = [t for t in _trials(sweep, None) if t.state == TrialState.FAIL]
        return failed if len(failed) == n else None

    _wait(lambda: step() >= 5, 600, "the first checkpoint")
    # what Slurm sends before the time limit (and submitit's own test hook sends): the requeue signal
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm, check=True)
    released = _wait(lambda: given_back(1), 300, "the trial given back")[0]
    requeued_at = step()
    assert released.user_attrs["error"] == STOPPED and released.user_attrs["attempt"] == 1
    assert 5 <= requeued_at < 80

    _wait(lambda: step() >= requeued_at + 5, 600, "the requeued job to train on")  # the same job, back
    subprocess.run(["scancel", job], env=slurm, check=True)  # lost for good: a new worker must take over
    _wait(lambda: job not in _squeue(slurm, job_name), 300, "the cancelled job to end")
    cancelled_at = step()

    final = _sweep(path, slurm, "--launcher", "slurm", "--wait")
    assert final.returncode == 0, final.stdout + final.stderr
    assert "submitted 1 worker job(s)" in final.stdout and "grid: 1/1" in final.stdout
    trials = _assert_each_pair_complete_once(sweep, None)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    # given back by its worker (no retry used up), or, were the worker killed first, found dead and re-queued
    assert trials[1].user_attrs["error"] in (STOPPED, "worker stopped (no heartbeat)")
    assert [t.user_attrs["attempt"] for t in trials] == [1, 1, 1 if trials[1].user_attrs["error"] == STOPPED else 2]
    jobs = [j["job"] for j in read_jobs(sweep.root)["jobs"]]
    assert len(jobs) == 2 and jobs[0] == job
    assert [t.user_attrs["slurm_job"] for t in trials] == [job, job, jobs[1]]  # requeued, then replaced
    manifest = read_manifest(run)
    assert manifest["attempts"] == 3 and requeued_at < cancelled_at < 80
    assert manifest["resumed_from_steps"] == [cancelled_at]  # the attempt that finished went on from the stop
    # and so did the requeued job's (its resume is not in the manifest: that attempt never finished training)
    assert (run / "log.txt").read_text().count("Restored all states from the checkpoint") == 2


# --- settings --------------------------------------------------------------------------------------------------


def test_time_memory_and_sbatch_options_are_read_as_slurm_reads_them():
    assert [parse_time(t) for t in (90, "90", "1:30", "2:00:00", "1-0", "1-2:30", "0-0:0:61")] == [
        90,
        90,
        2,
        120,
        1440,
        1590,
        2,
    ]
    for bad in ("", "soon", "1:2:3:4", 0, "0", True, -5):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert parse_mem("32g") == "32G" and parse_mem(4000) == "4000"
    with pytest.raises(ValueError):
        parse_mem("lots")
    assert parse_slurm_arg("account=lab") == ("account", "lab")
    assert parse_slurm_arg("exclusive") == ("exclusive", True)
    assert parse_slurm_arg("--mail_type=END") == ("mail-type", "END")
    for reserved, why in (("array=0-3", "--max-jobs"), ("time=5", "--time"), ("output=x", "<root>/slurm")):
        with pytest.raises(ValueError, match=why):
            parse_slurm_arg(reserved)


def _file(tmp_path, launcher) -> Path:
    path = tmp_path / "s.yaml"
    spec = {"name": "s", "root": str(tmp_path / "runs"), "cells": ["tiny-cpu/full"], "seeds": [0]}
    path.write_text(yaml.safe_dump(spec | {"launcher": launcher}))
    return path


def test_the_launcher_section_is_checked_like_the_rest_of_the_sweep_file(tmp_path):
    sweep = load_sweep(
        _file(
            tmp_path,
            {
                "name": "slurm",
                "partition": "gpu",
                "time": "4:00:00",
                "gpus_per_trial": 1,
                "mem": "64G",
                "max_jobs": 8,
                "slurm_args": {"account": "lab", "exclusive": True},
            },
        )
    )
    assert sweep.launcher == "slurm"
    options = slurm_options(sweep, {"max_jobs": 3, "time": "30", "slurm_args": {"qos": "high"}, "partition": None})
    assert options == SlurmOptions(
        partition="gpu",
        time=30,
        gpus_per_trial=1,
        mem="64G",
        max_jobs=3,
        slurm_args=(("account", "lab"), ("exclusive", True), ("qos", "high")),
    )
    assert load_sweep(_file(tmp_path, {"name": "local"})).launcher == "local"
    for bad, message in (
        ({"name": "pbs"}, r"s.yaml:\d+: launcher.name: 'pbs' is not a launcher"),
        ({"name": "slurm", "gpus": 2}, r"s.yaml:\d+: launcher: unknown keys \['gpus'\]"),
        ({"name": "slurm", "max_jobs": 0}, r"launcher.max_jobs: 0 is not a whole number >= 1"),
        ({"name": "slurm", "time": "soon"}, r"launcher.time: 'soon' is not a Slurm time limit"),
        ({"name": "slurm", "slurm_args": {"array": "0-9"}}, r"launcher.slurm_args: sbatch option 'array' is set"),
        ({"partition": "gpu"}, r"\['partition'\] are Slurm settings; add name: slurm"),
        ("slurm", r"launcher: a mapping"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_sweep(_file(tmp_path, bad))
    line = _file(tmp_path, {"name": "slurm", "max_jobs": -1}).read_text().splitlines().index("  max_jobs: -1") + 1
    with pytest.raises(ConfigError, match=rf"s.yaml:{line}: launcher.max_jobs"):
        load_sweep(_file(tmp_path, {"name": "slurm", "max_jobs": -1}))


def test_slurm_options_without_the_slurm_launcher_are_refused_before_any_work(tmp_path, capsys):
    path = _file(tmp_path, {"name": "local"})
    for args, message in (
        (["--partition", "gpu"], "--partition: Slurm options; add --launcher slurm"),
        (["--wait"], "--wait: Slurm options"),
        (["--launcher", "slurm", "--workers", "3"], "--workers is for --launcher local"),
        (["--launcher", "slurm", "--slurm-arg", "array=1"], "--slurm-arg: sbatch option 'array' is set"),
        (["--launcher", "slurm", "--time", "soon"], "--time: 'soon' is not a Slurm time limit"),
    ):
        assert main(["sweep", str(path), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "runs").exists()


def test_without_slurm_commands_the_slurm_launcher_says_where_to_run(tmp_path, sweep_file, monkeypatch, capsys):
    path = _sweep_file(tmp_path / "sweep.yaml", sweep_file, ["tiny-cpu/full"], [0], "no-slurm")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch, srun, squeue, sacct
    assert main(["sweep", str(path), "--launcher", "slurm"]) == 2
    assert "--launcher slurm needs Slurm's commands on PATH" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_a_released_trial_goes_back_to_the_queue_with_the_same_attempt(tmp_path):
    store = study_mod.open_storage(None, tmp_path)
    study = study_mod.grid_study("s", store, ["a"], [0], [])
    study_mod.claim(study, store, {"slurm_job": "7_1"})
    assert study.get_trials()[0].user_attrs["slurm_job"] == "7_1"
    assert study_mod.release(study, store, study.get_trials()[0], STOPPED)
    first, again = study.get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["error"] == STOPPED
    assert again.state == TrialState.WAITING and again.user_attrs["attempt"] == 1 and again.user_attrs["cell"] == "a"
    assert not study_mod.release(study, store, first, STOPPED)  # finished already: nothing changes
    assert len(study.get_trials()) == 2


# --- search sweeps ---------------------------------------------------------------------------------------------


def _search_file(path: Path, tiny_world, name: str) -> Path:
    """A 3-trial search whose trials are fixed in advance (enqueued), so that any launcher runs the same ones."""
    world, prepared = tiny_world
    spec = {
        "name": name,
        "root": str(path.parent / "runs"),
        "base": "tiny-cpu/full",
        "seed": 0,
        "overrides": [
            f"data_root={world}",
            f"prepared={prepared}",
            "data.validation_size=0.25",
            "train.max_steps=40",
            "train.checkpoint_every_n_steps=5",
            "limit_train=16",
            "train.batch_size=8",
            "decoding.num_groups=2",
            "decoding.max_clue_tokens=3",
            "tracking.wandb=false",
        ],
        "search": {
            "space": {"train.lr": {"type": "categorical", "choices": [0.005, 0.002, 0.0005]}},
            "enqueue": [{"train.lr": 0.005}, {"train.lr": 0.002}, {"train.lr": 0.0005}],
            "n_trials": 3,
            "sampler": "random",
            "eval_every_n_steps": 10,
            "eval_queries": 8,
            "final_seeds": [0],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def _search_trials(path: Path):
    import optuna

    from gemkr_lab.sweep.search import load_search_file

    sweep = load_search_file(path)
    store = study_mod.open_storage(None, Path(sweep.root))
    return optuna.load_study(study_name=sweep.name, storage=store).get_trials()


@pytest.mark.slow
def test_a_search_through_slurm_runs_each_trial_once_survives_scancel_and_equals_a_local_run(
    tmp_path, tiny_world, slurm
):
    name = f"search-{uuid.uuid4().hex[:8]}"
    path = _search_file(tmp_path / "slurm" / "search.yaml", tiny_world, name)
    root = path.parent / "runs"
    launcher = ["--launcher", "slurm", "--max-jobs", "2"]
    with Trainers(root) as trainers:
        first = _sweep(path, slurm, *launcher)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "submitted 2 worker job(s)" in first.stdout, first.stdout

        def training():  # a trial a job runs, past its first checkpoint: a cancel now loses a run mid-way
            for t in _search_trials(path):
                run = t.user_attrs.get("run")
                running = t.state == TrialState.RUNNING and t.user_attrs.get("slurm_job") and run
                if running and (Path(run) / "checkpoints" / "last.ckpt").is_file():
                    return t
            return None

        victim = _wait(training, 600, "a job's trial to checkpoint")
        job = victim.user_attrs["slurm_job"]
        subprocess.run(["scancel", job], env=slurm, check=True)
        final = _sweep(path, slurm, *launcher, "--wait")
    assert final.returncode == 0, final.stdout + final.stderr
    assert set(trainers.most.values()) == {1}, trainers.overlaps  # never two trainers of one trial's run

    trials = _search_trials(path)
    back = {t.user_attrs["resumes"] for t in trials if t.user_attrs.get("resumes") is not None}
    counted = [t for t in trials if t.number not in back]
    given_back = [t for t in trials if t.number in back]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)  # each trial once
    names = [t.user_attrs["name"] for t in counted]
    assert len(set(names)) == 3 and victim.user_attrs["name"] in names
    assert [t.number for t in given_back] == [victim.number] and given_back[0].state == TrialState.FAIL
    successor = next(t for t in counted if t.user_attrs.get("resumes") == victim.number)
    assert successor.params == victim.params and successor.user_attrs["slurm_job"] != job
    manifest = read_manifest(Path(successor.user_attrs["run"]))
    assert manifest["resumed_from_steps"] and manifest["resumed_from_steps"][-1] >= 5  # resumed, not restarted

    local_path = _search_file(tmp_path / "local" / "search.yaml", tiny_world, name)
    local = _sweep(local_path, dict(os.environ), "--workers", "2")
    assert local.returncode == 0, local.stdout + local.stderr

    def outcome(p: Path) -> tuple[dict, dict]:
        by_name = {
            t.user_attrs["name"]: (t.params, t.values, t.intermediate_values)
            for t in _search_trials(p)
            if t.state != TrialState.FAIL
        }
        final = json.loads((p.parent / "runs" / "final.json").read_text())
        return by_name, {k: v for k, v in final.items() if k not in ("seeds", "trial")} | {
            "means": {s: r["means"] for s, r in final["seeds"].items()}
        }

    # the same trials (by run name; a successor's number differs), values, intermediate values and test result
    assert outcome(path) == outcome(local_path)
    assert outcome(path)[1]["name"] in names
    ledger = read_jobs(root)
    assert job in {j["job"] for j in ledger["jobs"]}


def test_a_slow_or_failing_squeue_is_tried_again_with_backoff(monkeypatch):
    from gemkr_lab.sweep import slurm as sl

    calls, sleeps = [], []

    def flaky(cmd, **kwargs):
        calls.append(cmd[0])
        if len(calls) < 3:
            raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))
        return subprocess.CompletedProcess(cmd, 0, stdout="12_0 RUNNING\n13 PENDING\n14 COMPLETED\n", stderr="")

    monkeypatch.setattr(sl.subprocess, "run", flaky)
    monkeypatch.setattr(sl.time, "sleep", sleeps.append)
    assert sl.active_jobs("gemkr-x") == {"12_0": "RUNNING", "13": "PENDING"}
    assert calls == ["squeue"] * 3 and sleeps == [1.0, 2.0]
    calls.clear()
    monkeypatch.setattr(sl.subprocess, "run", lambda cmd, **kw: (_ for _ in ()).throw(OSError("no route")))
    with pytest.raises(sl.SlurmQueryError, match="squeue failed 5 times"):
        sl.active_jobs("gemkr-x")
