"""An LLM and its tokenizer are a pair: checked against each other before anything loads the LLM's weights.

A tokenizer that is not the LLM's own gives ids the LLM never learnt (or has no embedding row for): training runs
and decoding returns clues, and every number is meaningless. The checks read the checkpoint's `config.json` and,
where the checkpoint ships one, its own tokenizer; they name the real cause, not the prepared data.
"""

import json
from pathlib import Path
from typing import Any

from gemkr_lab.config.experiment import ConfigError

OWN_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
"""A checkpoint directory holding any of these ships its own tokenizer."""


class TokenizerMismatch(ConfigError):
    """The tokenizer a run would use is not the LLM's."""


def _ids(value: Any) -> set[int]:
    """A config's special id (an int, a list of ints, or None) as a set."""
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def llm_config(llm: str | Path) -> dict[str, Any]:
    """The checkpoint's `config.json` (its text model's, for a multimodal one)."""
    path = Path(llm) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: cannot read the LLM's config ({exc}); model.llm must be a checkpoint folder"
        ) from None
    return config.get("text_config") or config


def check_tokenizer_pairs_with_llm(tokenizer: Any, tokenizer_path: str | Path, llm: str, *, fix: str) -> None:
    """Refuse a tokenizer that is not `llm`'s own, has more tokens than its embedding rows, or other BOS/EOS ids.

    `fix` is the advice that ends every message. The random "tiny-llama" is built for its tokenizer: not checked.
    """
    if llm == "tiny-llama":
        return
    from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint

    llm_dir, used = Path(llm), Path(tokenizer_path)
    where = f"the tokenizer in {used} does not belong to the LLM {llm_dir}"
    ships_own = any((llm_dir / f).is_file() for f in OWN_TOKENIZER_FILES)
    if ships_own and used.resolve() != llm_dir.resolve():
        own, mine = tokenizer_fingerprint(load_tokenizer(llm_dir)), tokenizer_fingerprint(tokenizer)
        if own != mine:
            raise TokenizerMismatch(
                f"{where}: the LLM ships its own tokenizer ({own}) and this is another ({mine}, {len(tokenizer)} "
                f"tokens); {fix}"
            )
    config = llm_config(llm_dir)
    rows = config.get("vocab_size")
    if rows is not None and len(tokenizer) > int(rows):
        raise TokenizerMismatch(
            f"{where}: it has {len(tokenizer)} tokens but the LLM's embedding has {rows} rows (ids from {rows} on "
            f"have none); {fix}"
        )
    for name in ("eos", "bos"):
        want, have = _ids(config.get(f"{name}_token_id")), getattr(tokenizer, f"{name}_token_id", None)
        if want and have is not None and have not in want:
            theirs = ", ".join(map(str, sorted(want)))
            raise TokenizerMismatch(f"{where}: its {name.upper()} id is {have}, the LLM's is {theirs}; {fix}")
