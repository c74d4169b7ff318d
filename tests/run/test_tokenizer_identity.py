"""An LLM and its tokenizer are tied: a local LLM checkpoint brings its own tokenizer, and data prepared with
another one is refused before training, naming both tokenizers and the prepare command that fixes it."""

import json
from pathlib import Path

import pytest

from gemkr_lab.cli import main
from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.data.queries import DataError
from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint, train_tokenizer
from gemkr_lab.run.cell import run_cell, tokenizer_dir


def _world_texts(world: str) -> list[str]:
    lines = (Path(world) / "corpus.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split(",", 1)[1].strip('"') for line in lines]


@pytest.fixture(scope="module")
def llm_checkpoint(tiny_world, tmp_path_factory, tiny_llama):
    """A tiny random LlamaForCausalLM saved with a tokenizer of its own (not the world's)."""
    world, _ = tiny_world
    out = tmp_path_factory.mktemp("llm") / "tiny-llm"
    tok = train_tokenizer(_world_texts(world)[::2], out, vocab_size=350)
    model = tiny_llama(len(tok), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    model.config.bos_token_id = tok.bos_token_id
    model.save_pretrained(str(out))
    return out


def test_tokenizer_defaults_to_the_llm_checkpoints_own(tiny_overrides, llm_checkpoint):
    tiny = load_experiment("tiny-cpu/full", tiny_overrides)
    assert tokenizer_dir(tiny) == Path(tiny.data_root) / "tokenizer"  # the random tiny LLM has none of its own
    local = load_experiment("tiny-cpu/full", [*tiny_overrides, f"model.llm={llm_checkpoint}"])
    assert tokenizer_dir(local) == llm_checkpoint
    chosen = load_experiment("tiny-cpu/full", [*tiny_overrides, f"model.llm={llm_checkpoint}", "tokenizer=/x/tok"])
    assert tokenizer_dir(chosen) == Path("/x/tok")  # an explicit tokenizer still wins


def test_another_llm_is_refused_before_training_naming_the_fix(tmp_path, tiny_world, tiny_overrides, llm_checkpoint):
    world, _ = tiny_world
    overrides = [*tiny_overrides, f"model.llm={llm_checkpoint}"]
    config = load_experiment("tiny-cpu/full", overrides)
    with pytest.raises(DataError) as caught:
        run_cell(config, 0, tmp_path / "runs", overrides)
    message = str(caught.value)
    assert str(llm_checkpoint) in message  # the LLM's tokenizer ...
    assert str((Path(world) / "tokenizer").resolve()) in message  # ... and the one the data was prepared with
    assert tokenizer_fingerprint(load_tokenizer(llm_checkpoint)) in message
    assert "gemkr-lab prepare --experiment tiny-cpu/full" in message
    assert f"--set model.llm={llm_checkpoint}" in message and "--set prepared=NEW_FOLDER" in message
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.slow
def test_the_named_fix_prepares_data_the_run_accepts(tmp_path, tiny_world, tiny_overrides, llm_checkpoint):
    world, _ = tiny_world
    new = tmp_path / "prepared-tiny-llm"
    args = ["prepare", "--experiment", "tiny-cpu/full", "--set", f"data_root={world}"]
    assert main([*args, "--set", f"model.llm={llm_checkpoint}", "--set", f"prepared={new}"]) == 0
    stamp = json.loads((new / "prepare.json").read_text(encoding="utf-8"))
    assert stamp["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(llm_checkpoint))
    overrides = [*tiny_overrides, f"model.llm={llm_checkpoint}", f"prepared={new}", "train.max_steps=2"]
    means = run_cell(load_experiment("tiny-cpu/full", overrides), 0, tmp_path / "runs", overrides)
    assert set(means) >= {"P@5", "R@5", "MRR@10"}


def test_a_tokenizer_that_is_not_the_llms_is_refused_naming_the_real_cause(
    tmp_path, tiny_world, tiny_overrides, llm_checkpoint
):
    """#25: the SmolLM2 trap. Data prepared with the world's tokenizer, `tokenizer=` forced to it, an LLM with its own
    vocabulary: the stamp agrees with the tokenizer, so only the pairing check can see it; the advice drops the
    wrong tokenizer and repeats no training override."""
    from gemkr_lab.model.pairing import TokenizerMismatch

    world, _ = tiny_world
    forced = str(Path(world) / "tokenizer")
    overrides = [*tiny_overrides, f"model.llm={llm_checkpoint}", f"tokenizer={forced}"]
    with pytest.raises(TokenizerMismatch) as caught:
        run_cell(load_experiment("tiny-cpu/full", overrides), 0, tmp_path / "runs", overrides)
    message = str(caught.value)
    assert f"the tokenizer in {forced} does not belong to the LLM {llm_checkpoint}" in message
    assert tokenizer_fingerprint(load_tokenizer(llm_checkpoint)) in message  # the LLM's own
    fix = message.split("prepare data with it: ", 1)[1]
    assert fix.startswith("gemkr-lab prepare --experiment tiny-cpu/full") and fix.endswith("--set prepared=NEW_FOLDER")
    assert f"--set model.llm={llm_checkpoint}" in fix and "tokenizer=" not in fix and "train." not in fix
    assert not (tmp_path / "runs").exists()  # nothing started


def test_embedding_rows_and_special_ids_are_checked_against_the_checkpoint(tmp_path, tokenizer_dir):
    from gemkr_lab.model.pairing import TokenizerMismatch, check_tokenizer_pairs_with_llm

    tok = load_tokenizer(tokenizer_dir)
    llm = tmp_path / "llm"  # a checkpoint without tokenizer files: only its config can be compared
    llm.mkdir()
    fitting = {"vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    for config, cause in (
        (fitting, None),
        ({**fitting, "vocab_size": len(tok) + 64}, None),  # padded embeddings are fine
        ({**fitting, "eos_token_id": [tok.eos_token_id, 7]}, None),  # one of several EOS ids
        ({**fitting, "vocab_size": len(tok) - 1}, f"it has {len(tok)} tokens but the LLM's embedding has"),
        ({**fitting, "eos_token_id": tok.eos_token_id + 1}, f"its EOS id is {tok.eos_token_id}, the LLM's is"),
    ):
        (llm / "config.json").write_text(json.dumps(config), encoding="utf-8")
        if cause is None:
            check_tokenizer_pairs_with_llm(tok, tokenizer_dir, str(llm), fix="FIX")
            continue
        with pytest.raises(TokenizerMismatch, match=r"FIX$") as caught:
            check_tokenizer_pairs_with_llm(tok, tokenizer_dir, str(llm), fix="FIX")
        assert cause in str(caught.value) and f"does not belong to the LLM {llm}" in str(caught.value)
    check_tokenizer_pairs_with_llm(tok, tokenizer_dir, "tiny-llama", fix="FIX")  # built for its tokenizer


def test_prepare_advice_repeats_only_what_prepare_reads():
    from gemkr_lab.run.identity import prepare_command

    config = load_experiment("tiny-cpu/full")
    overrides = [
        "train.max_steps=3",
        "prepared=a",
        "data.clue_max_tokens=5",
        "prepared=b",
        "tokenizer=t",
        "data_root=w",
    ]
    assert prepare_command(config, overrides) == (
        "gemkr-lab prepare --experiment tiny-cpu/full --set data.clue_max_tokens=5 --set prepared=b "
        "--set tokenizer=t --set data_root=w"
    )
    assert prepare_command(config, overrides, new_folder=True, leave_out=("tokenizer",)) == (
        "gemkr-lab prepare --experiment tiny-cpu/full --set data.clue_max_tokens=5 --set data_root=w "
        "--set prepared=NEW_FOLDER"
    )
