"""Text retrieval baselines over the same KB, writing the same TREC runs as GeMKR for the same scorer.

They answer a user's first question: is clue-based retrieval better than the pipeline I already have?
The names load lazily (PEP 562): reading queries and passages must not load torch (the dense retriever's).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemkr_lab.baselines.bm25 import bm25_search
    from gemkr_lab.baselines.dense import dense_search
    from gemkr_lab.baselines.queries import kb_passages, read_queries

__all__ = ["bm25_search", "dense_search", "kb_passages", "read_queries"]


def __getattr__(name: str) -> object:
    if name == "bm25_search":
        from gemkr_lab.baselines.bm25 import bm25_search

        return bm25_search
    if name == "dense_search":
        from gemkr_lab.baselines.dense import dense_search

        return dense_search
    if name in ("kb_passages", "read_queries"):
        from gemkr_lab.baselines import queries

        return getattr(queries, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
