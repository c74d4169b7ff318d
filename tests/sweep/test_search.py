"""Optuna search sweeps: checked files, decoded intermediate values, pruning, and the test split touched once."""

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import yaml

from gemkr_lab.cli import main
from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.search import FINAL, SELECTED, TrialReport, load_search_file, run_search

GOOD = """\
name: s
root: {root}
base: tiny-cpu/full
seed: 0
overrides: [data.validation_size=0.2]
search:
  space:
    train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
"""


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [
        ("  n_trials: 0\n", 8, r"search\.n_trials = 0: expected an integer >= 1"),
        ("  samplr: tpe\n", 8, "unknown key 'search.samplr'.*did you mean 'search.sampler'"),
        ("  sampler: cmaes\n", 8, "search.sampler = 'cmaes'"),
        ("  pruner: asha\n  eval_every_n_steps: 5\n", 8, "search.pruner = 'asha'"),
        ("  pruner: median\n", 8, "expected 'none' unless eval_every_n_steps is set"),
        ("  objective: NDCG@5\n", 8, "search.objective = 'NDCG@5'"),
        ("    train.lrr: {type: float, low: 0.1, high: 1.0}\n", 8, "did you mean 'train.lr'"),
        (
            "    train.warmup_steps: {type: int, low: -5, high: 10}\n",
            8,
            r"train.warmup_steps = -5: expected an integer >= 0",
        ),
        ("    model.attention_flow: {type: categorical, choices: []}\n", 8, "no choices"),
        ("    model.attention_flow: {type: uniform, low: 0, high: 1}\n", 8, "type must be float, int or categorical"),
        ("  enqueue: [{train.warmup_steps: 3}]\n", 9, "not in search.space"),
        ("colour: blue\n", 9, "unknown key 'colour'"),
    ],
)
def test_bad_search_files_are_refused_with_their_line_and_nothing_is_made(tmp_path, capsys, extra, line, message):
    root = tmp_path / "runs"
    path = tmp_path / "search.yaml"
    text = GOOD.format(root=root)
    if extra.startswith("    "):  # a space entry
        text += extra
    elif extra.startswith("  "):
        text = text.replace("search:\n", "search:\n" + extra) if "enqueue" not in extra else text + extra
    else:
        text += extra
    path.write_text(text, encoding="utf-8")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and __import__("re").search(message, err), err
    assert f"{path}:" in err  # names the line
    assert not root.exists()


def test_a_search_without_a_validation_split_is_refused(tmp_path, capsys):
    path = tmp_path / "search.yaml"
    path.write_text(GOOD.format(root=tmp_path / "runs").replace("[data.validation_size=0.2]", "[]"), encoding="utf-8")
    assert main(["sweep", str(path)]) == 2
    assert "tunes on a validation split" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_trial_report_prunes_on_the_decoded_objective():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    first = study.ask()
    first.report(0.5, step=10)
    study.tell(first, 0.6)
    worse = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned at step 10"):
        TrialReport(worse, "MRR@10")(10, {"MRR@10": 0.1, "R@5": 0.9})
    assert study.trials[1].intermediate_values == {10: 0.1}  # the objective was reported, not another metric
    better = study.ask()
    TrialReport(better, "MRR@10")(10, {"MRR@10": 0.7})  # better than the median: it goes on


def _qids(path: Path) -> set[str]:
    return {json.loads(x)["qid"] for x in path.read_text(encoding="utf-8").splitlines() if x}


