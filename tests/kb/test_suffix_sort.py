"""The in-place suffix sort (SA-IS) and the FM build's in-place BWT and streamed matrix file."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemkr_lab.kb import _fm_kernels as fmk
from gemkr_lab.kb.storage import save_array, save_array_parts
from gemkr_lab.kb.suffix_array import _divsufsort, sais, sort_buffer, suffix_array


def _naive_sa(text: np.ndarray) -> np.ndarray:
    """Sort the suffixes as tuples: a suffix that is a prefix of another sorts first."""
    t = [int(x) for x in text]
    return np.array(sorted(range(len(t)), key=lambda i: t[i:]), dtype=np.int64)


def _texts(rng):
    """Small texts of many shapes: tiny and large alphabets, runs, periods, sorted and reversed."""
    for trial in range(400):
        n = int(rng.integers(1, 200))
        sigma = [2, 3, 4, 40, 300, 40_000][trial % 6]
        text = rng.integers(1, sigma + 1, n)
        kind = trial % 7
        if kind == 1:
            period = rng.integers(1, sigma + 1, int(rng.integers(1, 6)))
            text = np.tile(period, n // period.shape[0] + 1)[:n]
        elif kind == 2:
            text = np.sort(text)
        elif kind == 3:
            text = np.sort(text)[::-1]
        elif kind == 4:
            text = np.full(n, int(text[0]))
        yield text.astype(np.uint16 if trial % 5 else np.uint32)


def test_sais_matches_a_naive_sort_and_libdivsufsort():
    rng = np.random.default_rng(0)
    for text in _texts(rng):
        n = text.shape[0]
        want = _naive_sa(text)
        for spare in (0, 1, 3):
            buf = np.full(n + spare, -7, dtype=np.int32)
            sais(text, buf, int(text.max()) + 1)
            np.testing.assert_array_equal(buf[:n], want, err_msg=f"{text.dtype} {text.tolist()}")
        np.testing.assert_array_equal(_divsufsort(text.copy())[:n], want)
        np.testing.assert_array_equal(suffix_array(text.copy()), want)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=60))
def test_sais_hypothesis(symbols):
    text = np.array(symbols, dtype=np.uint16)
    np.testing.assert_array_equal(suffix_array(text), _naive_sa(text))


def test_sais_on_a_zipf_text_with_recursion_matches_libdivsufsort():
    rng = np.random.default_rng(1)
    text = np.minimum(rng.zipf(1.3, 300_000), 30_000).astype(np.uint16)
    text[rng.integers(0, text.shape[0], 3000)] = 3  # document ends
    np.testing.assert_array_equal(suffix_array(text.copy()), _divsufsort(text.copy())[: text.shape[0]])
    periodic = np.tile(rng.integers(1, 50, 997).astype(np.uint16), 300)  # deep recursion
    np.testing.assert_array_equal(suffix_array(periodic.copy()), _divsufsort(periodic.copy())[: periodic.shape[0]])


def test_a_huge_alphabet_falls_back_to_libdivsufsort():
    text = np.array([4_000_000_000, 5, 4_000_000_000, 7], dtype=np.uint32)
    np.testing.assert_array_equal(sort_buffer(text, spare=2)[:4], _naive_sa(text))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_bwt_in_place_matches_the_definition(dtype):
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 17, 1000):
        text = rng.integers(1, 9, n).astype(dtype)
        sa = _naive_sa(text)
        want = np.array([text[-1]] + [text[p - 1] if p > 0 else 0 for p in sa], dtype=dtype)
        buf = sort_buffer(text, spare=1)
        fmk.bwt_in_place(text, buf)
        np.testing.assert_array_equal(buf.view(dtype)[: n + 1], want)


def test_save_array_parts_writes_the_bytes_of_save_array(tmp_path):
    rng = np.random.default_rng(3)
    whole = rng.integers(0, 2**63, (5, 37), dtype=np.uint64)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    entry = save_array(a, "x", whole)
    assert save_array_parts(b, "x", np.uint64, whole.shape, iter(whole)) == entry
    assert (a / "x.npy").read_bytes() == (b / "x.npy").read_bytes()
    with pytest.raises(ValueError, match="bytes of data"):
        save_array_parts(b, "y", np.uint64, whole.shape, iter(whole[:4]))
