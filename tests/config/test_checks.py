"""Every field of every config dataclass is checked at load, from its annotation: a property over all fields."""

import dataclasses
import json
import subprocess
import sys
import types
from typing import Annotated, Literal, Union, get_args, get_origin, get_type_hints

import pytest

from gemkr_lab.config.checks import Bounds, load_yaml
from gemkr_lab.config.experiment import ConfigError, ExperimentConfig, load_experiment


def _leaves(cls, prefix=""):
    """(dotted key, annotation) of every non-dataclass field reachable from `cls`."""
    hints = get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaves(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


FIELDS = list(_leaves(ExperimentConfig))


def _bad_values(hint) -> list[str]:
    """Override values (as typed on a command line) that do not fit `hint`."""
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extras = get_args(hint)
        out = _bad_values(base)
        for b in (e for e in extras if isinstance(e, Bounds)):
            num = int if base is int else float
            if b.ge is not None:
                out.append(str(num(b.ge - 1)))
            if b.gt is not None:
                out.append(str(num(b.gt)))
            if b.le is not None:
                out.append(str(num(b.le + 1)))
        return out
    if origin in (Union, types.UnionType):
        options = [o for o in get_args(hint) if o is not type(None)]
        # a value bad for every option: nonsense text is bad unless some option takes any string
        takes_text = any(o is str for o in options)
        out = [] if takes_text else ["nonsense-value"]
        if len(options) == 1:
            out += [v for v in _bad_values(options[0]) if v != "null"]
        return out
    if origin is Literal:
        return ["not-a-choice", "1"]
    if origin is tuple:
        return ["5", "{a: 1}"]
    if hint is bool:
        return ["flase", "nope", "1x", "1", "yes"]
    if hint is int:
        return ["abc", "2.5", "true", "null"]
    if hint is float:
        return ["fast", "true", "nan", ".inf", "null"]
    if hint is str:
        return ["123", "null", "[a]"]
    raise AssertionError(f"no bad values for {hint!r}: teach this test the new annotation")


CASES = [(key, bad) for key, hint in FIELDS for bad in _bad_values(hint) if key != "name"]


def _kinds(hint) -> set:
    origin = get_origin(hint)
    if origin is Annotated:
        return {Annotated} | _kinds(get_args(hint)[0])
    if origin in (Union, types.UnionType, tuple):
        return {origin}.union(*(_kinds(a) for a in get_args(hint) if a is not Ellipsis))
    return {origin or hint}


def test_every_field_kind_is_covered():
    kinds = set().union(*(_kinds(h) for _, h in FIELDS))
    assert {bool, int, float, str, Annotated, Literal, types.UnionType, tuple} <= kinds
    assert len(FIELDS) > 50 and len(CASES) > 200


@pytest.mark.parametrize(("key", "bad"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_bad_value_is_refused_naming_the_key(key, bad):
    with pytest.raises(ConfigError) as err:
        load_experiment("tiny-cpu/full", [f"{key}={bad}"])
    message = str(err.value)
    assert key.split("[")[0] in message and f"override '{key}={bad}'" in message, message
    assert "expected" in message


@pytest.mark.parametrize(("key", "hint"), FIELDS, ids=[k for k, _ in FIELDS])
def test_the_default_value_round_trips(key, hint, tmp_path):
    """The checks do not refuse what the defaults are (each default, written as an override, loads back)."""
    empty = tmp_path / "defaults.yaml"
    empty.write_text("{}\n")
    default = ExperimentConfig()
    for part in key.split("."):
        default = getattr(default, part)
    if key == "decoding.max_clue_tokens":
        default = 9
    raw = json.dumps(list(default) if isinstance(default, tuple) else default)
    config = load_experiment(str(empty), [f"{key}={raw}"])
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    assert value == default


def test_yaml_booleans_and_floats_follow_yaml_1_2():
    assert load_yaml("true") is True and load_yaml("False") is False
    assert load_yaml("yes") == "yes" and load_yaml("off") == "off"  # strings, refused for bool fields
    assert load_yaml("1e-5") == 1e-5 and load_yaml("6.0e-5") == 6e-5 and load_yaml("3") == 3


def test_cross_field_rules_name_the_key():
    for override, key in (
        ("data.clue_min_tokens=10", "data.clue_min_tokens"),
        ("model.prefix_layers=5", "model.prefix_layers"),  # tiny-vit has 4 blocks
        ("model.object_tokens=11", "model.object_tokens"),
        ("model.tiny_llm.num_key_value_heads=3", "model.tiny_llm.num_key_value_heads"),
        ("data.detector=yolo", "data.yolo_weights"),
        ("model.vision_model=ViT-Nope", "model.vision_model"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_experiment("tiny-cpu/full", [override])


def test_a_bad_value_in_a_preset_names_its_file_and_line(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("base: tiny-cpu/full\ntrain:\n  lr: 0.1\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"train.max_steps = 'lots': expected an integer .*p.yaml:4"):
        load_experiment(str(preset))
    # an override replaces the preset's value, and then the override is named
    with pytest.raises(ConfigError, match=r"from override 'train.max_steps=-1'"):
        load_experiment(str(preset), ["train.max_steps=-1"])


def test_clue_length_is_one_knob():
    twelve = load_experiment("tiny-cpu/clue-length-12")
    assert twelve.data.clue_max_tokens == 12 and twelve.decoding.max_clue_tokens == 12
    apart = load_experiment("tiny-cpu/full", ["data.clue_max_tokens=7", "decoding.max_clue_tokens=4"])
    assert apart.data.clue_max_tokens == 7 and apart.decoding.max_clue_tokens == 4  # explicitly apart
    assert load_experiment("tiny-cpu/full").decoding.max_clue_tokens == 9


BAD_CLI = [
    "model.use_gate=flase",
    "train.lr=fast",
    "decoding.diversity_penalty=-1",
    "model.prefix_layers=-3",
    "train.max_steps=abc",
    "decoding.constrained=maybe",
    "model.lora_r=0",
    "train.batch_size=2.5",
    "data.append_caption=1x",
]


@pytest.mark.parametrize("override", BAD_CLI)
def test_the_cli_refuses_before_any_work(tmp_path, override, capsys):
    from gemkr_lab.cli import main

    root = tmp_path / "runs"
    code = main(["train", "tiny-cpu/full", override, "--root", str(root), "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert override.split("=")[0] in err and "Traceback" not in err
    assert not root.exists()


@pytest.mark.slow  # a fresh interpreter
def test_the_cli_refusal_is_one_line_in_a_fresh_process(tmp_path):
    root = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "gemkr_lab.cli", "train", "tiny-cpu/no-gate", "model.use_gate=nope", f"--root={root}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gemkr-lab: error: model.use_gate = 'nope': expected true or false (from override 'model.use_gate=nope')"
    ]
    assert not root.exists() and list(tmp_path.iterdir()) == []
