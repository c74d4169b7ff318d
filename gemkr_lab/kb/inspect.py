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


AS_TYPED = "as typed"
AFTER_A_SPACE = "after a space"
WITHOUT_LEADING_SPACE = "without the leading space"
_CONTEXT = "a"  # a word the in-passage form is tokenised after (then cut off)

LEADING_SPACE_NOTE = (
    "a byte-level BPE without a prefix space (GPT-2, LLaMA-3) or a SentencePiece model without a dummy prefix "
    "tokenises a text's first word differently from the same word after a space, inside a passage; each form "
    "is looked up"
)


def word_forms(tokenizer: Any, text: str) -> list[tuple[str, list[int]]]:
    """The token ids of `text` as typed, as it tokenises inside a passage after a space, and without its leading space.

    The last form only when the text has leading whitespace (the form at a passage's start); no form twice.
    With a byte-level BPE (GPT-2, LLaMA-3 style) `regular` at the start of a text is another token than in
    `... a regular ...` (`Ġregular`); SentencePiece marks word starts with `▁` (LLaMA's adds one at the start of a
    text too, so there both forms are one). The in-passage form is read off the tokens of `"a " + text` after
    those of `"a"` (so a tokenizer's own prefix-space rules apply), or is the tokens of `" " + text` when the
    context's tokens change.
    """
    typed = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    context = list(tokenizer(_CONTEXT, add_special_tokens=False)["input_ids"])
    joined = list(tokenizer(f"{_CONTEXT} {text.lstrip()}", add_special_tokens=False)["input_ids"])
    if joined[: len(context)] == context and len(joined) > len(context):
        spaced = joined[len(context) :]
    else:
        spaced = list(tokenizer(" " + text.lstrip(), add_special_tokens=False)["input_ids"])
    candidates = [(AS_TYPED, typed), (AFTER_A_SPACE, spaced)]
    if text != text.lstrip():  # a leading space typed: also the form at a text's start
        candidates.insert(
            1, (WITHOUT_LEADING_SPACE, list(tokenizer(text.lstrip(), add_special_tokens=False)["input_ids"]))
        )
    forms: list[tuple[str, list[int]]] = []
    for name, ids in candidates:
        if ids and all(ids != seen for _, seen in forms):
            forms.append((name, ids))
    return forms or [(AS_TYPED, typed)]


def query_index(index: KBIndex, tokenizer: Any, text: str, limit: int = 10) -> dict[str, Any]:
    """Look `text` up in each of its forms (`word_forms`); counts per form, continuations, documents.

    `count` and `documents` cover every form (a position matches at most one of them); `form`, `token_ids`,
    `tokens` and the continuations are those of the form with the most occurrences (as typed on a tie).
    """
    forms = word_forms(tokenizer, text)
    if not forms[0][1]:
        raise ValueError(f"{text!r} tokenises to nothing")
    looked_up = []
    positions: set[int] = set()
    for name, ids in forms:
        count = index.count(ids)
        docs = index.docs(ids) if count else np.empty(0, dtype=np.int64)
        positions.update(int(d) for d in docs)
        looked_up.append(
            {
                "form": name,
                "token_ids": [int(t) for t in ids],
                "tokens": tokenizer.convert_ids_to_tokens(ids),
                "count": count,
                "n_documents": int(docs.shape[0]),
            }
        )
    best = max(range(len(looked_up)), key=lambda i: (looked_up[i]["count"], -i))
    ids = forms[best][1]
    nxt = index.next_tokens(ids)
    docs = sorted(positions)
    matched = [f["form"] for f in looked_up if f["count"]]
    return {
        "text": text,
        "form": looked_up[best]["form"],
        "token_ids": looked_up[best]["token_ids"],
        "tokens": looked_up[best]["tokens"],
        "count": sum(f["count"] for f in looked_up),
        "forms": looked_up,
        "matched_forms": matched,
        "note": LEADING_SPACE_NOTE
        if len(looked_up) > 1
        else f"the same tokens {AS_TYPED} and {AFTER_A_SPACE} (this tokenizer marks a text's first word alike)",
        "continuations": [
            {"id": int(t), "token": tokenizer.convert_ids_to_tokens(int(t)), "text": tokenizer.decode([int(t)])}
            for t in nxt[: max(limit * 5, 50)]
        ],
        "n_continuations": int(nxt.shape[0]),
        "n_documents": len(docs),
        "documents": [
            {
                "position": d,
                "id": index.corpus_id(d),
                "snippet": tokenizer.decode(index.doc_tokens(d)[:48].tolist()).strip(),
            }
            for d in docs[:limit]
        ],
    }
