"""`build_index` and `open_index`: streaming, sharded, atomic index construction and validated opening.

Documents stream to a temporary symbol file in the staging directory (with EOS after each), so the corpus
is never held in memory as Python objects; each shard is then read back and built on its own, which bounds
peak memory by the largest shard, not the KB.
"""

import contextlib
import ctypes
import hashlib
import itertools
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gemkr_lab.io import atomic_directory, write_json
from gemkr_lab.kb import _sa_kernels as sak
from gemkr_lab.kb.backends import BACKENDS, open_shard
from gemkr_lab.kb.doc_ids import DocIds, save_doc_ids
from gemkr_lab.kb.errors import IndexFormatError
from gemkr_lab.kb.index import KBIndex
from gemkr_lab.kb.storage import (
    META_FILE,
    Verify,
    check_file,
    load_array,
    read_meta,
    save_array,
    write_array,
    write_array_file,
)
from gemkr_lab.kb.suffix_array import SORT_MAX_SYMBOLS
from gemkr_lab.progress import tqdm

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


def default_shard_tokens() -> int:
    """Default shard cap: the most symbols the int32 suffix sort (SA-IS) takes, 2**31 - 2, whatever the ids' width.

    Fewer, larger shards decode faster (every shard is searched at each step). The build's peak is about
    `itemsize + 4` bytes per token of the largest shard (13 GB for a full uint16 shard); pass
    `max_shard_tokens` to build in less memory.
    """
    return SORT_MAX_SYMBOLS


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
        cap = max_shard_tokens or default_shard_tokens()
        bounds = _shard_bounds(stream.pop("lengths"), shards, cap)
        # the document starts, mapped from a file: pages a backend reads after its peak do not count in it
        offsets_path = staging / "offsets.tmp"
        write_array_file(offsets_path, stream.pop("offsets"))
        offsets = np.memmap(offsets_path, dtype=np.int64, mode="r").view(np.ndarray)
        _release_free_heap()  # the streaming's temporaries, before the shards' builds reach their peaks
        shard_meta = []
        for k, (d0, d1) in enumerate(
            tqdm(bounds, desc=f"index shards ({backend})", disable=_quiet(progress), unit="shard")
        ):
            shard_dir = staging / f"shard-{k:03d}"
            shard_dir.mkdir()
            starts = offsets[d0 : d1 + 1]  # the shard's document starts: a view for the first shard
            if d0:
                starts = starts - starts[0]

            # a reader, not an array: the backend then holds the only reference and frees the text early;
            # read (not mapped) so that file pages do not count twice in the peak
            def read_text(s0=int(offsets[d0]), count=int(starts[-1])) -> np.ndarray:
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
        del offsets, starts
        Path(stream["path"]).unlink()
        offsets_path.unlink()
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


