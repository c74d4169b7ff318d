"""Relevance: gold qrels (ReMuQ) or answer-substring pseudo-relevance (OKVQA-GS112K, OKVQA-WK21M)."""

from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

Match = Literal["exact", "lower"]


class Relevance(Protocol):
    """Judges documents for a query; `n_relevant` is the denominator of classic recall."""

    def queries(self) -> list[str]:
        """The queries every metric is averaged over."""
        ...

    def judge(self, qid: str, ranked: list[str]) -> list[bool]:
        """Whether each ranked document is relevant."""
        ...

    def n_relevant(self, qid: str, ranked: list[str]) -> int:
        """How many relevant documents the query has (for Recall@k)."""
        ...


class QrelsRelevance:
    """Gold judgements: a document is relevant when its label is > 0."""

    def __init__(self, qrels: Mapping[str, Mapping[str, int]]) -> None:
        self.qrels = qrels

    def queries(self) -> list[str]:
        """Every query in the qrels, whether or not it was run."""
        return list(self.qrels)

    def judge(self, qid: str, ranked: list[str]) -> list[bool]:
        """Labels > 0 are relevant; unjudged documents are not."""
        labels = self.qrels.get(qid, {})
        return [labels.get(d, 0) > 0 for d in ranked]

    def n_relevant(self, qid: str, ranked: list[str]) -> int:
        """All relevant documents in the qrels."""
        return sum(1 for v in self.qrels.get(qid, {}).values() if v > 0)


class AnswerRelevance:
    """Pseudo-relevance: a passage is relevant when it contains any of the query's answers.

    `match="exact"` is GeMKR's evaluation (case-sensitive `answer in text`); `"lower"` lower-cases passage
    and answer (VRR lower-cases the passage only; OK-VQA answers are lower-case, so the two agree there; for
    mixed-case answers, as on WK21M, lower-casing both is the recommended choice). No other normalisation:
    an empty answer matches every passage, as in both reference evaluations.

    The relevant set is judged over the run's documents (the judged pool), so Recall@k is recall within
    the pool: scanning the whole corpus for every answer is what the benchmarks never do.
    """

    def __init__(self, answers: Mapping[str, list[str]], texts: Mapping[str, str], match: Match = "exact") -> None:
        if match not in ("exact", "lower"):
            raise ValueError(f"match must be 'exact' or 'lower', got {match!r}")
        self.answers = answers
        self.texts = texts
        self.match = match
        self._lowered: dict[str, str] = {}

    def queries(self) -> list[str]:
        """Every query with an answer list."""
        return list(self.answers)

    def _text(self, docid: str) -> str:
        if docid not in self.texts:
            raise KeyError(f"document {docid!r} of the run is not in the corpus")
        if self.match == "exact":
            return self.texts[docid]
        if docid not in self._lowered:
            self._lowered[docid] = self.texts[docid].lower()
        return self._lowered[docid]

    def judge(self, qid: str, ranked: list[str]) -> list[bool]:
        """Substring test of every answer against every ranked passage."""
        answers = self.answers.get(qid, [])
        if self.match == "lower":
            answers = [a.lower() for a in answers]
        return [any(a in self._text(d) for a in answers) for d in ranked]

    def n_relevant(self, qid: str, ranked: list[str]) -> int:
        """Relevant documents within the judged pool (the run's documents for this query)."""
        return sum(self.judge(qid, list(dict.fromkeys(ranked))))

    def with_match(self, match: Match) -> "AnswerRelevance":
        """The same answers and texts judged with another match (the texts are read once for both)."""
        return AnswerRelevance(self.answers, self.texts, match)


MATCH_NAMES = {"exact": "case-sensitive", "lower": "lowercase"}
"""How each answer match is named in reports."""


def texts_for(corpus_path, wanted: Iterable[str], *, carriage_returns_to_spaces: bool = False) -> dict[str, str]:
    r"""Texts of the wanted passage ids, streaming the corpus once (never loaded whole).

    Normalised as the index was built (`gemkr_lab.kb.corpus.normalise_text`): answers are matched in the
    official texts by default, in texts with `\r` turned into spaces with `carriage_returns_to_spaces`.
    """
    from gemkr_lab.kb.corpus import read_corpus

    want = set(wanted)
    out: dict[str, str] = {}
    for p in read_corpus(corpus_path, carriage_returns_to_spaces=carriage_returns_to_spaces):
        if p.id in want:
            out[p.id] = p.text
    return out
