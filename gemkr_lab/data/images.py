"""Image stores: COCO-style files in a folder, or ReMuQ's base64 `imgs.tsv`.

OK-VQA and the synthetic world name image files by id; ReMuQ keeps `image_id<TAB>base64` lines addressed
through `imgs.lineidx` (one byte offset per line; image i is on line `i % 10_000_000`).
"""

import base64
import binascii
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gemkr_lab.data.queries import DataError

_SUFFIXES = (".jpg", ".jpeg", ".png")


class FolderImages:
    """Images named by id (`COCO_val2014_000000297147.jpg`), flat or in per-split subfolders."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such image folder")

    def path(self, image_id: str) -> Path:
        """The file of an image id (raises DataError naming where it looked)."""
        split = image_id.split("_")[1] if image_id.startswith("COCO_") else ""
        for folder in (self.root, self.root / split):
            for suffix in _SUFFIXES:
                p = folder / f"{image_id}{suffix}"
                if p.is_file():
                    return p
        raise DataError(f"image {image_id!r} not found under {self.root} (tried {', '.join(_SUFFIXES)})")

    def load(self, image_id: str) -> Image.Image:
        """The image as RGB."""
        path = self.path(image_id)
        try:
            return Image.open(path).convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc


class TsvImages:
    """ReMuQ/WebQA images: `imgs.tsv` lines `image_id<TAB>base64` and `imgs.lineidx` byte offsets."""

    def __init__(self, tsv: str | Path, lineidx: str | Path) -> None:
        self.tsv, self.lineidx = Path(tsv), Path(lineidx)
        for p in (self.tsv, self.lineidx):
            if not p.is_file():
                raise DataError(f"{p}: no such file (ReMuQ images need imgs.tsv and imgs.lineidx)")
        self.offsets = np.loadtxt(self.lineidx, dtype=np.int64, ndmin=1)

    def load(self, image_id: str) -> Image.Image:
        """Seek to the image's line, check the id on it, decode the base64 JPEG."""
        line_no = int(image_id) % 10_000_000
        if not 0 <= line_no < self.offsets.shape[0]:
            raise DataError(f"image {image_id}: line {line_no} is beyond {self.lineidx} ({self.offsets.shape[0]})")
        with open(self.tsv, "rb") as fh:
            fh.seek(int(self.offsets[line_no]))
            line = fh.readline().rstrip(b"\r\n")
        stored, _, payload = line.partition(b"\t")
        if stored.decode(errors="replace") != str(image_id):
            raise DataError(f"{self.tsv}: line {line_no} holds image {stored!r}, not {image_id} (stale lineidx?)")
        try:
            raw = base64.b64decode(payload, validate=True)
            return Image.open(io.BytesIO(raw)).convert("RGB")
        except (binascii.Error, ValueError, OSError, UnidentifiedImageError) as exc:
            raise DataError(
                f"{self.tsv}: image {image_id} (line {line_no}): truncated or invalid base64 image"
            ) from exc
