import pytest

from gemkr_lab.kb.demo import synthetic_passages
from gemkr_lab.kb.tokenize import train_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A small byte-level BPE tokenizer trained here (nothing is downloaded)."""
    out = tmp_path_factory.mktemp("tokenizer")
    texts = [p["text"] for p in synthetic_passages(300)] + ["the eiffel tower is in paris", "Ünïcode wörds"]
    train_tokenizer(texts, out, vocab_size=400)
    return out
