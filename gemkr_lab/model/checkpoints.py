"""Checkpoints that survive kills and full disks: atomic writes, one previous good copy, corrupt ones set aside.

Lightning's own IO writes the checkpoint file in place (or stages it elsewhere and moves it across
filesystems): a kill or a full disk mid-write leaves a truncated `last.ckpt` that every later resume dies on.
Here every checkpoint is written to a temporary file in its own directory, fsynced and renamed over the old
one, which is first kept as `<name>.prev` - so a good checkpoint exists at every instant. On resume, a
checkpoint that cannot be loaded is renamed `<name>.corrupt-<time>` with a warning and the previous one used.
"""

import io
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.io import write_bytes

LAST = "last.ckpt"


def previous(path: Path) -> Path:
    """Where the checkpoint before `path` is kept."""
    return path.with_name(path.name + ".prev")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints atomically in their own directory and keeps the previous one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Serialise in memory, write beside the target, then rotate: target -> .prev, new -> target."""
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialising fails before anything on disk changes
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(path.name + ".new")
        write_bytes(staged, buffer.getvalue())  # temp + fsync + rename: `staged` is whole or absent
        if path.exists():
            os.replace(path, previous(path))
        os.replace(staged, path)

    def remove_checkpoint(self, path) -> None:
        """Remove a checkpoint Lightning no longer wants (and its previous copy)."""
        for p in (Path(path), previous(Path(path))):
            p.unlink(missing_ok=True)


class CheckpointOnStop(Callback):
    """On SIGTERM (a stopped sweep worker, a cancelled, preempted or timed-out Slurm job) checkpoint, then stop.

    Lightning turns a SIGTERM into a stop after the current batch (`SIGTERMException`); this callback first
    writes `last.ckpt` at that batch's end when the batch completed an optimizer step, from the same hook, so
    the state is the one a periodic checkpoint would hold and the resume is exact. A SIGTERM in the middle of
    gradient accumulation keeps the last checkpoint (the accumulated gradients are not in any checkpoint).
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LAST
        self._step_at_batch_start = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Remember the step, to tell whether this batch ends with an optimizer step."""
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Checkpoint when a SIGTERM has arrived and this batch stepped the optimizer."""
        if trainer.received_sigterm and trainer.global_step > self._step_at_batch_start:
            trainer.save_checkpoint(self.path)


def check_fits(state: Mapping[str, Any], module: torch.nn.Module, path: Path) -> None:
    """Refuse a checkpoint whose tensors do not fit `module` (other shapes, or parameters it does not have).

    Such a checkpoint was saved by another model: another model config, or another LLM at the same path.
    Loading it fails deep in torch with a size-mismatch traceback; here the error names the file, the first
    differing keys with both shapes, and what to do. A bad input, not a transient failure: never retried.
    """
    own = module.state_dict()
    unknown = sorted(k for k in state if k not in own)
    differ = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if not differ and not unknown:
        return
    shown = [f"{k}: {list(state[k].shape)} in the checkpoint, {list(own[k].shape)} in the model" for k in differ[:2]]
    shown += [f"{k}: not in the model" for k in unknown[: max(0, 2 - len(shown))]]
    more = len(differ) + len(unknown) - len(shown)
    raise ConfigError(
        f"{path}: does not fit this run's model ({'; '.join(shown)}{f'; and {more} more' if more else ''}); it was "
        "saved by another model config or another LLM at the same path. Use the config and LLM it was trained "
        "with, or train again (move the checkpoint away)"
    )


def resume_point(directory: str | Path, module: torch.nn.Module | None = None) -> Path | None:
    """The newest checkpoint in `directory` that loads; unloadable ones are set aside with a warning.

    With `module`, a loadable checkpoint that does not fit it is refused (`check_fits`), not set aside: it is
    sound, and the config is what changed.
    """
    last = Path(directory) / LAST
    for candidate in (last, last.with_name(last.name + ".new"), previous(last)):  # newest first
        if not candidate.is_file():
            continue
        try:
            loaded = torch.load(candidate, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated, zero bytes, bit rot: any failure means unusable
            aside = candidate.with_name(f"{candidate.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(candidate, aside)
            reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"{candidate}: cannot be loaded ({reason}); set aside as {aside.name}", stacklevel=2)
            continue
        if module is not None:
            check_fits(loaded.get("state_dict", {}), module, candidate)
        if candidate != last:  # make the usable one the one Lightning resumes from
            os.replace(candidate, last)
        return last
    return None
