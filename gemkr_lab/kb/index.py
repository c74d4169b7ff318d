"""`KBIndex`: the clue semantics over one or more shards of either backend.

Clue semantics (as SEAL's): a clue is a token sequence that occurs inside one document; EOS may only be its
last token and means "the clue ends where a document ends". Shards hold contiguous document ranges, so a
sharded index answers exactly as an unsharded one: followers are unioned, counts summed, documents offset.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from gemkr_lab.kb import _select_kernels as sek
from gemkr_lab.kb.backends import Shard
from gemkr_lab.kb.doc_ids import DocIds


@dataclass
class BeamStates:
    """Batched decoding states: one row range per beam and shard, plus the clue's length.

    Attributes:
        lo: int64[B, K] range starts, one per shard.
        hi: int64[B, K] range ends (`lo == hi`: the clue does not occur in that shard).
        depth: int64[B] tokens consumed so far.
        closed: bool[B] whether the clue ended with EOS (nothing may follow).
    """

    lo: np.ndarray
    hi: np.ndarray
    depth: np.ndarray
    closed: np.ndarray

    def __len__(self) -> int:
        return self.depth.shape[0]

    @property
    def counts(self) -> np.ndarray:
        """int64[B]: occurrences of each beam's clue in the whole KB.

        For the empty clue it is the root range's size, which differs between backends.
        """
        return (self.hi - self.lo).sum(axis=1)

    def take(self, index: np.ndarray | Sequence[int]) -> "BeamStates":
        """Reorder or select beams (beam search's gather) without touching the index."""
        idx = np.asarray(index, dtype=np.int64)
        return BeamStates(self.lo[idx], self.hi[idx], self.depth[idx], self.closed[idx])


class KBIndex:
    """A knowledge-base index: constraint queries for decoding and clue-to-document lookup.

    Token ids are the tokenizer's ids; documents are positional ids `0..n_docs-1` in corpus order.
    Open one with `open_index`; build one with `build_index`.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        shards: list[Shard],
        doc_ids: DocIds | None = None,
        bigram: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.path = path
        self._doc_ids = doc_ids
        # the KB-wide depth-1 table: a sharded index's merged one, else the single shard's own
        self._bigram = bigram or (shards[0].bigram_ptr, shards[0].bigram_sym)
        self.meta = meta
        self.shards = shards
        self.backend: str = meta["backend"]
        self.vocab_size: int = meta["vocab_size"]
        self.eos_id: int = meta["eos_id"]
        self.n_docs: int = meta["n_docs"]
        self.n_tokens: int = meta["n_tokens"]
        self._eos = self.eos_id + 1
        self._doc_base = np.array([s["doc_base"] for s in meta["shards"]] + [self.n_docs], dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"KBIndex({str(self.path)!r}, backend={self.backend!r}, docs={self.n_docs}, "
            f"tokens={self.n_tokens}, shards={len(self.shards)})"
        )

    # ---- one-off queries ----------------------------------------------------------------------------

    def next_tokens(self, prefix: Sequence[int]) -> np.ndarray:
        """Sorted distinct token ids that follow `prefix` somewhere in the KB.

        EOS is included where `prefix` ends a document; `next_tokens([])` is every id occurring in the KB,
        EOS excluded (a clue never starts with EOS). Nothing follows a prefix that ends with EOS.
        """
        states = self._states_for(prefix)
        ptr, tok = self.allowed_next(states)
        return tok[ptr[0] : ptr[1]]

    def count(self, seq: Sequence[int]) -> int:
        """Occurrences of a non-empty token sequence (one ending with EOS: occurrences at a document's end)."""
        if len(seq) == 0:
            raise ValueError("count() needs a non-empty sequence")
        return int(self._states_for(seq).counts[0])

    def docs(self, seq: Sequence[int], limit: int | None = None) -> np.ndarray:
        """Sorted distinct positional ids of the documents that contain `seq`.

        Args:
            seq: a non-empty token sequence.
            limit: locate at most this many occurrences (SEAL's cap on frequent clues). When the clue has
                more occurrences, which ones are located depends on the backend's row order.
        """
        if len(seq) == 0:
            raise ValueError("docs() needs a non-empty sequence")
        states = self._states_for(seq)
        budget = np.iinfo(np.int64).max if limit is None else int(limit)
        found = []
        for k, shard in enumerate(self.shards):
            lo, hi = int(states.lo[0, k]), int(states.hi[0, k])
            if hi <= lo or budget <= 0:
                continue
            local = shard.locate(lo, hi, min(budget, hi - lo))
            budget -= hi - lo
            found.append(np.asarray(local, dtype=np.int64) + self._doc_base[k])
        if not found:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate(found))

    def doc_tokens(self, doc: int) -> np.ndarray:
        """The token ids of positional document `doc`, as indexed (EOS excluded)."""
        if not 0 <= doc < self.n_docs:
            raise IndexError(f"document {doc} out of range [0, {self.n_docs})")
        k = int(np.searchsorted(self._doc_base, doc, side="right") - 1)
        return self.shards[k].doc_symbols(int(doc - self._doc_base[k])).astype(np.int64) - 1

    def corpus_id(self, doc: int) -> str:
        """The corpus's own id of positional document `doc` (its position as a string if none was given)."""
        if not 0 <= doc < self.n_docs:
            raise IndexError(f"document {doc} out of range [0, {self.n_docs})")
        return str(doc) if self._doc_ids is None else self._doc_ids[doc]

    @property
    def corpus_ids(self) -> list[str]:
        """All corpus ids by positional id (a list: prefer `corpus_id` on large KBs)."""
        return [self.corpus_id(d) for d in range(self.n_docs)]

    def position(self, corpus_id: str) -> int:
        """Positional id of a corpus document id, duplicates' ids included (KeyError if unknown)."""
        if self._doc_ids is None:
            pos = int(corpus_id) if str(corpus_id).isdigit() else -1
            if not 0 <= pos < self.n_docs:
                raise KeyError(f"no document with id {corpus_id!r} in this index")
            return pos
        return self._doc_ids.position(corpus_id)

    # ---- batched, stateful interface for decoding ----------------------------------------------------

    def root_states(self, batch: int) -> BeamStates:
        """`batch` states of the empty clue."""
        k = len(self.shards)
        hi = np.array([s.n_rows for s in self.shards], dtype=np.int64)
        return BeamStates(
            lo=np.zeros((batch, k), dtype=np.int64),
            hi=np.tile(hi, (batch, 1)),
            depth=np.zeros(batch, dtype=np.int64),
            closed=np.zeros(batch, dtype=bool),
        )

    def advance(self, states: BeamStates, tokens: np.ndarray | Sequence[int]) -> BeamStates:
        """Extend every beam's clue by one token (a negative token, e.g. padding, empties the beam).

        One batched kernel call per shard; O(1) backward steps per beam instead of re-searching the prefix.
        """
        sym = np.asarray(tokens, dtype=np.int64) + 1
        sym = np.where((sym < 1) | (sym > self.vocab_size) | states.closed, 0, sym)
        lo = np.empty_like(states.lo)
        hi = np.empty_like(states.hi)
        for k, shard in enumerate(self.shards):
            lo[:, k], hi[:, k] = shard.advance(
                np.ascontiguousarray(states.lo[:, k]),
                np.ascontiguousarray(states.hi[:, k]),
                states.depth,
                sym,
            )
        return BeamStates(lo, hi, states.depth + 1, states.closed | (sym == self._eos))

    def allowed_next(
        self, states: BeamStates, with_counts: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tokens allowed after each beam's clue, as CSR `(ptr int64[B+1], tokens int64[sum k])`.

        Each beam's tokens are sorted. Served from the precomputed root set (depth 0) and bigram table
        (depth 1) unless `with_counts`, which adds `counts int64[sum k]` (occurrences of clue + token).
        """
        b = len(states)
        live = ~states.closed & (states.counts > 0)
        per_beam: list[np.ndarray | None] = [None] * b
        per_count: list[np.ndarray | None] = [None] * b
        general = []
        for j in range(b):
            if not live[j]:
                per_beam[j] = _EMPTY
                per_count[j] = _EMPTY
            elif states.depth[j] == 0 and not with_counts:
                per_beam[j] = self._root_tokens
            elif states.depth[j] == 1 and not with_counts:
                per_beam[j] = self._bigram_tokens(states, j)
            else:
                general.append(j)
        if general:
            sel = np.array(general, dtype=np.int64)
            toks, cnts = self._followers(states.take(sel))
            for j, t, c in zip(general, toks, cnts, strict=True):
                if states.depth[j] == 0:  # a clue never starts with EOS
                    keep = t != self.eos_id
                    t, c = t[keep], c[keep]
                per_beam[j], per_count[j] = t, c
        ptr = np.zeros(b + 1, dtype=np.int64)
        np.cumsum([len(t) for t in per_beam], out=ptr[1:])
        tokens = np.concatenate(per_beam) if b else _EMPTY
        if not with_counts:
            return ptr, tokens
        return ptr, tokens, np.concatenate(per_count) if b else _EMPTY

    def check(self, states: BeamStates, candidates: np.ndarray) -> np.ndarray:
        """Occurrences of each beam's clue extended by each candidate token: int64[B, M], 0 = not allowed.

        The cheap alternative to enumerating the ~10^4 followers of a short prefix: beam search only needs
        the best few *valid* tokens, and checking one costs one backward step.
        """
        cand = np.asarray(candidates, dtype=np.int64)
        sym = cand + 1
        bad = (sym < 1) | (sym > self.vocab_size) | states.closed[:, None]
        bad |= (states.depth == 0)[:, None] & (sym == self._eos)
        sym = np.where(bad, 0, sym)
        total = np.zeros(cand.shape, dtype=np.int64)
        for k, shard in enumerate(self.shards):
            total += shard.check(
                np.ascontiguousarray(states.lo[:, k]),
                np.ascontiguousarray(states.hi[:, k]),
                states.depth,
                sym,
            )
        return total

    def best_next(
        self, states: BeamStates, scores: np.ndarray, k: int, *, rows: np.ndarray | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per beam, the `k` best-scored tokens among those allowed after its clue (`allowed_next`'s sets).

        Decoding's whole question: beam search only ever continues a beam with a few of its best valid
        tokens, so the ~10^4 followers of a short, frequent clue need not be enumerated. Depth 0 and 1 are
        served from the root set and the bigram table (read by score blocks), rare deeper clues list their
        followers, frequent ones are searched best-first in the index, guided by the scores (see
        `gemkr_lab.kb._select_kernels`): a few paths when the best-scored tokens are allowed, never more
        nodes than enumerating the followers when they are not.

        Args:
            states: the beams.
            scores: float32[N, V] per-token scores (a model's log-probabilities); ids at or beyond V and tokens
                scored -inf are never returned.
            k: candidates wanted per beam.
            rows: the row of `scores` of each beam (default: beam j scores with row j).

        Returns:
            `(tokens int64[B, k], values float32[B, k])`, each beam's sorted by value (descending), ties by id
            (ascending), padded with -1 and -inf.
        """
        scores = np.asarray(scores, dtype=np.float32)
        b = len(states)
        rows = np.arange(b, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        shards = len(self.shards)
        out_tok = np.empty((b, k), dtype=np.int64)
        out_val = np.empty((b, k), dtype=np.float32)
        if b == 0 or k == 0:
            return out_tok, out_val
        live = ~states.closed & (states.counts > 0)
        first_sym = np.zeros(b, dtype=np.int64)
        if shards == 1:
            first_sym[:] = np.searchsorted(self.shards[0].C, states.lo[:, 0], side="right") - 1
        else:
            for j in np.flatnonzero(live & (states.depth == 1)):
                s = int(np.argmax(states.hi[j] > states.lo[j]))  # any shard where the one-token clue occurs
                first_sym[j] = np.searchsorted(self.shards[s].C, states.lo[j, s], side="right") - 1
        tables = (first_sym, self._root_allowed, *self._bigram)
        # a frequent deep clue's search keys (its scores row, masked) and their summary: made by the first shard
        # that searches the beam best-first, shared by the later ones (which drop the tokens already found)
        levels = max(shard.levels for shard in self.shards)
        search = (
            np.empty((b, scores.shape[1]), dtype=np.float32),
            np.empty((b, 2 << sek.summary_levels(levels)), dtype=np.float32),
            np.zeros(b, dtype=bool),
        )
        # one list per beam through all shards: a later shard extends the earlier shards' best k (a token
        # allowed in several shards kept once), so its search prunes against them from its first node on
        # instead of finding its own k (a 3-shard KB would otherwise cost about three single-shard searches)
        for s, shard in enumerate(self.shards):
            lo, hi = np.ascontiguousarray(states.lo[:, s]), np.ascontiguousarray(states.hi[:, s])
            shard.best_next((lo, hi, states.depth, live, *tables, s > 0, scores, rows, out_tok, out_val, *search))
        return out_tok, out_val

    # ---- internals ------------------------------------------------------------------------------------

    def _states_for(self, seq: Sequence[int]) -> BeamStates:
        """The state after consuming `seq`, with one search kernel call per shard."""
        sym = np.asarray(seq, dtype=np.int64).reshape(-1) + 1
        k = len(self.shards)
        lo = np.zeros((1, k), dtype=np.int64)
        hi = np.zeros((1, k), dtype=np.int64)
        ends_with_eos = sym.shape[0] > 0 and sym[-1] == self._eos
        valid = not ((sym < 1) | (sym > self.vocab_size)).any() and not (sym[:-1] == self._eos).any()
        if valid:
            for j, shard in enumerate(self.shards):
                lo[0, j], hi[0, j] = shard.search(sym)
        depth = np.array([sym.shape[0]], dtype=np.int64)
        return BeamStates(lo, hi, depth, np.array([ends_with_eos]))

    @cached_property
    def _root_tokens(self) -> np.ndarray:
        present = np.zeros(self.vocab_size + 2, dtype=bool)
        for shard in self.shards:
            present[: shard.C.shape[0] - 1] |= np.diff(shard.C) > 0
        present[0] = False
        present[self._eos] = False
        return np.flatnonzero(present).astype(np.int64) - 1

    @cached_property
    def _root_allowed(self) -> np.ndarray:
        allowed = np.zeros(self.vocab_size, dtype=bool)
        allowed[self._root_tokens] = True
        return allowed

    def _bigram_tokens(self, states: BeamStates, j: int) -> np.ndarray:
        k = int(np.argmax(states.hi[j] > states.lo[j]))  # any shard where the one-token clue occurs
        c = int(np.searchsorted(self.shards[k].C, states.lo[j, k], side="right") - 1)
        ptr, sym = self._bigram
        return sym[ptr[c] : ptr[c + 1]].astype(np.int64) - 1

    def _followers(self, states: BeamStates) -> tuple[list[np.ndarray], list[np.ndarray]]:
        per_shard = []
        for k, shard in enumerate(self.shards):
            per_shard.append(
                shard.followers(
                    np.ascontiguousarray(states.lo[:, k]), np.ascontiguousarray(states.hi[:, k]), states.depth
                )
            )
        toks, cnts = [], []
        for j in range(len(states)):
            syms = [s[1][s[0][j] : s[0][j + 1]] for s in per_shard]
            counts = [s[2][s[0][j] : s[0][j + 1]] for s in per_shard]
            if len(per_shard) == 1:
                sym, cnt = syms[0], counts[0]
            else:
                sym, inverse = np.unique(np.concatenate(syms), return_inverse=True)
                cnt = np.bincount(inverse, weights=np.concatenate(counts), minlength=sym.shape[0]).astype(np.int64)
            toks.append(sym - 1)
            cnts.append(cnt)
        return toks, cnts


_EMPTY = np.empty(0, dtype=np.int64)


def best_of_rows(scores: np.ndarray, rows: np.ndarray, k: int, banned: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` best-scored ids (any id but `banned`), as `KBIndex.best_next` returns them.

    `scores` float32[N, V]; `rows` int64[B] picks the rows. Unconstrained decoding's counterpart of `best_next`.
    """
    rows = np.asarray(rows, dtype=np.int64)
    tok = np.empty((rows.size, k), dtype=np.int64)
    val = np.empty((rows.size, k), dtype=np.float32)
    if rows.size and k:
        everything = np.empty(0, dtype=bool)
        sek.top_of_rows(scores, rows, everything, np.full(rows.size, banned, dtype=np.int64), tok, val)
    return tok, val


def best_of_set(scores: np.ndarray, row: int, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best-scored of `ids` under `scores[row]`, sorted and padded as `KBIndex.best_next` returns them."""
    ids = np.asarray(ids, dtype=np.int64)
    tok = np.empty((1, k), dtype=np.int64)
    val = np.empty((1, k), dtype=np.float32)
    found = sek.set_row(scores, row, ids, 0, ids.size, 0, tok, val, 0) if k else 0
    tok[0, found:], val[0, found:] = -1, -np.inf
    return tok[0], val[0]
