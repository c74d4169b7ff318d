"""Each beam's best allowed next tokens under the model's log-probabilities: the KB constraint of decoding.

SEAL's semantics: disallowed tokens get -inf added to their log-softmax scores, without renormalising. Beam
search only ever continues a beam with its best few valid tokens (twice the beams, plus the tokens earlier
groups may have penalised: `k`), so a step needs, per beam, exactly the `k` tokens that the fully masked score
row would rank first (score descending, id ascending) and their log-probabilities; `step_candidates` returns
those, and builds a full masked row only where it must.

Two routes give the same candidates:
- host (log-probs on the CPU): `KBIndex.best_next` reads the log-probabilities where they lie: the root set,
  the bigram table, short follower lists, and for frequent clues a best-first search of the index guided by
  the scores, which never enumerates the ~10^4 followers of a short clue (the worst case of a flat or
  untrained model). No mask is built.
- device (log-probs on an accelerator): log-softmax, mask and top-k stay on the model's device; only the index
  state lives on the CPU. The index's answers travel to the device as a boolean mask (host to device), and a
  step moves one small tensor back: every beam's top-M candidate ids and values (M = `check_top_m` when some
  beam's clue is frequent, else `k`), never a vocabulary row. Frequent clues (depth >= 2, more than
  `enumerate_below` occurrences) are left unmasked and their top-M checked in the index afterwards; a beam
  with fewer than `k` valid among them is masked by enumeration and its top-k fetched once more.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gemkr_lab.kb import _select_kernels as sek
from gemkr_lab.kb.index import BeamStates, KBIndex, best_of_rows, best_of_set

NEG_INF = float("-inf")
_NONE = np.empty(0, dtype=np.int64)


@dataclass
class StepRows:
    """Where each live beam of a step takes its allowed tokens from (beams in none of them get no candidates)."""

    indexed: np.ndarray = field(default_factory=lambda: _NONE)
    """Beams constrained by the KB index (rows of the step's `BeamStates`)."""
    listed: dict[int, np.ndarray] = field(default_factory=dict)
    """Beams with an explicit set of allowed ids: forced ends (EOS), clues begun with BOS (`DocumentStarts`)."""
    free: np.ndarray = field(default_factory=lambda: _NONE)
    """Beams allowed every id (unconstrained decoding)."""
    banned: int = -1
    """An id no free beam may take (EOS at step 0: a clue never starts with EOS), or -1."""
    also: tuple[int, ...] = ()
    """Ids allowed to indexed beams besides the index's (the official step 0: BOS and EOS)."""


class IndexConstraint:
    """The KB index's part of a decoding step, for one vocabulary size.

    Args:
        index: the KB index.
        vocab_size: the model's vocabulary (its score rows' width).
        check_top_m: device route: how many of the model's best tokens a frequent clue checks in the index.
        enumerate_below: device route: clues of depth >= 2 with at most this many occurrences are masked by
            enumerating their followers, more frequent ones are checked.
    """

    def __init__(self, index: KBIndex, vocab_size: int, check_top_m: int, enumerate_below: int) -> None:
        self.index = index
        self.vocab_size = vocab_size
        self.check_top_m = min(check_top_m, vocab_size)
        self.enumerate_below = enumerate_below
        root = index.next_tokens([])
        self._root_row = np.zeros(vocab_size, dtype=bool)
        self._root_row[root[root < vocab_size]] = True
        self.seconds = 0.0
        """Time spent on the CPU in the index and in building masks (for the benchmarks)."""

    # ---- host route -----------------------------------------------------------------------------------

    def best(self, states: BeamStates, scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`KBIndex.best_next` for the beams `rows` (states and score rows), timed."""
        started = time.perf_counter()
        out = self.index.best_next(states.take(rows), scores, k, rows=rows)
        self.seconds += time.perf_counter() - started
        return out

    # ---- device route ---------------------------------------------------------------------------------

    def fill_mask(self, states: BeamStates, rows: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Mark the tokens each beam of `rows` may take in `allowed` (bool[N, V]).

        Frequent clues are left all-allowed and returned, to be checked.
        """
        started = time.perf_counter()
        depth = states.depth[rows]
        counts = states.counts[rows]
        live = ~states.closed[rows] & (counts > 0)
        allowed[rows[live & (depth == 0)]] = self._root_row
        is_frequent = live & (depth >= 2) & (counts > self.enumerate_below)
        frequent = rows[is_frequent]
        allowed[frequent] = True
        listed = rows[live & (depth >= 1) & ~is_frequent]
        self._fill_followers(states, listed, allowed, listed)
        self.seconds += time.perf_counter() - started
        return frequent

    def _fill_followers(self, states: BeamStates, rows: np.ndarray, allowed: np.ndarray, out_rows: np.ndarray) -> None:
        if rows.size:
            ptr, tok = self.index.allowed_next(states.take(rows))
            sek.fill_allowed(ptr, tok, 0, out_rows, allowed)

    def check(self, states: BeamStates, rows: np.ndarray, cand: np.ndarray, also: tuple[int, ...]) -> np.ndarray:
        """bool[len(rows), M]: which candidate ids the index (or `also`) allows after each beam's clue."""
        started = time.perf_counter()
        valid = self.index.check(states.take(rows), cand) > 0
        if also:
            valid |= np.isin(cand, also)
        self.seconds += time.perf_counter() - started
        return valid

    def enumerated_mask(self, states: BeamStates, rows: np.ndarray, also: tuple[int, ...]) -> np.ndarray:
        """bool[len(rows), V]: the enumerated followers of each beam's clue (plus `also`)."""
        started = time.perf_counter()
        allowed = np.zeros((rows.size, self.vocab_size), dtype=bool)
        self._fill_followers(states, rows, allowed, np.arange(rows.size))
        if also:
            ids = np.asarray([a for a in also if 0 <= a < self.vocab_size], dtype=np.int64)
            allowed[:, ids] = True
        self.seconds += time.perf_counter() - started
        return allowed


def step_candidates(
    logprobs: torch.Tensor,
    k: int,
    rows: StepRows,
    states: BeamStates | None = None,
    constraint: IndexConstraint | None = None,
    *,
    on_host: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each beam's `k` best allowed tokens and their log-probabilities, on the host.

    Args:
        logprobs: [N, V] log-probabilities, on the model's device.
        k: candidates per beam.
        rows: which beams take their allowed tokens from where.
        states: every beam's index state (needed when `rows.indexed` is not empty).
        constraint: the index's part (needed when `rows.indexed` is not empty).
        on_host: take the host route (default: when `logprobs` are on the CPU). The device route works on the
            CPU too (and gives the same candidates); tests run it there.

    Returns:
        `(tokens int64[N, k], values float32[N, k])`: per beam sorted by value (descending), ties by id
        (ascending), padded with -1 / -inf.
    """
    vocab = logprobs.shape[1]
    k = min(k, vocab)
    if on_host is None:
        on_host = logprobs.device.type == "cpu"
    if on_host:
        return _host_candidates(logprobs, k, rows, states, constraint)
    return _device_candidates(logprobs, k, rows, states, constraint)


def _host_candidates(logprobs, k, rows, states, constraint):
    scores = logprobs.detach().to("cpu", torch.float32).contiguous().numpy()
    n = scores.shape[0]
    tok = np.full((n, k), -1, dtype=np.int64)
    val = np.full((n, k), -np.inf, dtype=np.float32)
    if rows.indexed.size:
        tok[rows.indexed], val[rows.indexed] = constraint.best(states, scores, rows.indexed, k)
        if rows.also:
            also = np.asarray([a for a in rows.also if 0 <= a < scores.shape[1]], dtype=np.int64)
            for r in rows.indexed:
                ids = np.union1d(tok[r][tok[r] >= 0], also)
                tok[r], val[r] = best_of_set(scores, int(r), ids, k)
    for r, ids in rows.listed.items():
        tok[r], val[r] = best_of_set(scores, int(r), ids, k)
    if rows.free.size:
        tok[rows.free], val[rows.free] = best_of_rows(scores, rows.free, k, rows.banned)
    return tok, val


def _to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """A step's device-to-host copy: small [N, m] tensors packed into one float64 transfer (ids stay exact)."""
    packed = torch.cat([t.to(torch.float64) for t in tensors], dim=1).cpu().numpy()
    return np.split(packed, len(tensors), axis=1)


def _device_candidates(logprobs, k, rows, states, constraint):
    n, vocab = logprobs.shape
    device = logprobs.device
    allowed = np.zeros((n, vocab), dtype=bool)
    frequent = _NONE
    if rows.indexed.size:
        frequent = constraint.fill_mask(states, rows.indexed, allowed)
        also = [a for a in rows.also if 0 <= a < vocab]
        if also:
            allowed[np.ix_(rows.indexed, also)] = True
    for r, ids in rows.listed.items():
        allowed[r, ids[(ids >= 0) & (ids < vocab)]] = True
    if rows.free.size:
        allowed[rows.free] = True
        if 0 <= rows.banned < vocab:
            allowed[rows.free, rows.banned] = False
    mask = torch.from_numpy(allowed).to(device, non_blocking=True)
    masked = logprobs.masked_fill(~mask, NEG_INF)
    m = min(vocab, max(k, constraint.check_top_m)) if frequent.size else k
    top_v, top_i = torch.topk(masked, m, dim=-1)
    val, tok = _to_host(top_v, top_i)
    val, tok = val.astype(np.float32), tok.astype(np.int64)
    if frequent.size:
        valid = constraint.check(states, frequent, tok[frequent], rows.also)
        val[frequent] = np.where(valid, val[frequent], -np.inf)
        short = frequent[valid.sum(axis=1) < k] if m < vocab else _NONE
        if short.size:  # too few of the model's best tokens are valid: mask by enumeration, fetch again
            mask = torch.from_numpy(constraint.enumerated_mask(states, short, rows.also)).to(device)
            picked = torch.as_tensor(short, device=device)
            top_v, top_i = torch.topk(logprobs[picked].masked_fill(~mask, NEG_INF), k, dim=-1)
            short_val, short_tok = _to_host(top_v, top_i)
            val[short, :k], tok[short, :k] = short_val, short_tok
            val[short, k:] = -np.inf
    tok[val == -np.inf] = -1
    order = np.lexsort((tok, -val), axis=1)[:, :k]  # value descending, then id ascending
    return np.take_along_axis(tok, order, axis=1), np.take_along_axis(val, order, axis=1)
