"""The inputs both baselines share: the KB's passages (deduplicated as the index does) and query texts."""

from pathlib import Path

from gemkr_lab.kb.corpus import read_corpus
from gemkr_lab.metrics.trec import RunFileError, jsonl_objects


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
    if Path(path).is_dir():
        raise RunFileError(path, None, "is a directory where the queries file belongs; give the file's path")
    if not Path(path).is_file():
        raise RunFileError(path, None, "no such queries file")
    out = {str(obj["qid"]): obj["text"] for _, obj in jsonl_objects(path, "text", str, '{"qid": ..., "text": "..."}')}
    if not out:
        raise RunFileError(path, None, "no queries")
    return out
