"""`build_index` and `open_index`: streaming, sharded, atomic index construction and validated opening.

Documents stream to a temporary symbol file in the staging directory (with EOS after each), so the corpus
is never held in memory as Python objects; each shard is then read back and built on its own, which bounds
peak memory by the largest shard, not the KB.
"""

import hashlib
import itertools
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from gemkr_lab.io import atomic_directory, write_json
from gemkr_lab.kb import _sa_kernels as sak
from gemkr_lab.kb.backends import BACKENDS, open_shard
from gemkr_lab.kb.doc_ids import DocIds, save_doc_ids
from gemkr_lab.kb.errors import IndexFormatError
from gemkr_lab.kb.index import KBIndex
from gemkr_lab.kb.storage import META_FILE, load_array, read_meta, save_array
from gemkr_lab.kb.suffix_array import INT32_BYTES_LIMIT

FORMAT_NAME = "gemkr-kb-index"
FORMAT_VERSION = 1
Backend = Literal["sa", "fm"]


@dataclass(frozen=True)
class DocBatch:
    """Many documents at once, flat: `build_index` takes these beside single sequences.

    They avoid a Python loop per document (a batched tokenizer produces them).

    Attributes:
        tokens: all documents' token ids, concatenated (no EOS).
        lengths: each document's number of tokens.
    """

    tokens: np.ndarray
    lengths: np.ndarray


def symbol_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every symbol (id + 1) fits, else uint32 (vocabularies above 65,535 ids)."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def default_shard_tokens(dtype: np.dtype) -> int:
    """Largest shard the int32 path of libdivsufsort sorts (about 1.07 B uint16 or 0.54 B uint32 tokens)."""
    return INT32_BYTES_LIMIT // dtype.itemsize


