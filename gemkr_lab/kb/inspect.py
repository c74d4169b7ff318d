"""What `gemkr-lab index stats` and `index query` report, as plain dicts (printed or dumped as JSON)."""

from pathlib import Path
from typing import Any

import numpy as np

from gemkr_lab.kb.index import KBIndex


def index_stats(index: KBIndex) -> dict[str, Any]:
    """Sizes, provenance and disk use of an index."""
    disk = sum(f.stat().st_size for f in Path(index.path).rglob("*") if f.is_file())
    meta = index.meta
    return {
        "path": str(index.path),
        "backend": index.backend,
        "format_version": meta["format_version"],
        "documents": index.n_docs,
        "tokens": index.n_tokens,
        "shards": len(index.shards),
        "vocab_size": index.vocab_size,
        "eos_id": index.eos_id,
        "symbol_dtype": meta["symbol_dtype"],
        "distinct_tokens": int(index.next_tokens([]).shape[0]),
        "disk_bytes": disk,
        "disk_bytes_per_token": round(disk / max(index.n_tokens, 1), 3),
        "tokenizer_fingerprint": meta["tokenizer_fingerprint"],
        "corpus_fingerprint": meta["corpus_fingerprint"],
        "build_seconds": meta["build"]["seconds"],
        **{k: v for k, v in meta.get("extra", {}).items()},
    }


def query_index(index: KBIndex, tokenizer: Any, text: str, limit: int = 10) -> dict[str, Any]:
    """Tokenise `text` and report its count, continuations and matching documents with snippets."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} tokenises to nothing")
    nxt = index.next_tokens(ids)
    docs = index.docs(ids) if index.count(ids) else np.empty(0, dtype=np.int64)
    return {
        "text": text,
        "token_ids": [int(t) for t in ids],
        "tokens": tokenizer.convert_ids_to_tokens(ids),
        "count": index.count(ids),
        "continuations": [
            {"id": int(t), "token": tokenizer.convert_ids_to_tokens(int(t)), "text": tokenizer.decode([int(t)])}
            for t in nxt[: max(limit * 5, 50)]
        ],
        "n_continuations": int(nxt.shape[0]),
        "n_documents": int(docs.shape[0]),
        "documents": [
            {
                "position": int(d),
                "id": index.corpus_id(int(d)),
                "snippet": tokenizer.decode(index.doc_tokens(int(d))[:48].tolist()).strip(),
            }
            for d in docs[:limit]
        ],
    }
