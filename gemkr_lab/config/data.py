"""Which benchmark, how its queries become instructions, and how object regions are found."""

from dataclasses import dataclass
from typing import Literal

DATASETS = ("okvqa-gs112k", "okvqa-wk21m", "remuq", "synthetic")


@dataclass(frozen=True)
class DataConfig:
    """Data preparation and instruction building."""

    dataset: Literal["okvqa-gs112k", "okvqa-wk21m", "remuq", "synthetic"] = "synthetic"
    """The benchmark (its file layout under the data root; see gemkr_lab.data.datasets)."""
    append_caption: bool = True
    """Ablation "caption in the query": append the image caption to the question, as the official code
    does. It leaks visual content into the text and so confounds visual ablations; off = question only."""
    clue_max_tokens: int = 9
    """Ablation "clue length": clue targets have at most this many tokens (paper cap: 9)."""
    clue_min_tokens: int = 2
    """Clue targets have at least this many tokens (a 1-token clue is rarely unique and says little)."""
    detector: Literal["yolo", "ground_truth", "none"] = "ground_truth"
    """Object regions from an ultralytics YOLO (weights from a local path), from the dataset's ground-truth
    boxes (the synthetic world has them), or none (object-prefix ablations that need no regions)."""
    yolo_weights: str | None = None
    """Local path of YOLO weights (.pt or .onnx); nothing is downloaded."""
    max_objects: int = 10
    """Regions kept per image, best confidence first (the official code pads to 10)."""
    detector_confidence: float = 0.25
    """YOLO confidence threshold (YOLOv7's detect.py default, which the official crops presumably used)."""
    detector_iou: float = 0.45
    """YOLO NMS IoU threshold."""
    zero_region_features_at_test: bool = False
    """Reproduce the official code's bug: region features are silently all zero at test time (its test
    loader groups feature files by the wrong key), while training sees them (gemkr_spec.md §7)."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if not 1 <= self.clue_min_tokens <= self.clue_max_tokens:
            raise ValueError(
                f"need 1 <= clue_min_tokens <= clue_max_tokens, got {self.clue_min_tokens}, {self.clue_max_tokens}"
            )
        if self.detector not in ("yolo", "ground_truth", "none"):
            raise ValueError(f"detector must be 'yolo', 'ground_truth' or 'none', got {self.detector!r}")
        if not 1 <= self.max_objects <= 10:
            raise ValueError(f"max_objects must be in 1..10, got {self.max_objects}")
