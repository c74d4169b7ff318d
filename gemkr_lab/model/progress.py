"""Training progress as lines: what a user tails while a run trains under nohup, Slurm or a sweep (issue #25).

Every `every_n_steps` optimizer steps (default: the trainer's `log_every_n_steps`), at the first step and at the
last, rank 0 writes one line

    train step 40/700  loss 2.3514  lr 2.00e-03  61.3 samples/s  ETA 3 min 35 s

to the run's `log.txt` and, when stdout is not a terminal, to stdout (on a terminal Lightning's bar shows the
same). A sweep's `run-cell` already has its stdout in `log.txt`: then the line goes there once. The loss is the
mean of the optimizer step's micro-batch losses (as `TrainingHistory` logs it); samples/s and the ETA count this
attempt's steps only (a resumed run does not count the steps it restored as fast ones).
"""

import os
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from gemkr_lab.progress import duration


class TrainingProgress(Callback):
    """Progress lines to `log` (the run's `log.txt`) and, off a terminal, to stdout."""

    def __init__(self, log: str | Path | None, every_n_steps: int | None = None) -> None:
        self.log_path = Path(log) if log is not None else None
        self.every_n_steps = every_n_steps
        self._losses: list[float] = []
        self._samples = 0
        self._step_at_batch_start = -1
        self._start_step = 0
        self._started = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        """The clock and the step count of this attempt start here."""
        self._start_step = trainer.global_step
        self._started = time.perf_counter()
        self._samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Remember the step, to tell whether this batch ends with an optimizer step."""
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Collect the micro-batch's loss and size; after an optimizer step, write a line when one is due."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:  # kept as a tensor: a float() here would sync the device every micro-batch
            self._losses.append(loss.detach() if hasattr(loss, "detach") else loss)
        self._samples += _batch_size(batch) * max(trainer.world_size, 1)
        step = trainer.global_step
        if step == self._step_at_batch_start:
            return  # accumulating
        losses, self._losses = self._losses, []
        every = self.every_n_steps or max(trainer.log_every_n_steps, 1)
        last = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if not trainer.is_global_zero or not (step == self._start_step + 1 or step % every == 0 or step == last):
            return
        exact = getattr(pl_module, "step_losses", None)  # the global token means, while `TrainingHistory` keeps them
        # Lightning hands back the loss divided by the accumulation
        scale = max(trainer.accumulate_grad_batches, 1)
        losses = [float(x) for x in exact] if exact else [float(x) * scale for x in losses]
        elapsed = time.perf_counter() - self._started
        done = step - self._start_step
        lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else float("nan")
        parts = [f"train step {step}" + (f"/{last}" if last else "")]
        parts.append(f"loss {sum(losses) / len(losses):.4f}" if losses else "loss n/a")
        parts.append(f"lr {lr:.2e}")
        parts.append(f"{self._samples / elapsed:.1f} samples/s" if elapsed > 0 else "samples/s n/a")
        if last and done > 0 and elapsed > 0:
            parts.append(f"ETA {duration((last - step) * elapsed / done)}")
        self.write("  ".join(parts))

    def write(self, line: str) -> None:
        """To stdout when it is not a terminal, and to the log unless stdout is that file already."""
        stdout = sys.stdout
        same = _same_file(stdout, self.log_path)
        if not _is_terminal(stdout):
            print(line, file=stdout, flush=True)
        if self.log_path is not None and not same:
            try:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            except OSError:
                pass  # progress never fails a run


def _batch_size(batch: Any) -> int:
    images = getattr(batch, "images", None)
    if images is not None and hasattr(images, "shape"):
        return int(images.shape[0])
    try:
        return len(batch)
    except TypeError:
        return 0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _same_file(stream: Any, path: Path | None) -> bool:
    """Whether `stream` writes to `path` (a sweep's run-cell has its stdout in the run's log.txt)."""
    if path is None:
        return False
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (AttributeError, OSError, ValueError):
        return False
