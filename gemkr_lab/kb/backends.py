"""The two interchangeable index backends, one shard each: suffix array and FM-index.

Both hold a shard's text as *symbols* (token id + 1; 0 is the FM sentinel) with an EOS after every
document, and answer the same row-range questions. `KBIndex` turns token ids into symbols, unions shards
and applies the clue semantics; a backend knows nothing about tokenizers, shards or decoding.
"""

import contextlib
import ctypes
import mmap
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gemkr_lab.kb import _fm_kernels as fmk
from gemkr_lab.kb import _sa_kernels as sak
from gemkr_lab.kb.storage import load_array, save_array, save_array_parts
from gemkr_lab.kb.suffix_array import sort_buffer, suffix_array

#: Returns a shard's symbol text, freshly read: a backend owns it and may free it (or modify it) early.
TextReader = Callable[[], np.ndarray]


def symbol_counts_to_C(counts: np.ndarray) -> np.ndarray:
    """`C[c]` = rows whose suffix starts with a symbol < c; `C` has one entry past the last symbol."""
    C = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=C[1:])
    return C


class Shard:
    """What both backends answer for one shard. States are row ranges `[lo, hi)` plus the clue's depth."""

    name: ClassVar[str]
    C: np.ndarray
    bigram_ptr: np.ndarray
    bigram_sym: np.ndarray
    n_docs: int
    n_tokens: int
    eos: int = -1

    @property
    def n_rows(self) -> int:
        """Rows of the root range (the empty clue)."""
        return int(self.C[-1])

    @property
    def sigma(self) -> int:
        """Largest symbol the shard can hold."""
        return self.C.shape[0] - 2

    @property
    def levels(self) -> int:
        """Bits of a symbol: the levels of the binary partition the best-first search walks."""
        return max(int(self.sigma).bit_length(), 1)

    def followers_capacity(self, lo: np.ndarray, hi: np.ndarray) -> int:
        """An upper bound on the CSR size of `followers` for these ranges."""
        return int(np.minimum(np.maximum(hi - lo, 0), self.sigma + 1).sum())


class SuffixArrayShard(Shard):
    """Text (uint16/uint32 symbols) + uint32 suffix array: 6 B/token, the fastest to query and locate."""

    name = "sa"

    def __init__(self, arrays: dict[str, np.ndarray], n_docs: int) -> None:
        self.T = arrays["text"]
        self.SA = arrays["sa"]
        self.C = arrays["C"]
        self.doc_starts = arrays["doc_starts"]
        self.bigram_ptr = arrays["bigram_ptr"]
        self.bigram_sym = arrays["bigram_sym"]
        self.n_docs = n_docs
        self.n_tokens = int(self.T.shape[0])

    @staticmethod
    def build(read_text: TextReader, doc_starts: np.ndarray, eos: int, sigma: int, out: Path) -> dict[str, Any]:
        """Write a shard's files to `out`; return the file table.

        Peak memory is the text plus the sort's int32 suffix array: about 6 B/token (uint16). The follower
        table then reads both back mapped, dropping the suffix array's pages as it passes them.
        """
        text = read_text()
        files: dict[str, Any] = {"text": save_array(out, "text", text), "doc_starts": None}
        counts = sak.symbol_counts(text, sigma)
        files["C"] = save_array(out, "C", symbol_counts_to_C(counts))
        sa = suffix_array(text)
        files["sa"] = save_array(out, "sa", sa)
        del sa, text
        # re-read through the page cache: the in-memory text and suffix array are gone before the next step
        arrays = {k: load_array(out, files[k], verify=False) for k in ("text", "C", "sa")}
        ptr, sym = _sa_bigram_table(arrays["text"], arrays["sa"], arrays["C"])
        del arrays
        files["bigram_ptr"] = save_array(out, "bigram_ptr", ptr)
        files["bigram_sym"] = save_array(out, "bigram_sym", sym)
        files["doc_starts"] = save_array(out, "doc_starts", doc_starts)  # last: its pages stay off the peak
        return files

    def advance(self, lo, hi, depth, sym):
        """Refine each range by one symbol at its depth."""
        out_lo, out_hi = np.empty_like(lo), np.empty_like(hi)
        sak.advance_batch(self.T, self.SA, lo, hi, depth, sym, out_lo, out_hi)
        return out_lo, out_hi

    def followers(self, lo, hi, depth):
        """CSR `(ptr, sym, cnt)` of the distinct symbols that follow each range."""
        cap = self.followers_capacity(lo, hi)
        ptr = np.empty(lo.shape[0] + 1, dtype=np.int64)
        sym, cnt = np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64)
        sak.followers_batch(self.T, self.SA, lo, hi, depth, ptr, sym, cnt)
        return ptr, sym[: ptr[-1]], cnt[: ptr[-1]]

    def search(self, pattern: np.ndarray) -> tuple[int, int]:
        """Row range of a symbol pattern."""
        return sak.search(self.T, self.SA, 0, self.n_rows, pattern)

    def best_next(self, query: tuple) -> None:
        """The best-scored allowed tokens of each state: the kernel's arguments after the structure's."""
        sak.best_next(self.T, self.SA, self.levels, *query)

    def check(self, lo, hi, depth, cand):
        """Counts of each range extended by each candidate symbol."""
        out = np.empty(cand.shape, dtype=np.int64)
        sak.check_batch(self.T, self.SA, lo, hi, depth, cand, out)
        return out

    def locate(self, lo: int, hi: int, limit: int) -> np.ndarray:
        """Local documents of the occurrences in rows `[lo, min(hi, lo + limit))`, one per occurrence."""
        pos = self.SA[lo : min(hi, lo + limit)]
        return np.searchsorted(self.doc_starts, pos, side="right") - 1

    def doc_symbols(self, doc: int) -> np.ndarray:
        """A document's symbols, its EOS excluded."""
        return np.asarray(self.T[self.doc_starts[doc] : self.doc_starts[doc + 1] - 1])


