"""Object regions for object-aware prefix tuning: detect, keep the top `max_objects`, crop, cache per image.

Detection is an ultralytics YOLO whose weights come from a local path (nothing is downloaded), or the
dataset's ground-truth boxes. Regions are sorted by confidence (ties: larger box first), deterministic,
unlike the official code's `os.listdir` order. Crops are cut from the original-resolution image. An image
with no detection has no regions, which the model turns into all-zero region features.
"""

import json
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


class YoloDetector:
    """An ultralytics YOLO loaded from a local weights file."""

    def __init__(self, weights: str | Path, confidence: float, iou: float, max_objects: int, imgsz: int = 640):
        weights = Path(weights)
        if not weights.is_file():
            raise DataError(f"{weights}: no such YOLO weights file (give a local .pt or .onnx; nothing is downloaded)")
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


def save_regions(cache: Path, image_id: str, image: Image.Image, regions: list[Region]) -> None:
    """Cache an image's regions: `<id>.json` (boxes) and `<id>/<k>.png` crops at original resolution."""
    crops = cache / image_id
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
    return [(r, Image.open(cache / image_id / f"{k}.png").convert("RGB")) for k, r in enumerate(regions)]
