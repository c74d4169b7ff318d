"""The `search:` section of a search sweep file, typed and checked like every config (file:line errors).

A search tunes on the validation split and touches the test split once, at its end: the best trial's
configuration (by its validation objective) is trained and scored on test over `final_seeds`.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from gemkr_lab.config.checks import AtLeast, FieldError, check_fields
from gemkr_lab.config.metric_names import SCORED

OBJECTIVES = SCORED
"""What a search can optimise: the metrics every run scores (gemkr_lab.config.metric_names)."""


@dataclass(frozen=True)
class SearchSettings:
    """How an Optuna search samples, prunes and ends. The space and enqueued trials are checked beside it."""

    objective: Literal[OBJECTIVES] = "R@5"  # type: ignore[valid-type]
    """The metric tuned, measured on the validation split (never on test)."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether a larger objective is better."""
    cost: Literal["train_seconds", "decode_ms_per_query"] | None = None
    """Multi-objective search: a cost minimised beside the objective, the trial's training seconds (device
    time) or its decoding ms per query; the study then keeps a Pareto front (no pruning: Optuna cannot prune
    multi-objective trials) and `select_within` chooses on it."""
    select_within: Annotated[float, AtLeast(0)] = 0.0
    """Multi-objective selection: among the Pareto-optimal trials whose objective is within this of the best
    (in the metric's units: 0.01 = 1 point of R@5), the cheapest."""
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
        if self.cost is not None and self.eval_every_n_steps is not None:
            raise FieldError(
                "eval_every_n_steps",
                self.eval_every_n_steps,
                "null with a cost (multi-objective trials are not pruned)",
            )
        if self.final_seeds is not None and len(set(self.final_seeds)) != len(self.final_seeds):
            raise FieldError("final_seeds", list(self.final_seeds), "distinct seeds")

    @property
    def directions(self) -> tuple[str, ...]:
        """The study's directions: the objective's, and "minimize" for the cost."""
        return (self.direction,) if self.cost is None else (self.direction, "minimize")

    def selection_rule(self) -> str:
        """How the selected trial is chosen, in words (shown by the report)."""
        best = "largest" if self.direction == "maximize" else "smallest"
        if self.cost is None:
            return f"the {best} validation {self.objective} (ties: the earliest trial)"
        return (
            f"among the Pareto-optimal trials whose validation {self.objective} is within {self.select_within:g} "
            f"of the {best}, the one with the least {self.cost} (ties: the earliest trial)"
        )
