"""Which benchmark, how its queries become instructions, and how object regions are found.

Fields marked PREPARE_TIME are what `gemkr-lab prepare` consumes: prepared data is stamped with them, and a
run refuses prepared data whose stamp differs (naming the fields and the `prepare` command that matches).
The others are read when a run builds its inputs; those marked TEST_TIME only change the test split's inputs,
so they are not part of a run's training identity.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from gemkr_lab.config.checks import (
    PREPARE_TIME,
    PROBABILITY,
    TEST_TIME,
    AtLeast,
    Bounds,
    FieldError,
    check_fields,
)

DATASETS = ("okvqa-gs112k", "okvqa-wk21m", "remuq", "synthetic")


@dataclass(frozen=True)
class DataConfig:
    """Data preparation and instruction building."""

    dataset: Annotated[Literal["okvqa-gs112k", "okvqa-wk21m", "remuq", "synthetic"], PREPARE_TIME] = "synthetic"
    """The benchmark (its file layout under the data root; see gemkr_lab.data.datasets)."""
    clue_max_tokens: Annotated[int, AtLeast(1), PREPARE_TIME] = 9
    """Ablation "clue length": clue targets have at most this many tokens (paper cap: 9), and decoding stops
    there too unless `decoding.max_clue_tokens` sets its own cap."""
    clue_min_tokens: Annotated[int, AtLeast(1), PREPARE_TIME] = 2
    """Clue targets have at least this many tokens (a 1-token clue is rarely unique and says little; the
    harness's reference keeps 2, the spec's reconstruction proposes 4: gemkr_spec.md §3.3)."""
    clue_length_policy: Annotated[Literal["shortest_unique", "target_length"], PREPARE_TIME] = "shortest_unique"
    """Ablation "clue length": which unique window of a passage (answer-overlapping ones first) is the target.
    shortest_unique = the shortest (the reference); target_length = the one closest to `clue_target_tokens`
    tokens, as close as the passage allows within `clue_min_tokens`..`clue_max_tokens`."""
    clue_target_tokens: Annotated[Annotated[int, AtLeast(1)] | None, PREPARE_TIME] = None
    """Ablation "clue length": the length the target_length policy aims at (null with shortest_unique)."""
    detector: Annotated[Literal["yolo", "ground_truth", "none"], PREPARE_TIME] = "ground_truth"
    """Object regions from an ultralytics YOLO (weights from a local path), from the dataset's ground-truth
    boxes (the synthetic world has them), or none (object-prefix ablations that need no regions)."""
    yolo_weights: Annotated[str | None, PREPARE_TIME] = None
    """Local path of YOLO weights (.pt or .onnx); nothing is downloaded."""
    max_objects: Annotated[int, Bounds(ge=1, le=10), PREPARE_TIME] = 10
    """Regions kept per image, best confidence first (the official code pads to 10)."""
    detector_confidence: Annotated[float, PROBABILITY, PREPARE_TIME] = 0.25
    """YOLO confidence threshold (YOLOv7's detect.py default, which the official crops presumably used)."""
    detector_iou: Annotated[float, PROBABILITY, PREPARE_TIME] = 0.45
    """YOLO NMS IoU threshold."""
    index_backend: Annotated[Literal["fm", "sa"], PREPARE_TIME] = "fm"
    """KB index: FM-index (compact) or suffix array (faster locate, ~3x the disk); answers are identical."""
    carriage_returns_to_spaces: Annotated[bool, PREPARE_TIME] = False
    """Deviation from the official index builder, which turns only `\\n` into spaces: also turn `\\r` in corpus
    texts into spaces (on a corpus with carriage returns this changed 30 of 5,046 queries' scores)."""
    gs112k_test_queries: Annotated[Literal["auto", "gemkr", "vrr"], PREPARE_TIME] = "auto"
    """OKVQA-GS112K test queries: GeMKR's own `test.json` ("gemkr": the queries and answers its released
    result file is aligned with), VRR's `retriever_test.json` ("vrr"), or GeMKR's when present, else VRR's
    ("auto"). Other datasets have only their own query files ("gemkr" is refused there)."""
    validation_size: Annotated[
        Annotated[int, AtLeast(0)] | Annotated[float, Bounds(gt=0, lt=1)] | None, PREPARE_TIME
    ] = None
    """Held-out validation split (what searches tune on; the test split is only reported): training questions
    of whole images, drawn at random, that training never sees; an integer is a count of questions (at least,
    whole images are taken), a number in (0, 1) a fraction of them; None or 0 = no validation split (the paper
    trains on every training question)."""
    validation_seed: Annotated[int, AtLeast(0), PREPARE_TIME] = 0
    """Seed of the validation draw (the same seed and size give the same split)."""
    append_caption: bool = True
    """Ablation "caption in the query": append the image caption to the question, as the official code
    does. It leaks visual content into the text and so confounds visual ablations; off = question only."""
    zero_region_features_at_test: Annotated[bool, TEST_TIME] = False
    """Reproduce the official code's bug: region features are silently all zero at test time (its test
    loader groups feature files by the wrong key), while training sees them (gemkr_spec.md §7). Test time only:
    the cell decodes the reference's trained model."""
    object_order: Literal["confidence", "shuffled"] = "confidence"
    """Ablation "object order" (which objects fill the prefix slots, and so which 2 reach the LLM): confidence =
    best detection first (the harness's fix); shuffled = a fixed arbitrary order per image, standing for the
    official code's `os.listdir` order, which is arbitrary and filesystem-dependent (gemkr_spec.md §2.2, §7)."""
    max_rows_per_question: Annotated[int, AtLeast(1)] | None = None
    """Ablation "training-set shape": train on at most this many rows (positive passages with a clue) per question,
    the first ones in the prepared file; 1 = one row per question; None = every row (the harness's default)."""
    augment_train_images: bool = False
    """Deviation "training augmentation": training images get the official RandomResizedCrop (scale 0.5-1.0,
    bicubic) + CLIP normalisation (paper presets: on); off = the eval transform (resize) for training too.
    Test images and region crops always get the eval transform."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.validation_size == 0:  # one spelling of "none", so that 0 and null prepare the same data
            object.__setattr__(self, "validation_size", None)
        if self.clue_min_tokens > self.clue_max_tokens:
            raise FieldError("clue_min_tokens", self.clue_min_tokens, f"<= clue_max_tokens ({self.clue_max_tokens})")
        if self.clue_length_policy == "target_length" and not (
            self.clue_target_tokens is not None
            and self.clue_min_tokens <= self.clue_target_tokens <= self.clue_max_tokens
        ):
            bounds = f"clue_min_tokens..clue_max_tokens ({self.clue_min_tokens}..{self.clue_max_tokens})"
            raise FieldError("clue_target_tokens", self.clue_target_tokens, f"a length within {bounds}")
        if self.clue_length_policy == "shortest_unique" and self.clue_target_tokens is not None:
            raise FieldError(
                "clue_target_tokens", self.clue_target_tokens, "null with clue_length_policy 'shortest_unique'"
            )
        if self.gs112k_test_queries == "gemkr" and self.dataset != "okvqa-gs112k":
            raise FieldError(
                "gs112k_test_queries",
                "gemkr",
                f"'auto' or 'vrr' for dataset {self.dataset!r} (GeMKR's test.json is GS112K's)",
            )
        if self.detector == "yolo" and not self.yolo_weights:
            raise FieldError("yolo_weights", None, "a local weights file when detector is 'yolo'")
