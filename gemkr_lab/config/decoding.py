"""How clues are decoded and turned into ranked documents (gemkr_spec.md §4)."""

from dataclasses import dataclass
from typing import Annotated, Literal

from gemkr_lab.config.checks import AtLeast, check_fields

PAPER_CLUE_TOKENS = 9
"""The clue cap of the paper and the official code."""


@dataclass(frozen=True)
class DecodingConfig:
    """Clue decoding.

    Defaults reproduce the official code: 10 groups x 1 beam, Hamming diversity 0.5, length penalty 1.5,
    clues of at most 9 tokens, each mapped to the first document that contains it.
    """

    search: Literal["diverse", "beam"] = "diverse"
    """Ablation "decoding policy": diverse group beam search (official) or plain beam search."""
    constrained: bool = True
    """Ablation "constrained vs unconstrained": mask tokens the KB cannot continue; off = generate freely,
    then look each clue up (a clue absent from the KB retrieves nothing)."""
    num_groups: Annotated[int, AtLeast(1)] = 10
    """Beam groups of diverse search (plain beam search uses one group)."""
    beams_per_group: Annotated[int, AtLeast(1)] = 1
    """Beams in each group; the clues returned are num_groups x beams_per_group."""
    diversity_penalty: Annotated[float, AtLeast(0)] = 0.5
    """Hamming penalty on tokens chosen by earlier groups at the same step (diverse search only)."""
    length_penalty: Annotated[float, AtLeast(0)] = 1.5
    """Final score = sum of log-probs / (clue tokens + 1) ** length_penalty (HF's convention)."""
    max_clue_tokens: Annotated[int, AtLeast(1)] | None = None
    """After this many tokens only EOS may follow. None = the clue length the model was trained on
    (`data.clue_max_tokens`, paper and code: 9); set it only to decode with another cap than the targets'."""
    stop_at_count: Annotated[int, AtLeast(1)] | None = None
    """End a clue as soon as it occurs at most this many times in the KB (paper text: 1, i.e. unique);
    None = run to the length cap, as the official code does."""
    clue_to_docs: Literal["first", "unique", "all"] = "first"
    """Ablation "clue-to-document policy": first = the first occurrence's document (official code);
    unique = drop clues found in several documents (paper text); all = every containing document."""
    unconstrained_eos_at_document_end: bool = False
    """Unconstrained decoding only: on = a clue the model ended with EOS matches only at a document's end
    (the official code's lookup applied to free clues: it keeps a naturally ended beam's EOS); off = EOS just
    ends the clue, looked up anywhere (the spec's "generate freely, then exact substring lookup"; models learn
    mid-document spans followed by EOS). Constrained decoding always matches such a clue at a document's end,
    as the official code: the KB allows EOS only where the clue ends a document."""
    allow_bos_eos_first_token: bool = False
    """Ablation "official step 0": a clue's first token may also be BOS (the clue must then begin a document:
    the official KB stores BOS + document + EOS) or EOS (an empty clue, which constrained decoding looks up as
    "a document's end", i.e. the first document), as the official allowed-token function permits (gemkr_spec.md
    §4.2, §7 bug 7). Off = the harness's fix: a clue never starts with EOS, nor (constrained) with BOS; a freely
    generated BOS is a plain token, which no document contains. BOS counts towards the length cap, as there."""
    llm_in_8bit: bool = False
    """Ablation "8-bit evaluation": decode with the LLM's linear layers quantised to 8 bits (bitsandbytes LLM.int8,
    a CUDA device needed), as the official evaluation loads LLaMA (`low_resource`) after fp16 training; off =
    decode with the weights as trained (`model.llm_dtype`)."""
    docs_per_clue_limit: Annotated[int, AtLeast(1)] = 1000
    """Occurrences located per clue at most (SEAL's cap; frequent clues carry little evidence)."""
    check_top_m: Annotated[int, AtLeast(1)] = 64
    """Decoding on an accelerator: validate the model's best M tokens per beam in the index instead of
    enumerating the followers of frequent clues (on the CPU, each beam's best allowed tokens are searched in the
    index directly, `KBIndex.best_next`; results are the same)."""
    enumerate_below: Annotated[int, AtLeast(0)] = 256
    """Decoding on an accelerator: clues with at most this many occurrences enumerate their followers into the
    mask (cheaper than M checks)."""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def clue_cap(self) -> int:
        """The length cap used: `max_clue_tokens`, or the paper's 9 when unset.

        An experiment always resolves an unset cap to `data.clue_max_tokens`; 9 applies to bare configs.
        """
        return self.max_clue_tokens if self.max_clue_tokens is not None else PAPER_CLUE_TOKENS

    @property
    def groups(self) -> int:
        """Groups actually searched (1 for plain beam search)."""
        return self.num_groups if self.search == "diverse" else 1

    @property
    def beams(self) -> int:
        """Beams per group actually searched (plain beam search keeps all beams in one group)."""
        return self.beams_per_group if self.search == "diverse" else self.num_groups * self.beams_per_group

    @property
    def num_clues(self) -> int:
        """Clues returned per query."""
        return self.groups * self.beams
