"""GeMKR: prefixed ViT -> [CLS + K object-aware tokens] -> LayerNorm -> Linear -> LLM (LoRA) -> clue.

Sequence layout and loss (gemkr_spec.md §3.2): `[BOS] + text before <ImageHere>`, the visual tokens, the
text after the placeholder (`### Response:`), the clue and EOS; the loss is next-token cross-entropy on the
clue and EOS only.
"""

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gemkr_lab.config.model import ModelConfig
from gemkr_lab.model.vision import PrefixedViT, load_vision_weights

IGNORE = -100

#: LLaMA shapes for parameter accounting and benchmarks (no weights needed: speed and counts do not depend on them)
LLM_SHAPES = {
    "llama-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    },
    "llama-13b": {
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
    },
}


@dataclass
class Batch:
    """A collated batch; token lists are per sample (padding happens here, after the visual tokens)."""

    images: torch.Tensor
    """[B, 3, H, W]."""
    objects: torch.Tensor
    """[B, P, width] region features (zero rows where no object)."""
    before: list[list[int]]
    """BOS + the prompt text before the image placeholder, per sample."""
    after: list[int]
    """The prompt text after the placeholder (the same for every sample)."""
    targets: list[list[int]] | None = None
    """Clue tokens per sample (training); EOS is appended here."""
    qids: list[str] | None = None
    """Query ids, for the decoder's records."""


