r"""Streaming readers of knowledge-base corpus files, with errors that name the file and line.

Formats (chosen by extension):
- `.csv`: header `kid,text` or `id,text` (OKVQA-GS112K, VRR release); further columns are allowed (and
  ignored), but every row has as many fields as the header.
- `.tsv`: DPR's `psgs_w100.tsv`, `id<TAB>text<TAB>title`, header row optional; every row has as many fields
  as the first one (2 or 3).
- `.jsonl`: one object per line, `{"id", "text", "title"?}`.

Text normalisation is the official index builder's by default (`data_process/my_build_fm_index.py`: the csv
is read with `newline=''`, then `text.replace('\n', ' ').strip()`): a line feed becomes a space, a carriage
return stays (a quoted `\r\n` becomes `\r `, a lone `\r` stays), and surrounding whitespace is stripped.
`carriage_returns_to_spaces=True` also turns every `\r` into a space, a deviation from the official texts
(`DataConfig.carriage_returns_to_spaces`): on a corpus with carriage returns inside passages the two give
other tokens, so other clues and other answer matches.

Parsing is strict, because a lenient reader loses passages without a word: an unclosed quote (the file ends
inside it, text follows a closing quote, or a quoted text runs over lines that look like rows of their own),
a row with more or fewer fields than the header (an unquoted comma or tab in the text), and an empty id or
text are `CorpusError`s that name the file, the line and the fix. A quoted text may span lines; where one of
its continuation lines looks like a row (`<id>,<text>` with an id shaped like the row's own), it is refused
as the swallowed rows of an unclosed quote: put such a passage on one line (its line breaks become spaces
anyway).
"""

import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gemkr_lab.kb.errors import CorpusError

FORMATS = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class Passage:
    """One corpus document: its own id, its text and an optional title."""

    id: str
    text: str
    title: str = ""


def normalise_text(text: str, carriage_returns_to_spaces: bool = False) -> str:
    r"""The official index builder's normalisation: `\n` to a space, surrounding whitespace stripped.

    `carriage_returns_to_spaces` also turns `\r` into a space (not the official texts; see the module doc).
    """
    if carriage_returns_to_spaces:
        text = text.replace("\r", " ")
    return text.replace("\n", " ").strip()


def read_corpus(path: str | Path, *, carriage_returns_to_spaces: bool = False) -> Iterator[Passage]:
    """Stream the passages of a corpus file (never loaded whole), texts normalised by `normalise_text`.

    Raises:
        CorpusError: unknown extension, missing columns, a malformed row, invalid UTF-8 (file and line
            named), or a file without any passage.
    """
    path = Path(path)
    if path.is_dir():
        raise CorpusError(path, "is a directory where the corpus file belongs; give the file (.csv, .tsv or .jsonl)")
    if not path.is_file():
        raise CorpusError(path, "no such corpus file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CorpusError(path, f"unknown corpus format {suffix!r}; use one of {', '.join(FORMATS)}")
    reader = {".csv": _read_csv, ".tsv": _read_tsv, ".jsonl": _read_jsonl}[suffix]
    count = 0
    for passage in reader(path, partial(normalise_text, carriage_returns_to_spaces=carriage_returns_to_spaces)):
        count += 1
        yield passage
    if count == 0:
        raise CorpusError(path, "the corpus holds no passages")


def _lines(path: Path) -> Iterator[str]:
    """Decoded lines, read as bytes so that invalid UTF-8 is reported with its line number.

    A UTF-8 byte-order mark (Excel and Windows editors write one) is dropped, as `utf-8-sig` does: kept, it
    would be part of the first column's name (`\ufeffkid`), and the header would lack its id column.
    """
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    path, f"invalid UTF-8 ({exc.reason}); re-encode the file as UTF-8", line=line_no
                ) from exc


