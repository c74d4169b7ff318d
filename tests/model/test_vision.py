"""The prefixed ViT: exact equality with the frozen tower at gate zero, and what each switch changes."""

import dataclasses

import pytest
import torch

from gemkr_lab.config.model import ModelConfig
from gemkr_lab.model.vision import PrefixedViT, build_tower, eva_to_open_clip, load_vision_weights, vision_spec

TINY = ModelConfig(vision_model="tiny-vit")


def _inputs(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 64, 64, generator=g), torch.randn(b, TINY.prefix_length, 64, generator=g)


def _vit(config=TINY, seed=0):
    torch.manual_seed(seed)
    return PrefixedViT(config).eval()


def _frozen_cls(vit, images):
    x = vit.tower._embeds(images)
    for block in vit.blocks:
        x = block(x)
    return x[:, 0]


def test_gate_zero_equals_the_frozen_tower_exactly():
    vit = _vit()
    images, objects = _inputs()
    with torch.no_grad():
        cls, prefix = vit(images, objects)
        assert torch.equal(cls, _frozen_cls(vit, images))
        assert torch.equal(vit.encode_regions(images), _frozen_cls(vit, images))
    assert prefix.shape == (2, TINY.prefix_length, 64)
    # with autograd on, torch takes the unfused attention path in the prefixed blocks: equal to float precision
    torch.testing.assert_close(vit(images, objects)[0], _frozen_cls(vit, images), rtol=0, atol=1e-5)


def test_gradients_reach_gates_and_prefixes():
    vit = _vit().train()
    images, objects = _inputs()
    cls, prefix = vit(images, objects)
    (cls.sum() + prefix.sum()).backward()
    assert vit.gate.grad is not None and vit.gate.grad.abs().sum() > 0
    assert vit.prefix.grad is not None and vit.prefix.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.tower.parameters())  # frozen


def _with_gate(vit, value=0.5):
    with torch.no_grad():
        vit.gate.fill_(value)
    return vit


@pytest.mark.parametrize(
    ("change", "cls_changes", "prefix_changes"),
    [
        ({"use_object_features": False}, True, True),  # R = 0 everywhere
        ({"attention_flow": "joint"}, True, False),  # only the attention of prefixed blocks changes
        ({"use_gate": False}, True, False),  # prefix flow unscaled
        ({"prefix_layers": 1}, True, False),  # fewer prefixed blocks, same last prefix
    ],
)
def test_each_switch_changes_what_it_claims(change, cls_changes, prefix_changes):
    images, objects = _inputs()
    base = _with_gate(_vit())
    other = PrefixedViT(dataclasses.replace(TINY, **change)).eval()
    state = {k: v for k, v in base.state_dict().items() if k in other.state_dict()}
    if "prefix_layers" in change:
        state["prefix"], state["gate"] = base.prefix[-1:], base.gate[-1:]
    other.load_state_dict(state)
    a_cls, a_pre = base(images, objects)
    b_cls, b_pre = other(images, objects)
    assert (not torch.allclose(a_cls, b_cls)) == cls_changes
    assert (not torch.allclose(a_pre, b_pre)) == prefix_changes
    frozen = _frozen_cls(base, images)
    assert not torch.allclose(b_cls, frozen)  # every variant still uses its prefixes


def test_features_off_ignores_objects_and_prefix_off_is_the_frozen_tower():
    images, objects = _inputs()
    no_feat = _with_gate(PrefixedViT(dataclasses.replace(TINY, use_object_features=False)).eval())
    assert torch.equal(no_feat(images, objects)[0], no_feat(images, torch.zeros_like(objects))[0])
    off = PrefixedViT(dataclasses.replace(TINY, use_object_prefix=False)).eval()
    cls, prefix = off(images, objects)
    assert torch.equal(cls, _frozen_cls(off, images)) and prefix.shape[1] == 0
    assert not any(p.requires_grad for p in off.parameters())


def test_train_vision_deviation_unfreezes_the_tower():
    vit = PrefixedViT(dataclasses.replace(TINY, train_vision=True))
    assert all(p.requires_grad for p in vit.tower.parameters())


