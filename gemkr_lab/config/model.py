"""The GeMKR model (gemkr_spec.md §2): every component the paper ablates is one field here."""

from dataclasses import dataclass, field
from typing import Literal


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
    prefix_layers: int | None = None
    """Blocks (the last ones) that receive prefixes; None = about half the tower (20 of 39 for EVA-g, as the
    official code; 12 of 24 for ViT-L-14)."""
    prefix_length: int = 10
    """Prefix tokens per layer, equal to the maximum number of objects (official: 10)."""
    # ---- visual tokens for the LLM ----
    object_tokens: int = 2
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
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_targets: tuple[str, ...] = field(default=("q_proj", "v_proj"))
    """Modules LoRA adapts (official: q_proj, v_proj)."""
    tiny_llm: dict = field(
        default_factory=lambda: {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        }
    )
    """Shape of the "tiny-llama" LLM."""

    def __post_init__(self) -> None:
        if self.attention_flow not in ("dual", "joint"):
            raise ValueError(f"attention_flow must be 'dual' or 'joint', got {self.attention_flow!r}")
        if self.prefix_length < 1:
            raise ValueError(f"prefix_length must be >= 1, got {self.prefix_length}")
        if not 0 <= self.object_tokens <= self.prefix_length:
            raise ValueError(f"object_tokens must be in 0..prefix_length, got {self.object_tokens}")
        if self.llm_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"llm_dtype must be float32, bfloat16 or float16, got {self.llm_dtype!r}")
