"""The FM kernels that step many walks a level at a time give what one walk at a time gives."""

import numba as nb
import numpy as np
import pytest

from gemkr_lab.kb import _fm_kernels as fmk
from gemkr_lab.kb import build_index
from gemkr_lab.kb._prefetch import prefetch


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    rng = np.random.default_rng(11)
    docs = [rng.integers(3, 40, size=int(rng.integers(5, 30))).tolist() for _ in range(300)]
    index = build_index(docs, tmp_path_factory.mktemp("fm") / "i", eos_id=2, backend="fm", vocab_size=40)
    return index.shards[0]


def _ranges(shard, rng, n, max_width):
    lo = rng.integers(0, shard.n_rows, size=n)
    hi = np.minimum(lo + rng.integers(0, max_width + 1, size=n), shard.n_rows)
    return lo.astype(np.int64), hi.astype(np.int64)


def test_advance_and_check_batches_equal_single_backward_steps(shard):
    rng = np.random.default_rng(0)
    lo, hi = _ranges(shard, rng, 500, 400)
    lo[:50], hi[:50] = 0, shard.n_rows  # the root
    sym = rng.integers(-2, 45, size=500)  # invalid symbols too (0, negative, past the vocabulary)
    out_lo, out_hi = np.empty_like(lo), np.empty_like(hi)
    fmk.advance_batch(shard.bits, shard.ranks, shard.Z, shard.start_of, shard.C, lo, hi, sym, out_lo, out_hi)
    cand = rng.integers(-1, 45, size=(500, 7))
    counts = np.empty(cand.shape, dtype=np.int64)
    fmk.check_batch(shard.bits, shard.ranks, shard.Z, shard.start_of, shard.C, lo, hi, cand, counts)
    for j in range(500):
        a, b = fmk.backward_step(shard.bits, shard.ranks, shard.Z, shard.start_of, shard.C, lo[j], hi[j], sym[j])
        assert (out_lo[j], out_hi[j]) == (a, b)
        for m in range(7):
            a, b = fmk.backward_step(
                shard.bits, shard.ranks, shard.Z, shard.start_of, shard.C, lo[j], hi[j], cand[j, m]
            )
            assert counts[j, m] == b - a
    assert (out_hi > out_lo).sum() > 50  # many steps found their symbol


def test_few_symbols_lists_the_distinct_followers_of_a_short_range(shard):
    rng = np.random.default_rng(1)
    lo, hi = _ranges(shard, rng, 400, 32)
    none = np.empty(0, dtype=np.int64)
    out = np.empty(32, dtype=np.int64)
    for a, b in zip(lo, hi, strict=True):
        want = np.empty(64, dtype=np.int64)
        k = fmk.range_symbols(shard.bits, shard.ranks, shard.Z, a, b, want, none, 0, 1)
        n = fmk.few_symbols(shard.bits, shard.ranks, shard.Z, a, b, out)
        assert sorted(out[:n]) == list(want[:k])


@nb.njit
def _touch(arr, i, j):
    prefetch(arr, i, j)
    return arr[0, 0]


def test_a_prefetch_compiles_and_never_faults():
    arr = np.arange(12, dtype=np.uint64).reshape(3, 4)
    assert _touch(arr, 1, 2) == 0
    assert _touch(arr, 10**6, 10**9) == 0  # a hint only: far outside the array, no fault


def test_locate_walks_stepping_together_find_each_occurrences_document(shard):
    """`locate_docs` (all walks a level at a time) = each occurrence walked alone with `lf` to its EOS row."""
    rng = np.random.default_rng(2)
    e0, e1 = int(shard.C[shard.eos]), int(shard.C[shard.eos + 1])
    lo, hi = _ranges(shard, rng, 60, 300)
    lo[:5] = e0  # ranges starting in the EOS block itself
    for a, b in zip(lo, hi, strict=True):
        limit = int(rng.integers(1, 400))
        got = fmk.locate_docs(
            shard.bits, shard.ranks, shard.Z, shard.start_of, shard.C, shard.eos_doc, shard.eos, a, b, limit
        )
        want = []
        for row in range(a, min(b, a + limit)):
            while not e0 <= row < e1:
                c, row = fmk.lf(shard.bits, shard.ranks, shard.Z, shard.start_of, shard.C, row)
                assert c != 0
            want.append(shard.eos_doc[row - e0])
        np.testing.assert_array_equal(got, want)
