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


@pytest.mark.slow  # builds the 1B-parameter EVA-g tower (about 13 s of CPU)
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


# ---- real checkpoints: LAVIS's eva_vit_g.pth (40 blocks) and open_clip CLIP files -------------------------------

EVA_LAYOUT = dataclasses.replace(vision_spec("EVA-g-14-39"), image_size=28, patch_size=14, width=32, head_width=8)
"""The EVA-g-14-39 layout (39 blocks, mlp ratio 4.3637, no pre-norm, eps 1e-6) at a width that runs on a CPU."""


def _lavis_eva_checkpoint(spec, blocks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with LAVIS eva_vit.py's exact names and shapes (qkv without bias, q/v biases, conv bias)."""
    g = torch.Generator().manual_seed(seed)
    d, hidden, n = spec.width, int(spec.width * spec.mlp_ratio), (spec.image_size // spec.patch_size) ** 2

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, n + 1, d),
        "patch_embed.proj.weight": r(d, 3, spec.patch_size, spec.patch_size, scale=0.05),
        "patch_embed.proj.bias": r(d),
    }
    for i in range(blocks):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": 1 + r(d),
            b + "norm1.bias": r(d),
            b + "attn.q_bias": r(d),
            b + "attn.v_bias": r(d),
            b + "attn.qkv.weight": r(3 * d, d),
            b + "attn.proj.weight": r(d, d),
            b + "attn.proj.bias": r(d),
            b + "norm2.weight": 1 + r(d),
            b + "norm2.bias": r(d),
            b + "mlp.fc1.weight": r(hidden, d),
            b + "mlp.fc1.bias": r(hidden),
            b + "mlp.fc2.weight": r(d, hidden),
            b + "mlp.fc2.bias": r(d),
        }
    return sd


def _lavis_forward(sd, spec, images, blocks):
    """LAVIS's EVA VisionTransformer.forward_features in plain torch (float64), on the first `blocks` blocks."""
    sd = {k: v.double() for k, v in sd.items()}
    x = torch.nn.functional.conv2d(
        images.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=spec.patch_size
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    heads, d = spec.heads, spec.width
    ln = torch.nn.functional.layer_norm
    for i in range(blocks):
        b = f"blocks.{i}."
        h = ln(x, (d,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=spec.ln_eps)
        bias = torch.cat([sd[b + "attn.q_bias"], torch.zeros_like(sd[b + "attn.v_bias"]), sd[b + "attn.v_bias"]])
        qkv = torch.nn.functional.linear(h, sd[b + "attn.qkv.weight"], bias)
        q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        x = x + torch.nn.functional.linear(out, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = ln(x, (d,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=spec.ln_eps)
        h = torch.nn.functional.gelu(torch.nn.functional.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        x = x + torch.nn.functional.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return x


def _blocks_out(tower, images):
    with torch.no_grad():
        return tower.transformer(tower._embeds(images))


def test_lavis_eva_vit_g_checkpoint_with_40_blocks_loads_into_the_39_block_tower(tmp_path):
    spec = EVA_LAYOUT
    assert spec.layers == 39 and not spec.ln_pre and spec.mlp_ratio == 4.3637
    eva = _lavis_eva_checkpoint(spec, blocks=40)
    torch.save(eva, tmp_path / "eva_vit_g.pth")
    tower = build_tower(spec).eval()
    left_out = load_vision_weights(tower, str(tmp_path / "eva_vit_g.pth"), "EVA-g-14-39")
    assert left_out and all(k.startswith("transformer.resblocks.39.") for k in left_out)  # the 40th block only
    # equal to a direct load of the first 39 blocks
    first39 = {k: v for k, v in eva.items() if not k.startswith("blocks.39.")}
    torch.save(first39, tmp_path / "eva39.pth")
    direct = build_tower(spec).eval()
    assert load_vision_weights(direct, str(tmp_path / "eva39.pth"), "EVA-g-14-39") == []
    for (k, a), b in zip(tower.state_dict().items(), direct.state_dict().values(), strict=True):
        assert torch.equal(a, b) or k in ("ln_post.weight", "ln_post.bias", "proj"), k  # those are unused
    # and it computes LAVIS's function: the first 39 blocks of the checkpoint, token by token
    images = torch.randn(2, 3, spec.image_size, spec.image_size)
    expected = _lavis_forward(eva, spec, images, blocks=39)
    torch.testing.assert_close(_blocks_out(tower, images).double(), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_lavis_forward(eva, spec, images, blocks=40), expected, atol=1e-2)  # block 40 matters
    # the prefixed tower built on it: gate zero is the frozen function
    config = ModelConfig(vision_model="EVA-g-14-39", prefix_layers=20)
    vit = PrefixedViT(config, tower=tower).eval()
    with torch.no_grad():
        torch.testing.assert_close(vit.encode_regions(images).double(), expected[:, 0], rtol=1e-4, atol=1e-4)


def test_eva_checkpoint_head_is_left_out_and_a_shallower_one_is_refused(tmp_path):
    spec = EVA_LAYOUT
    eva = _lavis_eva_checkpoint(spec, blocks=40) | {"norm.weight": torch.ones(spec.width), "head.weight": torch.ones(3)}
    torch.save({"model": eva}, tmp_path / "eva.pth")
    left_out = load_vision_weights(build_tower(spec), str(tmp_path / "eva.pth"), "EVA-g-14-39")
    assert {"norm.weight", "head.weight"} <= set(left_out)
    torch.save(_lavis_eva_checkpoint(spec, blocks=38), tmp_path / "eva38.pth")
    with pytest.raises(
        ValueError, match=r"does not fit vision_model 'EVA-g-14-39' \(missing: transformer\.resblocks\.38"
    ):
        load_vision_weights(build_tower(spec), str(tmp_path / "eva38.pth"), "EVA-g-14-39")


def _tiny_clip(seed=0):
    """An open_clip CLIP with a ViT-L/14-style tower (QuickGELU, pre-norm, a projection to a smaller embedding)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=24,  # ViT-L/14: width 1024 -> embed 768, so `proj` does not fit the tower's own shape
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=3, width=32, head_width=8, patch_size=16, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=49408, width=32, heads=2, layers=1),
        quick_gelu=True,
    ).eval()
    with torch.no_grad():  # open_clip initialises some of these to constants; make every weight informative
        for name, p in model.visual.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("form", ["full-clip", "visual-only", "safetensors"])
def test_open_clip_checkpoint_from_a_local_file_loads(tmp_path, form):
    clip = _tiny_clip()
    spec = dataclasses.replace(vision_spec("ViT-L-14"), image_size=32, patch_size=16, width=32, layers=3, head_width=8)
    if form == "full-clip":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(clip.state_dict(), path)
    elif form == "visual-only":
        path = tmp_path / "visual.pt"
        torch.save(clip.visual.state_dict(), path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    tower = build_tower(spec).eval()
    left_out = load_vision_weights(tower, str(path), "ViT-L-14")
    assert left_out == ["proj"]  # the CLIP's 32 -> 24 projection is not used (the raw last-block output is)
    own, theirs = tower.state_dict(), clip.visual.state_dict()
    for k in own:
        if k != "proj":
            assert torch.equal(own[k], theirs[k]), k
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_blocks_out(tower, images), _blocks_out(clip.visual, images))