@pytest.mark.slow
def test_a_search_tunes_on_validation_prunes_a_hopeless_trial_and_touches_test_once(tmp_path, tiny_world):
    world, prepared = tiny_world
    root = tmp_path / "runs"
    sweep_file = tmp_path / "search.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": "honest",
                "root": str(root),
                "base": "tiny-cpu/full",
                "seed": 0,
                "overrides": [
                    f"data_root={world}",
                    f"prepared={prepared}",  # prepared without a split: the search prepares its own variant
                    "data.validation_size=0.25",
                    "train.max_steps=200",
                    "tracking.wandb=false",
                ],
                "search": {
                    "space": {"train.lr": {"type": "categorical", "choices": [0.005, 1.0e-7]}},
                    "enqueue": [{"train.lr": 0.005}, {"train.lr": 1.0e-7}],  # a good trial, then a hopeless one
                    "objective": "MRR@10",
                    "n_trials": 2,
                    "sampler": "random",
                    "pruner": "median",
                    "pruner_startup_trials": 1,
                    "pruner_warmup_steps": 60,
                    "eval_every_n_steps": 50,
                    "eval_queries": 96,
                    "final_seeds": [0],
                },
            }
        ),
        encoding="utf-8",
    )
    sweep = load_search_file(sweep_file)
    result = run_search(sweep, workers=1)
    assert result["COMPLETE"] == 1 and result["PRUNED"] == 1, result

    study = optuna.load_study(study_name="honest", storage=_journal(root))
    good, hopeless = study.trials
    assert good.params == {"train.lr": 0.005} and good.state.name == "COMPLETE"
    assert sorted(good.intermediate_values) == [50, 100, 150, 200]
    # pruned at the first step past its warm-up where it is worse than the median, before its budget ended
    assert hopeless.state.name == "PRUNED" and max(hopeless.intermediate_values) == 100
    assert hopeless.intermediate_values[100] < good.intermediate_values[100]

    variant = Path(load_experiment(str(root / SELECTED)).prepared)
    test_qids = _qids(variant / "queries_test.jsonl")
    validation_qids = _qids(variant / "queries_validation.jsonl")
    assert test_qids and validation_qids and test_qids.isdisjoint(validation_qids)
    for trial in (good, hopeless):
        run = Path(trial.user_attrs["run"])
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["split"] == "validation"
        assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["tracking"]["group"] == "honest"
        recorded = json.loads((run / "intermediate.json").read_text(encoding="utf-8"))
        assert [e["step"] for e in recorded] == sorted(trial.intermediate_values)
        assert all(e["queries"] == 96 for e in recorded)
        if trial is good:
            assert _qids(run / "records.jsonl") == validation_qids  # no test query decoded in any trial
            metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
            assert metrics["split"] == "validation" and metrics["means"]["MRR@10"] == good.value
        else:
            assert manifest["status"] == "pruned" and not (run / "records.jsonl").exists()

    # the test split, once: only the selected configuration, decoding the good trial's own checkpoint
    final = json.loads((root / FINAL).read_text(encoding="utf-8"))
    assert final["trial"] == 0 and final["params"] == {"train.lr": 0.005} and list(final["seeds"]) == ["0"]
    run = Path(final["seeds"]["0"]["run"])
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["split"] == "test" and manifest["trained_in"] == good.user_attrs["run"]
    assert _qids(run / "records.jsonl") == test_qids
    finals = [p for p in root.glob("*/seed-*/*/manifest.json") if json.loads(p.read_text())["split"] == "test"]
    assert len(finals) == 1

    # the selected configuration is a preset a user can train, and the report shows both splits, labelled
    selected = load_experiment(str(root / SELECTED))
    assert selected.train.lr == 0.005 and selected.data.validation_size == 0.25 and selected.split == "test"
    out = tmp_path / "report"
    assert main(["report", str(sweep_file), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| validation | trial 0" in summary and "| test | selected, seeds 0" in summary
    assert (out / "history.png").stat().st_size > 0 and (out / "intermediate.png").stat().st_size > 0
    assert load_experiment(str(out / SELECTED)).train.lr == 0.005


def _journal(root: Path):
    from optuna.storages import JournalStorage

    from gemkr_lab.sweep.study import journal_file

    return JournalStorage(journal_file(root / "optuna-journal.log"))


def test_a_trial_process_prunes_with_the_search_s_own_pruner(tmp_path, monkeypatch):
    """Optuna keeps pruners out of its storage: the trial process must rebuild the search's (startup 1 here)."""
    from gemkr_lab.config.search import SearchSettings
    from gemkr_lab.sweep.search import intermediate_from_env

    store = _journal(tmp_path)
    study = optuna.create_study(study_name="s", storage=store, direction="maximize")
    first = study.ask()
    first.report(0.5, step=10)
    study.tell(first, 0.6)
    second = study.ask()
    settings = SearchSettings(pruner="median", pruner_startup_trials=1, eval_every_n_steps=10, eval_queries=8)
    monkeypatch.setenv("GEMKR_OPTUNA_STORAGE", f"journal:{tmp_path / 'optuna-journal.log'}")
    monkeypatch.setenv("GEMKR_OPTUNA_STUDY", "s")
    monkeypatch.setenv("GEMKR_OPTUNA_TRIAL", str(second._trial_id))
    monkeypatch.setenv(
        "GEMKR_SEARCH_SETTINGS", json.dumps({"settings": __import__("dataclasses").asdict(settings), "max_steps": 40})
    )
    plan = intermediate_from_env()
    assert (plan.every_n_steps, plan.queries) == (10, 8)
    with pytest.raises(optuna.TrialPruned):  # Optuna's default MedianPruner (5 startup trials) would go on
        plan.report(10, {"R@5": 0.1})


def _fabricated(tmp_path, settings: dict, trials: list[tuple[dict, list[float]]]):
    """A search sweep and its study with finished trials (no runs), as the report reads them."""
    from gemkr_lab.sweep.search import _search_study

    raw = yaml.safe_load(GOOD.format(root=tmp_path / "runs"))
    raw["search"]["space"] = {
        "train.lr": {"type": "categorical", "choices": sorted({p["train.lr"] for p, _ in trials})}
    }
    raw["search"].update(settings)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    sweep = load_search_file(path)
    store = study_mod.open_storage(None, tmp_path / "runs")
    study = _search_study(sweep, store, new_study=False)
    dists = {"train.lr": optuna.distributions.CategoricalDistribution(raw["search"]["space"]["train.lr"]["choices"])}
    for params, values in trials:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values))
    return path, sweep, study