def open_index(path: str | Path, *, tokenizer_fingerprint: str | None = None, verify: Verify = True) -> KBIndex:
    """Open an index directory (arrays memory-mapped).

    Args:
        path: a directory written by `build_index`.
        tokenizer_fingerprint: when given, must equal the one the index was built with.
        verify: True: every file's checksum (reads the files once); "cheap": the metadata's consistency (counts,
            shapes, dtypes, the small count tables) and the checksums of files up to `SMALL_FILE_BYTES`; False:
            only each file's size, dtype and shape (always checked).

    Raises:
        IndexFormatError: a missing or unfinished index, an unknown format or version, another tokenizer,
            inconsistent metadata, or a missing, truncated or corrupted file.
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
        if meta.get("aliases"):  # ids of dropped duplicate texts (indexes since the aliases got an entry)
            check_file(path, meta["aliases"], verify)
        if verify:
            check_consistency(path, meta)
    except KeyError as exc:
        raise IndexFormatError(f"{where}: metadata lacks key {exc}; rebuild the index") from exc
    except (TypeError, ValueError, AttributeError, IndexError) as exc:  # a damaged meta.json that still parses
        raise IndexFormatError(f"{where}: damaged metadata ({type(exc).__name__}: {exc}); rebuild the index") from exc
    return KBIndex(path, meta, shards, doc_ids, bigram)


def check_consistency(path: str | Path, meta: dict[str, Any]) -> None:
    """Check that the metadata's counts, the file table's shapes and dtypes and the count tables agree.

    Cheap (metadata, the per-symbol count tables and a few single values of the big arrays): it catches a
    damaged `meta.json` and damaged small tables that still have their sizes, which would otherwise answer
    queries with garbage.

    Raises:
        IndexFormatError: naming the file and what disagrees.
    """
    path = Path(path)
    where = path / META_FILE

    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"{where}: inconsistent index ({what}); the index is damaged, rebuild it")

    vocab, n_docs, n_tokens = int(meta["vocab_size"]), int(meta["n_docs"]), int(meta["n_tokens"])
    eos = int(meta["eos_id"]) + 1
    if not 0 < eos <= vocab:
        raise bad(f"EOS id {meta['eos_id']} outside the vocabulary of {vocab}")
    dtype = str(symbol_dtype(vocab))
    if meta["symbol_dtype"] != dtype:
        raise bad(f"symbol_dtype {meta['symbol_dtype']!r}, a vocabulary of {vocab} is stored as {dtype}")
    shards = meta["shards"]
    if not shards:
        raise bad("no shards")
    base = 0
    for s in shards:
        if int(s["doc_base"]) != base or int(s["n_docs"]) < 1:
            raise bad(f"{s['dir']} starts at document {s['doc_base']} with {s['n_docs']}, expected start {base}")
        base += int(s["n_docs"])
    if base != n_docs:
        raise bad(f"the shards hold {base} documents, n_docs is {n_docs}")
    if sum(int(s["n_tokens"]) for s in shards) != n_tokens:
        raise bad(f"the shards hold {sum(int(s['n_tokens']) for s in shards)} tokens, n_tokens is {n_tokens}")
    for entry in (meta.get("doc_ids") or {}).values():
        if entry["shape"] != [n_docs]:
            raise bad(f"{entry['file']} has shape {entry['shape']} for {n_docs} documents")
    if meta.get("bigram"):
        _check_table(path, meta["bigram"], vocab, bad)
    for s in shards:
        _check_shard(path / s["dir"], meta["backend"], s, vocab, eos, dtype, bad)


def _check_table(directory: Path, files: dict[str, Any], vocab: int, bad) -> None:
    """A depth-1 follower table: one pointer per symbol (+ 1), non-decreasing, ending at its symbols' count."""
    ptr_entry, sym_entry = files["bigram_ptr"], files["bigram_sym"]
    if ptr_entry["shape"] != [vocab + 2] or len(sym_entry["shape"]) != 1:
        raise bad(f"{directory.name}/{ptr_entry['file']} has shape {ptr_entry['shape']}, expected [{vocab + 2}]")
    ptr = load_array(directory, ptr_entry, verify=False)
    if int(ptr[0]) != 0 or int(ptr[-1]) != sym_entry["shape"][0] or bool((np.diff(ptr) < 0).any()):
        raise bad(f"{directory.name}/{ptr_entry['file']} is not a table of {sym_entry['file']}")


def _check_shard(directory: Path, backend: str, s: dict[str, Any], vocab: int, eos: int, dtype: str, bad) -> None:
    files, n, t = s["files"], int(s["n_docs"]), int(s["n_tokens"])
    name = s["dir"]
    rows = t + n if backend == "sa" else t + n + 1  # the FM's BWT has the sentinel row too
    shapes: dict[str, list[int]] = {"C": [vocab + 2]}
    if backend == "sa":
        shapes |= {"text": [t + n], "sa": [t + n], "doc_starts": [n + 1]}
        if files["text"]["dtype"] != dtype:
            raise bad(f"{name}/{files['text']['file']} is {files['text']['dtype']}, symbols are {dtype}")
    else:
        levels = max(vocab.bit_length(), 1)
        words = (rows + 63) // 64
        shapes |= {
            "eos_doc": [n],
            "start_of": [vocab + 1],
            "wm_bits": [levels, words],
            "wm_ranks": [levels, words // 4 + 1],
            "wm_zeros": [levels],
        }
    for key, shape in shapes.items():
        if files[key]["shape"] != shape:
            raise bad(f"{name}/{files[key]['file']} has shape {files[key]['shape']}, expected {shape}")
    C = load_array(directory, files["C"], verify=False)
    if int(C[0]) != 0 or int(C[-1]) != rows or bool((np.diff(C) < 0).any()):
        raise bad(f"{name}/{files['C']['file']} does not count the shard's {rows} rows")
    if int(C[eos + 1] - C[eos]) != n:
        raise bad(f"{name}/{files['C']['file']} counts {int(C[eos + 1] - C[eos])} document ends, the shard has {n}")
    if backend == "sa":
        starts = load_array(directory, files["doc_starts"], verify=False)
        if int(starts[0]) != 0 or int(starts[-1]) != rows:
            raise bad(f"{name}/{files['doc_starts']['file']} does not span the shard's text")
    _check_table(directory, files, vocab, bad)


# ---- helpers -----------------------------------------------------------------------------------------


def _release_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; a no-op elsewhere).

    glibc serves blocks below its mmap threshold (which grows to 32 MB as large blocks are freed) from its
    heap and keeps them once freed: the streamed batches' tens of MB would stay resident through the sort.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).malloc_trim(0)


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
            write_array(fh, chunk)
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
        write_array_file(path, wide.astype(symbol_dtype(vocab)))
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
