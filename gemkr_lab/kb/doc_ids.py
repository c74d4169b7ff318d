"""The corpus's own document ids beside an index: memory-mapped, O(1) by position, O(log n) by id.

21M Wikipedia ids as a Python list and dict would cost a few GB of RAM; as fixed-width byte arrays (ids in
corpus order, the same sorted, and the sort permutation) they cost about 3 x (id width) + 8 bytes per
document on disk and nothing until touched.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gemkr_lab.kb.storage import load_array, save_array


def save_doc_ids(directory: Path, ids: Sequence[str]) -> dict[str, Any]:
    """Write the id arrays; return their file-table entries. Raises ValueError on a repeated id."""
    encoded = np.array([str(i).encode("utf-8") for i in ids], dtype=np.bytes_)
    if encoded.dtype.itemsize == 0:
        encoded = encoded.astype("S1")
    order = np.argsort(encoded, kind="stable")
    ordered = encoded[order]
    repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
    if repeated.size:
        raise ValueError(f"document id {ordered[repeated[0]].decode()!r} is given to more than one document")
    return {
        "doc_ids": save_array(directory, "doc_ids", encoded),
        "doc_ids_sorted": save_array(directory, "doc_ids_sorted", ordered),
        "doc_ids_order": save_array(directory, "doc_ids_order", order.astype(np.int64)),
    }


class DocIds:
    """Positional id <-> corpus id, read from the arrays written by `save_doc_ids`."""

    def __init__(self, directory: Path, files: dict[str, Any], verify: bool) -> None:
        self._ids = load_array(directory, files["doc_ids"], verify=verify)
        self._sorted = load_array(directory, files["doc_ids_sorted"], verify=verify)
        self._order = load_array(directory, files["doc_ids_order"], verify=verify)
        self._aliases: dict[str, str] | None = None
        self._alias_file = directory / "doc_aliases.tsv"

    def __len__(self) -> int:
        return self._ids.shape[0]

    def __getitem__(self, position: int) -> str:
        return self._ids[position].decode("utf-8")

    def position(self, corpus_id: str) -> int:
        """Positional id of a corpus id; ids of dropped duplicate texts resolve to the kept passage."""
        key = str(corpus_id).encode("utf-8")
        i = int(np.searchsorted(self._sorted, key))
        if i < self._sorted.shape[0] and self._sorted[i] == key:
            return int(self._order[i])
        kept = self._alias_map().get(str(corpus_id))
        if kept is None:
            raise KeyError(f"no document with id {corpus_id!r} in this index")
        return self.position(kept)

    def _alias_map(self) -> dict[str, str]:
        if self._aliases is None:
            self._aliases = {}
            if self._alias_file.exists():
                for line in self._alias_file.read_text(encoding="utf-8").splitlines():
                    alias, kept = line.split("\t")
                    self._aliases[alias] = kept
        return self._aliases
