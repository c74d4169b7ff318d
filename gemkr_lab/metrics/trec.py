"""TREC run and qrels files, and answer files, with errors that name the file and line.

Run lines are `qid Q0 docid rank score tag`. As trec_eval does, documents are ranked by score (descending),
ties broken by docid (descending); the rank column is ignored. Our own runs carry strictly decreasing scores
so that this order is the decoder's order.
"""

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from gemkr_lab.io import atomic_write


class RunFileError(ValueError):
    """A run, qrels or answers file that cannot be read as such."""

    def __init__(self, path: object, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def read_run(path: str | Path, *, dedup: bool = False) -> dict[str, list[str]]:
    """Ranked document ids per query.

    Args:
        path: a TREC run file.
        dedup: keep the best-ranked occurrence of a document listed twice for a query (GeMKR's beams map
            several clues to one document); by default a repeated document is an error.
    """
    path = Path(path)
    entries: dict[str, list[tuple[float, str]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for line_no, fields in _lines(path):
        if len(fields) != 6:
            raise RunFileError(path, line_no, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}")
        qid, _, docid, _, score, _ = fields
        try:
            value = float(score)
        except ValueError:
            raise RunFileError(path, line_no, f"score {score!r} is not a number") from None
        if not math.isfinite(value):  # nan compares false both ways: sorted() would put it anywhere, often first
            raise RunFileError(path, line_no, f"score {score!r} is not a finite number; fix the run's scores")
        first = seen.setdefault((qid, docid), line_no)
        if first != line_no:
            if not dedup:
                raise RunFileError(
                    path,
                    line_no,
                    f"document {docid!r} repeats for query {qid!r} (first at line {first}); "
                    "deduplicate the run (score --dedup keeps the best-ranked one)",
                )
            prev = next(i for i, (_, d) in enumerate(entries[qid]) if d == docid)
            if value > entries[qid][prev][0]:
                entries[qid][prev] = (value, docid)
            continue
        entries.setdefault(qid, []).append((value, docid))
    return {qid: [d for _, d in sorted(docs, key=lambda x: (-x[0], _desc(x[1])))] for qid, docs in entries.items()}


def _desc(docid: str) -> tuple:
    # trec_eval breaks score ties by docid descending (string order); negate by sorting on inverted code points
    return (*(-ord(ch) for ch in docid), 1)


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Relevance labels per query from `qid iteration docid relevance` lines.

    Refused: a file without judgements (every query would score 0, silently) and a document judged twice for a
    query with different labels (which one counts would be an accident of the file's order).
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    first: dict[tuple[str, str], int] = {}
    for line_no, fields in _lines(path):
        if len(fields) != 4:
            raise RunFileError(path, line_no, f"expected 4 fields 'qid 0 docid relevance', got {len(fields)}")
        try:
            rel = int(fields[3])
        except ValueError:
            raise RunFileError(path, line_no, f"relevance {fields[3]!r} is not an integer") from None
        qid, docid = fields[0], fields[2]
        earlier = qrels.get(qid, {}).get(docid)
        if earlier is not None and earlier != rel:
            raise RunFileError(
                path,
                line_no,
                f"document {docid!r} of query {qid!r} is judged {rel} here and {earlier} on line "
                f"{first[qid, docid]}; keep one label per (query, document)",
            )
        first.setdefault((qid, docid), line_no)
        qrels.setdefault(qid, {})[docid] = rel
    if not qrels:
        raise RunFileError(path, None, "holds no judgements ('qid 0 docid relevance' lines); give the qrels file")
    return qrels


def read_answers(path: str | Path) -> dict[str, list[str]]:
    """Answer strings per query from JSONL lines `{"qid": ..., "answers": [...]}`.

    Answers are kept exactly (an empty string matches every passage, as in GeMKR's and VRR's evaluation).
    """
    out: dict[str, list[str]] = {}
    for _, obj in jsonl_objects(path, "answers", list, '{"qid": ..., "answers": [strings]}'):
        out[str(obj["qid"])] = [str(a) for a in obj["answers"]]
    return out


def jsonl_objects(path: str | Path, field: str, kind: type, shape: str):
    """Yield `(line number, object)` of a JSONL file whose lines are `{"qid", field: kind}`, unique by qid."""
    path = Path(path)
    seen: set[str] = set()
    for line_no, line in _raw_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunFileError(path, line_no, f"not a JSON object ({exc.msg})") from None
        if not isinstance(obj, dict) or "qid" not in obj or not isinstance(obj.get(field), kind):
            raise RunFileError(path, line_no, f"each line needs {shape}")
        qid = str(obj["qid"])
        if qid in seen:
            raise RunFileError(path, line_no, f"query {qid!r} is listed twice")
        seen.add(qid)
        yield line_no, obj


def write_run(path: str | Path, ranked: Mapping[str, Sequence[str]], tag: str = "gemkr_lab") -> None:
    """Write ranked lists as a TREC run (scores `n - rank`, strictly decreasing), atomically.

    Repeated documents within a query keep their first (best) rank.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        for qid, docs in ranked.items():
            unique = list(dict.fromkeys(docs))
            for rank, docid in enumerate(unique, start=1):
                if any(c.isspace() for c in str(qid) + str(docid)):
                    raise ValueError(f"query {qid!r} / document {docid!r}: TREC ids cannot contain spaces")
                fh.write(f"{qid} Q0 {docid} {rank} {len(unique) - rank + 1} {tag}\n")


def _raw_lines(path: Path):
    if path.is_dir():
        raise RunFileError(path, None, "is a directory where a file belongs; give the file's path")
    if not path.is_file():
        raise RunFileError(path, None, "no such file")
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise RunFileError(path, line_no, "invalid UTF-8") from None
            if line.strip():
                yield line_no, line


def _lines(path: Path):
    for line_no, line in _raw_lines(path):
        yield line_no, line.split()