def test_weights_load_and_mismatches_are_named(tmp_path):
    tower = build_tower(vision_spec("tiny-vit"))
    torch.save({"visual." + k: v for k, v in tower.state_dict().items()}, tmp_path / "clip.pt")
    other = build_tower(vision_spec("tiny-vit"))
    load_vision_weights(other, str(tmp_path / "clip.pt"), "tiny-vit")
    assert all(torch.equal(a, b) for a, b in zip(tower.state_dict().values(), other.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="does not fit vision_model 'EVA-g-14-39'"):
        load_vision_weights(build_tower(vision_spec("EVA-g-14-39")), str(tmp_path / "clip.pt"), "EVA-g-14-39")
    with pytest.raises(FileNotFoundError, match="no such vision weights"):
        load_vision_weights(other, str(tmp_path / "none.pt"), "tiny-vit")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_vision_weights(other, str(tmp_path / "junk.pt"), "tiny-vit")


def test_eva_checkpoint_conversion_is_equivalent():
    """A LAVIS-named EVA state dict converts to an open_clip tower computing the same function."""
    spec = dataclasses.replace(vision_spec("tiny-vit"), ln_pre=False, ln_eps=1e-6)
    tower = build_tower(spec).eval()
    sd = tower.state_dict()
    d = spec.width
    eva = {
        "cls_token": sd["class_embedding"].view(1, 1, d),
        "patch_embed.proj.weight": sd["conv1.weight"],
        "patch_embed.proj.bias": torch.randn(d) * 0.1,
    }
    eva["pos_embed"] = (
        sd["positional_embedding"]
        - torch.cat(
            [torch.zeros(1, d), eva["patch_embed.proj.bias"].expand(sd["positional_embedding"].shape[0] - 1, -1)]
        )
    ).unsqueeze(0)
    for i in range(spec.layers):
        s = f"transformer.resblocks.{i}."
        qb, kb, vb = sd[s + "attn.in_proj_bias"].chunk(3)
        sd[s + "attn.in_proj_bias"] = torch.cat([qb, torch.zeros_like(kb), vb])
        eva |= {
            f"blocks.{i}.norm1.weight": sd[s + "ln_1.weight"],
            f"blocks.{i}.norm1.bias": sd[s + "ln_1.bias"],
            f"blocks.{i}.norm2.weight": sd[s + "ln_2.weight"],
            f"blocks.{i}.norm2.bias": sd[s + "ln_2.bias"],
            f"blocks.{i}.attn.qkv.weight": sd[s + "attn.in_proj_weight"],
            f"blocks.{i}.attn.q_bias": qb,
            f"blocks.{i}.attn.v_bias": vb,
            f"blocks.{i}.attn.proj.weight": sd[s + "attn.out_proj.weight"],
            f"blocks.{i}.attn.proj.bias": sd[s + "attn.out_proj.bias"],
            f"blocks.{i}.mlp.fc1.weight": sd[s + "mlp.c_fc.weight"],
            f"blocks.{i}.mlp.fc1.bias": sd[s + "mlp.c_fc.bias"],
            f"blocks.{i}.mlp.fc2.weight": sd[s + "mlp.c_proj.weight"],
            f"blocks.{i}.mlp.fc2.bias": sd[s + "mlp.c_proj.bias"],
        }
    tower.load_state_dict(sd)
    converted = build_tower(spec).eval()
    converted.load_state_dict(eva_to_open_clip(eva) | {k: sd[k] for k in ("ln_post.weight", "ln_post.bias", "proj")})
    torch.testing.assert_close(converted.state_dict()["positional_embedding"], sd["positional_embedding"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = tower._embeds(images), converted._embeds(images)
        torch.testing.assert_close(tower.transformer(a), converted.transformer(b))


def test_any_open_clip_vit_architecture_is_accepted():
    spec = vision_spec("ViT-B-32")
    assert (spec.width, spec.layers, spec.patch_size, spec.heads) == (768, 12, 32, 12)
    assert vision_spec("ViT-B-16-quickgelu").quick_gelu
    with pytest.raises(ValueError, match="timm- and ResNet-based towers are not"):
        vision_spec("RN50")
    with pytest.raises(ValueError, match="unknown vision_model"):
        vision_spec("EVA01-g-14")  # timm-based in open_clip: use EVA-g-14-39 with LAVIS weights instead
