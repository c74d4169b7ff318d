"""Tokenizers for the KB: load one from a local path, fingerprint it, tokenise passages in batches.

Also trains a small byte-level BPE tokenizer locally (`train_tokenizer`): nothing can be downloaded here,
so tests and the demo make their own.
"""

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and the index build (numba) load where texts are encoded, not to load a tokenizer
    from gemkr_lab.kb.build import DocBatch

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3: BOS 1 and EOS 2 as in LLaMA


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
"""A tokenizer folder holds at least one of these."""


def load_tokenizer(path: str | Path) -> Any:
    """A Hugging Face tokenizer from a local directory (never downloaded)."""
    path = Path(path)
    if not path.is_dir():  # before transformers (and torch under it) load: a typo is answered at once
        raise FileNotFoundError(f"{path}: no such tokenizer directory (give a local Hugging Face tokenizer)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):  # else transformers asks for sentencepiece
        raise FileNotFoundError(
            f"{path}: no tokenizer files in it (none of {', '.join(TOKENIZER_FILES)}); give the folder that holds the "
            "LLM's tokenizer (a Hugging Face checkpoint folder has them beside config.json)"
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot load a tokenizer from it ({exc})") from exc
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token; the index needs one to end documents")
    return tok


def tokenizer_fingerprint(tok: Any) -> str:
    """A content hash of what decides tokenisation: the vocabulary, the pipeline and the special tokens."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    h.update(json.dumps([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)]).encode())
    return "sha256:" + h.hexdigest()[:32]


def tokenize_texts(texts: Iterable[str], tok: Any, batch_size: int = 1024) -> "Iterator[DocBatch]":
    """Token ids of each text, without special tokens, as `DocBatch`es of `batch_size` texts."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            yield _encode(batch, tok)
            batch = []
    if batch:
        yield _encode(batch, tok)


def _encode(texts: list[str], tok: Any) -> "DocBatch":
    import numpy as np

    from gemkr_lab.kb.build import DocBatch

    ids = tok(texts, add_special_tokens=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lengths.sum()))
    return DocBatch(flat, lengths)


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000) -> Any:
    """Train a byte-level BPE tokenizer (GPT/LLaMA-3 style) on `texts` and save it to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tok.save_pretrained(str(out_dir))
    return tok