def test_multi_objective_selects_the_cheapest_close_to_the_best_and_draws_the_front(tmp_path):
    from gemkr_lab.sweep.search import selected_trial

    trials = [({"train.lr": 0.001}, [0.90, 300.0]), ({"train.lr": 0.002}, [0.895, 100.0]),
              ({"train.lr": 0.003}, [0.80, 50.0]), ({"train.lr": 0.004}, [0.70, 400.0])]  # fmt: skip
    path, sweep, study = _fabricated(tmp_path, {"cost": "train_seconds", "select_within": 0.01}, trials)
    assert sweep.settings.directions == ("maximize", "minimize")
    assert selected_trial(study, sweep.settings).number == 1  # within 1 point of 0.90, and 3x cheaper
    strict = dataclasses.replace(sweep.settings, select_within=0.0)
    assert selected_trial(study, strict).number == 0
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out)]) == 0
    assert (out / "pareto.png").stat().st_size > 0
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert (
        "Selected: trial 1 (train.lr=0.002); rule: among" in summary
        and "within 0.01" in summary
        and "least train_seconds" in summary
    )
    assert "has not been evaluated" in summary  # no test figure before the final step
    assert load_experiment(str(out / SELECTED)).train.lr == 0.002
    table = (out / "trials.csv").read_text(encoding="utf-8")
    assert "R@5 (validation)" in table and "train_seconds (cost)" in table


def test_a_multi_objective_search_is_not_pruned(tmp_path, capsys):
    path = tmp_path / "search.yaml"
    text = GOOD.format(root=tmp_path / "runs") + "  cost: decode_ms_per_query\n  eval_every_n_steps: 10\n"
    path.write_text(text, encoding="utf-8")
    assert main(["sweep", str(path)]) == 2
    assert "multi-objective trials are not pruned" in capsys.readouterr().err


def test_single_objective_selection_keeps_the_earliest_of_equals(tmp_path):
    from gemkr_lab.sweep.search import selected_trial

    trials = [({"train.lr": 0.001}, [0.5]), ({"train.lr": 0.002}, [0.7]), ({"train.lr": 0.003}, [0.7])]
    _, sweep, study = _fabricated(tmp_path, {}, trials)
    assert selected_trial(study, sweep.settings).number == 1
    minimise = dataclasses.replace(sweep.settings, direction="minimize")
    assert selected_trial(study, minimise).number == 0
