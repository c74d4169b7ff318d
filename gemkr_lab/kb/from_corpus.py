"""Build an index from a corpus file and a local tokenizer, keeping the corpus's own ids.

Duplicate-text policy: passages whose normalised text is identical are indexed once, under the *first*
id seen; later ids are recorded as aliases (`doc_aliases.tsv`: alias id, kept id) and resolve to the same
positional document. The paper deduplicates too (its builder keeps the last id; with aliases both resolve,
so scoring does not depend on which). Without deduplication every clue of a duplicated passage would be
ambiguous, which the `unique` clue policy would then discard.
"""

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemkr_lab.kb.corpus import Passage, read_corpus
from gemkr_lab.kb.errors import CorpusError
from gemkr_lab.kb.tokenize import load_tokenizer, tokenize_texts, tokenizer_fingerprint

if TYPE_CHECKING:  # the index machinery (numpy, numba) loads once the corpus's head has been read
    from gemkr_lab.kb.build import Backend
    from gemkr_lab.kb.index import KBIndex

HEAD_CHECKED = 10_000
"""Passages read before the tokenizer (and the ML stack under it) loads: a missing file, a bad header or row, or a
repeated id near the top is refused in a second, not after the tokenizer has loaded."""


class _Dedup:
    """Streams passages once, dropping repeated texts and remembering ids and aliases on the way."""

    def __init__(self, path: Path, passages: Iterator[Passage], dedup: bool, prepend_title: bool) -> None:
        self.path = path
        self.passages = passages
        self.dedup = dedup
        self.prepend_title = prepend_title
        self.ids: list[str] = []
        self.aliases: list[tuple[str, str]] = []
        self.seen_ids: set[str] = set()
        self.read = 0
        self.hasher = hashlib.sha256()

    def texts(self) -> Iterator[str]:
        first_id_of: dict[bytes, str] = {}
        for p in self.passages:
            self.read += 1
            if p.id in self.seen_ids:
                raise CorpusError(self.path, f"passage id {p.id!r} occurs again at passage {self.read}; {_UNIQUE}")
            self.seen_ids.add(p.id)
            text = f"{p.title}. {p.text}" if self.prepend_title and p.title else p.text
            self.hasher.update(f"{p.id}\t{text}\n".encode())
            if self.dedup:
                key = hashlib.blake2b(text.encode(), digest_size=12).digest()
                kept = first_id_of.setdefault(key, p.id)
                if kept != p.id:
                    self.aliases.append((p.id, kept))
                    continue
            self.ids.append(p.id)
            yield text


_UNIQUE = "each passage needs an id of its own (the index maps clues back to documents by id)"


def check_corpus_head(corpus: str | Path, carriage_returns_to_spaces: bool = False) -> None:
    """Read the first `HEAD_CHECKED` passages as the build will (file, format, header, rows, unique ids)."""
    first: dict[str, int] = {}
    head = itertools.islice(read_corpus(corpus, carriage_returns_to_spaces=carriage_returns_to_spaces), HEAD_CHECKED)
    for n, p in enumerate(head, start=1):
        if p.id in first:
            raise CorpusError(corpus, f"passage id {p.id!r} occurs at passages {first[p.id]} and {n}; {_UNIQUE}")
        first[p.id] = n


def build_index_from_corpus(
    corpus: str | Path,
    tokenizer: str | Path,
    out_dir: str | Path,
    *,
    backend: "Backend" = "fm",
    shards: int | str = 1,
    dedup: bool = True,
    prepend_title: bool = False,
    carriage_returns_to_spaces: bool = False,
    batch_size: int = 1024,
    overwrite: bool = False,
    progress: bool | None = None,
) -> "KBIndex":
    r"""Tokenise a corpus file in batches and index it; see the module docstring for duplicates.

    Args:
        corpus: a `.csv` (`kid|id,text`), `.tsv` (DPR `id,text,title`) or `.jsonl` corpus file.
        tokenizer: a local Hugging Face tokenizer directory; its EOS ends every document.
        out_dir: the index directory (refused if it exists, unless `overwrite`).
        backend: "sa" or "fm".
        shards: a number of shards, or "auto".
        dedup: index identical texts once (the paper's policy).
        prepend_title: index "title. text" instead of the text (DPR passages have titles).
        carriage_returns_to_spaces: also turn `\r` into spaces (the official builder turns only `\n`; see
            `gemkr_lab.kb.corpus`); recorded in the index's meta.
        batch_size: passages per tokenizer call.
        overwrite: replace an existing index.
        progress: progress bars (default: only on a terminal).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    check_corpus_head(corpus, carriage_returns_to_spaces)
    tok = load_tokenizer(tokenizer)
    from gemkr_lab.kb.build import build_index

    passages = read_corpus(corpus, carriage_returns_to_spaces=carriage_returns_to_spaces)
    stream = _Dedup(Path(corpus), passages, dedup, prepend_title)
    extra: dict[str, Any] = {
        "corpus_path": str(Path(corpus).resolve()),
        "tokenizer_path": str(Path(tokenizer).resolve()),
        "dedup_texts": dedup,
        "prepend_title": prepend_title,
        "carriage_returns_to_spaces": carriage_returns_to_spaces,
    }
    index = build_index(
        tokenize_texts(stream.texts(), tok, batch_size),
        out_dir,
        eos_id=tok.eos_token_id,
        backend=backend,
        shards=shards,
        vocab_size=len(tok),
        overwrite=overwrite,
        doc_ids=_LazyIds(stream),
        tokenizer_fingerprint=tokenizer_fingerprint(tok),
        corpus_fingerprint=None,
        extra_meta=extra,
        progress=progress,
        meta_hook=lambda meta, staging: _finish(meta, staging, stream),
    )
    return index


class _LazyIds:
    """The kept ids, read only after the documents have streamed (a sequence view of `_Dedup.ids`)."""

    def __init__(self, stream: _Dedup) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream.ids)

    def __iter__(self):
        return iter(self.stream.ids)

    def __getitem__(self, i):
        return self.stream.ids[i]


def _finish(meta: dict[str, Any], staging: Path, stream: _Dedup) -> None:
    """Record corpus provenance and aliases once the stream is consumed."""
    meta["corpus_fingerprint"] = "sha256:" + stream.hasher.hexdigest()
    meta["extra"].update({"passages_read": stream.read, "duplicates_dropped": len(stream.aliases)})
    if stream.aliases:
        path = staging / "doc_aliases.tsv"
        with open(path, "w", encoding="utf-8") as fh:
            for alias, kept in stream.aliases:
                fh.write(f"{alias}\t{kept}\n")
        # listed like the arrays: opening the index checks its size (and checksum)
        from gemkr_lab.kb.storage import file_crc32

        meta["aliases"] = {"file": path.name, "bytes": path.stat().st_size, "crc32": file_crc32(path)}
