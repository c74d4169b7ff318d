"""Training on the synthetic world: a tiny model overfits a small batch; a killed run resumes exactly."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gemkr_lab.config import DataConfig, ModelConfig, TrainConfig
from gemkr_lab.kb.tokenize import load_tokenizer
from gemkr_lab.model.checkpoints import previous
from gemkr_lab.model.module import lr_at
from gemkr_lab.model.train import fit


@pytest.fixture(scope="module")
def world(tiny_world):
    """The session's prepared synthetic world and its tokenizer."""
    w, p = map(Path, tiny_world)
    return w, p, load_tokenizer(w / "tokenizer")


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
    train = {"batch_size": 4, **train}
    cfg = TrainConfig(max_steps=steps, accumulate_grad_batches=1, warmup_steps=5, **train)
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


@pytest.mark.slow  # trains
@pytest.mark.parametrize("kill_at", [4, 5, 7])
def test_a_killed_run_resumes_mid_epoch_to_the_same_weights(world, tmp_path, kill_at):
    """8 rows in batches of 3 (drop_last off): epochs of 3 steps, checkpoints every 2 - mostly mid-epoch."""
    config = ModelConfig(vision_model="tiny-vit")  # LoRA with dropout: the RNG state must be restored too
    train = dict(lr=1e-3, deterministic=True, checkpoint_every_n_steps=2, batch_size=3)
    whole = _fit(world, tmp_path / "whole", 9, config, **train)
    with pytest.raises(_Killed):
        _fit(world, tmp_path / "cut", 9, config, callbacks=[_Crash(at_step=kill_at)], **train)
    resumed = _fit(world, tmp_path / "cut", 9, config, **train)
    assert resumed.resumed_from_step == kill_at // 2 * 2  # it continued from the last checkpoint, not step 0
    a, b = whole.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 9
    assert set(ckpt["state_dict"]) == {f"model.{k}" for k in resumed.model.checkpoint_state_dict()}


class _Sigterm(L.Callback):
    """Sends this process SIGTERM at the start of a given step, as scancel, a preemption or a stopped sweep does."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow  # trains
def test_a_sigterm_checkpoints_the_step_it_stops_at_and_the_resume_is_exact(world, tmp_path):
    """No periodic checkpoint before the stop: the one it resumes from was written because of the SIGTERM."""
    config = ModelConfig(vision_model="tiny-vit")
    train = dict(lr=1e-3, deterministic=True, checkpoint_every_n_steps=100, batch_size=3)
    whole = _fit(world, tmp_path / "whole", 9, config, **train)
    with pytest.raises(SIGTERMException):
        _fit(world, tmp_path / "cut", 9, config, callbacks=[_Sigterm(at_step=5)], **train)
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 6  # the step of the batch it was stopped in
    resumed = _fit(world, tmp_path / "cut", 9, config, **train)
    assert resumed.resumed_from_step == 6
    a, b = whole.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # trains
def test_an_unloadable_checkpoint_is_set_aside_and_the_previous_one_used(world, tmp_path):
    config = ModelConfig(vision_model="tiny-vit")
    train = dict(lr=1e-3, deterministic=True, checkpoint_every_n_steps=2, batch_size=3)
    with pytest.raises(_Killed):
        _fit(world, tmp_path / "cut", 9, config, callbacks=[_Crash(at_step=5)], **train)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    assert torch.load(previous(last), weights_only=False)["global_step"] == 2
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as a full disk once left it
    with pytest.warns(UserWarning, match="cannot be loaded"):
        resumed = _fit(world, tmp_path / "cut", 9, config, **train)
    assert resumed.resumed_from_step == 2
    assert list(last.parent.glob("last.ckpt.corrupt-*"))


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    from gemkr_lab.model import checkpoints

    io = checkpoints.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    before = path.read_bytes()

    def full(target, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(checkpoints, "write_bytes", full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert checkpoints.resume_point(tmp_path) == path


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
