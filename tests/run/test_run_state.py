"""#25: a run's state is exact. A run stopped while decoding says stopped (not running), a stop is not a failure,
and every resume of a run stays in its manifest."""

import json
import os
import signal

import pytest

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.run import cell
from gemkr_lab.run.cell import RunStopped, ended_as, read_manifest, run_cell, run_dir, with_seed


def test_what_ends_a_run_decides_its_status():
    class TrialPruned(Exception):  # Optuna's, by name: the run layer never imports Optuna
        pass

    class SIGTERMException(SystemExit):  # Lightning's, raised by fit after a SIGTERM
        pass

    assert ended_as(TrialPruned()) == "pruned"
    assert ended_as(SIGTERMException()) == "stopped" and ended_as(RunStopped()) == "stopped"
    assert ended_as(ValueError("bad")) == "failed" and ended_as(KeyboardInterrupt()) == "failed"


def test_sigterm_while_decoding_stops_the_run_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunStopped), cell.stop_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_a_run_stopped_while_decoding_says_stopped_and_counts_no_failure(tmp_path, tiny_overrides, monkeypatch):
    config = load_experiment("tiny-cpu/full", [*tiny_overrides, "train.max_steps=2"])
    decode = cell._decode_score_log

    def stopped_midway(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a cancelled Slurm job or a stopped sweep worker sends it
        return decode(*args, **kwargs)

    monkeypatch.setattr(cell, "_decode_score_log", stopped_midway)
    with pytest.raises(RunStopped):
        run_cell(config, 0, tmp_path)
    out = run_dir(tmp_path, with_seed(config, 0))
    manifest = read_manifest(out)
    assert manifest["status"] == "stopped" and manifest["failures"] == 0 and manifest["attempts"] == 1
    monkeypatch.setattr(cell, "_decode_score_log", decode)
    run_cell(config, 0, tmp_path)  # the next attempt decodes the trained model and completes
    manifest = read_manifest(out)
    assert (manifest["status"], manifest["attempts"], manifest["failures"]) == ("complete", 2, 0)
    means = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]
    (out / "metrics.json").unlink()  # a complete run that lost its metrics decodes its checkpoint again
    assert run_cell(config, 0, tmp_path) == means and read_manifest(out)["status"] == "complete"


def test_every_resume_stays_in_the_manifest(tiny_overrides):
    from gemkr_lab.run.identity import check_prepared
    from gemkr_lab.run.provenance import new_manifest

    config = load_experiment("tiny-cpu/full", tiny_overrides)
    stamp = check_prepared(config)
    first = new_manifest(config, 0, stamp, None)
    assert "resumed_from_steps" not in first and first["failures"] == 0
    earlier = {**first, "resumed_from_steps": [4], "failures": 1, "attempts": 2}
    again = new_manifest(config, 0, stamp, earlier)
    assert again["resumed_from_steps"] == [4] and again["failures"] == 1 and again["attempts"] == 3
    again["resumed_from_steps"].append(9)  # this attempt's resume
    assert earlier["resumed_from_steps"] == [4]  # a copy: the earlier record is not changed in place


def test_run_files_carry_a_format_and_an_unknown_one_is_refused_by_name(tmp_path, tiny_overrides):
    import json

    from gemkr_lab.run.identity import RUN_FORMAT, RunFormatError, check_prepared, read_manifest, read_metrics
    from gemkr_lab.run.provenance import new_manifest

    config = load_experiment("tiny-cpu/full", tiny_overrides)
    assert new_manifest(config, 0, check_prepared(config), None)["format"] == RUN_FORMAT
    assert read_manifest(tmp_path) is None and read_metrics(tmp_path) is None  # not started: nothing to read
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "complete"}), encoding="utf-8")
    assert read_manifest(tmp_path) == {"status": "complete"}  # written before the field existed: format 1
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 2, "status": "complete"}), encoding="utf-8")
    with pytest.raises(RunFormatError, match=r"manifest\.json: a run file of format 2; this gemkr_lab reads format 1"):
        read_manifest(tmp_path)
    (tmp_path / "metrics.json").write_text('{"means": {"R@5": 0.5', encoding="utf-8")  # cut short
    with pytest.raises(RunFormatError, match=r"metrics\.json: not valid JSON"):
        read_metrics(tmp_path)


def test_advice_names_the_real_cause(tmp_path):
    from gemkr_lab.kb.tokenize import load_tokenizer
    from gemkr_lab.run.identity import find_run

    (tmp_path / "empty-tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files in it"):  # not "install sentencepiece"
        load_tokenizer(tmp_path / "empty-tokenizer")
    run = tmp_path / "runs" / "tiny-cpu__full" / "seed-0" / "abc123"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n", encoding="utf-8")
    assert find_run(str(run), 0, tmp_path / "runs") == run
    with pytest.raises(FileNotFoundError, match=f"not a run directory .*runs below it: {run}"):
        find_run(str(run.parent), 0, tmp_path / "runs")  # the seed's folder, not the run
    with pytest.raises(FileNotFoundError, match="neither a run directory nor a cell") as caught:
        find_run("runs/tiny-cpu__fulll/seed-0", 0, tmp_path / "runs")  # a mistyped path
    assert "gemkr-lab train" not in str(caught.value)  # no preset is named after a path
    with pytest.raises(FileNotFoundError, match="run gemkr-lab train tiny-cpu/lora --seed 0"):
        find_run("tiny-cpu/lora", 0, tmp_path / "runs")  # a real cell not trained yet
