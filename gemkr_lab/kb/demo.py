"""`make demo` until the full pipeline lands: write a made-up corpus, train a tokenizer, index, query."""

import json
import random
from pathlib import Path

from gemkr_lab.kb.from_corpus import build_index_from_corpus
from gemkr_lab.kb.inspect import index_stats, query_index
from gemkr_lab.kb.tokenize import load_tokenizer, train_tokenizer

_SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vo", "zel", "qua", "nor", "pi", "sha", "dru"]
_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
_SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
_PLACES = ["harbour", "forest", "desert", "valley", "library", "market", "mountain", "island"]
_FOODS = ["figs", "bread", "honey", "rice", "plums", "cheese", "nuts", "soup"]


def synthetic_passages(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Made-up encyclopedia passages about `n` entities (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()
        text = (
            f"{name} is a {rng.choice(_COLOURS)} {rng.choice(_SHAPES)} that lives near the "
            f"{rng.choice(_PLACES)}. {name} eats {rng.choice(_FOODS)} and was first seen in "
            f"{1800 + rng.randrange(200)}."
        )
        out.append({"id": f"p{i:05d}", "title": name, "text": text})
    return out


def run_index_demo(out: str | Path, n_passages: int = 2000) -> None:
    """Build and query an FM-index over a generated corpus under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    passages = synthetic_passages(n_passages)
    corpus = out / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in passages), encoding="utf-8")
    print(f"corpus: {len(passages)} passages -> {corpus}")
    tok_dir = out / "tokenizer"
    train_tokenizer((p["text"] for p in passages), tok_dir, vocab_size=1000)
    tok = load_tokenizer(tok_dir)
    print(f"tokenizer: byte-level BPE, {len(tok)} ids -> {tok_dir}")
    index = build_index_from_corpus(corpus, tok_dir, out / "index", backend="fm", overwrite=True)
    stats = index_stats(index)
    print(
        f"index: {stats['documents']} docs, {stats['tokens']} tokens, "
        f"{stats['disk_bytes_per_token']} B/token on disk, built in {stats['build_seconds']} s"
    )
    name = passages[7]["title"]
    for text in [f" {name} eats", " lives near the", f" {name} is a"]:
        r = query_index(index, tok, text, limit=3)
        docs = ", ".join(d["id"] for d in r["documents"]) or "-"
        conts = " ".join(repr(c["text"]) for c in r["continuations"][:8])
        print(f"query {text!r}: count={r['count']}, next: {conts}, docs: {docs}")
