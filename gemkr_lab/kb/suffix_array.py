"""Suffix-array construction for integer texts through libdivsufsort (shipped by `pydivsufsort`).

libdivsufsort sorts bytes. A text of `w`-byte symbols written big-endian sorts, at the byte offsets that
are multiples of `w`, exactly like the symbol text, so we sort the bytes and keep those offsets. Calling the
library directly (instead of `pydivsufsort.divsufsort`) lets us compact the result in place: peak memory is
the text and the int32 byte-level array, about 10 bytes per uint16 token.
"""

import ctypes

import numpy as np

from gemkr_lab.kb import _sa_kernels as sak

#: Largest byte length the int32 path of libdivsufsort accepts; longer texts need a 64-bit array.
INT32_BYTES_LIMIT = np.iinfo(np.int32).max


def suffix_array(text: np.ndarray) -> np.ndarray:
    """Suffix array of an unsigned integer text, as uint32 (texts must stay below 2**32 symbols).

    The text is byte-swapped to big-endian *in place* for the sort and swapped back afterwards (so it must
    be writable and is briefly changed), which saves a copy of the text at the build's peak.

    Args:
        text: 1-D uint16 or uint32 array.

    Returns:
        uint32 array of the text's suffix start positions in lexicographic order (a shorter suffix sorts
        before its extensions). It is a view into the sort's buffer, whose unused second half (at least
        4 bytes per symbol) callers may use as scratch space.
    """
    from pydivsufsort.dll import libdivsufsort, libdivsufsort64

    if text.ndim != 1 or text.dtype not in (np.uint16, np.uint32):
        raise TypeError(f"suffix_array needs a 1-D uint16/uint32 array, got {text.dtype} {text.shape}")
    if text.shape[0] >= 2**32:
        raise ValueError("a shard must hold fewer than 2**32 tokens; build with more shards")
    width = text.dtype.itemsize
    nbytes = text.shape[0] * width
    if nbytes == 0:
        return np.empty(0, dtype=np.uint32)
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
        # reinterpret in place: the kept values are < 2**31, so int32 and uint32 agree
        return out[:kept].view(np.uint32)
    return out[:kept].astype(np.uint32)


def scratch_after(sa: np.ndarray, nbytes: int) -> np.ndarray | None:
    """`nbytes` of the sort buffer behind a suffix array returned by `suffix_array`, or None if absent."""
    base = sa.base
    while base is not None and not isinstance(base, np.ndarray | memoryview):
        base = getattr(base, "base", None)
    if not isinstance(base, np.ndarray) or base.nbytes < sa.nbytes + nbytes:
        return None
    raw = base.view(np.uint8)
    return raw[sa.nbytes : sa.nbytes + nbytes]


def _ptr(arr: np.ndarray) -> ctypes.c_void_p:
    return arr.ctypes.data_as(ctypes.c_void_p)
