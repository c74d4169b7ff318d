"""Which failures a sweep retries (#25): bad input fails the same way every time and is not retried; a crash,
a signal or an OS error may pass and is.

The chain, link by link: a sweep's run (`run-cell`) exits 2 on bad input (config, data, a damaged prepared file)
and 75 on an OS error; the grid reads exit 2 as deterministic; the study then queues no retry and lists the
pair as failed for good at once (`--retry-failed` queues it again once the input is fixed).
"""

import errno
import shutil

import pytest
from optuna.trial import TrialState

from gemkr_lab import cli
from gemkr_lab.sweep import grid
from gemkr_lab.sweep import study as study_mod


def test_the_exit_status_of_bad_input_is_the_one_the_grid_does_not_retry():
    assert grid.INPUT_ERROR_EXIT == cli.USER_ERROR and cli.TRANSIENT_ERROR != cli.USER_ERROR


def test_a_damaged_prepared_file_is_bad_input_named_with_its_file(tmp_path, tiny_world, tiny_overrides, capfd):
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_world[1], prepared)
    stamp = prepared / "prepare.json"
    stamp.write_text(stamp.read_text(encoding="utf-8")[:40], encoding="utf-8")  # cut short, as by a full disk
    overrides = [*tiny_overrides, f"prepared={prepared}"]
    code = cli.main(["run-cell", "tiny-cpu/full", *overrides, "--root", str(tmp_path / "runs")])
    err = capfd.readouterr().err
    assert code == grid.INPUT_ERROR_EXIT, err
    assert f"{stamp}:3: not valid JSON" in err and "prepare it again" in err  # was: json's message, no file
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("verb", "expected"), [("run-cell", cli.TRANSIENT_ERROR), ("train", cli.USER_ERROR)])
def test_an_os_error_is_transient_for_a_sweeps_run_only(monkeypatch, capfd, verb, expected):
    import gemkr_lab.numerics as numerics
    import gemkr_lab.run.cell as cell

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/nfs/runs/x/last.ckpt")

    monkeypatch.setattr(cell, "run_cell", fail)
    monkeypatch.setattr(numerics, "apply_for", lambda config: None)  # leaves this process's environment alone
    assert cli.main([verb, "tiny-cpu/full", "tracking.wandb=false"]) == expected
    assert "/nfs/runs/x/last.ckpt: input/output error" in capfd.readouterr().err


@pytest.mark.parametrize(("code", "bad_input"), [(2, True), (75, False), (1, False), (-9, False)])
def test_the_grid_reads_exit_2_as_bad_input(monkeypatch, tmp_path, code, bad_input):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("loading\ngemkr-lab: error: data/p/prepare.json:3: not valid JSON\n")
    monkeypatch.setattr(grid, "launch", lambda *a, **k: code)
    status, value, deterministic = grid._run_process("c", 0, [], str(tmp_path), out, None, grid._Either())
    assert deterministic is bad_input and value is None
    assert status.endswith("data/p/prepare.json:3: not valid JSON")  # the run's own line: no manifest yet
    assert ("not retried" in status) is bad_input


def test_a_deterministic_failure_is_failed_for_good_at_once_and_a_transient_one_is_retried(tmp_path):
    store = study_mod.open_storage(None, tmp_path)
    study = study_mod.grid_study("s", store, ["bad", "flaky"], [0], [])
    runs = {("bad", 0): "fp", ("flaky", 0): "fp"}
    for _ in range(2):
        trial = study_mod.claim(study, store)
        bad = trial.user_attrs["cell"] == "bad"
        store.set_trial_user_attr(trial._trial_id, "run", "fp")
        study_mod.finish(study, store, trial, False, None, "boom", retries=3, deterministic=bad)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs["cell"], t.user_attrs["attempt"]) for t in waiting] == [("flaky", 2)]
    queued, exhausted = study_mod.queue_missing(study, runs, done=set(), retries=3)
    assert queued == [] and list(exhausted) == [("bad", 0)]  # retries left, but none would help
    assert exhausted["bad", 0].user_attrs[study_mod.DETERMINISTIC] is True
    queued, _ = study_mod.queue_missing(study, runs, done=set(), retries=3, retry_failed=True)
    assert queued == [("bad", 0)]  # once the input is fixed: --retry-failed
