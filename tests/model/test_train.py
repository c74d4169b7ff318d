"""Training on the synthetic world: a tiny model overfits a small batch; a killed run resumes exactly."""

import lightning as L
import pytest
import torch

from gemkr_lab.config import DataConfig, ModelConfig, TrainConfig
from gemkr_lab.data.prepare import Preparer
from gemkr_lab.data.world import make_world
from gemkr_lab.kb.tokenize import load_tokenizer
from gemkr_lab.model.module import lr_at
from gemkr_lab.model.train import fit


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    make_world(root / "w", seed=0)
    Preparer(DataConfig(), root / "w", root / "p", progress=False).run()
    return root / "w", root / "p", load_tokenizer(root / "w" / "tokenizer")


class _Killed(RuntimeError):
    pass


class _Crash(L.Callback):
    """Dies at the start of a given step, as a killed process would (its last checkpoint is on disk)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise _Killed(f"killed at step {self.at_step}")


def _fit(world, out, steps, model_config, callbacks=None, **train):
    w, p, tok = world
    cfg = TrainConfig(max_steps=steps, batch_size=4, accumulate_grad_batches=1, warmup_steps=5, **train)
    data = DataConfig()
    return fit(
        p,
        w,
        tok,
        out,
        model_config=model_config,
        data_config=data,
        train_config=cfg,
        limit_train=8,
        accelerator="cpu",
        callbacks=callbacks,
    )


@pytest.mark.slow
def test_a_tiny_model_overfits_a_small_batch(world, tmp_path):
    config = ModelConfig(vision_model="tiny-vit", use_lora=False, train_vision=True)
    module = _fit(world, tmp_path, 300, config, lr=3e-3, min_lr=3e-4)
    assert float(module.trainer.callback_metrics["train/loss"]) < 0.1


def test_a_killed_run_resumes_to_the_same_weights(world, tmp_path):
    config = ModelConfig(vision_model="tiny-vit")  # LoRA with dropout: the RNG state must be restored too
    whole = _fit(world, tmp_path / "whole", 8, config, lr=1e-3, deterministic=True)
    with pytest.raises(_Killed):  # killed in epoch 3 of 4; the checkpoint of epoch 2 survives
        _fit(world, tmp_path / "cut", 8, config, callbacks=[_Crash(at_step=5)], lr=1e-3, deterministic=True)
    resumed = _fit(world, tmp_path / "cut", 8, config, lr=1e-3, deterministic=True)
    a, b = whole.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert set(ckpt["state_dict"]) == {f"model.{k}" for k in resumed.model.checkpoint_state_dict()}


def test_checkpoints_hold_frozen_weights_only_when_they_were_random():
    from gemkr_lab.model.gemkr import GeMKR

    tiny = GeMKR(ModelConfig(vision_model="tiny-vit"), 64).checkpoint_state_dict()
    assert any(k.startswith("vision.tower.") for k in tiny)  # random frozen tower: saved, or evaluate redraws it
    assert any("base_layer" in k for k in tiny)  # random frozen tiny LLM under LoRA: saved too
    real = ModelConfig(vision_model="EVA-g-14-39", vision_weights="eva_vit_g.pth", llm="models/llama-7b")
    paper = GeMKR(real, 32000, device="meta", llm_shape="llama-7b")
    keys = paper.checkpoint_state_dict()
    trainable = {n for n, p in paper.named_parameters() if p.requires_grad}
    assert set(keys) == trainable  # pretrained frozen weights never go into checkpoints
    assert not any("base_layer" in k or "tower" in k for k in keys)


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=6e-5, min_lr=1e-5, warmup_start_lr=1e-6, warmup_steps=200, max_steps=6000)
    assert lr_at(0, cfg) == pytest.approx(1e-6)
    assert lr_at(100, cfg) == pytest.approx((1e-6 + 6e-5) / 2)
    assert lr_at(200, cfg) < 6e-5 and lr_at(200, cfg) > lr_at(3000, cfg) > lr_at(6000, cfg) == pytest.approx(1e-5)
