"""Clues that begin with BOS, looked up among the documents' first tokens.

The official KB stores every document as BOS + tokens + EOS, so a clue whose first token is BOS must be a
document's beginning (gemkr_spec.md §4.1-4.2, `DecodingConfig.allow_bos_eos_first_token`). Our KB stores no
BOS. `DocumentStarts` answers those clues instead: every document's first tokens (then EOS where the document is
that short), rows sorted lexicographically, so that the documents beginning with a clue form one range of rows,
narrowed token by token like an index state.
"""

import numpy as np

from gemkr_lab.kb.index import KBIndex

_PAD = -1


class DocumentStarts:
    """The first `width` tokens of every document of `index` (EOS after a shorter document), sorted.

    A state is a range `[lo, hi)` of rows: the documents whose first tokens are the clue's tokens after BOS.
    """

    def __init__(self, index: KBIndex, width: int) -> None:
        self.width, self.eos_id = width, index.eos_id
        heads = np.full((index.n_docs, width), _PAD, dtype=np.int64)
        for d in range(index.n_docs):
            tokens = index.doc_tokens(d)[:width]
            heads[d, : len(tokens)] = tokens
            if len(tokens) < width:
                heads[d, len(tokens)] = index.eos_id
        self.order = np.lexsort(heads.T[::-1])  # column 0 is the primary key
        self.heads = heads[self.order]

    @property
    def n_docs(self) -> int:
        """Documents (rows)."""
        return len(self.order)

    def advance(self, lo: int, hi: int, depth: int, token: int) -> tuple[int, int]:
        """The rows of `[lo, hi)` whose token at position `depth` (0 = the first after BOS) is `token`."""
        if depth >= self.width or hi <= lo:
            return lo, lo
        column = self.heads[lo:hi, depth]
        return lo + int(np.searchsorted(column, token, "left")), lo + int(np.searchsorted(column, token, "right"))

    def allowed(self, lo: int, hi: int, depth: int) -> np.ndarray:
        """Sorted distinct tokens at position `depth` of the rows `[lo, hi)` (EOS where a document ends)."""
        if depth >= self.width or hi <= lo:
            return np.empty(0, dtype=np.int64)
        tokens = np.unique(self.heads[lo:hi, depth])
        return tokens[tokens != _PAD]

    def docs(self, tokens: list[int]) -> np.ndarray:
        """Sorted positional ids of the documents that begin with `tokens` (ending with EOS: that are exactly them)."""
        lo, hi = 0, self.n_docs
        for depth, token in enumerate(tokens):
            lo, hi = self.advance(lo, hi, depth, int(token))
        return np.sort(self.order[lo:hi])