def build_index(
    docs: Iterable[Sequence[int] | np.ndarray],
    out_dir: str | Path,
    eos_id: int = 2,
    backend: Backend = "sa",
    shards: int | Literal["auto"] = 1,
    *,
    vocab_size: int | None = None,
    max_shard_tokens: int | None = None,
    overwrite: bool = False,
    doc_ids: Sequence[str] | None = None,
    tokenizer_fingerprint: str | None = None,
    corpus_fingerprint: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    progress: bool | None = None,
    meta_hook: Callable[[dict[str, Any], Path], None] | None = None,
) -> KBIndex:
    """Build an index over token-id documents and return it opened.

    Args:
        docs: token-id sequences without EOS, or `DocBatch`es of them; their order gives positional doc
            ids `0..n-1`.
        out_dir: the index directory; written atomically (nothing appears there if the build fails).
        eos_id: the tokenizer's EOS id, appended to every document; it may not occur inside one.
        backend: "sa" (suffix array, 6 B/token, fastest) or "fm" (FM-index, ~2.3 B/token).
        shards: a number of shards of about equal size, or "auto" to cut a shard whenever it reaches
            `max_shard_tokens`. Answers do not depend on the sharding.
        vocab_size: ids must be below it (default: largest id seen + 1); picks uint16 or uint32 storage.
        max_shard_tokens: shard size cap for `shards="auto"` (default: what one suffix sort handles).
        overwrite: replace an existing `out_dir` (after the new index is complete).
        doc_ids: the corpus's own ids, one per document (default: positions).
        tokenizer_fingerprint: recorded so that opening with another tokenizer fails.
        corpus_fingerprint: recorded provenance (default: a hash of the token stream).
        extra_meta: more provenance to record under `meta["extra"]`.
        progress: show progress bars (default: only on a terminal).
        meta_hook: called with the metadata and the staging directory just before `meta.json` is written
            (to add provenance known only once the documents have streamed).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if shards != "auto" and (not isinstance(shards, int) or shards < 1):
        raise ValueError(f"shards must be a positive integer or 'auto', got {shards!r}")
    if eos_id < 0:
        raise ValueError(f"eos_id must be a token id (>= 0), got {eos_id}")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        stream = _stream_symbols(docs, staging, eos_id, vocab_size, progress)
        vocab = stream["vocab_size"]
        dtype = symbol_dtype(vocab)
        if doc_ids is not None and len(doc_ids) != stream["n_docs"]:
            raise ValueError(f"doc_ids has {len(doc_ids)} entries for {stream['n_docs']} documents")
        cap = max_shard_tokens or default_shard_tokens(dtype)
        bounds = _shard_bounds(stream["lengths"], shards, cap)
        shard_meta = []
        for k, (d0, d1) in enumerate(
            tqdm(bounds, desc=f"index shards ({backend})", disable=_quiet(progress), unit="shard")
        ):
            shard_dir = staging / f"shard-{k:03d}"
            shard_dir.mkdir()
            starts = np.concatenate([[0], np.cumsum(stream["lengths"][d0:d1] + 1)]).astype(np.int64)

            # a reader, not an array: the backend then holds the only reference and frees the text early;
            # read (not mapped) so that file pages do not count twice in the peak
            def read_text(s0=int(stream["offsets"][d0]), count=int(starts[-1])) -> np.ndarray:
                return np.fromfile(stream["path"], dtype=dtype, count=count, offset=s0 * dtype.itemsize)

            files = BACKENDS[backend].build(read_text, starts, eos_id + 1, vocab, shard_dir)
            shard_meta.append(
                {
                    "dir": shard_dir.name,
                    "doc_base": int(d0),
                    "n_docs": int(d1 - d0),
                    "n_tokens": int(starts[-1] - (d1 - d0)),
                    "files": files,
                }
            )
        Path(stream["path"]).unlink()
        bigram = _merged_bigrams(staging, backend, shard_meta) if len(shard_meta) > 1 else None
        meta: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "backend": backend,
            "vocab_size": vocab,
            "eos_id": eos_id,
            "symbol_dtype": str(dtype),
            "n_docs": stream["n_docs"],
            "n_tokens": stream["n_tokens"],
            "tokenizer_fingerprint": tokenizer_fingerprint,
            "corpus_fingerprint": corpus_fingerprint or stream["fingerprint"],
            "shards": shard_meta,
            "bigram": bigram,
            "build": {"seconds": round(time.perf_counter() - started, 3), "host": platform.node()},
            "extra": extra_meta or {},
        }
        if doc_ids is not None:
            meta["doc_ids"] = save_doc_ids(staging, doc_ids)
        if meta_hook is not None:
            meta_hook(meta, staging)
        write_json(staging / META_FILE, meta)
    return open_index(out_dir, verify=False)


def open_index(path: str | Path, *, tokenizer_fingerprint: str | None = None, verify: bool = True) -> KBIndex:
    """Open an index directory (arrays memory-mapped).

    Args:
        path: a directory written by `build_index`.
        tokenizer_fingerprint: when given, must equal the one the index was built with.
        verify: check every file's checksum (reads the files once; sizes are always checked).

    Raises:
        IndexFormatError: a missing or unfinished index, an unknown format or version, another tokenizer,
            or a missing, truncated or corrupted file.
    """
    path = Path(path)
    meta = read_meta(path)
    where = path / META_FILE
    if meta.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{where}: not a gemkr_lab index (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{where}: index format version {version!r}, this gemkr_lab reads version {FORMAT_VERSION}; "
            "rebuild the index with this version (gemkr-lab index build ... --overwrite)"
        )
    try:
        backend = meta["backend"]
        if backend not in BACKENDS:
            raise IndexFormatError(f"{where}: unknown backend {backend!r}")
        if tokenizer_fingerprint is not None and meta["tokenizer_fingerprint"] != tokenizer_fingerprint:
            raise IndexFormatError(
                f"{where}: built with tokenizer {meta['tokenizer_fingerprint']}, but the tokenizer given is "
                f"{tokenizer_fingerprint}; use the tokenizer the index was built with, or rebuild the index"
            )
        doc_ids = DocIds(path, meta["doc_ids"], verify) if "doc_ids" in meta else None
        bigram = None
        if meta.get("bigram"):
            bigram = tuple(load_array(path, meta["bigram"][k], verify=verify) for k in ("bigram_ptr", "bigram_sym"))
        shards = [
            open_shard(backend, path / s["dir"], s["files"], s["n_docs"], meta["eos_id"] + 1, verify)
            for s in meta["shards"]
        ]
    except KeyError as exc:
        raise IndexFormatError(f"{where}: metadata lacks key {exc}; rebuild the index") from exc
    return KBIndex(path, meta, shards, doc_ids, bigram)


# ---- helpers -----------------------------------------------------------------------------------------


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _stream_symbols(docs, staging: Path, eos_id: int, vocab_size: int | None, progress) -> dict[str, Any]:
    """Append every document's symbols (id + 1) and an EOS to a file; validate ids on the way."""
    dtype = symbol_dtype(vocab_size) if vocab_size is not None else np.dtype(np.uint32)
    path = staging / "stream.tmp"
    lengths: list[np.ndarray] = []
    hasher = hashlib.sha256()
    max_id = -1
    n_docs = 0
    bar = tqdm(desc="stream documents", disable=_quiet(progress), unit="doc")
    with open(path, "wb") as fh, bar:
        for flat, lens in _slices(docs):
            if flat.size:
                bad = (flat < 0) | (flat == eos_id)
                if vocab_size is not None:
                    bad |= flat >= vocab_size
                if bad.any():
                    at = int(np.argmax(bad))
                    doc = n_docs + int(np.searchsorted(np.cumsum(lens), at, side="right"))
                    tok = int(flat[at])
                    why = (
                        "is the EOS id; documents are given without EOS"
                        if tok == eos_id
                        else (f"is outside [0, {vocab_size if vocab_size is not None else 'inf'})")
                    )
                    raise ValueError(f"document {doc}: token id {tok} {why}")
                max_id = max(max_id, int(flat.max()))
            ends = np.cumsum(lens + 1) - 1
            chunk = np.empty(flat.shape[0] + lens.shape[0], dtype=dtype)
            is_eos = np.zeros(chunk.shape[0], dtype=bool)
            is_eos[ends] = True
            chunk[is_eos] = eos_id + 1
            chunk[~is_eos] = flat + 1
            hasher.update(chunk.tobytes())
            chunk.tofile(fh)
            lengths.append(lens)
            n_docs += lens.shape[0]
            bar.update(lens.shape[0])
    if n_docs == 0:
        raise ValueError("no documents: the corpus is empty")
    vocab = vocab_size if vocab_size is not None else max(max_id, eos_id) + 1
    if eos_id >= vocab:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {vocab})")
    if dtype != symbol_dtype(vocab):  # ids seen before the vocabulary was known: narrow the stream
        wide = np.fromfile(path, dtype=dtype)
        wide.astype(symbol_dtype(vocab)).tofile(path)
        del wide
        dtype = symbol_dtype(vocab)
    lens = np.concatenate(lengths)
    offsets = np.concatenate([[0], np.cumsum(lens + 1)])
    return {
        "path": path,
        "dtype": dtype,
        "lengths": lens,
        "offsets": offsets,
        "n_docs": n_docs,
        "n_tokens": int(lens.sum()),
        "vocab_size": vocab,
        "fingerprint": "sha256:" + hasher.hexdigest(),
    }