def _raise_field_limit() -> None:
    # Wikipedia passages with long tables exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class _Record:
    """The decoded lines under a csv reader, remembering the physical lines of the record being read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []  # physical lines of the current record
        self.consumed = 0  # physical lines of the records before it

    def __iter__(self) -> Iterator[str]:
        for line in _lines(self.path):
            self.lines.append(line)
            yield line

    def rows(self, delimiter: str) -> Iterator[tuple[int, list[str], list[str]]]:
        """(first line number, fields, physical lines) of each non-blank record; malformed quoting raises."""
        reader = csv.reader(self, delimiter=delimiter, strict=True)
        while True:
            start = self.consumed + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise self._quoting_error(start, reader.line_num, str(exc), delimiter) from None
            lines, self.lines = self.lines, []
            self.consumed += len(lines)
            if row:
                yield start, row, lines

    def _quoting_error(self, start: int, end: int, reason: str, delimiter: str) -> CorpusError:
        sep = "comma" if delimiter == "," else "tab"
        if "end of data" in reason:
            return CorpusError(
                self.path,
                f"a quote opened in this row is never closed (the file ends inside it, at line {end}); close it, "
                'or write a quote inside a quoted text as ""',
                line=start,
            )
        if "new-line character" in reason:
            return CorpusError(
                self.path,
                "a carriage return (\\r) inside an unquoted text (it would end the row for a reader that splits "
                "lines on \\r, as the official index builder does); quote the text, e.g. "
                f'1{_shown(delimiter)}"first\\rsecond", or remove the \\r',
                line=start,
            )
        if end > start:
            return CorpusError(
                self.path,
                f"a quoted text opened in this row runs on to line {end}, where a quote is followed by more text: "
                f"the quote on line {start} is probably not closed; close it (a quote inside a quoted text is "
                'written "")',
                line=start,
            )
        return CorpusError(
            self.path,
            f'text follows a closing quote ({reason}); quote the whole field and write a quote inside it as "", '
            f'e.g. 1{_shown(delimiter)}"he said ""hi"" then left" (fields are separated by a {sep})',
            line=start,
        )


def _shown(delimiter: str) -> str:
    return "<TAB>" if delimiter == "\t" else delimiter


def _id_shape(passage_id: str) -> re.Pattern[str]:
    return re.compile(r"\d+" if passage_id.isdigit() else r"[^\s\"]{1,64}")


def _check_swallowed_rows(
    path: Path, start: int, row: list[str], lines: list[str], id_col: int, delimiter: str
) -> None:
    """A quoted text over several lines must not swallow lines that look like rows (an unclosed quote)."""
    if len(lines) < 2:
        return
    shape = _id_shape(row[id_col].strip())
    for offset, line in enumerate(lines[1:], start=1):
        fields = next(csv.reader([line], delimiter=delimiter), [])
        if (
            len(fields) >= 2  # the last swallowed line also holds the rest of the record: more fields, not equal
            and len(fields) > id_col
            and shape.fullmatch(fields[id_col].strip())
            and any(f.strip() for i, f in enumerate(fields) if i != id_col)
        ):
            raise CorpusError(
                path,
                f"the quoted text opened in this row runs over line {start + offset} ({line.strip()[:60]!r}), "
                f"which looks like a row of its own: a quote on line {start} is probably not closed and swallows "
                f"the rows after it; close it. If the line break is part of the passage, put the passage on one "
                f"line (line breaks become spaces when indexed)",
                line=start,
            )


def _check_passage(path: Path, line: int, passage_id: str, text: str) -> None:
    if not passage_id:
        raise CorpusError(path, "empty passage id; give every row an id", line=line)
    if not text:
        raise CorpusError(
            path,
            f"passage {passage_id!r} has an empty text (it would be indexed as a document no clue can find); "
            "give it a text or remove the row",
            line=line,
        )


def _field_count_error(path: Path, line: int, n: int, expected: int, header: str, delimiter: str) -> CorpusError:
    sep = "comma" if delimiter == "," else "tab"
    if n > expected:
        hint = (
            f"an unquoted {sep} in the text splits it (only its first part would be indexed); "
            f'quote the text: 1{_shown(delimiter)}"first part{_shown(delimiter)} second part"'
        )
    else:
        hint = f"a field is missing; every row needs {header}"
    return CorpusError(path, f"row has {n} field{'s' if n != 1 else ''}, expected {expected} ({header}): {hint}", line)


def _read_csv(path: Path, normalise: Callable[[str], str]) -> Iterator[Passage]:
    _raise_field_limit()
    rows = _Record(path).rows(",")
    first = next(rows, None)
    if first is None:
        return
    _, header, _ = first
    names = [h.strip().lower() for h in header]
    id_col = next((names.index(k) for k in ("kid", "id") if k in names), None)
    if id_col is None or "text" not in names:
        raise CorpusError(path, f"header {header} needs an id column ('kid' or 'id') and 'text'", line=1)
    text_col = names.index("text")
    for start, row, lines in rows:
        if len(row) != len(header):
            raise _field_count_error(path, start, len(row), len(header), ",".join(header), ",")
        _check_swallowed_rows(path, start, row, lines, id_col, ",")
        passage = Passage(id=row[id_col].strip(), text=normalise(row[text_col]))
        _check_passage(path, start, passage.id, passage.text)
        yield passage


def _read_tsv(path: Path, normalise: Callable[[str], str]) -> Iterator[Passage]:
    _raise_field_limit()
    width = None
    for start, row, lines in _Record(path).rows("\t"):
        if width is None:
            if not 2 <= len(row) <= 3:
                raise _field_count_error(path, start, len(row), 2 if len(row) < 2 else 3, "id<TAB>text<TAB>title", "\t")
            width = len(row)
            if [c.strip().lower() for c in row[:2]] == ["id", "text"]:
                continue
        if len(row) != width:
            shape = "id<TAB>text<TAB>title" if width == 3 else "id<TAB>text"
            raise _field_count_error(path, start, len(row), width, f"DPR TSV rows are {shape}", "\t")
        _check_swallowed_rows(path, start, row, lines, 0, "\t")
        title = row[2].strip() if len(row) > 2 else ""
        passage = Passage(id=row[0].strip(), text=normalise(row[1]), title=title)
        _check_passage(path, start, passage.id, passage.text)
        yield passage


def _read_jsonl(path: Path, normalise: Callable[[str], str]) -> Iterator[Passage]:
    for line_no, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(path, f"not a JSON object ({exc.msg})", line=line_no) from exc
        if not isinstance(obj, dict) or "id" not in obj or "text" not in obj:
            raise CorpusError(path, 'each line needs an object with "id" and "text"', line=line_no)
        if not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
            raise CorpusError(path, f'"id" must be a string or an integer, not {obj["id"]!r}', line=line_no)
        if not isinstance(obj["text"], str):
            raise CorpusError(path, f'"text" must be a string, not {obj["text"]!r}', line=line_no)
        passage = Passage(id=str(obj["id"]).strip(), text=normalise(obj["text"]), title=str(obj.get("title") or ""))
        _check_passage(path, line_no, passage.id, passage.text)
        yield passage
