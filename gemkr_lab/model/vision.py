"""The visual front end: a frozen open_clip ViT with object-aware prefix tuning and dual-flow attention.

In the last `prefix_layers` blocks each layer gets its own learned prefix `E_l` (prefix_length x width) plus
the object features `R` (the same in every layer). The prefix enters as keys and values only, projected with
the block's frozen qkv weights without LayerNorm. Dual flow: the patch queries attend to the patch keys
through the block's own attention (bit-identical to the frozen block) and, separately, to the prefix keys;
the prefix flow is scaled by a zero-initialised per-head gate and added before the output projection.
With the gate at zero the tower's output equals the frozen tower's output exactly. With a low-precision
`vision_dtype` the tower's linear and convolution weights are cast to it (the official code's fp16 tower) and the
tower runs under autocast in that dtype.
"""

import contextlib
import logging
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, QuickGELU, VisionTransformer
from torch import nn

from gemkr_lab.config.model import ModelConfig


@dataclass(frozen=True)
class VisionSpec:
    """Shape of a supported vision tower (open_clip's native VisionTransformer)."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    head_width: int
    mlp_ratio: float = 4.0
    quick_gelu: bool = False
    ln_pre: bool = True
    ln_eps: float = 1e-5

    @property
    def heads(self) -> int:
        """Attention heads."""
        return self.width // self.head_width


VISION_SPECS = {
    # the paper: OpenAI CLIP ViT-L/14 (QuickGELU)
    "ViT-L-14": VisionSpec(224, 14, 1024, 24, 64, quick_gelu=True),
    # the official code: BLIP-2's EVA-CLIP ViT-g/14, its 40th block dropped, no pre-norm
    "EVA-g-14-39": VisionSpec(224, 14, 1408, 39, 88, mlp_ratio=4.3637, ln_pre=False, ln_eps=1e-6),
    # CPU tests and demos
    "tiny-vit": VisionSpec(64, 16, 64, 4, 16),
}


def vision_spec(name: str) -> VisionSpec:
    """The spec of a vision model: ours above, or any open_clip architecture with a native ViT tower."""
    if name in VISION_SPECS:
        return VISION_SPECS[name]
    import open_clip

    cfg = open_clip.get_model_config(name)
    vision = (cfg or {}).get("vision_cfg", {})
    if not cfg or "timm_model_name" in vision or isinstance(vision.get("layers"), list | tuple):
        raise ValueError(
            f"unknown vision_model {name!r}; supported: {', '.join(VISION_SPECS)} or an open_clip ViT "
            "(timm- and ResNet-based towers are not)"
        )
    return VisionSpec(
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        width=vision["width"],
        layers=vision["layers"],
        head_width=vision.get("head_width", 64),
        mlp_ratio=vision.get("mlp_ratio", 4.0),
        quick_gelu=bool(cfg.get("quick_gelu", False)),
    )


def default_prefix_layers(spec: VisionSpec) -> int:
    """About half the blocks: 20 of 39 for EVA-g (the official code), 12 of 24 for ViT-L-14."""
    return math.ceil(spec.layers / 2) if spec.layers != 39 else 20


def build_tower(spec: VisionSpec) -> VisionTransformer:
    """A randomly initialised open_clip VisionTransformer of this shape."""
    return VisionTransformer(
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        width=spec.width,
        layers=spec.layers,
        heads=spec.heads,
        mlp_ratio=spec.mlp_ratio,
        output_dim=spec.width,
        no_ln_pre=not spec.ln_pre,
        act_layer=QuickGELU if spec.quick_gelu else nn.GELU,
        norm_layer=partial(LayerNorm, eps=spec.ln_eps),
    )


class PrefixedViT(nn.Module):
    """The vision tower with object-aware prefixes; returns what the projector needs."""

    def __init__(self, config: ModelConfig, tower: VisionTransformer | None = None) -> None:
        super().__init__()
        self.spec = vision_spec(config.vision_model)
        self.tower = tower if tower is not None else build_tower(self.spec)
        self.config = config
        self.use_prefix = config.use_object_prefix
        n_prefixed = config.prefix_layers if config.prefix_layers is not None else default_prefix_layers(self.spec)
        if not 1 <= n_prefixed <= self.spec.layers:
            raise ValueError(f"prefix_layers must be in 1..{self.spec.layers}, got {n_prefixed}")
        self.n_prefixed = n_prefixed if self.use_prefix else 0
        if self.use_prefix:
            # official init: nn.Embedding's N(0, 1); gates start at zero so training starts from the frozen ViT
            self.prefix = nn.Parameter(torch.randn(self.n_prefixed, config.prefix_length, self.spec.width))
            self.gate = nn.Parameter(torch.zeros(self.n_prefixed, self.spec.heads))
        for p in self.tower.parameters():
            p.requires_grad_(config.train_vision)
        self.tower_dtype = getattr(torch, config.vision_dtype)
        if self.tower_dtype != torch.float32:
            cast_linear_weights(self.tower, self.tower_dtype)

    def _autocast(self, device: torch.device):
        """Autocast in the tower's dtype when its weights are low-precision (nothing to do for float32)."""
        if self.tower_dtype == torch.float32 or device.type not in ("cuda", "cpu"):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.tower_dtype)

    @property
    def blocks(self) -> nn.ModuleList:
        """The tower's residual blocks."""
        return self.tower.transformer.resblocks

    def forward(self, images: torch.Tensor, objects: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images.

        Args:
            images: [B, 3, H, W] normalised pixels.
            objects: [B, P, width] object features (zero rows for absent objects), or None.

        Returns:
            (cls [B, width]: token 0 of the last block's raw output, prefix [B, P, width]: the last prefixed
            block's prefix input `E_last + R`, empty when the prefix is off).
        """
        with self._autocast(images.device):
            x = self.tower._embeds(images)
            first = len(self.blocks) - self.n_prefixed
            for block in self.blocks[:first]:
                x = block(x)
            prefix_in = x.new_zeros(x.shape[0], 0, x.shape[-1])
            for i, block in enumerate(self.blocks[first:]):
                prefix_in = self.prefix[i].to(x.dtype).expand(x.shape[0], -1, -1)
                if objects is not None and self.config.use_object_features:
                    prefix_in = prefix_in + objects.to(x.dtype)
                x = self._prefixed_block(block, x, prefix_in, self.gate[i])
        return x[:, 0], prefix_in

    @torch.no_grad()
    def encode_regions(self, crops: torch.Tensor) -> torch.Tensor:
        """Region features: CLS of the frozen tower without prefixes, for crops [N, 3, H, W] -> [N, width]."""
        with self._autocast(crops.device):
            x = self.tower._embeds(crops)
            for block in self.blocks:
                x = block(x)
        return x[:, 0]

    def _prefixed_block(self, block, x: torch.Tensor, prefix: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        h = block.ln_1(x)
        width, heads = x.shape[-1], attn.num_heads
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)

        q = split(F.linear(h, w_q, b_q))
        k_a, v_a = split(F.linear(prefix, w_k, b_k)), split(F.linear(prefix, w_v, b_v))
        g = gate.to(x.dtype).view(1, heads, 1, 1) if self.config.use_gate else 1.0
        if self.config.attention_flow == "dual":
            patch_flow = attn(h, h, h, need_weights=False)[0]  # exactly the frozen block's attention
            prefix_flow = F.scaled_dot_product_attention(q, k_a, v_a)
        else:  # joint: one softmax over [prefix; patch] keys, the prefix columns scaled by the gate
            k, v = split(F.linear(h, w_k, b_k)), split(F.linear(h, w_v, b_v))
            scores = torch.cat([q @ k_a.transpose(-1, -2), q @ k.transpose(-1, -2)], dim=-1) / math.sqrt(q.shape[-1])
            probs = scores.softmax(dim=-1)
            n_prefix = k_a.shape[2]
            out = g * (probs[..., :n_prefix] @ v_a) + probs[..., n_prefix:] @ v
            patch_flow = F.linear(_merge(out), attn.out_proj.weight, attn.out_proj.bias)
            prefix_flow = None
        if prefix_flow is not None:
            # out_proj is linear: the gated prefix flow adds W_o (g * flow) to the frozen attention output
            patch_flow = patch_flow + F.linear(_merge(g * prefix_flow), attn.out_proj.weight)
        x = x + block.ls_1(patch_flow)
        return x + block.ls_2(block.mlp(block.ln_2(x)))


def cast_linear_weights(tower: nn.Module, dtype: torch.dtype) -> None:
    """Cast the weights and biases of the tower's linear maps, convolutions and attention projections to `dtype`.

    The official `convert_weights_to_fp16` (Conv and Linear modules; EVA's qkv is a Linear, open_clip's is the
    attention's in-projection). Norms, class and position embeddings keep their dtype.
    """
    for module in tower.modules():
        if isinstance(module, nn.Linear | nn.Conv2d | nn.MultiheadAttention):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] -> [B, N, H * d]."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


_UNUSED = ("ln_post.weight", "ln_post.bias", "proj")  # the raw last-block output is used, as the official code
_EVA_HEAD = ("norm.", "fc_norm.", "head.")  # EVA's final norm and classifier: LAVIS's tower has none


def load_vision_weights(tower: VisionTransformer, path: str, spec_name: str) -> list[str]:
    """Load a local checkpoint into the tower, with a clear error when it does not fit the architecture.

    Accepts an open_clip state dict (a full CLIP's `visual.*` or the tower's own keys; `.safetensors` too) or
    LAVIS's EVA ViT-g (`blocks.*`). The unused final norm and projection of a CLIP (e.g. ViT-L/14's 1024 -> 768
    `proj`) are not loaded. An EVA checkpoint deeper than the tower loads its first blocks, as LAVIS does with
    `strict=False` (`eva_vit_g.pth` has 40 blocks, the BLIP-2/GeMKR tower 39). Returns the checkpoint keys
    that were left out (after the EVA -> open_clip renaming).
    """
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such vision weights file (give a local checkpoint; nothing is downloaded)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{p}: not a readable torch checkpoint ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    own = tower.state_dict()
    ignored: list[str] = []
    if any(k.startswith("blocks.") for k in sd):
        ignored = [k for k in sd if k.startswith(_EVA_HEAD)]
        sd = eva_to_open_clip({k: v for k, v in sd.items() if k not in ignored})
        depth = len(tower.transformer.resblocks)
        extra = [k for k in sd if k.startswith("transformer.resblocks.") and int(k.split(".")[2]) >= depth]
        ignored += extra
        sd = {k: v for k, v in sd.items() if k not in extra}
    for k in _UNUSED:
        if k in own and (k not in sd or tuple(sd[k].shape) != tuple(own[k].shape)):
            if k in sd:
                ignored.append(k)
            sd[k] = own[k]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ValueError(f"{p}: does not fit vision_model {spec_name!r} ({detail})")
    tower.load_state_dict(sd)
    if ignored:
        logging.getLogger(__name__).info("%s: left out %d checkpoint keys (e.g. %s)", p, len(ignored), ignored[0])
    return ignored


def eva_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAVIS/BLIP-2 EVA ViT-g names -> open_clip VisionTransformer names.

    EVA's q and v biases become the in-projection bias (k bias 0); its patch-embedding bias is folded into
    the patch positions' embeddings (open_clip's conv has no bias); LAVIS has no pre-norm and no final norm.
    """
    out: dict[str, torch.Tensor] = {}
    pos = sd["pos_embed"].reshape(-1, sd["pos_embed"].shape[-1]).clone()
    if "patch_embed.proj.bias" in sd:
        pos[1:] += sd["patch_embed.proj.bias"]
    out["positional_embedding"] = pos
    out["class_embedding"] = sd["cls_token"].reshape(-1)
    out["conv1.weight"] = sd["patch_embed.proj.weight"]
    names = {
        "norm1": "ln_1",
        "norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "attn.proj": "attn.out_proj",
    }
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    for i in blocks:
        src, dst = f"blocks.{i}.", f"transformer.resblocks.{i}."
        for a, b in names.items():
            for t in ("weight", "bias"):
                if f"{src}{a}.{t}" in sd:
                    out[f"{dst}{b}.{t}"] = sd[f"{src}{a}.{t}"]
        out[f"{dst}attn.in_proj_weight"] = sd[f"{src}attn.qkv.weight"]
        q_bias = sd[f"{src}attn.q_bias"]
        out[f"{dst}attn.in_proj_bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), sd[f"{src}attn.v_bias"]])
    return out
