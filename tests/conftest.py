"""Shared test set-up: offline, single-threaded, and quiet."""

import os

# Before torch/numba import anything: tiny models are 20-50x slower with competing threads on 2 cores.
for _k, _v in {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",
    "YOLO_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

# The suite runs in portable CPU numerics (AVX2 kernels, MKL and oneDNN held to AVX2), as the tiny-cpu presets do:
# the same tensors on every x86-64 CPU with AVX2. Set before torch loads; a CPU without AVX2 warns and falls back.
from gemkr_lab.numerics import apply_portable_cpu_numerics  # noqa: E402 (imports nothing heavy)

apply_portable_cpu_numerics(True)


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests where no CUDA device is present (CI has none); they run on a GPU machine."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A small byte-level BPE tokenizer trained here (nothing is downloaded)."""
    from gemkr_lab.kb.synthetic_text import synthetic_passages
    from gemkr_lab.kb.tokenize import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [p["text"] for p in synthetic_passages(300)] + ["the eiffel tower is in paris", "Ünïcode wörds"]
    train_tokenizer(texts, out, vocab_size=400)
    return out


@pytest.fixture(scope="session")
def tiny_llama():
    """A factory of random-initialised 2-layer Llamas small enough for CPU tests."""
    return make_tiny_llama


def make_tiny_llama(vocab_size: int, seed: int = 0, eos_id: int = 2, pad_id: int = 3):
    """A random-initialised 2-layer Llama small enough for CPU tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A prepared synthetic world (small, seed 0), shared by the tests that train or decode."""
    from gemkr_lab.config import DataConfig
    from gemkr_lab.data.prepare import Preparer
    from gemkr_lab.data.world import make_world

    root = tmp_path_factory.mktemp("tiny-world")
    make_world(root / "w", seed=0)
    Preparer(DataConfig(), root / "w", root / "p", progress=False).run()
    return str(root / "w"), str(root / "p")


@pytest.fixture
def tiny_overrides(tiny_world):
    """Overrides that point a tiny-cpu preset at the prepared test world and keep runs to seconds."""
    world, prepared = tiny_world
    return [
        f"data_root={world}",
        f"prepared={prepared}",
        "train.max_steps=4",
        "limit_train=16",
        "train.batch_size=8",
        "decoding.num_groups=2",
        "decoding.max_clue_tokens=3",
        "tracking.wandb=false",
    ]
