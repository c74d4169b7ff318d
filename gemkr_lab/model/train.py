"""Fit a GeMKR model on a prepared dataset with Lightning; resume from the last checkpoint when asked."""

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.model import ModelConfig
from gemkr_lab.config.train import TrainConfig
from gemkr_lab.model.build import build_model_and_data
from gemkr_lab.model.checkpoints import LAST, AtomicCheckpointIO, CheckpointOnStop, resume_point
from gemkr_lab.model.history import TrainingHistory
from gemkr_lab.model.module import GeMKRModule
from gemkr_lab.model.progress import TrainingProgress


def fit(
    prepared: str | Path,
    data_root: str | Path,
    tokenizer: Any,
    out: str | Path,
    *,
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    resume: bool = True,
    limit_train: int | None = None,
    logger: Any = False,
    callbacks: list | None = None,
    accelerator: str | None = None,
) -> GeMKRModule:
    """Train for `train_config.max_steps` optimizer steps; checkpoints go to `out/checkpoints`.

    A checkpoint is written (atomically, see `gemkr_lab.model.checkpoints`) every
    `train_config.checkpoint_every_n_steps` optimizer steps, at the end, and before stopping on SIGTERM
    (`CheckpointOnStop`). With `resume`, the newest loadable
    one is continued exactly: weights, optimizer, schedule, RNG states and the data position within the epoch.
    `module.resumed_from_step` says which step it continued from (None: a fresh start).

    Under DDP (`train_config.strategy` ddp, `devices` D) `train_config.batch_size` is the micro-batch of each
    device: step k trains on exactly the examples of step k of one process with batch `batch_size` x D, with the
    same loss (the global batch's token mean, `GeMKRModule.training_step`). The history (`train/loss`, `train/lr`
    at step = optimizer steps done) goes to `logger` from `TrainingHistory`, restored with the checkpoint.
    """
    out = Path(out)
    module, data = build_model_and_data(
        prepared,
        data_root,
        tokenizer,
        model_config=model_config,
        data_config=data_config,
        train_config=train_config,
        limit_train=limit_train,
    )
    ckpt_dir = out / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        save_last=True,
        save_top_k=0,
        every_n_train_steps=train_config.checkpoint_every_n_steps,
        save_on_train_epoch_end=False,
    )
    trainer = L.Trainer(
        max_steps=train_config.max_steps,
        accumulate_grad_batches=train_config.accumulate_grad_batches,
        gradient_clip_val=train_config.gradient_clip_val,
        precision=train_config.precision,
        strategy=train_config.strategy,
        devices=train_config.devices,
        accelerator=accelerator or train_config.accelerator,
        plugins=[AtomicCheckpointIO()],
        deterministic=train_config.deterministic,
        default_root_dir=str(out),
        logger=logger,
        # the history first: a checkpoint written at a batch's end then holds that step's point
        # progress lines (stdout off a terminal, log.txt) read the step's losses before the history takes them
        callbacks=[
            TrainingProgress(out / "log.txt"),
            TrainingHistory(),
            checkpoint,
            CheckpointOnStop(ckpt_dir),
            *(callbacks or []),
        ],
        enable_progress_bar=sys.stderr.isatty(),  # quiet in logs and CI
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, train_config.max_steps // 20)),
        limit_val_batches=0,
        use_distributed_sampler=False,  # DDP: each rank takes its share of the global batch (EpochSampler)
    )
    start = resume_point(ckpt_dir, module) if resume else None  # one that does not fit is refused, named
    module.resumed_from_step = None  # set by GeMKRModule.on_load_checkpoint
    trainer.fit(module, datamodule=data, ckpt_path=str(start) if start else None)
    trainer.save_checkpoint(ckpt_dir / LAST)  # the final weights (max_steps need not be a multiple of N)
    module.datamodule = data  # type: ignore[attr-defined]
    return module


def run_device(train_config: TrainConfig) -> torch.device:
    """The device a run decodes on: the accelerator it trained on (Lightning hands the module back on the CPU)."""
    if train_config.accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if train_config.accelerator == "gpu":
        raise RuntimeError("train.accelerator=gpu but no CUDA device is visible; use auto or cpu")
    return torch.device("cpu")
