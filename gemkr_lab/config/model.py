"""The GeMKR model (gemkr_spec.md §2): every component the paper ablates is one field here."""

import functools
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from gemkr_lab.config.checks import PROBABILITY, AtLeast, FieldError, check_fields

TOWER_DEPTHS = {"ViT-L-14": 24, "EVA-g-14-39": 39, "tiny-vit": 4}
"""Blocks of the named towers (gemkr_lab.model.vision.VISION_SPECS has their full shapes; a test keeps the two
equal). Other open_clip ViTs are looked up in open_clip's model configs."""


def tower_depth(name: str) -> int | None:
    """Blocks of the vision tower `name`, or None when it is not a known ViT."""
    if name in TOWER_DEPTHS:
        return TOWER_DEPTHS[name]
    return _open_clip_tower_depth(name)


@functools.cache
def _open_clip_tower_depth(name: str) -> int | None:
    """Blocks of open_clip's architecture `name` if it has a native ViT tower, else None.

    Read from the JSON files that `open_clip.get_model_config` serves, without importing open_clip (and with it
    torch): config checks stay light. A test keeps this equal to open_clip's own answer for every architecture.
    """
    spec = importlib.util.find_spec("open_clip")  # locates the installed package; nothing is imported
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    if not folder.is_dir() or f"{name}.json" not in os.listdir(folder):  # a listed file: no paths from `name`
        return None
    cfg = json.loads((folder / f"{name}.json").read_text())
    if not all(key in cfg for key in ("embed_dim", "vision_cfg", "text_cfg")):  # open_clip skips such files
        return None
    layers = cfg["vision_cfg"].get("layers")
    return layers if isinstance(layers, int) else None


@dataclass(frozen=True)
class TinyLLMConfig:
    """Shape of the random-initialised "tiny-llama" LLM (a LlamaConfig's size fields)."""

    hidden_size: Annotated[int, AtLeast(1)] = 64
    """Model width."""
    intermediate_size: Annotated[int, AtLeast(1)] = 128
    """MLP width."""
    num_hidden_layers: Annotated[int, AtLeast(1)] = 2
    """Decoder blocks."""
    num_attention_heads: Annotated[int, AtLeast(1)] = 4
    """Query heads."""
    num_key_value_heads: Annotated[int, AtLeast(1)] = 2
    """Key/value heads (grouped-query attention)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.hidden_size % self.num_attention_heads:
            raise FieldError(
                "hidden_size", self.hidden_size, f"a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise FieldError(
                "num_key_value_heads",
                self.num_key_value_heads,
                f"a divisor of num_attention_heads ({self.num_attention_heads})",
            )


@dataclass(frozen=True)
class ModelConfig:
    """Vision front end, projector and LLM. Defaults follow the official code where it is not buggy."""

    # ---- vision ----
    use_image: bool = True
    """Ablation "text only": off = the LLM sees no visual tokens, only the question (and caption)."""
    vision_model: str = "ViT-L-14"
    """Vision tower: "ViT-L-14" (the paper), "EVA-g-14-39" (the official code's EVA ViT-g, 39 blocks),
    "tiny-vit" for CPU runs, or any open_clip architecture with a native ViT tower (e.g. "ViT-B-16")."""
    vision_weights: str | None = None
    """Local path of the vision tower's weights (an open_clip checkpoint, or LAVIS's eva_vit_g.pth for
    EVA-g); None = random initialisation (tiny CPU runs, benchmarks)."""
    train_vision: bool = False
    """Deviation for tiny CPU presets: train the vision tower, since random weights carry no knowledge.
    The paper keeps it frozen."""
    vision_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Deviation "vision-tower precision": dtype of the frozen tower's linear and convolution weights, which then
    runs under autocast in that dtype (official: float16, its `convert_weights_to_fp16`; paper presets: float16).
    Norms, embeddings, prefixes and gates stay float32."""
    use_object_prefix: bool = True
    """Ablation "without object prefix": off = no prefixes, no gates, the LLM sees only the CLS token."""
    use_object_features: bool = True
    """Ablation "without object features": off = prefixes are the learned embeddings only (R = 0)."""
    attention_flow: Literal["dual", "joint"] = "dual"
    """Ablation "joint attention": dual = separate softmaxes over prefix keys and patch keys (the paper's
    dual-flow attention); joint = one softmax over both."""
    use_gate: bool = True
    """Ablation "without gate": off = the prefix flow enters unscaled instead of through a zero-initialised
    per-head gate."""
    prefix_layers: Annotated[int, AtLeast(1)] | None = None
    """Blocks (the last ones) that receive prefixes; None = about half the tower (20 of 39 for EVA-g, as the
    official code; 12 of 24 for ViT-L-14)."""
    prefix_length: Annotated[int, AtLeast(1)] = 10
    """Prefix tokens per layer, equal to the maximum number of objects (official: 10)."""
    # ---- visual tokens for the LLM ----
    object_tokens: Annotated[int, AtLeast(0)] = 2
    """K: object-aware prefix tokens of the last block passed to the LLM beside the CLS token (official: 2)."""
    train_visual_norm: bool = False
    """Train the LayerNorm before the projection (official: freshly initialised and frozen, i.e. plain
    standardisation)."""
    # ---- LLM ----
    llm: str = "tiny-llama"
    """A local transformers checkpoint directory (llama-7b, llama-13b presets give paths), or "tiny-llama"
    for a random-initialised CPU model."""
    llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the frozen LLM weights."""
    load_in_8bit: bool = False
    """Load the LLM in 8 bits (bitsandbytes, GPU only), as the official evaluation does."""
    use_lora: bool = True
    """LoRA on the frozen LLM (paper); off = full fine-tuning, which the paper notes small LLMs need."""
    lora_r: Annotated[int, AtLeast(1)] = 8
    """LoRA rank."""
    lora_alpha: Annotated[int, AtLeast(1)] = 16
    """LoRA scaling numerator."""
    lora_dropout: Annotated[float, PROBABILITY] = 0.05
    """LoRA dropout."""
    lora_targets: tuple[str, ...] = field(default=("q_proj", "v_proj"))
    """Modules LoRA adapts (official: q_proj, v_proj)."""
    tiny_llm: TinyLLMConfig = field(default_factory=TinyLLMConfig)
    """Shape of the "tiny-llama" LLM."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.object_tokens > self.prefix_length:
            raise FieldError("object_tokens", self.object_tokens, f"<= prefix_length ({self.prefix_length})")
        depth = tower_depth(self.vision_model)
        if depth is None:
            raise FieldError(
                "vision_model", self.vision_model, f"one of {', '.join(TOWER_DEPTHS)} or an open_clip ViT architecture"
            )
        if self.prefix_layers is not None and self.prefix_layers > depth:
            raise FieldError("prefix_layers", self.prefix_layers, f"<= {depth}, the depth of {self.vision_model}")
        if self.train_vision and self.vision_dtype != "float32":
            raise FieldError("vision_dtype", self.vision_dtype, "float32 when train_vision is on (a trained tower)")
        if self.load_in_8bit and self.llm == "tiny-llama":
            raise FieldError("load_in_8bit", True, "false for the random tiny-llama (8-bit loads a checkpoint)")
