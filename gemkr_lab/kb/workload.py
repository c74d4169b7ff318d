"""The synthetic index workload of `shared/reference/fmindex.md` §1, generated in vectorised chunks.

Documents of 90-110 tokens; ids in [3, 32000) drawn Zipf(s=1) over 31,997 ranks with a random rank->id
permutation; half of the segments are phrases of 2-8 tokens drawn Zipf-weighted from a bank of 200,000
phrases, which gives realistic n-gram repetition. Used by the benchmarks and the scale check.
"""

from collections.abc import Iterator

import numpy as np

from gemkr_lab.kb.build import DocBatch

VOCAB_SIZE = 32_000
FIRST_ID = 3
N_PHRASES = 200_000


class ZipfWorkload:
    """A deterministic stream of synthetic documents (`DocBatch`es) for a seed."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._rng = rng
        ranks = VOCAB_SIZE - FIRST_ID
        self._perm = rng.permutation(ranks).astype(np.int64) + FIRST_ID
        self._tok_cdf = _zipf_cdf(ranks)
        lens = rng.integers(2, 9, size=N_PHRASES)
        self._phrase_ptr = np.concatenate([[0], np.cumsum(lens)])
        self._phrase_tok = self._tokens(int(self._phrase_ptr[-1]))
        self._phrase_cdf = _zipf_cdf(N_PHRASES)

    def _tokens(self, n: int) -> np.ndarray:
        return self._perm[np.searchsorted(self._tok_cdf, self._rng.random(n), side="right")]

    def batches(self, n_docs: int, batch_docs: int = 50_000) -> Iterator[DocBatch]:
        """`n_docs` documents in batches of `batch_docs`."""
        done = 0
        while done < n_docs:
            m = min(batch_docs, n_docs - done)
            yield self._batch(m)
            done += m

    def _batch(self, m: int) -> DocBatch:
        rng = self._rng
        lengths = rng.integers(90, 111, size=m).astype(np.int64)
        need = int(lengths.sum())
        # segments: a phrase (mean 5 tokens) or a single token, half each (mean 3): n/2 segments suffice
        n_seg = need // 2 + 64
        is_phrase = rng.random(n_seg) < 0.5
        pid = np.searchsorted(self._phrase_cdf, rng.random(n_seg), side="right")
        seg_len = np.where(is_phrase, self._phrase_ptr[pid + 1] - self._phrase_ptr[pid], 1)
        keep = int(np.searchsorted(np.cumsum(seg_len), need)) + 1
        is_phrase, pid, seg_len = is_phrase[:keep], pid[:keep], seg_len[:keep]
        starts = np.where(is_phrase, self._phrase_ptr[pid], 0)
        seg_off = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
        within = np.arange(int(seg_len.sum())) - np.repeat(seg_off, seg_len)
        seg_of = np.repeat(np.arange(seg_len.shape[0]), seg_len)
        singles = self._tokens(seg_len.shape[0])
        flat = np.where(is_phrase[seg_of], self._phrase_tok[starts[seg_of] + within], singles[seg_of])
        return DocBatch(flat[:need].astype(np.uint16), lengths)


def _zipf_cdf(n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    cdf = np.cumsum(w)
    return cdf / cdf[-1]
