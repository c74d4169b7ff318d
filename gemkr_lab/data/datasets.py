"""Where each benchmark's files live under its data root, and opening them with clear errors.

| dataset | corpus | queries | images | relevance |
|---|---|---|---|---|
| okvqa-gs112k | okvqa_train_corpus.csv | retriever_{train,test}.json (VRR) | images/ (COCO) | answers, exact |
| okvqa-wk21m | psgs_w100.tsv (DPR) | retriever_{train,test}.json | images/ | answers, lower-cased |
| remuq | corpus.csv (kid,text) | train.json, test.json (VRR layout) | imgs.tsv + imgs.lineidx | gold passage |
| synthetic | corpus.csv | retriever_{train,test}.json | images/ + boxes.json | gold passage |
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemkr_lab.data.images import FolderImages, TsvImages
from gemkr_lab.data.queries import DataError, Query, ReadReport, read_retriever_json


@dataclass(frozen=True)
class Layout:
    """File names of one benchmark under its data root."""

    corpus: str
    train: str
    test: str
    images: Literal["folder", "tsv"]
    relevance: Literal["answers", "gold"]
    match: Literal["exact", "lower"] = "exact"


LAYOUTS = {
    "okvqa-gs112k": Layout(
        "okvqa_train_corpus.csv", "retriever_train.json", "retriever_test.json", "folder", "answers"
    ),
    "okvqa-wk21m": Layout("psgs_w100.tsv", "retriever_train.json", "retriever_test.json", "folder", "answers", "lower"),
    "remuq": Layout("corpus.csv", "train.json", "test.json", "tsv", "gold"),
    "synthetic": Layout("corpus.csv", "retriever_train.json", "retriever_test.json", "folder", "gold"),
}


class Dataset:
    """One benchmark's files under `root`, checked on opening."""

    def __init__(self, name: str, root: str | Path) -> None:
        if name not in LAYOUTS:
            raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(LAYOUTS)}")
        self.name, self.root, self.layout = name, Path(root), LAYOUTS[name]
        needed = [self.layout.corpus, self.layout.test]
        needed += ["imgs.tsv", "imgs.lineidx"] if self.layout.images == "tsv" else ["images"]
        missing = [f for f in needed if not (self.root / f).exists()]
        if missing:
            raise DataError(
                f"{self.root}: missing {', '.join(missing)} for dataset {name!r} "
                f"(expected layout: corpus {self.layout.corpus}, queries {self.layout.train} / {self.layout.test})"
            )

    @property
    def corpus(self) -> Path:
        """The KB corpus file."""
        return self.root / self.layout.corpus

    def queries(self, split: Literal["train", "test"], report: ReadReport | None = None) -> list[Query]:
        """The split's queries (a missing train file is an error only when asked for)."""
        return read_retriever_json(self.root / getattr(self.layout, split), report)

    def has_split(self, split: str) -> bool:
        """Whether the split's query file exists."""
        return (self.root / getattr(self.layout, split)).is_file()

    def images(self) -> FolderImages | TsvImages:
        """The image store."""
        if self.layout.images == "tsv":
            return TsvImages(self.root / "imgs.tsv", self.root / "imgs.lineidx")
        return FolderImages(self.root / "images")

    def ground_truth_boxes(self) -> dict[str, list[dict]]:
        """Ground-truth object boxes per image id (only the synthetic world ships them)."""
        path = self.root / "boxes.json"
        if not path.is_file():
            raise DataError(f"{path}: no ground-truth boxes for dataset {self.name!r}; use detector='yolo'")
        return json.loads(path.read_text(encoding="utf-8"))
