"""On-disk layout of an index: `.npy` arrays (memory-mapped when read), checksums, and atomic directories.

An index directory is complete exactly when its `meta.json` exists: builds happen in a sibling
`.<name>.partial-*` directory (`gemkr_lab.io.atomic_directory`) that is renamed into place only after every
file, `meta.json` last, is written.
"""

import json
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from gemkr_lab.io import atomic_directory, write_json, write_text  # re-exported: older callers import them here
from gemkr_lab.kb.errors import IndexFormatError

__all__ = [
    "META_FILE",
    "SMALL_FILE_BYTES",
    "Verify",
    "atomic_directory",
    "check_file",
    "checksummed",
    "file_crc32",
    "load_array",
    "read_meta",
    "save_array",
    "write_json",
    "write_text",
]

META_FILE = "meta.json"
_READ_CHUNK = 1 << 20
SMALL_FILE_BYTES = 16 << 20
"""With `verify="cheap"`, files up to this size are checksummed (milliseconds); larger ones only with `True`."""
Verify = bool | Literal["cheap"]
"""How much of an index is checked when it is opened.

False: every listed file exists with its size, dtype and shape. "cheap": also the metadata's consistency and
the checksum of every file up to `SMALL_FILE_BYTES` (the default of `index query`). True: every file's checksum
(reads the whole index once; `index stats --verify`, training and evaluation).
"""


def checksummed(verify: Verify, size: int) -> bool:
    """Whether a file of `size` bytes has its checksum checked at this verification level."""
    return verify is True or (verify == "cheap" and size <= SMALL_FILE_BYTES)


def file_crc32(path: Path) -> str:
    """CRC-32 of a file's bytes as 8 hex digits (fast enough to verify GB-sized indexes on open).

    Reads into one reused buffer: a new 16 MB bytes object per chunk would land on (and stay in) the C heap
    during an index build.
    """
    crc = 0
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while k := fh.readinto(buf):
            crc = zlib.crc32(view[:k], crc)
    return f"{crc:08x}"


def write_array(fh: BinaryIO, array: np.ndarray) -> None:
    """Append `array`'s bytes (C order) to an open binary file, through Python's I/O.

    Not `ndarray.tofile`: it writes through C stdio and ignores a failed flush, so on a full disk the bytes are
    lost without an error (an empty `offsets.tmp`, then "cannot mmap an empty file"); here ENOSPC is raised,
    naming the file.
    """
    try:
        fh.write(memoryview(np.ascontiguousarray(array)).cast("B"))
    except OSError as exc:
        exc.filename = exc.filename or getattr(fh, "name", None)
        raise


def write_array_file(path: Path, array: np.ndarray) -> None:
    """`array`'s bytes as the whole of `path` (see `write_array`); a failed final flush raises too."""
    try:
        with open(path, "wb") as fh:
            write_array(fh, array)
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise


def save_array(directory: Path, name: str, array: np.ndarray) -> dict[str, Any]:
    """Write `array` as `<name>.npy` in `directory`; return its entry for the metadata's file table."""
    array = np.asarray(array, order="C")  # np.save, like tofile, loses its bytes silently on a full disk
    return save_array_parts(directory, name, array.dtype, array.shape, [array])


def save_array_parts(
    directory: Path, name: str, dtype: np.dtype, shape: tuple[int, ...], parts: Iterable[np.ndarray]
) -> dict[str, Any]:
    """Like `save_array` (the same bytes), for an array that arrives in consecutive parts (C order).

    The whole array is never held in memory: each part is written as it comes.
    """
    dtype = np.dtype(dtype)
    path = directory / f"{name}.npy"
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    try:
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            start = fh.tell()
            for part in parts:
                write_array(fh, np.asarray(part, dtype=dtype))
            written = fh.tell() - start
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise
    if written != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"{path}: {written} bytes of data for {dtype}{list(shape)}")
    return _entry(path, dtype, shape)


def _entry(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "crc32": file_crc32(path),
        "dtype": str(dtype),
        "shape": list(shape),
    }


def check_file(directory: Path, entry: dict[str, Any], verify: Verify) -> Path:
    """Raise `IndexFormatError` if a listed file is missing, truncated, or (see `Verify`) corrupted."""
    path = directory / entry["file"]
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing; the index is incomplete, rebuild it")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise IndexFormatError(
            f"{path}: {size} bytes, expected {entry['bytes']} (truncated or replaced); rebuild the index"
        )
    if checksummed(verify, size) and file_crc32(path) != entry["crc32"]:
        raise IndexFormatError(f"{path}: checksum mismatch (the file is corrupted); rebuild the index")
    return path


def load_array(directory: Path, entry: dict[str, Any], *, verify: Verify, mmap: bool = True) -> np.ndarray:
    """Load a listed `.npy` file as a plain ndarray view of a read-only memory map.

    A plain ndarray (not `np.memmap`) matters: numba type-checks memmaps about 8x slower per call.
    """
    path = check_file(directory, entry, verify)
    try:
        empty = int(np.prod(entry["shape"])) == 0
        arr = np.load(path, mmap_mode=None if (empty or not mmap) else "r", allow_pickle=False)
    except ValueError as exc:
        raise IndexFormatError(f"{path}: not a readable .npy file ({exc}); rebuild the index") from exc
    if str(arr.dtype) != entry["dtype"] or list(arr.shape) != entry["shape"]:
        raise IndexFormatError(
            f"{path}: holds {arr.dtype}{list(arr.shape)}, metadata says {entry['dtype']}{entry['shape']}"
        )
    return arr.view(np.ndarray)


def read_meta(directory: Path) -> dict[str, Any]:
    """Read an index's `meta.json`, with an error that says what to do when it is absent or unreadable."""
    path = directory / META_FILE
    if not directory.exists():
        raise IndexFormatError(f"{directory}: no such index directory")
    if not path.is_file():
        raise IndexFormatError(
            f"{directory}: not a finished index (no {META_FILE}); an interrupted build leaves none, rebuild it"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable metadata ({exc}); rebuild the index") from exc
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{path}: unreadable metadata (not a JSON object); rebuild the index")
    return meta
