"""Object regions for object-aware prefix tuning: detect, keep the top `max_objects`, crop, cache per image.

Detection is an ultralytics YOLO whose weights come from a local path (nothing is downloaded), or the
dataset's ground-truth boxes. Regions are sorted by confidence (ties: larger box first), deterministic,
unlike the official code's `os.listdir` order. Crops are cut from the original-resolution image. An image
with no detection has no regions, which the model turns into all-zero region features.
"""

import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from gemkr_lab.data.queries import DataError
from gemkr_lab.io import write_text


@dataclass(frozen=True)
class Region:
    """One detected object: its box in original pixels (x0, y0, x1, y1), confidence and label."""

    box: tuple[int, int, int, int]
    score: float
    label: str


def _ordered(regions: Iterable[Region], max_objects: int) -> list[Region]:
    def area(r: Region) -> int:
        return (r.box[2] - r.box[0]) * (r.box[3] - r.box[1])

    return sorted(regions, key=lambda r: (-r.score, -area(r), r.box))[:max_objects]


def ground_truth_regions(boxes: dict[str, list[dict]], image_id: str, max_objects: int) -> list[Region]:
    """The dataset's ground-truth boxes of an image as regions of confidence 1."""
    if image_id not in boxes:
        raise DataError(f"no ground-truth boxes for image {image_id!r}")
    regions = [Region(tuple(int(v) for v in b["box"]), 1.0, str(b.get("label", "object"))) for b in boxes[image_id]]
    return _ordered(regions, max_objects)


def check_detector_packages(weights: str | Path) -> None:
    """Refuse YOLO weights whose optional packages are not installed (checked before any prepare step runs).

    ultralytics runs `.pt` weights itself; `.onnx` weights run on ONNX Runtime, which it would otherwise try to
    pip-install in the middle of the regions step (and fail offline).

    Raises:
        DataError: naming the weights and the `pip install` that brings what is missing.
    """
    import importlib.util

    weights = Path(weights)
    missing = [m for m in ("ultralytics",) if importlib.util.find_spec(m) is None]
    if weights.suffix.lower() == ".onnx":
        missing += [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        what = f"{weights.suffix} YOLO weights need" if weights.suffix.lower() == ".onnx" else "YOLO weights need"
        hint = ""
        if "onnxruntime" in missing:
            hint = " (onnxruntime-gpu instead of onnxruntime on a GPU machine), or give .pt weights"
        raise DataError(
            f"{weights}: {what} {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install {' '.join(missing)}{hint}"
        )


class YoloDetector:
    """An ultralytics YOLO loaded from a local weights file."""

    def __init__(self, weights: str | Path, confidence: float, iou: float, max_objects: int, imgsz: int = 640):
        weights = Path(weights)
        if not weights.is_file():
            raise DataError(f"{weights}: no such YOLO weights file (give a local .pt or .onnx; nothing is downloaded)")
        check_detector_packages(weights)
        from ultralytics import YOLO

        try:
            self.model = YOLO(str(weights), task="detect")
        except Exception as exc:  # ultralytics raises many types for a file that is not a model
            raise DataError(f"{weights}: not loadable as YOLO weights ({exc})") from exc
        self.confidence, self.iou, self.max_objects, self.imgsz = confidence, iou, max_objects, imgsz

    def detect(self, images: list[Image.Image]) -> list[list[Region]]:
        """Regions of each image, best first."""
        results = self.model.predict(
            images,
            conf=self.confidence,
            iou=self.iou,
            max_det=self.max_objects,
            imgsz=self.imgsz,
            device="cpu",
            verbose=False,
        )
        out = []
        for img, r in zip(images, results, strict=True):
            w, h = img.size
            names = r.names or {}
            regions = []
            for (x0, y0, x1, y1), score, cls in zip(
                r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist(), strict=True
            ):
                box = (max(0, int(x0)), max(0, int(y0)), min(w, round(x1)), min(h, round(y1)))
                if box[2] > box[0] and box[3] > box[1]:
                    regions.append(Region(box, float(score), str(names.get(int(cls), int(cls)))))
            out.append(_ordered(regions, self.max_objects))
        return out


CACHE_INPUTS = ".inputs.json"
"""In a region cache: the fingerprint of the detector settings and queries its detections were made with."""


def missing_regions(cache: Path, image_ids: Iterable[str]) -> list[str]:
    """The images whose cached regions are incomplete: no (readable) `<id>.json`, or a crop it lists is missing."""
    missing = []
    for image_id in image_ids:
        try:
            regions = json.loads((cache / f"{image_id}.json").read_text(encoding="utf-8"))
            complete = all((cache / image_id / f"{k}.png").is_file() for k in range(len(regions)))
        except (OSError, ValueError, TypeError):
            complete = False
        if not complete:
            missing.append(image_id)
    return missing


def save_regions(cache: Path, image_id: str, image: Image.Image, regions: list[Region]) -> None:
    """Cache an image's regions: `<id>.json` (boxes) and `<id>/<k>.png` crops at original resolution."""
    (cache / f"{image_id}.json").unlink(missing_ok=True)  # the image is not done until its crops are all there
    crops = cache / image_id
    if crops.is_dir():  # crops of an earlier, interrupted or other detection: none may survive under this one
        shutil.rmtree(crops)
    crops.mkdir(parents=True, exist_ok=True)
    for k, r in enumerate(regions):
        image.crop(r.box).save(crops / f"{k}.png")
    # written last, atomically (a temporary name of its own: concurrent prepares do not collide):
    # its presence marks the image as done
    write_text(cache / f"{image_id}.json", json.dumps([asdict(r) for r in regions]))


def load_regions(
    cache: Path, image_id: str, split: str, zero_at_test: bool = False
) -> list[tuple[Region, Image.Image]]:
    """Cached regions and crops of an image.

    With `zero_at_test` (DataConfig.zero_region_features_at_test), test images get no regions, which
    reproduces the official code's bug of all-zero region features at test time.
    """
    if zero_at_test and split == "test":
        return []
    path = cache / f"{image_id}.json"
    if not path.is_file():
        raise DataError(f"{path}: regions of image {image_id!r} were not prepared; run gemkr-lab prepare")
    regions = [Region(tuple(r["box"]), r["score"], r["label"]) for r in json.loads(path.read_text(encoding="utf-8"))]
    crops = [cache / image_id / f"{k}.png" for k in range(len(regions))]
    lost = [c for c in crops if not c.is_file()]
    if lost:
        raise DataError(
            f"{lost[0]}: a crop of image {image_id!r} is missing from the region cache; run gemkr-lab prepare "
            "again (it redoes the images whose regions are incomplete)"
        )
    return [(r, Image.open(c).convert("RGB")) for r, c in zip(regions, crops, strict=True)]
