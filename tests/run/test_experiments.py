"""Presets compose over the defaults; bad keys are named with a suggestion.

Every preset's own test (it loads, its defining switch takes effect, tiny presets train) is in test_presets.py.
"""

import dataclasses

import pytest

from gemkr_lab.config.experiment import ConfigError, load_experiment
from gemkr_lab.config.model import ModelConfig


def test_presets_are_diffs_over_the_defaults():
    full = load_experiment("tiny-cpu/full")
    assert full.model.vision_model == "tiny-vit" and full.train.max_steps > 0
    assert full.model.attention_flow == ModelConfig().attention_flow  # untouched fields keep the defaults
    joint = load_experiment("tiny-cpu/joint-attention")
    assert joint.model.attention_flow == "joint"
    assert dataclasses.replace(joint.model, attention_flow="dual") == full.model  # the only difference
    seven, thirteen = load_experiment("paper/gemkr-7b"), load_experiment("paper/gemkr-13b")
    assert seven.model.vision_model == "EVA-g-14-39" and thirteen.model.llm.endswith("llama-13b")


def test_overrides_parse_values_and_nested_keys():
    cfg = load_experiment("tiny-cpu/full", ["train.max_steps=7", "model.use_gate=false", "decoding.stop_at_count=1"])
    assert cfg.train.max_steps == 7 and cfg.model.use_gate is False and cfg.decoding.stop_at_count == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.use_gat=false"], "unknown key 'model.use_gat' in ModelConfig; did you mean 'model.use_gate'"),
        (["trian.max_steps=3"], "unknown key 'trian' in ExperimentConfig; did you mean 'train'"),
        (["model.attention_flow=triple"], "model.attention_flow = 'triple': expected one of 'dual', 'joint'"),
        (["max_steps"], "write key=value"),
    ],
)
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment("tiny-cpu/full", overrides)


def test_unknown_preset_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'tiny-cpu/full'"):
        load_experiment("tiny-cpu/ful")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  use_object_prefx: true\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml:2: unknown key 'model.use_object_prefx'.*'model.use_object_prefix'"
    ):
        load_experiment(str(bad))
