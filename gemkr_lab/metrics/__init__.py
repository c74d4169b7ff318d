"""Retrieval scoring exactly as the benchmarks define it.

TREC runs and qrels, answer-substring pseudo-relevance, and P@k / R@k (hit rate) / Recall@k / MRR@k
averaged over every query.
"""

from gemkr_lab.metrics.measures import METRICS, parse_metric
from gemkr_lab.metrics.relevance import AnswerRelevance, QrelsRelevance, Relevance
from gemkr_lab.metrics.score import Evaluation, evaluate
from gemkr_lab.metrics.trec import RunFileError, read_answers, read_qrels, read_run, write_run

__all__ = [
    "METRICS",
    "AnswerRelevance",
    "Evaluation",
    "QrelsRelevance",
    "Relevance",
    "RunFileError",
    "evaluate",
    "parse_metric",
    "read_answers",
    "read_qrels",
    "read_run",
    "write_run",
]
