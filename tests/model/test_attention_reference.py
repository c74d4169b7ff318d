"""The prefixed blocks of `PrefixedViT` against a plain-torch implementation of gemkr_spec.md §2.3.

The reference is written from the spec's formulas, one head at a time, with every parameter of the block
read directly (no call into the block's attention or `PrefixedViT`): for block l with input X, prefix input
A_l = E_l + R (R = 0 without object features) and per-head gate g (g = 1 when `use_gate` is off):
- X̂ = LN1(X); Q, K, V = X̂·W_qkv + b_qkv (the block's frozen weights);
- the prefix is projected with the same frozen weights and bias, without LN1: K_A = A·W_k + b_k,
  V_A = A·W_v + b_v (the spec writes K_A = A·W_k because EVA's k bias is zero; with a non-zero b_k the
  dual flow's prefix softmax is unchanged, since q·b_k is the same for every prefix key, which the tests
  check; in the joint softmax it matters, and "the same bias" of the spec's text is what is used);
- S_A = Q·K_Aᵀ/√d, S_X = Q·Kᵀ/√d per head;
- dual flow: head output = g_h · softmax(S_A)·V_A + softmax(S_X)·V;
- joint flow (the ablation): P = softmax([S_A, S_X]) over prefix and patch keys together, head output =
  g_h · P_A·V_A + P_X·V;
- attention output = W_o·concat(heads) + b_o, then the residual and the unchanged MLP sub-block.
Every parameter is made non-zero and non-trivial (biases, LayerNorm affine, gates of both signs, prefixes and
object features), so the prefix flow is visible (the gate-zero test in test_vision.py cannot see it), and the
comparison runs in float64 to 1e-10.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gemkr_lab.config.model import ModelConfig
from gemkr_lab.model.vision import PrefixedViT

TINY = ModelConfig(vision_model="tiny-vit")
VARIANTS = [
    pytest.param({"attention_flow": "dual"}, id="dual-gate"),
    pytest.param({"attention_flow": "dual", "use_gate": False}, id="dual-no-gate"),
    pytest.param({"attention_flow": "joint"}, id="joint-gate"),
    pytest.param({"attention_flow": "joint", "use_gate": False}, id="joint-no-gate"),
]


def _vit(change, seed=0):
    """A tiny prefixed ViT in float64 with every parameter random and non-zero."""
    torch.manual_seed(seed)
    vit = PrefixedViT(dataclasses.replace(TINY, **change)).double().eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in vit.parameters():
            # biases start at zero and LayerNorm weights at one: perturb everything; gates get both signs
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        vit.gate.copy_(torch.randn(vit.gate.shape, generator=g, dtype=vit.gate.dtype))
    return vit


def _layer_norm(ln, x):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _reference_attention(block, x, prefix, gate, flow, k_bias_on_prefix=True, ln_on_prefix=False):
    """The spec's attention of one prefixed block, one head at a time; returns the attention output."""
    attn = block.attn
    width, heads = x.shape[-1], attn.num_heads
    d = width // heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    w_q, w_k, w_v = w[:width], w[width : 2 * width], w[2 * width :]
    b_q, b_k, b_v = b[:width], b[width : 2 * width], b[2 * width :]
    xh = _layer_norm(block.ln_1, x)
    a = _layer_norm(block.ln_1, prefix) if ln_on_prefix else prefix  # the spec: no LN1 on the prefix
    q, k, v = xh @ w_q.T + b_q, xh @ w_k.T + b_k, xh @ w_v.T + b_v
    k_a = a @ w_k.T + (b_k if k_bias_on_prefix else 0.0)
    v_a = a @ w_v.T + b_v
    outs = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        s_a = q[..., cols] @ k_a[..., cols].transpose(-1, -2) / math.sqrt(d)  # [B, N, P]
        s_x = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(d)  # [B, N, N]
        if flow == "dual":
            prefix_flow = torch.softmax(s_a, dim=-1) @ v_a[..., cols]
            patch_flow = torch.softmax(s_x, dim=-1) @ v[..., cols]
        else:
            p = torch.softmax(torch.cat([s_a, s_x], dim=-1), dim=-1)
            n_prefix = s_a.shape[-1]
            prefix_flow = p[..., :n_prefix] @ v_a[..., cols]
            patch_flow = p[..., n_prefix:] @ v[..., cols]
        outs.append(gate[h] * prefix_flow + patch_flow)
    return torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def _reference_block(block, x, prefix, gate, flow, **mistakes):
    """One prefixed block: attention from the formulas, the residual, then the unchanged MLP sub-block."""
    x = x + _reference_attention(block, x, prefix, gate, flow, **mistakes)
    mlp = block.mlp
    h = F.linear(_layer_norm(block.ln_2, x), mlp.c_fc.weight, mlp.c_fc.bias)
    return x + F.linear(mlp.gelu(h), mlp.c_proj.weight, mlp.c_proj.bias)


