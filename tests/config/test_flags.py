"""#24: `prepare`'s flags are generated from DataConfig's prepare-time fields, and checked as a preset's values."""

import pytest

from gemkr_lab.cli import PREPARE_FLAGS, build_parser
from gemkr_lab.config.checks import prepare_time_fields
from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.config.flags import build_from_flags, field_docs, given_fields


def _parse(*argv):
    return build_parser().parse_args(["prepare", "synthetic", "--data-root", "w", "--out", "o", *argv])


def test_every_prepare_time_field_is_a_flag_with_its_docstring_and_choices():
    assert set(PREPARE_FLAGS) == set(prepare_time_fields(DataConfig)) - {"dataset"}
    prep = build_parser()._subparsers._group_actions[0].choices["prepare"]
    actions = {a.dest: a for a in prep._actions}
    for name in PREPARE_FLAGS:
        assert f"--{name.replace('_', '-')}" in actions[name].option_strings
        assert actions[name].help.startswith(field_docs(DataConfig)[name][:40])
    assert actions["detector"].choices == ["yolo", "ground_truth", "none"]
    assert "--backend" in actions["index_backend"].option_strings  # the flag's older name still works


def test_given_flags_reach_the_config_and_the_rest_keep_the_defaults():
    args = _parse(
        "--clue-max-tokens", "5", "--backend", "sa", "--carriage-returns-to-spaces", "--validation-size", "0.2"
    )
    data = build_from_flags(DataConfig, {"dataset": "synthetic", **given_fields(args, PREPARE_FLAGS)})
    assert (data.clue_max_tokens, data.index_backend, data.carriage_returns_to_spaces) == (5, "sa", True)
    assert data.validation_size == 0.2 and data.detector == DataConfig().detector  # not given: the default
    args = _parse("--no-carriage-returns-to-spaces", "--clue-target-tokens", "null")
    assert given_fields(args, PREPARE_FLAGS) == {"carriage_returns_to_spaces": False, "clue_target_tokens": None}


def test_a_bad_value_names_the_flag():
    values = {"dataset": "synthetic", **given_fields(_parse("--max-objects", "11"), PREPARE_FLAGS)}
    with pytest.raises(ConfigError, match="--max-objects"):
        build_from_flags(DataConfig, values)
    values = {"dataset": "synthetic", **given_fields(_parse("--clue-max-tokens", "many"), PREPARE_FLAGS)}
    with pytest.raises(ConfigError, match="--clue-max-tokens"):
        build_from_flags(DataConfig, values)


def test_flags_with_an_experiment_are_refused_naming_the_override(capsys):
    from gemkr_lab.cli import main

    assert main(["prepare", "--experiment", "tiny-cpu/full", "--clue-max-tokens", "5"]) == 2
    assert "--set data.clue_max_tokens=5" in capsys.readouterr().err