def _sa_bigram_table(T: np.ndarray, SA: np.ndarray, C: np.ndarray, parts: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The depth-1 cache (`sak.bigram_rows` of every symbol), built in about `parts` slices of rows.

    Each slice's mapped suffix-array pages are dropped once read. The slices' rows are consecutive, so at most
    one slice of the (mapped) suffix array is resident at a time.
    """
    sigma = C.shape[0] - 2
    step = max(SA.shape[0] // parts, 1)
    ptr = np.zeros(sigma + 2, dtype=np.int64)
    chunks = []
    total = 0
    c0 = 0
    while c0 <= sigma:
        c1 = min(max(int(np.searchsorted(C, C[c0] + step, side="right")) - 1, c0 + 1), sigma + 1)
        part_ptr, part_sym = sak.bigram_rows(T, SA, C, c0, c1, T[:0])
        ptr[c0 + 1 : c1 + 1] = total + part_ptr[1:]
        total += part_sym.shape[0]
        chunks.append(part_sym)
        _drop_pages(SA[C[c0] : C[c1]])
        c0 = c1
    return ptr, np.concatenate(chunks)


def _drop_pages(arr: np.ndarray) -> None:
    """Unmap the whole pages of a memory-mapped array's range (they stay in the page cache; a no-op elsewhere)."""
    page = mmap.PAGESIZE
    start = -(-arr.ctypes.data // page) * page
    end = (arr.ctypes.data + arr.nbytes) // page * page
    if end > start:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # MADV_DONTNEED


class FMShard(Shard):
    """Wavelet matrix over the BWT of the reversed text: about 2.3 B/token, memory-mappable."""

    name = "fm"

    def __init__(self, arrays: dict[str, np.ndarray], n_docs: int) -> None:
        self.bits = arrays["wm_bits"]
        self.ranks = arrays["wm_ranks"]
        self.Z = arrays["wm_zeros"]
        self.start_of = arrays["start_of"]
        self.C = arrays["C"]
        self.eos_doc = arrays["eos_doc"]
        self.bigram_ptr = arrays["bigram_ptr"]
        self.bigram_sym = arrays["bigram_sym"]
        self.n_docs = n_docs
        self.n_tokens = self.n_rows - 1
        self._doc_row: np.ndarray | None = None

    @property
    def levels(self) -> int:
        """The wavelet matrix's levels (bits of a symbol)."""
        return self.bits.shape[0]

    @staticmethod
    def build(read_text: TextReader, doc_starts: np.ndarray, eos: int, sigma: int, out: Path) -> dict[str, Any]:
        """Write a shard's files to `out`; return the file table.

        Peak memory is about 6 B/token (uint16 symbols), while sorting: the reversed text and the int32
        suffix array. The BWT then replaces the suffix array in place, the matrix's levels partition it
        within the same buffer and go to disk one by one, and the finished matrix is read back mapped.
        """
        reversed_text = read_text()[::-1].copy()
        dtype = reversed_text.dtype
        n = reversed_text.shape[0]
        counts = sak.symbol_counts(reversed_text, sigma)
        counts[0] += 1  # the BWT holds the text's symbols and one sentinel
        C = symbol_counts_to_C(counts)
        buf = sort_buffer(reversed_text, spare=1)  # int32: the suffix array, then the BWT in its place
        # the positions of the rows that start with EOS (documents once the text is gone); rows are 1 + entries
        eos_doc = buf[C[eos] - 1 : C[eos + 1] - 1].view(np.uint32).copy()
        fmk.bwt_in_place(reversed_text, buf)
        del reversed_text
        fmk.eos_positions_to_docs(n, doc_starts, eos_doc)
        n_rows = n + 1
        raw = buf.view(np.uint8)
        width = n_rows * dtype.itemsize
        bwt = raw[:width].view(dtype)
        # the partition's other level: the buffer's second half (uint16), else a new array
        other = raw[width : 2 * width].view(dtype) if raw.shape[0] >= 2 * width else np.empty_like(bwt)
        nlev = max(int(sigma).bit_length(), 1)
        n_words = (n_rows + 63) // 64
        ranks = np.empty((nlev, n_words // 4 + 1), dtype=np.uint32)
        zeros = np.empty(nlev, dtype=np.int64)

        def levels(cur, nxt):
            words = np.empty(n_words, dtype=np.uint64)
            for lvl in range(nlev):
                zeros[lvl] = fmk.wavelet_level(cur, nxt, nlev - 1 - lvl, words, ranks[lvl])
                cur, nxt = nxt, cur
                yield words

        files = {"wm_bits": save_array_parts(out, "wm_bits", np.uint64, (nlev, n_words), levels(bwt, other))}
        del bwt, other, raw, buf
        bits = load_array(out, files["wm_bits"], verify=False)
        start_of = fmk.symbol_starts(bits, ranks, zeros, sigma)
        ptr, sym = fmk.bigram_table(bits, ranks, zeros, C, np.empty(0, dtype=dtype))
        del bits
        return files | {
            "wm_ranks": save_array(out, "wm_ranks", ranks),
            "wm_zeros": save_array(out, "wm_zeros", zeros),
            "start_of": save_array(out, "start_of", start_of),
            "C": save_array(out, "C", C),
            "eos_doc": save_array(out, "eos_doc", eos_doc),
            "bigram_ptr": save_array(out, "bigram_ptr", ptr),
            "bigram_sym": save_array(out, "bigram_sym", sym),
        }

    def advance(self, lo, hi, depth, sym):
        """One backward-search step per range (the depth is implicit in the range)."""
        out_lo, out_hi = np.empty_like(lo), np.empty_like(hi)
        fmk.advance_batch(self.bits, self.ranks, self.Z, self.start_of, self.C, lo, hi, sym, out_lo, out_hi)
        return out_lo, out_hi

    def followers(self, lo, hi, depth):
        """CSR `(ptr, sym, cnt)` of the distinct symbols that follow each range."""
        cap = self.followers_capacity(lo, hi)
        ptr = np.empty(lo.shape[0] + 1, dtype=np.int64)
        sym, cnt = np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64)
        fmk.followers_batch(self.bits, self.ranks, self.Z, lo, hi, ptr, sym, cnt)
        return ptr, sym[: ptr[-1]], cnt[: ptr[-1]]

    def search(self, pattern: np.ndarray) -> tuple[int, int]:
        """Row range of a symbol pattern."""
        return fmk.search(self.bits, self.ranks, self.Z, self.start_of, self.C, 0, self.n_rows, pattern)

    def best_next(self, query: tuple) -> None:
        """The best-scored allowed tokens of each state: the kernel's arguments after the structure's."""
        fmk.best_next(self.bits, self.ranks, self.Z, self.C, *query)

    def check(self, lo, hi, depth, cand):
        """Counts of each range extended by each candidate symbol."""
        out = np.empty(cand.shape, dtype=np.int64)
        fmk.check_batch(self.bits, self.ranks, self.Z, self.start_of, self.C, lo, hi, cand, out)
        return out

    def locate(self, lo: int, hi: int, limit: int) -> np.ndarray:
        """Local documents of the occurrences in rows `[lo, min(hi, lo + limit))`, one per occurrence."""
        return fmk.locate_docs(
            self.bits, self.ranks, self.Z, self.start_of, self.C, self.eos_doc, self.eos, lo, hi, limit
        )

    def doc_symbols(self, doc: int) -> np.ndarray:
        """A document's symbols, read forward from the EOS row of the document before it."""
        if self._doc_row is None:
            # the row whose BWT symbol starts document d: row 0 for d = 0, else document d-1's EOS row
            doc_row = np.empty(self.n_docs, dtype=np.int64)
            doc_row[0] = 0
            eos_rank = np.empty(self.n_docs, dtype=np.int64)
            eos_rank[self.eos_doc.astype(np.int64)] = np.arange(self.n_docs)
            doc_row[1:] = self.C[self.eos] + eos_rank[:-1]
            self._doc_row = doc_row
        size = 512
        while True:  # documents are short; grow the buffer in the rare case one is not
            out = np.empty(size, dtype=np.int64)
            k = fmk.extract_doc(self.bits, self.ranks, self.Z, self.start_of, self.C, self.eos, self._doc_row[doc], out)
            if k >= 0:
                return out[:k]
            size *= 8


BACKENDS: dict[str, type[Shard]] = {"sa": SuffixArrayShard, "fm": FMShard}


def open_shard(backend: str, directory: Path, files: dict[str, Any], n_docs: int, eos: int, verify: bool):
    """Open one shard's arrays (memory-mapped) as the named backend."""
    arrays = {name: load_array(directory, entry, verify=verify) for name, entry in files.items()}
    shard = BACKENDS[backend](arrays, n_docs)
    shard.eos = eos
    return shard
