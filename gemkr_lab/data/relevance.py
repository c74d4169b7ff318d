"""How a benchmark judges a ranked passage, in one place: gold passages or answer strings, by its layout.

ReMuQ and the synthetic world list gold passages; OK-VQA judges by answer substrings in the passage texts, with
the dataset's own match (case-sensitive on GS112K as GeMKR evaluates, lowercase on WK21M). A run's metrics
(`run.evaluate`) and the clue explorer's flags (`report.explore`) both come from here, so they cannot disagree.
"""

from collections.abc import Iterable, Mapping, Sequence

from gemkr_lab.data.datasets import LAYOUTS
from gemkr_lab.metrics.relevance import AnswerRelevance, QrelsRelevance, Relevance


def judged_by_answers(dataset: str) -> bool:
    """Whether the dataset's relevance reads passage texts (answer strings), not gold passage ids."""
    return LAYOUTS[dataset].relevance != "gold"


def benchmark_relevance(
    dataset: str,
    gold: Mapping[str, Sequence[str]],
    answers: Mapping[str, Sequence[str]],
    texts: Mapping[str, str] | None = None,
) -> Relevance:
    """The dataset's relevance over its queries.

    `gold` {qid: passage ids} for gold datasets; `answers` {qid: strings} with the `texts` of the passages to judge
    where the dataset is `judged_by_answers`.
    """
    if not judged_by_answers(dataset):
        return QrelsRelevance({q: {p: 1 for p in ids} for q, ids in gold.items()})
    if texts is None:
        raise ValueError(f"{dataset}: relevance is judged by answers in the passage texts; pass the texts")
    return AnswerRelevance({q: list(a) for q, a in answers.items()}, texts, LAYOUTS[dataset].match)


def wanted_texts(ranked: Iterable[Sequence[str]]) -> set[str]:
    """The passage ids whose texts answer-based relevance reads: every ranked one."""
    return {d for docs in ranked for d in docs}
