"""The KB constraint as an additive log-probability mask, computed with the index's batched interface.

SEAL's semantics: -inf is added to the log-softmax scores of disallowed tokens, without renormalising.
Per beam the cheapest exact route is taken: the precomputed root set (empty clue), the bigram table (one
token), enumeration of small ranges, and for large ranges a check of the model's best M tokens, which is
enough because beam search only ever picks a beam's best few valid tokens (falling back to enumeration
when too few of the M are valid).
"""

import time

import numpy as np
import torch

from gemkr_lab.kb.index import BeamStates, KBIndex


class IndexConstraint:
    """Builds the [N, V] additive mask for N beams from their index states."""

    def __init__(self, index: KBIndex, vocab_size: int, check_top_m: int, enumerate_below: int) -> None:
        self.index = index
        self.vocab_size = vocab_size
        self.check_top_m = min(check_top_m, vocab_size)
        self.enumerate_below = enumerate_below
        root = index.next_tokens([])
        self._root_mask = torch.full((vocab_size,), float("-inf"))
        self._root_mask[torch.as_tensor(root[root < vocab_size])] = 0.0
        self.seconds = 0.0  # time spent in the index and mask building, for the benchmarks

    def mask(self, states: BeamStates, logprobs: torch.Tensor, rows: np.ndarray, needed: int) -> torch.Tensor:
        """Additive mask for `rows` of `states` (the other rows stay -inf; callers force those).

        Args:
            states: every beam's index state.
            logprobs: [N, V] log-probabilities, used to pick candidates for checking.
            rows: the beams to constrain.
            needed: how many valid tokens per beam the search may use (a check that finds fewer falls back
                to enumeration).
        """
        started = time.perf_counter()
        n = len(states)
        out = torch.full((n, self.vocab_size), float("-inf"))
        depth = states.depth[rows]
        counts = states.counts[rows]
        root_rows = rows[depth == 0]
        if root_rows.size:
            out[torch.as_tensor(root_rows)] = self._root_mask
        big = rows[(depth >= 2) & (counts > self.enumerate_below)]
        fallback: list[int] = []
        if big.size:
            m = self.check_top_m
            cand = torch.topk(logprobs[torch.as_tensor(big)], m, dim=-1).indices.numpy()
            valid = self.index.check(states.take(big), cand) > 0
            r, c = np.nonzero(valid)
            out[torch.as_tensor(big[r]), torch.as_tensor(cand[r, c])] = 0.0
            if m < self.vocab_size:
                fallback = big[valid.sum(axis=1) < needed].tolist()
                out[torch.as_tensor(fallback, dtype=torch.long)] = float("-inf")
        listed = np.concatenate([rows[(depth >= 1) & ~np.isin(rows, big)], np.asarray(fallback, dtype=np.int64)])
        if listed.size:
            ptr, tok = self.index.allowed_next(states.take(listed))
            row_of = np.repeat(listed, np.diff(ptr))
            keep = tok < self.vocab_size
            out[torch.as_tensor(row_of[keep]), torch.as_tensor(tok[keep])] = 0.0
        self.seconds += time.perf_counter() - started
        return out
