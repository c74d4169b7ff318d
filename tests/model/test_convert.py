"""`make smollm`'s checkpoint directory: every file with the umask's mode (#25; model.safetensors was 0600)."""

import os

import pytest

from gemkr_lab.model.convert import save_checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_a_saved_checkpoint_respects_the_umask(tmp_path, tiny_llama, tokenizer_dir, umask):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    old = os.umask(umask)
    try:
        out = save_checkpoint(tiny_llama(64), tokenizer, tmp_path / "llm")
    finally:
        os.umask(old)
    files = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert "model.safetensors" in files and "config.json" in files
    assert set(files.values()) == {0o666 & ~umask}, files
