"""How clues are decoded and turned into ranked documents (gemkr_spec.md §4)."""

from dataclasses import dataclass
from typing import Literal


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
    num_groups: int = 10
    """Beam groups of diverse search (plain beam search uses one group)."""
    beams_per_group: int = 1
    """Beams in each group; the clues returned are num_groups x beams_per_group."""
    diversity_penalty: float = 0.5
    """Hamming penalty on tokens chosen by earlier groups at the same step (diverse search only)."""
    length_penalty: float = 1.5
    """Final score = sum of log-probs / (clue tokens + 1) ** length_penalty (HF's convention)."""
    max_clue_tokens: int = 9
    """Ablation "clue length": after this many tokens only EOS may follow (paper and code: 9)."""
    stop_at_count: int | None = None
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
    docs_per_clue_limit: int = 1000
    """Occurrences located per clue at most (SEAL's cap; frequent clues carry little evidence)."""
    check_top_m: int = 64
    """Validate the model's best M tokens per beam instead of enumerating all followers of large ranges."""
    enumerate_below: int = 256
    """Ranges with at most this many occurrences enumerate their followers (cheaper than M checks)."""

    def __post_init__(self) -> None:
        if self.search not in ("diverse", "beam"):
            raise ValueError(f"search must be 'diverse' or 'beam', got {self.search!r}")
        if self.clue_to_docs not in ("first", "unique", "all"):
            raise ValueError(f"clue_to_docs must be 'first', 'unique' or 'all', got {self.clue_to_docs!r}")
        for name in ("num_groups", "beams_per_group", "max_clue_tokens", "docs_per_clue_limit", "check_top_m"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stop_at_count is not None and self.stop_at_count < 1:
            raise ValueError(f"stop_at_count must be >= 1 or None, got {self.stop_at_count}")

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
