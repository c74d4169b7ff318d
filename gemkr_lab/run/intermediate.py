"""Decoded evaluations during training: what a search's pruner acts on.

Every `every_n_steps` optimizer steps the current weights decode a fixed subset of the validation split (its
first `queries` queries, in file order) with the run's own constrained decoding, and the subset's metrics go to
`report(step, means)`. The caller decides what a report means (an Optuna search reports the objective to its
trial and raises to stop a hopeless one); this module knows nothing of Optuna. The test split is never read.

The evaluation leaves training as it found it: every submodule's train/eval mode is restored and the RNG
streams are forked around it, so a run evaluated along the way trains the same weights as one that is not.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L


@dataclass(frozen=True)
class IntermediateEvaluation:
    """When and on what to evaluate during training, and whom to tell."""

    every_n_steps: int
    """Decode the subset every N optimizer steps."""
    queries: int
    """The subset: the first N validation queries (the same for every evaluation and every trial)."""
    report: Callable[[int, dict[str, float]], None]
    """Called with (optimizer step, mean metrics); may raise to stop the run (e.g. optuna.TrialPruned)."""


class DecodedEvaluationCallback(L.Callback):
    """Runs an `IntermediateEvaluation` from inside Lightning's training loop."""

    def __init__(self, plan: IntermediateEvaluation, evaluate: Callable[[Any, Any], dict[str, float]]) -> None:
        self.plan = plan
        self.evaluate = evaluate  # (model, datamodule) -> mean metrics of the subset
        self._done: set[int] = set()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        """After the micro-batch that completes a multiple of `every_n_steps` optimizer steps (once per step)."""
        step = trainer.global_step
        if step == 0 or step % self.plan.every_n_steps or step in self._done or not trainer.is_global_zero:
            return
        self._done.add(step)
        model = module.model
        modes = {m: m.training for m in model.modules()}
        try:
            with _forked_rng(model):
                means = self.evaluate(model, trainer.datamodule)
        finally:
            for m, training in modes.items():
                m.train(training)
        self.plan.report(step, means)


@contextlib.contextmanager
def _forked_rng(model):
    import torch

    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
