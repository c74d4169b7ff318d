"""A real pretrained causal LM end to end: SmolLM2-135M-Instruct (LLaMA architecture, byte-level BPE, 49k
vocabulary) on the synthetic world, through the CLI a user types: prepare -> train -> evaluate.

Optional: `make smollm` converts the model into models/smollm2-135m (or set GEMKR_SMOLLM to a checkpoint
directory); skipped when it is absent.
"""

import json
import os
from pathlib import Path

import pytest

from gemkr_lab.cli import main
from gemkr_lab.kb import open_index
from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint
from gemkr_lab.run.cell import find_run

CHECKPOINT = Path(os.environ.get("GEMKR_SMOLLM", Path(__file__).resolve().parents[2] / "models" / "smollm2-135m"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHECKPOINT / "config.json").is_file(),
        reason=f"no SmolLM2 checkpoint at {CHECKPOINT}; run `make smollm` (or set GEMKR_SMOLLM) to include this test",
    ),
]


def test_smollm_prepare_train_evaluate_on_the_synthetic_world(tmp_path, tiny_world, capsys):
    world, _ = tiny_world
    prepared, root = tmp_path / "prepared-smollm", tmp_path / "runs"
    common = [
        f"data_root={world}",
        f"model.llm={CHECKPOINT}",
        f"prepared={prepared}",
        "model.use_lora=true",  # the paper's LoRA on the frozen LLM
        "train.max_steps=3",
        "train.batch_size=4",
        "limit_train=12",
        "decoding.num_groups=2",
        "decoding.max_clue_tokens=4",
        "tracking.wandb=false",
    ]
    # prepared with the LLM's tokenizer: model.llm's own directory, not the world's tokenizer
    assert main(["prepare", "--experiment", "tiny-cpu/full", *(x for o in common for x in ("--set", o))]) == 0
    tok = load_tokenizer(CHECKPOINT)  # the LLM's own tokenizer, from its directory
    assert len(tok) > 40_000
    stamp = json.loads((prepared / "prepare.json").read_text(encoding="utf-8"))
    assert stamp["tokenizer_fingerprint"] == tokenizer_fingerprint(tok)
    assert main(["train", "tiny-cpu/full", *common, "--root", str(root)]) == 0
    assert main(["evaluate", "tiny-cpu/full", "decoding.num_groups=3", "--root", str(root)]) == 0
    run = find_run("tiny-cpu/full", 0, root)
    index = open_index(prepared / "index", tokenizer_fingerprint=tokenizer_fingerprint(tok))
    for records in [run / "records.jsonl", *(run / "eval").glob("*/records.jsonl")]:
        rows = [json.loads(x) for x in records.read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 96
        for row in rows:
            assert row["clues"]
            for clue in row["clues"]:
                key = [*clue["tokens"], index.eos_id] if clue["ended_with_eos"] else clue["tokens"]
                assert clue["count"] == index.count(key) > 0  # every constrained clue is in the KB
                assert clue["text"] == tok.decode(clue["tokens"])
    assert json.loads((run / "manifest.json").read_text(encoding="utf-8"))["status"] == "complete"