def _gate(vit, i):
    return vit.gate[i] if vit.config.use_gate else torch.ones(vit.spec.heads, dtype=vit.gate.dtype)


def _reference_tower(vit, images, objects):
    """The whole tower: frozen blocks as they are, the last `n_prefixed` from the formulas."""
    x = vit.tower._embeds(images)
    first = len(vit.blocks) - vit.n_prefixed
    for block in vit.blocks[:first]:
        x = block(x)
    for i, block in enumerate(vit.blocks[first:]):
        a = vit.prefix[i].expand(x.shape[0], -1, -1)  # E_l
        if vit.config.use_object_features:
            a = a + objects  # + R, the same in every layer
        x = _reference_block(block, x, a, _gate(vit, i), vit.config.attention_flow)
    return x[:, 0], a


def _inputs(seed=0, b=2, tokens=17, width=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, tokens, width, generator=g, dtype=torch.float64)
    prefix = torch.randn(b, TINY.prefix_length, width, generator=g, dtype=torch.float64)
    return x, prefix


@pytest.mark.parametrize("change", VARIANTS)
def test_one_prefixed_block_follows_the_formulas(change):
    vit = _vit(change)
    x, prefix = _inputs()
    with torch.no_grad():
        for i, block in enumerate(vit.blocks[len(vit.blocks) - vit.n_prefixed :]):
            gate = _gate(vit, i)
            got = vit._prefixed_block(block, x, prefix, vit.gate[i])
            want = _reference_block(block, x, prefix, gate, change["attention_flow"])
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
            # the prefix flow is visible: the same block without it is far away
            without = _reference_block(block, x, prefix, torch.zeros_like(gate), change["attention_flow"])
            assert (got - without).abs().max() > 1e-2


@pytest.mark.parametrize("change", VARIANTS)
@pytest.mark.parametrize(
    "tower",
    [
        pytest.param({}, id="default-layers"),
        pytest.param({"prefix_layers": 3, "prefix_length": 4, "object_tokens": 2}, id="3-layers-4-prefix"),
        pytest.param({"use_object_features": False}, id="no-object-features"),
    ],
)
def test_the_tower_follows_the_formulas(change, tower):
    vit = _vit(change | tower, seed=1)
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    objects = torch.randn(2, vit.config.prefix_length, 64, generator=g, dtype=torch.float64)
    with torch.no_grad():
        cls, prefix = vit(images, objects)
        want_cls, want_prefix = _reference_tower(vit, images, objects)
    torch.testing.assert_close(cls, want_cls, rtol=0, atol=1e-10)
    torch.testing.assert_close(prefix, want_prefix, rtol=0, atol=0)


def test_the_spec_formula_without_k_bias_is_the_same_dual_flow():
    """K_A = A·W_k as the spec writes it (EVA's k bias is zero) equals the block's bias on the prefix keys in the
    dual flow (softmax ignores a shift shared by all prefix keys); not in the joint softmax, where the patch keys
    carry b_k."""
    x, prefix = _inputs(seed=3)
    for flow, same in (("dual", True), ("joint", False)):
        vit = _vit({"attention_flow": flow}, seed=2)
        block, gate = vit.blocks[-1], vit.gate[-1]
        with torch.no_grad():
            got = vit._prefixed_block(block, x, prefix, gate)
            literal = _reference_block(block, x, prefix, gate, flow, k_bias_on_prefix=False)
        assert torch.allclose(got, literal, rtol=0, atol=1e-10) == same


@pytest.mark.parametrize("flow", ["dual", "joint"])
def test_the_comparison_can_fail(flow):
    """Plausible mistakes are far from the module: LN1 on the prefix, the other flow, another layer's gate."""
    vit = _vit({"attention_flow": flow})
    x, prefix = _inputs(seed=4)
    block, gate = vit.blocks[-1], vit.gate[-1]
    other_flow = "joint" if flow == "dual" else "dual"
    with torch.no_grad():
        got = vit._prefixed_block(block, x, prefix, gate)
        for wrong in (
            _reference_block(block, x, prefix, gate, flow, ln_on_prefix=True),
            _reference_block(block, x, prefix, gate, other_flow),
            _reference_block(block, x, prefix, vit.gate[-2], flow),
        ):
            assert (got - wrong).abs().max() > 1e-3
