"""The training history (one point per logged optimizer step), kept in the checkpoints so that it survives kills.

A killed attempt loses what its logger had not yet written (an offline W&B run buffers its file: a SIGKILL
lost every point of a short run), and Lightning's own step logging happens after the batch's checkpoint is
saved. Here the point of optimizer step s (s updates done) is made at that batch's end, before any checkpoint
of step s, so a checkpoint of step c holds every point up to c. A resumed attempt hands those points to its
loggers again (`replay`: a logger that knows which steps its run already holds skips them, see
`gemkr_lab.tracking.wandb_run.StepWandbLogger`) and then logs the steps it trains itself: one history, each
step once, in order, whatever was lost with the killed attempt.
"""

from typing import Any

from lightning.pytorch.callbacks import Callback


class TrainingHistory(Callback):
    """One point every `log_every_n_steps` optimizer steps, checkpointed and handed to the loggers.

    A point is `train/loss` (the mean of the optimizer step's micro-batch losses) and `train/lr`, logged at
    step = optimizer steps done.
    """

    def __init__(self) -> None:
        self.points: list[tuple[int, dict[str, float]]] = []
        self._step_at_batch_start = -1
        self._replay = False

    def on_train_start(self, trainer, pl_module) -> None:
        """A resumed attempt first hands the restored points to the loggers."""
        if self._replay and trainer.is_global_zero:
            for step, metrics in self.points:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step)
        self._replay = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Remember the step, to tell whether this batch ends with an optimizer step."""
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After an optimizer step: make its point (every `log_every_n_steps` steps and at the last step)."""
        step = trainer.global_step
        if step == self._step_at_batch_start:
            return  # accumulating
        losses, pl_module.step_losses = pl_module.step_losses, []
        every = max(trainer.log_every_n_steps, 1)
        if not losses or (step % every and step != trainer.max_steps):
            return
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        point = {"train/loss": sum(float(x) for x in losses) / len(losses), "train/lr": lr}
        self.points.append((step, point))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(point, step=step)

    def state_dict(self) -> dict[str, Any]:
        """The points so far (plain lists: checkpoints load with weights_only)."""
        return {"points": [[step, dict(metrics)] for step, metrics in self.points]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the restored history; `on_train_start` replays it to the loggers."""
        self.points = [(int(step), dict(metrics)) for step, metrics in state_dict.get("points", [])]
        self._replay = True
