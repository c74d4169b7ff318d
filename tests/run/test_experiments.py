"""Presets compose over the defaults; bad keys are named with a suggestion; every preset runs a step."""

import dataclasses
from pathlib import Path

import pytest
import torch

from gemkr_lab.config.experiment import EXPERIMENTS_DIR, ConfigError, load_experiment
from gemkr_lab.config.model import ModelConfig

PRESETS = sorted(str(p.relative_to(EXPERIMENTS_DIR))[: -len(".yaml")] for p in EXPERIMENTS_DIR.rglob("*.yaml"))


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
        (["model.use_gat=false"], "unknown key 'use_gat' in ModelConfig; did you mean 'use_gate'"),
        (["trian.max_steps=3"], "unknown key 'trian' in ExperimentConfig; did you mean 'train'"),
        (["model.attention_flow=triple"], "attention_flow must be 'dual' or 'joint'"),
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
    with pytest.raises(ConfigError, match=r"bad\.yaml: model: unknown key 'use_object_prefx'.*'use_object_prefix'"):
        load_experiment(str(bad))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_a_training_step_and_an_evaluation_batch(preset, tiny_world):
    """Paper presets run with their switches on tiny shapes (no weights here); tiny presets as they are."""
    from gemkr_lab.decoding import ClueDecoder
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.tokenize import load_tokenizer
    from gemkr_lab.model.datamodule import GeMKRDataModule
    from gemkr_lab.model.module import GeMKRModule

    world, prepared = tiny_world
    shrink = [
        f"data_root={world}",
        f"prepared={prepared}",
        "tokenizer=null",
        "data.dataset=synthetic",
        "data.detector=ground_truth",
        "model.vision_model=tiny-vit",
        "model.vision_weights=null",
        "model.llm=tiny-llama",
        "model.llm_dtype=float32",
        "train.precision=32-true",
    ]
    cfg = load_experiment(preset, shrink)
    tok = load_tokenizer(Path(world) / "tokenizer")
    module = GeMKRModule(cfg.model, cfg.train, len(tok))
    data = GeMKRDataModule(prepared, world, tok, cfg.data, module.model.vision, batch_size=2)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    opt = module.configure_optimizers()["optimizer"]
    loss = module.model(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    test_batch = next(iter(data.test_dataloader()))
    embeds, mask = module.model.prompt_embeds(test_batch)
    decoding = dataclasses.replace(cfg.decoding, num_groups=2, max_clue_tokens=3)
    records = ClueDecoder(module.model.llm, open_index(Path(prepared) / "index"), decoding).decode(
        test_batch.qids, inputs_embeds=embeds, attention_mask=mask
    )
    assert len(records) == 2
