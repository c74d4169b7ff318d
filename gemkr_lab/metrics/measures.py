"""Metric definitions, per query. `ranked` is deduplicated; `rel` are its relevance labels.

- `P@k`: relevant documents in the top k, divided by k (always k, even if fewer were retrieved).
- `R@k`: what these benchmarks call recall: 1 if any of the top k is relevant (hit rate / Success@k).
- `Recall@k`: classic recall, relevant in the top k over all relevant (0 when there are none).
- `MRR@k`: reciprocal rank of the first relevant document within the top k.
"""

import re
from collections.abc import Callable

MetricFn = Callable[[list[bool], int, int], float]


def precision(rel: list[bool], n_relevant: int, k: int) -> float:
    """P@k with the fixed denominator k."""
    return sum(rel[:k]) / k


def hit_rate(rel: list[bool], n_relevant: int, k: int) -> float:
    """The benchmarks' R@k: at least one relevant document in the top k."""
    return float(any(rel[:k]))


def recall(rel: list[bool], n_relevant: int, k: int) -> float:
    """Classic Recall@k."""
    return sum(rel[:k]) / n_relevant if n_relevant else 0.0


def reciprocal_rank(rel: list[bool], n_relevant: int, k: int) -> float:
    """MRR@k's per-query term."""
    for i, r in enumerate(rel[:k], start=1):
        if r:
            return 1.0 / i
    return 0.0


METRICS: dict[str, MetricFn] = {"P": precision, "R": hit_rate, "Recall": recall, "MRR": reciprocal_rank}
_NAME = re.compile(r"^(P|R|Recall|MRR)@([1-9][0-9]*)$")


def parse_metric(name: str) -> tuple[MetricFn, int]:
    """`"P@5"` -> (precision, 5); a clear error for anything else."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"unknown metric {name!r}; use P@k, R@k, Recall@k or MRR@k with k >= 1")
    return METRICS[m.group(1)], int(m.group(2))


def metric_names(ks: list[int]) -> list[str]:
    """Every metric at every cutoff, in a stable order."""
    return [f"{m}@{k}" for m in METRICS for k in ks]
