"""Knowledge-clue targets: unique spans of relevant passages, preferring the span around the answer.

For a query and a relevant passage, a clue is a span of the passage's tokens (as the passage tokenises in
place, so the target is a path the constrained decoder can take) that occurs in exactly one KB document.
No clue-construction script was released (gemkr_spec.md §3.3); this is the harness's reconstruction:
word-aligned windows of `min..max` tokens, ordered by (overlaps an answer first, shorter first, ends on a
word boundary, closer to the answer, earlier), the first that only this document contains wins ("shortest
unique", the reference). With a target length N (`DataConfig.clue_length_policy` "target_length", the clue-length
ablation), "shorter first" becomes "closer to N tokens first" (of two equally close, the shorter): the target is
the unique answer-overlapping window of N tokens, or of the length nearest N that the passage allows.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gemkr_lab.data.queries import DataError
from gemkr_lab.kb.index import KBIndex


@dataclass(frozen=True)
class ClueTarget:
    """A clue for one (query, passage) pair."""

    tokens: list[int]
    text: str
    doc: int
    start: int
    overlaps_answer: bool


@dataclass
class ClueStats:
    """Coverage and shape of the clue targets built so far."""

    pairs: int = 0
    with_clue: int = 0
    overlapping_answer: int = 0
    queries: int = 0
    queries_without_clue: int = 0
    lengths: Counter = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics: coverage, the realized length histogram and mean, the answer-overlap share."""
        total = sum(self.lengths.values())
        return {
            "pairs": self.pairs,
            "pairs_with_clue": self.with_clue,
            "coverage": self.with_clue / self.pairs if self.pairs else 0.0,
            "clues_overlapping_answer": self.overlapping_answer,
            "answer_overlap_share": self.overlapping_answer / self.with_clue if self.with_clue else 0.0,
            "mean_length": sum(k * v for k, v in self.lengths.items()) / total if total else 0.0,
            "queries": self.queries,
            "queries_without_clue": self.queries_without_clue,
            "length_histogram": {str(k): v for k, v in sorted(self.lengths.items())},
        }


class ClueFinder:
    """Finds clue targets in one index with the tokenizer it was built with."""

    def __init__(
        self, index: KBIndex, tokenizer: Any, min_tokens: int, max_tokens: int, target_tokens: int | None = None
    ) -> None:
        self.index = index
        self.tokenizer = tokenizer
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self.target_tokens = target_tokens  # None: shortest unique; N: closest to N tokens

    def find(self, doc: int, text: str, answers: Sequence[str]) -> ClueTarget | None:
        """The preferred unique span of document `doc` (whose text is `text`), or None if it has none."""
        tokens = self.index.doc_tokens(doc)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != tokens.tolist():
            raise DataError(
                f"document {self.index.corpus_id(doc)}: its text tokenises differently from the index; "
                "prepare the index with the same tokenizer and corpus"
            )
        offsets = enc["offset_mapping"]
        n = len(tokens)
        starts = [i for i in range(n) if _word_start(text, offsets[i])]
        span = _answer_span(text, offsets, answers)
        candidates = []
        for length in range(self.min_tokens, min(self.max_tokens, n) + 1):
            for s in starts:
                e = s + length
                if e > n:
                    break
                overlap = span is not None and s < span[1] and span[0] < e
                mid_word = e < n and not _word_start(text, offsets[e])
                distance = abs((s + e) / 2 - (span[0] + span[1]) / 2) if span else 0.0
                off_target = 0 if self.target_tokens is None else abs(length - self.target_tokens)
                candidates.append((not overlap, off_target, length, mid_word, distance, s))
        for not_overlap, _, length, _, _, s in sorted(candidates):
            window = tokens[s : s + length]
            if self._unique_to(window, doc):
                return ClueTarget(
                    window.tolist(), self.tokenizer.decode(window.tolist()), doc, s, overlaps_answer=not not_overlap
                )
        return None

    def _unique_to(self, window: np.ndarray, doc: int) -> bool:
        count = self.index.count(window)
        if count == 1:
            return True
        if count == 0 or count > 64:  # 0 cannot happen for an indexed span; > 64 is never one document
            return False
        return self.index.docs(window).tolist() == [doc]


def _word_start(text: str, offset: Sequence[int]) -> bool:
    start = offset[0]
    return start == 0 or text[start - 1].isspace() or (start < len(text) and text[start].isspace())


def _answer_span(text: str, offsets: Sequence[Sequence[int]], answers: Sequence[str]) -> tuple[int, int] | None:
    """Token span of the first answer found in the text (case-insensitive); None if none occurs."""
    lowered = text.lower()
    for answer in sorted((a for a in answers if a.strip()), key=len, reverse=True):
        c0 = lowered.find(answer.lower())
        if c0 < 0:
            continue
        c1 = c0 + len(answer)
        toks = [i for i, (a, b) in enumerate(offsets) if a < c1 and c0 < b]
        if toks:
            return toks[0], toks[-1] + 1
    return None
