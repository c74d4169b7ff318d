"""One cell's run directory: evaluation with other decoding knobs, unprepared data, GPU groups."""

import json

import pytest

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.data.queries import DataError
from gemkr_lab.run.cell import evaluate_cell, read_manifest, run_cell, run_dir
from gemkr_lab.sweep.grid import _gpu_groups


def _config(tiny_overrides, *extra):
    return load_experiment("tiny-cpu/full", [*tiny_overrides, *extra])


def test_evaluate_redecodes_a_trained_run_with_other_knobs(tmp_path, tiny_overrides):
    trained = run_cell(_config(tiny_overrides), 0, tmp_path)
    again = evaluate_cell(_config(tiny_overrides), 0, tmp_path)
    assert again == pytest.approx(trained)  # same weights, same decoding: same scores
    unique = evaluate_cell(_config(tiny_overrides, "decoding.clue_to_docs=unique"), 0, tmp_path)
    evals = sorted((run_dir(tmp_path, "tiny-cpu/full", 0) / "eval").iterdir())
    assert len(evals) == 2  # one folder per decoding configuration
    decodings = [json.loads((e / "decoding.json").read_text())["clue_to_docs"] for e in evals]
    assert sorted(decodings) == ["first", "unique"]
    assert set(unique) == set(trained)
    assert read_manifest(run_dir(tmp_path, "tiny-cpu/full", 0))["status"] == "complete"
    assert run_cell(_config(tiny_overrides), 0, tmp_path) == trained  # complete runs are never redone


def test_evaluate_needs_a_trained_run(tmp_path, tiny_overrides):
    with pytest.raises(FileNotFoundError, match="no trained checkpoint"):
        evaluate_cell(_config(tiny_overrides), 3, tmp_path)


def test_unprepared_data_is_refused_before_work(tmp_path):
    config = load_experiment("tiny-cpu/full", [f"prepared={tmp_path / 'nothing'}"])
    with pytest.raises(DataError, match="not prepared; run gemkr-lab prepare synthetic"):
        run_cell(config, 0, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_gpu_groups_pin_each_worker(monkeypatch):
    import torch

    from gemkr_lab.config.experiment import ConfigError

    assert _gpu_groups(3, 0) == [None, None, None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _gpu_groups(2, 2) == ["0,1", "2,3"]
    with pytest.raises(ConfigError, match="need 6 GPUs; 4 visible"):
        _gpu_groups(3, 2)
