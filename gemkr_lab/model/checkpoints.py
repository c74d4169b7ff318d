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
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

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


def resume_point(directory: str | Path) -> Path | None:
    """The newest checkpoint in `directory` that loads; unloadable ones are set aside with a warning."""
    last = Path(directory) / LAST
    for candidate in (last, last.with_name(last.name + ".new"), previous(last)):  # newest first
        if not candidate.is_file():
            continue
        try:
            torch.load(candidate, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated, zero bytes, bit rot: any failure means unusable
            aside = candidate.with_name(f"{candidate.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(candidate, aside)
            reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"{candidate}: cannot be loaded ({reason}); set aside as {aside.name}", stacklevel=2)
            continue
        if candidate != last:  # make the usable one the one Lightning resumes from
            os.replace(candidate, last)
        return last
    return None
