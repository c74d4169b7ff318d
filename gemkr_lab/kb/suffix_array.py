"""Suffix-array construction for integer texts: SA-IS in the output array (`_sais_kernels`).

The sort needs the text and 4 bytes per symbol (int32 entries): about 6 B/token for uint16 symbols, where
libdivsufsort (`pydivsufsort`), which sorts bytes, needs 10. It remains the fallback for alphabets much larger
than the text.
"""

import ctypes

import numpy as np

from gemkr_lab.kb import _sa_kernels as sak
from gemkr_lab.kb import _sais_kernels as sais_k

#: Largest byte length the int32 path of libdivsufsort accepts; longer texts need a 64-bit array.
INT32_BYTES_LIMIT = np.iinfo(np.int32).max
SORT_MAX_SYMBOLS = 2**31 - 2
"""The longest text `sort_buffer` sorts (int32 suffix array entries)."""

_SMALL_BUCKETS = 1 << 20
"""Alphabets up to this size get two bucket arrays of their own (at most 8 MB); larger ones share one."""


def suffix_array(text: np.ndarray) -> np.ndarray:
    """Suffix array of an unsigned integer text, as uint32 (texts must stay below 2**31 symbols).

    Args:
        text: 1-D uint16 or uint32 array (it may be changed during the call, and is restored).

    Returns:
        uint32 array of the text's suffix start positions in lexicographic order (a shorter suffix sorts
        before its extensions): a view of `sort_buffer(text)`'s first `n` entries.
    """
    return sort_buffer(text)[: text.shape[0]].view(np.uint32)


def sort_buffer(text: np.ndarray, spare: int = 0) -> np.ndarray:
    """The suffix array of `text` in the first `n` entries of an int32 buffer of at least `n + spare` entries.

    SA-IS in the buffer itself (`sais`): peak memory is the text and 4 bytes per symbol, about 6 B/token
    for uint16 symbols. The spare entries are free for the caller (the FM build writes its BWT there). An
    alphabet much larger than the text falls back to libdivsufsort's byte-level sort (8 B/token for uint16).
    """
    if text.ndim != 1 or text.dtype not in (np.uint16, np.uint32):
        raise TypeError(f"suffix_array needs a 1-D uint16/uint32 array, got {text.dtype} {text.shape}")
    n = text.shape[0]
    if n > SORT_MAX_SYMBOLS:
        raise ValueError(f"a shard must hold at most {SORT_MAX_SYMBOLS} tokens; build with more shards")
    sigma = int(text.max()) + 1 if n else 1
    if sigma <= max(4 * n, _SMALL_BUCKETS):
        buf = np.empty(n + spare, dtype=np.int32)
        sais(text, buf, sigma)
        return buf
    out = _divsufsort(text)
    if out.shape[0] >= n + spare:
        return out
    buf = np.empty(n + spare, dtype=np.int32)
    buf[:n] = out[:n]
    return buf


def _divsufsort(text: np.ndarray) -> np.ndarray:
    """Sort with libdivsufsort on the text's big-endian bytes, compacted in place to symbol positions (int32).

    A text of `w`-byte symbols written big-endian sorts, at the byte offsets that are multiples of `w`,
    exactly like the symbol text. The text is byte-swapped in place for the sort and swapped back.
    """
    from pydivsufsort.dll import libdivsufsort, libdivsufsort64

    width = text.dtype.itemsize
    nbytes = text.shape[0] * width
    little = text.dtype.byteorder == "<" or (text.dtype.byteorder == "=" and np.little_endian)
    if little:
        text.byteswap(inplace=True)
    try:
        raw = text.view(np.uint8)
        if nbytes <= INT32_BYTES_LIMIT:
            out = np.empty(nbytes, dtype=np.int32)
            rc = libdivsufsort.divsufsort(_ptr(raw), _ptr(out), ctypes.c_int32(nbytes))
        else:
            out = np.empty(nbytes, dtype=np.int64)
            rc = libdivsufsort64.divsufsort64(_ptr(raw), _ptr(out), ctypes.c_int64(nbytes))
    finally:
        if little:
            text.byteswap(inplace=True)
    if rc:
        raise RuntimeError(f"libdivsufsort failed with code {rc}")
    kept = sak.compact_even(out, width)
    if out.dtype == np.int32:
        return out  # the kept values are < 2**31: int32 and uint32 agree
    return out[:kept].astype(np.int32)


def _ptr(arr: np.ndarray) -> ctypes.c_void_p:
    return arr.ctypes.data_as(ctypes.c_void_p)


def sais(text: np.ndarray, sa: np.ndarray, sigma: int) -> None:
    """Suffix array of `text` (symbols `< sigma`) into `sa[:n]`, int32 (SA-IS, `_sais_kernels`).

    Entries of `sa` past `n` are free space for the recursion and are overwritten. Extra memory beyond
    `sa` is two bucket arrays of `sigma` entries and, on deeper levels, rarely one of the reduced alphabet.
    """
    n = text.shape[0]
    if sa.dtype != np.int32 or sa.shape[0] < n:
        raise ValueError(f"sais needs an int32 array of at least {n} entries")
    if n >= 2**31 - 1:
        raise ValueError("SA-IS with int32 entries sorts texts of fewer than 2**31 - 1 symbols")
    _sais_level(text, sa, sa.shape[0] - n, int(sigma))


def _sais_level(T: np.ndarray, SA: np.ndarray, fs: int, k: int) -> None:
    n = T.shape[0]
    if n <= 1:
        if n == 1:
            SA[0] = 0
        return

    def buckets():
        if 2 * k <= fs:
            return SA[n + fs - k : n + fs], SA[n + fs - 2 * k : n + fs - k], False
        if k <= fs:
            C = SA[n + fs - k : n + fs]
            return (C, np.empty(k, dtype=np.int32), False) if k <= _SMALL_BUCKETS else (C, C, True)
        if k <= _SMALL_BUCKETS:
            return np.empty(k, dtype=np.int32), np.empty(k, dtype=np.int32), False
        C = np.empty(k, dtype=np.int32)
        return C, C, True

    C, B, shared = buckets()
    sais_k.counts(T, C)
    sais_k.bucket_bounds(C, B, True)
    m, last, slot = sais_k.seed_lms(T, SA, B)
    if m > 1:
        sais_k.sort_lms_substrings(T, SA, C, B, shared)
        names = sais_k.name_lms_substrings(T, SA, m)
    elif m == 1:
        SA[slot] = last + 1
        names = 1
    else:
        names = 0
    if names < m:  # equal LMS substrings: sort the reduced text of their names, in the same array
        del C, B
        free = n + fs - 2 * m
        RA = SA[n + fs - m : n + fs]
        sais_k.gather_names(SA, m, n, RA)
        _sais_level(RA, SA[: m + free], free, names)
        sais_k.lms_positions(T, RA)
        sais_k.map_reduced(SA, RA, m)
        del RA
        C, B, shared = buckets()
    if m > 1:
        sais_k.counts(T, C)
        sais_k.bucket_bounds(C, B, True)
        sais_k.place_lms(T, SA, B, m)
    elif not shared:
        sais_k.counts(T, C)
    sais_k.induce(T, SA, C, B, shared)
