"""Where each benchmark's files live under its data root, and opening them with clear errors.

| dataset | corpus | queries | images | relevance |
|---|---|---|---|---|
| okvqa-gs112k | okvqa_train_corpus.csv | retriever_{train,test}.json, test.json (*) | images/ (COCO) | answers, exact |
| okvqa-wk21m | psgs_w100.tsv (DPR) | retriever_{train,test}.json | images/ | answers, lower-cased |
| remuq | corpus.csv (kid,text) | train.json, test.json (VRR layout) | imgs.tsv + imgs.lineidx | gold passage |
| synthetic | corpus.csv | retriever_{train,test}.json | images/ + boxes.json | gold passage |

(*) GS112K's test queries come from GeMKR's own `test.json` (the 5,046 queries and answers, stemmed forms
included, that its released result file is aligned with; query ids are positions) or from VRR's
`retriever_test.json` (query ids are OK-VQA question ids), as `DataConfig.gs112k_test_queries` chooses:
"auto" takes GeMKR's when it is there. When both are there, `check_test_queries` pairs them and lists
where they differ.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemkr_lab.data.images import FolderImages, TsvImages
from gemkr_lab.data.queries import (
    DataError,
    Query,
    QueryCheck,
    ReadReport,
    compare_queries,
    read_gemkr_test_json,
    read_retriever_json,
)


@dataclass(frozen=True)
class Layout:
    """File names of one benchmark under its data root."""

    corpus: str
    train: str
    test: str
    images: Literal["folder", "tsv"]
    relevance: Literal["answers", "gold"]
    match: Literal["exact", "lower"] = "exact"
    gemkr_test: str | None = None
    """GeMKR's own preprocessed test queries (`dataset/okvqa/test.json`), where the benchmark has them."""


LAYOUTS = {
    "okvqa-gs112k": Layout(
        "okvqa_train_corpus.csv",
        "retriever_train.json",
        "retriever_test.json",
        "folder",
        "answers",
        gemkr_test="test.json",
    ),
    "okvqa-wk21m": Layout("psgs_w100.tsv", "retriever_train.json", "retriever_test.json", "folder", "answers", "lower"),
    "remuq": Layout("corpus.csv", "train.json", "test.json", "tsv", "gold"),
    "synthetic": Layout("corpus.csv", "retriever_train.json", "retriever_test.json", "folder", "gold"),
}


TEST_SOURCES = ("auto", "gemkr", "vrr")
SOURCE_NAMES = {"gemkr": "GeMKR's", "vrr": "VRR's"}


class Dataset:
    """One benchmark's files under `root`, checked on opening.

    `test_queries` chooses GS112K's test query file ("auto", "gemkr" or "vrr"; see the module doc); the
    choice made is `test_source`.
    """

    def __init__(self, name: str, root: str | Path, test_queries: str = "auto") -> None:
        if name not in LAYOUTS:
            raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(LAYOUTS)}")
        if test_queries not in TEST_SOURCES:
            raise DataError(f"unknown test query source {test_queries!r}; choose one of {', '.join(TEST_SOURCES)}")
        self.name, self.root, self.layout = name, Path(root), LAYOUTS[name]
        gemkr = self.layout.gemkr_test
        if test_queries == "gemkr" and gemkr is None:
            raise DataError(f"dataset {name!r} has no GeMKR test file; its test queries are {self.layout.test}")
        if test_queries == "auto":
            test_queries = "gemkr" if gemkr is not None and (self.root / gemkr).is_file() else "vrr"
        self.test_source: Literal["gemkr", "vrr"] = test_queries  # type: ignore[assignment]
        needed = [self.layout.corpus, self._test_file]
        needed += ["imgs.tsv", "imgs.lineidx"] if self.layout.images == "tsv" else ["images"]
        missing = [f for f in needed if not (self.root / f).exists()]
        if missing:
            tests = f"{gemkr} (GeMKR's) or {self.layout.test}" if gemkr else self.layout.test
            if name == "synthetic":  # the world is made, not downloaded: say how
                raise DataError(
                    f"{self.root}: missing {', '.join(missing)} for the synthetic world; "
                    f"make it with: gemkr-lab make-world --out {self.root}"
                )
            raise DataError(
                f"{self.root}: missing {', '.join(missing)} for dataset {name!r} "
                f"(expected layout: corpus {self.layout.corpus}, queries {self.layout.train} / {tests})"
            )

    @property
    def _test_file(self) -> str:
        return self.layout.gemkr_test if self.test_source == "gemkr" else self.layout.test  # type: ignore[return-value]

    def query_file(self, split: Literal["train", "test"]) -> Path:
        """The file the split's queries are read from."""
        return self.root / (self._test_file if split == "test" else self.layout.train)

    def test_source_note(self, chosen: str) -> str:
        """Which test query file is used and why, for the prepare summary."""
        file = self._test_file
        if self.layout.gemkr_test is None:
            return f"from {file}"
        what = SOURCE_NAMES[self.test_source]
        if chosen == "auto":
            why = "present" if self.test_source == "gemkr" else f"{self.layout.gemkr_test} absent"
            return f"from {what} {file} (gs112k_test_queries=auto: {why})"
        return f"from {what} {file} (gs112k_test_queries={chosen})"

    def check_test_queries(self) -> QueryCheck | None:
        """GeMKR's and VRR's test queries paired and compared, when both files are there (else None)."""
        gemkr = self.layout.gemkr_test
        if gemkr is None or not (self.root / gemkr).is_file() or not (self.root / self.layout.test).is_file():
            return None
        return compare_queries(
            read_gemkr_test_json(self.root / gemkr), read_retriever_json(self.root / self.layout.test)
        )

    @property
    def corpus(self) -> Path:
        """The KB corpus file."""
        return self.root / self.layout.corpus

    def queries(self, split: Literal["train", "test"], report: ReadReport | None = None) -> list[Query]:
        """The split's queries (a missing train file is an error only when asked for)."""
        if split == "test" and self.test_source == "gemkr":
            return read_gemkr_test_json(self.query_file(split), report)
        return read_retriever_json(self.query_file(split), report)

    def has_split(self, split: Literal["train", "test"]) -> bool:
        """Whether the split's query file exists."""
        return self.query_file(split).is_file()

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
