"""Text retrieval baselines over the same KB, writing the same TREC runs as GeMKR for the same scorer.

They answer a user's first question: is clue-based retrieval better than the pipeline I already have?
"""

from gemkr_lab.baselines.bm25 import bm25_search
from gemkr_lab.baselines.dense import dense_search
from gemkr_lab.baselines.queries import kb_passages, read_queries

__all__ = ["bm25_search", "dense_search", "kb_passages", "read_queries"]
