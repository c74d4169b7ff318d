"""The inputs both baselines share: the KB's passages (deduplicated as the index does) and query texts."""

import json
from pathlib import Path

from gemkr_lab.kb.corpus import read_corpus
from gemkr_lab.metrics.trec import RunFileError


def kb_passages(corpus: str | Path, dedup: bool = True) -> tuple[list[str], list[str]]:
    """(ids, texts) of a corpus file; with `dedup`, a repeated text keeps its first id, as the index does."""
    ids, texts, seen = [], [], set()
    for p in read_corpus(corpus):
        if dedup:
            if p.text in seen:
                continue
            seen.add(p.text)
        ids.append(p.id)
        texts.append(p.text)
    return ids, texts


def read_queries(path: str | Path) -> dict[str, str]:
    """Query texts from JSONL lines `{"qid": ..., "text": ...}` (file and line named on errors)."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(path, None, "no such queries file")
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunFileError(path, line_no, f"not a JSON object ({exc.msg})") from None
            if not isinstance(obj, dict) or "qid" not in obj or not isinstance(obj.get("text"), str):
                raise RunFileError(path, line_no, 'each line needs {"qid": ..., "text": "..."}')
            out[str(obj["qid"])] = obj["text"]
    if not out:
        raise RunFileError(path, None, "no queries")
    return out
