"""Knowledge-base index for FM-index-constrained clue decoding and clue-to-document lookup.

>>> from gemkr_lab.kb import build_index, open_index
>>> index = build_index([[5, 6, 7], [6, 7, 8]], "kb", eos_id=2, backend="fm")  # doctest: +SKIP
>>> index.next_tokens([6, 7]), index.count([6, 7]), index.docs([7, 8])          # doctest: +SKIP
(array([2, 8]), 2, array([1]))
"""

from gemkr_lab.kb.build import DocBatch, build_index, open_index
from gemkr_lab.kb.errors import CorpusError, IndexFormatError, KBError
from gemkr_lab.kb.index import BeamStates, KBIndex

__all__ = [
    "BeamStates",
    "CorpusError",
    "DocBatch",
    "IndexFormatError",
    "KBError",
    "KBIndex",
    "build_index",
    "open_index",
]
