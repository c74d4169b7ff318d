"""Constrained clue decoding: diverse / plain beam search over any causal LM, masked by the KB index."""

from gemkr_lab.decoding.clues import ClueRecord, QueryRecord, map_clues
from gemkr_lab.decoding.constraint import IndexConstraint
from gemkr_lab.decoding.decoder import ClueDecoder, write_records, write_records_run
from gemkr_lab.decoding.search import Hypothesis, SearchResult, beam_search

__all__ = [
    "ClueDecoder",
    "ClueRecord",
    "Hypothesis",
    "IndexConstraint",
    "QueryRecord",
    "SearchResult",
    "beam_search",
    "map_clues",
    "write_records",
    "write_records_run",
]
