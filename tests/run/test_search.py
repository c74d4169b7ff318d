"""Optuna search sweeps: validation of the space, a small search end to end, and pruning."""

from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.report.search import write_search_report
from gemkr_lab.sweep.search import TrialReporter, load_search, run_search


def _search(tmp_path, tiny_overrides, space=None, **search):
    raw = {
        "name": "s",
        "root": str(tmp_path / "runs"),
        "base": "tiny-cpu/full",
        "seed": 0,
        "overrides": tiny_overrides,
        "search": {
            "space": space or {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "n_trials": 3,
            **search,
        },
    }
    return load_search(raw, tmp_path / "search.yaml")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lr": {"type": "float", "low": 1.0, "high": 0.1}}, r"search\.space\['train\.lr'\] is invalid"),
        ({"train.lr": {"type": "uniform", "low": 0.1, "high": 1.0}}, "type must be float, int or categorical"),
        ({"model.attention_flow": {"type": "categorical", "choices": []}}, "no choices"),
        ({"train.lrr": {"type": "float", "low": 0.1, "high": 1.0}}, "did you mean 'train.lr'"),
    ],
)
def test_invalid_search_spaces_are_refused(tmp_path, tiny_overrides, space, message):
    with pytest.raises(ConfigError, match=message):
        _search(tmp_path, tiny_overrides, space)


def test_unknown_objective_or_sampler(tmp_path, tiny_overrides):
    with pytest.raises(ConfigError, match="objective"):
        _search(tmp_path, tiny_overrides, objective="NDCG@5")
    with pytest.raises(ConfigError, match="sampler"):
        _search(tmp_path, tiny_overrides, sampler="cmaes")


@pytest.mark.slow
def test_a_small_search_runs_and_reports(tmp_path, tiny_overrides):
    sweep = _search(
        tmp_path,
        tiny_overrides,
        space={
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "model.attention_flow": {"type": "categorical", "choices": ["dual", "joint"]},
        },
        pruner="none",
    )
    result = run_search(sweep, workers=2)
    assert result.get("COMPLETE") == 3 and result["best"] is not None
    again = run_search(sweep, workers=2)  # resumes: nothing left to do
    assert again.get("COMPLETE") == 3
    table = write_search_report(sweep, tmp_path / "report")
    assert len(table) == 3 and set(table.state) == {"COMPLETE"}
    assert (tmp_path / "report" / "history.png").stat().st_size > 0


def test_the_reporter_prunes_a_trial_worse_than_the_median(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for _ in range(3):
        trial = study.ask()
        trial.report(-0.1, step=0)
        study.tell(trial, 1.0)
    trial = study.ask()
    reporter = TrialReporter(study, trial._trial_id)
    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(5.0)}, current_epoch=0)
    with pytest.raises(optuna.TrialPruned):
        reporter.on_train_epoch_end(trainer, None)
    good = study.ask()
    trainer.callback_metrics["train/loss"] = torch.tensor(0.01)
    TrialReporter(study, good._trial_id).on_train_epoch_end(trainer, None)  # better than the median: continues


def test_sweep_files_round_trip_through_yaml(tmp_path, tiny_overrides):
    sweep = _search(tmp_path, tiny_overrides)
    assert yaml.safe_load(yaml.safe_dump({"space": sweep.space}))["space"] == sweep.space
