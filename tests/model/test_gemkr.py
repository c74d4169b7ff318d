"""The full model: parameter accounting on the meta device, the loss layout, and bad input."""

import dataclasses

import pytest
import torch

from gemkr_lab.config.model import ModelConfig
from gemkr_lab.model.gemkr import IGNORE, Batch, GeMKR, count_trainable

TINY = ModelConfig(vision_model="tiny-vit")


def test_official_configurations_count_as_the_paper_reports():
    eva = ModelConfig(vision_model="EVA-g-14-39")
    seven = count_trainable(eva, "llama-7b")
    assert seven["llm (lora)"] == 4_194_304 and seven["projector"] == 5_771_264
    assert seven["prefix"] == 281_600 and seven["gates"] == 320
    assert seven["total"] == 10_247_488  # ≈ 10.25M
    assert count_trainable(eva, "llama-13b")["total"] == 14_049_600  # ≈ 14.05M, the paper's "~14M"


def _batch(b=2, targets=True):
    torch.manual_seed(0)
    return Batch(
        images=torch.randn(b, 3, 64, 64),
        objects=torch.randn(b, TINY.prefix_length, 64),
        before=[[1, 5, 6, 7], [1, 8]][:b],
        after=[9, 10],
        targets=[[11, 12, 13], [14]][:b] if targets else None,
    )


def test_loss_is_on_the_clue_and_eos_only():
    torch.manual_seed(0)
    model = GeMKR(TINY, vocab_size=32).eval()
    batch = _batch(b=1)
    loss = model(batch)
    # recompute by hand: the same sequence, cross-entropy over the last len(target) + 1 positions only
    vis = model.visual_tokens(batch.images, batch.objects)
    emb = model.llm.get_input_embeddings()
    ids = batch.targets[0] + [model.eos_id]
    seq = torch.cat(
        [emb(torch.tensor(batch.before[0])), vis[0], emb(torch.tensor(batch.after)), emb(torch.tensor(ids))]
    )
    logits = model.llm(inputs_embeds=seq[None]).logits[0]
    n = len(ids)
    manual = torch.nn.functional.cross_entropy(logits[-n - 1 : -1], torch.tensor(ids))
    torch.testing.assert_close(loss, manual)
    assert IGNORE == -100


def test_visual_tokens_follow_the_switches():
    torch.manual_seed(0)
    batch = _batch()
    assert GeMKR(TINY, 32).visual_tokens(batch.images, batch.objects).shape == (2, 1 + TINY.object_tokens, 64)
    no_prefix = GeMKR(dataclasses.replace(TINY, use_object_prefix=False), 32)
    assert no_prefix.visual_tokens(batch.images, batch.objects).shape == (2, 1, 64)
    assert no_prefix.components()["prefix"] == 0 and no_prefix.components()["gates"] == 0
    full = GeMKR(dataclasses.replace(TINY, use_lora=False), 32)
    assert full.components()["llm (full)"] == sum(p.numel() for p in full.llm.parameters())
    normed = GeMKR(dataclasses.replace(TINY, train_visual_norm=True), 32).components()
    assert normed["visual norm"] == 2 * 64
    text_only = GeMKR(dataclasses.replace(TINY, use_image=False), 32)
    assert text_only.visual_tokens(batch.images, batch.objects).shape == (2, 0, 64)
    assert text_only(_batch()).isfinite()
    parts = text_only.components()
    assert parts["prefix"] == parts["gates"] == parts["projector"] == 0 and parts["total"] == parts["llm (lora)"]


def test_prompt_embeds_are_left_padded():
    torch.manual_seed(0)
    model = GeMKR(TINY, 32)
    batch = _batch(targets=False)
    embeds, mask = model.prompt_embeds(batch)
    lengths = [len(b) + 1 + TINY.object_tokens + len(batch.after) for b in batch.before]
    assert embeds.shape[1] == max(lengths)
    assert mask.sum(1).tolist() == lengths and mask[1, 0] == 0 and mask[1, -1] == 1
    with pytest.raises(ValueError, match="needs clue targets"):
        model(batch)


def test_checkpoints_hold_trainable_parameters_only():
    model = GeMKR(TINY, 32)
    state = model.trainable_state_dict()
    assert state and all("lora_" in k or k.startswith(("vision.prefix", "vision.gate", "projector")) for k in state)
    assert not any("base_layer" in k or "tower" in k for k in state)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"llm": "/nonexistent/llama-7b"}, FileNotFoundError, "no such LLM directory"),
        ({"vision_model": "ViT-Z-99"}, ValueError, "vision_model = 'ViT-Z-99': expected one of ViT-L-14"),
        ({"vision_weights": "/nonexistent/clip.pt"}, FileNotFoundError, "no such vision weights"),
        ({"prefix_layers": 9}, ValueError, "prefix_layers = 9: expected <= 4, the depth of tiny-vit"),
    ],
)
def test_bad_model_input_fails_before_work(change, error, message):
    with pytest.raises(error, match=message):
        GeMKR(dataclasses.replace(TINY, **change), 32)


@pytest.mark.parametrize(
    ("field", "value"), [("attention_flow", "triple"), ("llm_dtype", "int3"), ("object_tokens", 11)]
)
def test_unknown_switch_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **{field: value})
