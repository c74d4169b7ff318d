"""Suffix-array construction for integer texts through libdivsufsort (shipped by `pydivsufsort`).

libdivsufsort sorts bytes. A text of `w`-byte symbols written big-endian sorts, at the byte offsets that
are multiples of `w`, exactly like the symbol text, so we sort the bytes and keep those offsets. Calling the
library directly (instead of `pydivsufsort.divsufsort`) lets us compact the result in place: peak memory is
the text, its big-endian copy and the int32 byte-level array, about 12 bytes per uint16 token.
"""

import ctypes

import numpy as np

from gemkr_lab.kb import _sa_kernels as sak

#: Largest byte length the int32 path of libdivsufsort accepts; longer texts need a 64-bit array.
INT32_BYTES_LIMIT = np.iinfo(np.int32).max


def suffix_array(text: np.ndarray) -> np.ndarray:
    """Suffix array of an unsigned integer text, as uint32 (texts must stay below 2**32 symbols).

    Args:
        text: 1-D uint16 or uint32 array.

    Returns:
        uint32 array of the text's suffix start positions in lexicographic order (a shorter suffix sorts
        before its extensions).
    """
    from pydivsufsort.dll import libdivsufsort, libdivsufsort64

    if text.ndim != 1 or text.dtype not in (np.uint16, np.uint32):
        raise TypeError(f"suffix_array needs a 1-D uint16/uint32 array, got {text.dtype} {text.shape}")
    if text.shape[0] >= 2**32:
        raise ValueError("a shard must hold fewer than 2**32 tokens; build with more shards")
    width = text.dtype.itemsize
    big_endian = text.astype(text.dtype.newbyteorder(">"))
    raw = big_endian.view(np.uint8)
    nbytes = raw.shape[0]
    if nbytes == 0:
        return np.empty(0, dtype=np.uint32)
    if nbytes <= INT32_BYTES_LIMIT:
        out = np.empty(nbytes, dtype=np.int32)
        rc = libdivsufsort.divsufsort(
            raw.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int32(nbytes)
        )
    else:
        out = np.empty(nbytes, dtype=np.int64)
        rc = libdivsufsort64.divsufsort64(
            raw.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(nbytes)
        )
    del big_endian, raw
    if rc:
        raise RuntimeError(f"libdivsufsort failed with code {rc}")
    kept = sak.compact_even(out, width)
    if out.dtype == np.int32:
        # reinterpret in place: the kept values are < 2**31, so int32 and uint32 agree
        return out[:kept].view(np.uint32)
    return out[:kept].astype(np.uint32)
