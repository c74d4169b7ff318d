"""The LightningModule: loss, AdamW with the paper's schedule, trainable-only checkpoints.

Checkpoints also carry the RNG states, so that a resumed run continues exactly.
"""

import math
import random

import lightning as L
import numpy as np
import torch

from gemkr_lab.config.model import ModelConfig
from gemkr_lab.config.train import TrainConfig
from gemkr_lab.model.gemkr import Batch, GeMKR
from gemkr_lab.numerics import hold_kernels


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step `step`: linear warmup to `lr`, then cosine to `min_lr`.

    The warmup starts from `warmup_start_lr` and lies inside the cosine horizon, as in the official runner. With
    `warmup_unit` "micro_batches" the schedule counts micro-batches, as the official runner steps it every
    iteration: optimizer step s takes the rate of its last micro-batch, s x accumulate + accumulate - 1, the
    warmup spans `warmup_steps` micro-batches and the cosine `max_steps` x accumulate.
    """
    if cfg.warmup_unit == "micro_batches":
        acc = cfg.accumulate_grad_batches
        t, horizon = step * acc + acc - 1, cfg.max_steps * acc
    else:
        t, horizon = step, cfg.max_steps
    if t < cfg.warmup_steps:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * t / max(cfg.warmup_steps, 1)
    progress = min(t / max(horizon, 1), 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class GeMKRModule(L.LightningModule):
    """Trains `GeMKR` on clue targets."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, vocab_size: int) -> None:
        super().__init__()
        self.model_config, self.train_config = model_config, train_config
        hold_kernels(train_config.portable_cpu_numerics)  # oneDNN out: portable numerics (gemkr_lab.numerics)
        self.model = GeMKR(model_config, vocab_size)
        self.strict_loading = False  # checkpoints hold the trainable parameters only
        # the global loss of each micro-batch since the last optimizer step, left on the device: read (a host
        # sync) only when `TrainingHistory` makes a point, not at every micro-batch
        self.step_losses: list[torch.Tensor] = []

    def on_fit_start(self) -> None:
        """Print what is trained, per component."""
        if self.trainer.is_global_zero:
            parts = ", ".join(f"{k} {v:,}" for k, v in self.model.components().items())
            print(f"trainable parameters: {parts}")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Cross-entropy on clue tokens and EOS: the token mean of the global batch, under DDP too.

        Each rank holds its share of the global batch (`EpochSampler`) and sums its tokens' losses; dividing by
        the target tokens of all ranks (all-reduced) and multiplying by the world size, because DDP averages the
        ranks' gradients, gives exactly the gradient of the single-process loss of the same global batch (ranks
        hold different numbers of tokens, so the mean of per-rank means would not). The value kept for the
        history (`step_losses`, logged by `TrainingHistory`) is that global token mean.
        """
        total, count = self.model.loss_terms(batch)
        strategy, world = self.trainer.strategy, self.trainer.world_size
        tokens = strategy.reduce(count.detach().to(total.dtype).clone(), reduce_op="sum")  # all ranks' tokens
        loss = total * world / tokens
        mean = strategy.reduce(total.detach().clone(), reduce_op="sum") / tokens
        self.step_losses.append(mean)
        self.log("train/loss", mean, prog_bar=True, logger=False, batch_size=batch.images.shape[0])
        return loss

    def configure_optimizers(self):
        """AdamW: decay on >= 2-D parameters only; the schedule steps every optimizer step."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": self.train_config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=self.train_config.lr, betas=(0.9, 0.999))
        cfg = self.train_config
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, cfg) / cfg.lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the trained (and randomly initialised frozen) parameters; store the RNG states for an exact resume."""
        keep = {f"model.{k}" for k in self.model.checkpoint_state_dict()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng"] = {  # plain tensors and tuples: Lightning loads checkpoints with weights_only=True
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the RNG states saved with the checkpoint; note the step resumed from."""
        self.resumed_from_step = int(checkpoint.get("global_step", 0))
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(rng["python"])
