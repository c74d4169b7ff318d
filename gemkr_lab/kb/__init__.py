"""Knowledge-base index for FM-index-constrained clue decoding and clue-to-document lookup.

>>> from gemkr_lab.kb import build_index, open_index
>>> index = build_index([[5, 6, 7], [6, 7, 8]], "kb", eos_id=2, backend="fm")  # doctest: +SKIP
>>> index.next_tokens([6, 7]), index.count([6, 7]), index.docs([7, 8])          # doctest: +SKIP
(array([2, 8]), 2, array([1]))

The names load lazily (PEP 562): `gemkr_lab.kb.errors` and the corpus readers must not pull in numpy and numba,
so that the command line answers bad input before the index machinery loads (#25).
"""

from typing import TYPE_CHECKING

from gemkr_lab.kb.errors import CorpusError, IndexFormatError, KBError

if TYPE_CHECKING:
    from gemkr_lab.kb.build import DocBatch, build_index, open_index
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


def __getattr__(name: str) -> object:
    if name in ("DocBatch", "build_index", "open_index"):
        from gemkr_lab.kb import build

        return getattr(build, name)
    if name in ("BeamStates", "KBIndex"):
        from gemkr_lab.kb import index

        return getattr(index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
