"""The `search:` section of a search sweep file, typed and checked like every config (file:line errors).

A search tunes on the validation split and touches the test split once, at its end: the best trial's
configuration (by its validation objective) is trained and scored on test over `final_seeds`.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from gemkr_lab.config.checks import AtLeast, FieldError, check_fields

OBJECTIVES = tuple(f"{m}@{k}" for m in ("P", "R", "Recall", "MRR") for k in (1, 5, 10))
"""What a search can optimise: the metrics every run scores (gemkr_lab.metrics, ks 1, 5 and 10)."""


@dataclass(frozen=True)
class SearchSettings:
    """How an Optuna search samples, prunes and ends. The space and enqueued trials are checked beside it."""

    objective: Literal[OBJECTIVES] = "R@5"  # type: ignore[valid-type]
    """The metric tuned, measured on the validation split (never on test)."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether a larger objective is better."""
    n_trials: Annotated[int, AtLeast(1)] = 10
    """Trials in total (complete, pruned or failed)."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """Optuna sampler, seeded by the sweep's seed; grid: every combination of categorical choices."""
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    """Optuna pruner acting on the decoded intermediate values (needs `eval_every_n_steps`)."""
    pruner_startup_trials: Annotated[int, AtLeast(0)] = 2
    """Median pruner: trials that run to their end before any is pruned."""
    pruner_warmup_steps: Annotated[int, AtLeast(0)] = 0
    """Median pruner: optimizer steps of a trial before it can be pruned."""
    eval_every_n_steps: Annotated[int, AtLeast(1)] | None = None
    """Decode the validation subset every N optimizer steps and report its objective to the pruner; None: only
    the final validation objective is reported (then nothing can be pruned)."""
    eval_queries: Annotated[int, AtLeast(1)] = 64
    """The validation subset of the intermediate evaluations: the first N validation queries."""
    final_seeds: tuple[Annotated[int, AtLeast(0)], ...] | None = None
    """Seeds of the final test-split runs of the selected configuration (default: the sweep's seed)."""
    finalize: bool = True
    """Evaluate the selected configuration on test when every trial is done (else: `sweep --finalize`)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.pruner != "none" and self.eval_every_n_steps is None:
            raise FieldError(
                "pruner", self.pruner, "'none' unless eval_every_n_steps is set (a pruner acts on decoded values)"
            )
        if self.final_seeds is not None and len(set(self.final_seeds)) != len(self.final_seeds):
            raise FieldError("final_seeds", list(self.final_seeds), "distinct seeds")
