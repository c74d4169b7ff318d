"""Score ranked lists against a relevance source: per-query values and their means over every query."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gemkr_lab.metrics.measures import metric_names, parse_metric
from gemkr_lab.metrics.relevance import MATCH_NAMES, AnswerRelevance, Relevance


@dataclass
class Evaluation:
    """Mean metrics over the evaluated queries, the per-query values, and what did not line up."""

    means: dict[str, float]
    per_query: dict[str, dict[str, float]]
    missing_from_run: list[str] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """Human-readable notes on queries that were scored as zero or ignored."""
        out = []
        if self.missing_from_run:
            out.append(f"{len(self.missing_from_run)} judged queries have no results in the run; they count as 0")
        if self.not_judged:
            out.append(f"{len(self.not_judged)} queries of the run have no judgements; they are ignored")
        return out


def evaluate(run: Mapping[str, Sequence[str]], relevance: Relevance, ks: Sequence[int] = (1, 5, 10)) -> Evaluation:
    """Score `run` (ranked document ids per query, deduplicated here by first occurrence).

    Every judged query is averaged over, those absent from the run as zeros; run queries without
    judgements are reported and ignored.
    """
    names = metric_names(sorted(set(ks)))
    fns = [parse_metric(n) for n in names]
    queries = relevance.queries()
    per_query: dict[str, dict[str, float]] = {}
    for qid in queries:
        ranked = list(dict.fromkeys(run.get(qid, [])))
        rel = relevance.judge(qid, ranked)
        n_rel = relevance.n_relevant(qid, ranked)
        per_query[qid] = {name: fn(rel, n_rel, k) for name, (fn, k) in zip(names, fns, strict=True)}
    n = max(len(queries), 1)
    means = {name: sum(v[name] for v in per_query.values()) / n for name in names}
    judged = set(queries)
    return Evaluation(
        means=means,
        per_query=per_query,
        missing_from_run=[q for q in queries if q not in run],
        not_judged=[q for q in run if q not in judged],
    )


def means_by_match(run, relevance, ks) -> dict[str, dict[str, float]] | None:
    """Mean metrics under both answer matches, case-sensitive and lowercase (None for gold relevance).

    Both are reported variants for answer-based benchmarks (GeMKR's evaluation is case-sensitive, VRR's
    lower-cases); a dataset's own match stays its headline number, the other is shown beside it.
    """
    if not isinstance(relevance, AnswerRelevance):
        return None
    return {m: evaluate(run, relevance.with_match(m), ks).means for m in MATCH_NAMES}