_SLICE_TOKENS = 1 << 20


def _slices(docs) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(int64 tokens, lengths) of every document or `DocBatch`, cut into slices of about 1M tokens.

    Slicing keeps the validation temporaries small whatever the batch size.
    """
    seen = 0
    for item in docs:
        if not isinstance(item, DocBatch):
            flat = np.asarray(item, dtype=np.int64).reshape(-1)
            yield flat, np.array([flat.shape[0]], dtype=np.int64)
            seen += 1
            continue
        tokens, lens = np.asarray(item.tokens), np.asarray(item.lengths, dtype=np.int64)
        if lens.ndim != 1 or tokens.ndim != 1 or lens.sum() != tokens.shape[0] or (lens < 0).any():
            raise ValueError(f"DocBatch after document {seen}: its lengths do not add up to its tokens")
        ends = np.cumsum(lens)
        d0 = 0
        while d0 < lens.shape[0]:
            t0 = int(ends[d0 - 1]) if d0 else 0
            d1 = max(int(np.searchsorted(ends, t0 + _SLICE_TOKENS, side="right")), d0 + 1)
            yield tokens[t0 : int(ends[d1 - 1])].astype(np.int64), lens[d0:d1]
            d0 = d1
        seen += lens.shape[0]


def _merged_bigrams(staging: Path, backend: str, shard_meta: list[dict[str, Any]]) -> dict[str, Any]:
    """The KB-wide depth-1 follower table of a sharded index: the union of the shards' tables.

    Without it, every beam's second decoding step would merge K lists of ~10^4 followers.
    """
    ptrs = np.stack([load_array(staging / s["dir"], s["files"]["bigram_ptr"], verify=False) for s in shard_meta])
    parts = [load_array(staging / s["dir"], s["files"]["bigram_sym"], verify=False) for s in shard_meta]
    bases = np.concatenate([[0], np.cumsum([p.shape[0] for p in parts])[:-1]]).astype(np.int64)
    syms = np.concatenate(parts)
    sizes = sak.merge_tables(ptrs, syms, bases, 0, syms[:0])
    out = np.empty(int(sizes[-1]), dtype=syms.dtype)
    ptr = sak.merge_tables(ptrs, syms, bases, 1, out)
    return {"bigram_ptr": save_array(staging, "bigram_ptr", ptr), "bigram_sym": save_array(staging, "bigram_sym", out)}


def _greedy_bounds(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Fill shards in order up to `limit` symbols (a document larger than that gets a shard of its own)."""
    bounds, d0 = [], 0
    while d0 < sizes.shape[0]:
        base = int(sizes[d0 - 1]) if d0 else 0
        d1 = max(int(np.searchsorted(sizes, base + limit, side="right")), d0 + 1)
        bounds.append((d0, d1))
        d0 = d1
    return bounds


def _shard_bounds(lengths: np.ndarray, shards: int | str, cap: int) -> list[tuple[int, int]]:
    """Document ranges `[d0, d1)` of the shards (never empty; a document is never split)."""
    n = lengths.shape[0]
    sizes = np.cumsum(lengths + 1)
    if shards == "auto":
        # the fewest shards the cap allows, then the smallest largest shard for that count
        k = len(_greedy_bounds(sizes, cap))
        lo, hi = -(-int(sizes[-1]) // k), max(cap, int((lengths + 1).max()))
        while lo < hi:
            mid = (lo + hi) // 2
            if len(_greedy_bounds(sizes, mid)) <= k:
                hi = mid
            else:
                lo = mid + 1
        return _greedy_bounds(sizes, lo)
    if shards > n:
        raise ValueError(f"cannot cut {n} documents into {shards} shards")
    total = sizes[-1]
    cuts = [0]
    for k in range(1, shards):
        c = int(np.searchsorted(sizes, total * k / shards, side="left")) + 1
        cuts.append(min(max(c, cuts[-1] + 1), n - (shards - k)))
    cuts.append(n)
    return list(itertools.pairwise(cuts))
