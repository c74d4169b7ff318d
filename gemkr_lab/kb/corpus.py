"""Streaming readers of knowledge-base corpus files, with errors that name the file and line.

Formats (chosen by extension):
- `.csv`: header `kid,text` or `id,text` (OKVQA-GS112K, VRR release); extra columns are ignored.
- `.tsv`: DPR's `psgs_w100.tsv`, `id<TAB>text<TAB>title`, header row optional.
- `.jsonl`: one object per line, `{"id", "text", "title"?}`.

Text normalisation follows GeMKR's index builder: newlines become spaces and the text is stripped.
"""

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gemkr_lab.kb.errors import CorpusError

FORMATS = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class Passage:
    """One corpus document: its own id, its text and an optional title."""

    id: str
    text: str
    title: str = ""


def normalise_text(text: str) -> str:
    """GeMKR's normalisation before indexing: newlines to spaces, surrounding whitespace stripped."""
    return text.replace("\r", " ").replace("\n", " ").strip()


def read_corpus(path: str | Path) -> Iterator[Passage]:
    """Stream the passages of a corpus file (never loaded whole).

    Raises:
        CorpusError: unknown extension, missing columns, a malformed row, invalid UTF-8 (file and line
            named), or a file without any passage.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(path, "no such corpus file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CorpusError(path, f"unknown corpus format {suffix!r}; use one of {', '.join(FORMATS)}")
    reader = {".csv": _read_csv, ".tsv": _read_tsv, ".jsonl": _read_jsonl}[suffix]
    count = 0
    for passage in reader(path):
        count += 1
        yield passage
    if count == 0:
        raise CorpusError(path, "the corpus holds no passages")


def _lines(path: Path) -> Iterator[str]:
    """Decoded lines, read as bytes so that invalid UTF-8 is reported with its line number."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    path, f"invalid UTF-8 ({exc.reason}); re-encode the file as UTF-8", line=line_no
                ) from exc


def _raise_field_limit() -> None:
    # Wikipedia passages with long tables exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _read_csv(path: Path) -> Iterator[Passage]:
    _raise_field_limit()
    rows = csv.reader(_lines(path))
    header = next(rows, None)
    if header is None:
        return
    names = [h.strip().lower() for h in header]
    id_col = next((names.index(k) for k in ("kid", "id") if k in names), None)
    if id_col is None or "text" not in names:
        raise CorpusError(path, f"header {header} needs an id column ('kid' or 'id') and 'text'", line=1)
    text_col = names.index("text")
    width = max(id_col, text_col) + 1
    for row in rows:
        if not row:
            continue
        if len(row) < width:
            raise CorpusError(
                path,
                f"row has {len(row)} fields, expected at least {width} ({header})",
                line=rows.line_num,
            )
        yield Passage(id=row[id_col].strip(), text=normalise_text(row[text_col]))


def _read_tsv(path: Path) -> Iterator[Passage]:
    _raise_field_limit()
    rows = csv.reader(_lines(path), delimiter="\t")
    first = True
    for row in rows:
        if not row:
            continue
        if first:
            first = False
            if [c.strip().lower() for c in row[:2]] == ["id", "text"]:
                continue
        if len(row) < 2:
            raise CorpusError(
                path,
                f"row has {len(row)} field(s); DPR TSV rows are id<TAB>text<TAB>title",
                line=rows.line_num,
            )
        title = row[2].strip() if len(row) > 2 else ""
        yield Passage(id=row[0].strip(), text=normalise_text(row[1]), title=title)


def _read_jsonl(path: Path) -> Iterator[Passage]:
    for line_no, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(path, f"not a JSON object ({exc.msg})", line=line_no) from exc
        if not isinstance(obj, dict) or "id" not in obj or "text" not in obj:
            raise CorpusError(path, 'each line needs an object with "id" and "text"', line=line_no)
        yield Passage(id=str(obj["id"]), text=normalise_text(str(obj["text"])), title=str(obj.get("title") or ""))