def build_llm(config: ModelConfig, vocab_size: int, *, device: str = "cpu", shape: str | None = None) -> nn.Module:
    """The causal LM: a local checkpoint, a named shape (random, for counting/benchmarks) or the tiny one."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, config.llm_dtype)
    if shape is not None or config.llm == "tiny-llama":
        dims = (
            LLM_SHAPES[shape]
            if shape is not None
            else {"vocab_size": vocab_size, **dataclasses.asdict(config.tiny_llm)}
        )
        cfg = LlamaConfig(max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0, **dims)
        with torch.device(device):
            return LlamaForCausalLM(cfg).to(dtype)
    path = Path(config.llm)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such LLM directory (give a local transformers checkpoint)")
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if config.load_in_8bit:
        if not torch.cuda.is_available():
            raise ValueError("load_in_8bit needs a CUDA device (bitsandbytes); set load_in_8bit=False on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot load a causal LM from it ({exc})") from exc


class GeMKR(nn.Module):
    """The trainable model; `components()` names the parameter groups the paper counts."""

    def __init__(self, config: ModelConfig, vocab_size: int, *, device: str = "cpu", llm_shape: str | None = None):
        """Build every part on `device` ("meta": shapes only, for counting); `llm_shape` names a random LLM."""
        super().__init__()
        self.config = config
        with torch.device(device):
            self.vision = PrefixedViT(config)
        if config.vision_weights and device != "meta":
            load_vision_weights(self.vision.tower, config.vision_weights, config.vision_model)
        llm = build_llm(config, vocab_size, device=device, shape=llm_shape)
        width, hidden = self.vision.spec.width, llm.config.hidden_size
        with torch.device(device):
            # official: ln_vision freshly initialised (identity affine) and frozen, then one Linear
            self.visual_norm = nn.LayerNorm(width)
            self.projector = nn.Linear(width, hidden)
        self.visual_norm.requires_grad_(config.train_visual_norm)
        if not config.use_image:  # text only: the visual path exists but is neither used nor trained
            for module in (self.vision, self.visual_norm, self.projector):
                module.requires_grad_(False)
        for p in llm.parameters():
            p.requires_grad_(not config.use_lora)  # LoRA: frozen base; else full fine-tuning
        if config.use_lora:
            from peft import LoraConfig, TaskType, get_peft_model

            llm = get_peft_model(
                llm,
                LoraConfig(
                    task_type=TaskType.CAUSAL_LM,
                    r=config.lora_r,
                    lora_alpha=config.lora_alpha,
                    lora_dropout=config.lora_dropout,
                    target_modules=list(config.lora_targets),
                    bias="none",
                ),
            )
        self.llm = llm
        self.eos_id = llm.config.eos_token_id if llm.config.eos_token_id is not None else 2
        self.pad_id = llm.config.pad_token_id if llm.config.pad_token_id is not None else 0

    # ---- parameters -------------------------------------------------------------------------------------

    def components(self) -> "OrderedDict[str, int]":
        """Trainable parameters per component (what `train` prints when it starts)."""

        def trainable(params) -> int:
            return sum(p.numel() for p in params if p.requires_grad)

        has_prefix = self.config.use_object_prefix
        parts = OrderedDict()
        parts["prefix"] = trainable([self.vision.prefix]) if has_prefix else 0
        parts["gates"] = trainable([self.vision.gate]) if has_prefix and self.config.use_gate else 0
        parts["vision tower"] = trainable(self.vision.tower.parameters())
        parts["visual norm"] = trainable(self.visual_norm.parameters())
        parts["projector"] = trainable(self.projector.parameters())
        parts["llm (lora)" if self.config.use_lora else "llm (full)"] = trainable(self.llm.parameters())
        parts["total"] = sum(parts.values())
        return parts

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: checkpoints never hold the frozen LLM or ViT."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds to rebuild this exact model.

        The trained parameters, plus every frozen part that was randomly initialised instead of loaded from a
        weights file (the tiny CPU towers and LLMs), so that re-evaluation never depends on re-drawing the
        same random numbers. Frozen pretrained weights (EVA-g, LLaMA) are never copied into checkpoints.
        """
        random_parts = tuple(
            prefix
            for prefix, random in (
                ("vision.", not self.config.vision_weights),
                ("llm.", self.config.llm == "tiny-llama"),
            )
            if random
        )
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names or k.startswith(random_parts)}

    # ---- computation -------------------------------------------------------------------------------------

    def visual_tokens(self, images: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """[B, 1 + K, hidden]: CLS and the first K object-aware prefix tokens, normalised and projected.

        Text-only models (`use_image` off) get [B, 0, hidden]: the LLM sees no visual token.
        """
        if not self.config.use_image:
            return self.projector.weight.new_zeros(images.shape[0], 0, self.projector.out_features)
        cls, prefix = self.vision(images, objects)
        tokens = torch.cat([cls[:, None], prefix[:, : self.config.object_tokens]], dim=1)
        return self.projector(self.visual_norm(tokens.float()).to(self.projector.weight.dtype))

    def _embed(self, ids: list[int], device) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        return table(torch.as_tensor(ids, dtype=torch.long, device=device))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over the clue tokens and EOS."""
        total, count = self.loss_terms(batch)
        return total / count

    def loss_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over the clue tokens and EOS of the batch, and the number of those tokens.

        The mean is `total / count`; under DDP the trainer divides each rank's total by the count of all ranks
        (`GeMKRModule.training_step`), so the loss is the token mean of the global batch.
        """
        if batch.targets is None:
            raise ValueError("training needs clue targets")
        device = batch.images.device
        vis = self.visual_tokens(batch.images, batch.objects)
        dtype = self.llm.get_input_embeddings().weight.dtype
        seqs, labels = [], []
        after = self._embed(batch.after, device)
        for i, (before, target) in enumerate(zip(batch.before, batch.targets, strict=True)):
            tgt = [*target, self.eos_id]
            seqs.append(torch.cat([self._embed(before, device), vis[i].to(dtype), after, self._embed(tgt, device)]))
            n_prompt = len(before) + vis.shape[1] + len(batch.after)
            labels.append(torch.as_tensor([IGNORE] * n_prompt + tgt, device=device))
        embeds, mask = _pad(seqs, left=False)
        label_t = torch.full(mask.shape, IGNORE, dtype=torch.long, device=device)
        for i, lab in enumerate(labels):
            label_t[i, : lab.shape[0]] = lab
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask).logits
        shifted = label_t[:, 1:]  # position t predicts token t + 1, as the LLM's own causal-LM loss
        total = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            shifted.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return total, (shifted != IGNORE).sum()

    @torch.no_grad()
    def prompt_embeds(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt embeddings and mask for the clue decoder."""
        device = batch.images.device
        vis = self.visual_tokens(batch.images, batch.objects)
        dtype = self.llm.get_input_embeddings().weight.dtype
        after = self._embed(batch.after, device)
        seqs = [torch.cat([self._embed(b, device), vis[i].to(dtype), after]) for i, b in enumerate(batch.before)]
        return _pad(seqs, left=True)


def _pad(seqs: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros(len(seqs), n, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        sl = slice(n - s.shape[0], n) if left else slice(0, s.shape[0])
        out[i, sl] = s
        mask[i, sl] = 1
    return out, mask


# ---- 8-bit evaluation (DecodingConfig.llm_in_8bit) ----------------------------------------------------------

INT8_SKIP = ("lm_head", "lora_")
"""Linear layers left in full precision: the LM head (as transformers' load_in_8bit) and LoRA's adapters."""


def linear_layers_to_quantize(llm: nn.Module) -> list[str]:
    """Names of the LLM's linear layers that 8-bit loading quantises (every nn.Linear but `INT8_SKIP`)."""
    return [
        name
        for name, module in llm.named_modules()
        if type(module) is nn.Linear and not any(part in name for part in INT8_SKIP)
    ]


def quantize_llm_8bit(llm: nn.Module, device: torch.device | str = "cuda") -> nn.Module:
    """Replace the LLM's linear layers by bitsandbytes LLM.int8 layers on `device`, in place.

    What `from_pretrained(load_in_8bit=True)` does to a checkpoint (threshold 6.0, fp16 activations), applied to
    the trained weights, so that LoRA-wrapped and fully fine-tuned LLMs alike are evaluated as the official code
    evaluates (gemkr_spec.md §2.5, §7 bug 5). The weights are quantised when moved to the CUDA device.
    """
    if not torch.cuda.is_available():
        raise ValueError("decoding.llm_in_8bit needs a CUDA device (bitsandbytes); set it to false on CPU")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ValueError("decoding.llm_in_8bit needs bitsandbytes: pip install bitsandbytes") from exc
    for name in linear_layers_to_quantize(llm):
        parent_name, _, child = name.rpartition(".")
        parent = llm.get_submodule(parent_name) if parent_name else llm
        old: nn.Linear = getattr(parent, child)
        new = bnb.nn.Linear8bitLt(
            old.in_features, old.out_features, bias=old.bias is not None, has_fp16_weights=False, threshold=6.0
        )
        new.weight = bnb.nn.Int8Params(
            old.weight.data.to(torch.float16).cpu(), requires_grad=False, has_fp16_weights=False
        )
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.data.to(torch.float16).cpu(), requires_grad=False)
        setattr(parent, child, new.to(device))  # Int8Params quantise on the move to the GPU
    return llm.to(device)


def prepare_8bit_evaluation(model: "GeMKR") -> "GeMKR":
    """The model on the GPU with its LLM in 8 bits, for decoding (the official evaluation's `low_resource`)."""
    if not torch.cuda.is_available():
        raise ValueError("decoding.llm_in_8bit needs a CUDA device (bitsandbytes); set it to false on CPU")
    device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    model.llm = quantize_llm_8bit(model.llm, device)
    return model


def count_trainable(config: ModelConfig, llm_shape: str) -> "OrderedDict[str, int]":
    """Trainable parameters of a configuration, built on the meta device (no weights, no memory)."""
    return GeMKR(config, LLM_SHAPES[llm_shape]["vocab_size"], device="meta", llm_shape=llm_shape).components()
