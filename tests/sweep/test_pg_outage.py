"""PostgreSQL stopped for 15 s in the middle of a sweep: the run still finishes, exactly once."""

import os
import subprocess
import sys
import time
import uuid

import pytest

from gemkr_lab.run.cell import read_manifest
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.grid import current_run, load_sweep


@pytest.mark.slow
@pytest.mark.integration
def test_a_15_second_postgresql_outage_mid_run(tmp_path, sweep_file):
    url, ctl = os.environ.get("GEMKR_TEST_POSTGRES_URL"), os.environ.get("GEMKR_TEST_POSTGRES_CTL")
    if not (url and ctl):
        assert os.environ.get("CI") != "true", "CI must start PostgreSQL with .ci/postgres.sh"
        pytest.skip("no PostgreSQL cluster this test may stop (source .ci/postgres.sh)")
    path = sweep_file(
        tmp_path / "sweep.yaml", name=f"outage-{uuid.uuid4().hex[:8]}", steps=150, drop=("decoding.max_clue_tokens",)
    )
    sweep = load_sweep(path)
    cmd = [sys.executable, "-m", "gemkr_lab.cli", "sweep", str(path), "--storage", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = current_run(sweep, "tiny-cpu/full", 0)
    deadline = time.time() + 300
    while time.time() < deadline and not (read_manifest(run) or {}).get("training"):
        time.sleep(0.1)
    assert (read_manifest(run) or {}).get("training"), "training never started"
    subprocess.run(ctl % "stop -m fast", shell=True, check=True)
    try:
        time.sleep(15)  # the worker's heartbeats fail meanwhile; the trainer goes on
    finally:
        subprocess.run(ctl % "start", shell=True, check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    manifest = read_manifest(run)
    assert manifest["status"] == "complete" and manifest["attempts"] == 1  # trained once, never restarted
    import optuna
    from optuna.trial import TrialState

    store = study_mod.open_storage(url, tmp_path / "runs")
    states = [t.state for t in optuna.load_study(study_name=sweep.name, storage=store).get_trials()]
    assert states.count(TrialState.COMPLETE) == 1 and TrialState.RUNNING not in states, states
