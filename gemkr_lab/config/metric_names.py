"""The metric names, in one place: what every run scores, what a search may tune, what the reports show.

In the config layer because the checks (a search's objective, a sweep's published numbers) read them before
anything runs; `gemkr_lab.metrics` computes exactly these (a test holds the two together).
"""

CUTOFFS = (1, 5, 10)
"""The cutoffs k every run scores."""
SCORED = tuple(f"{m}@{k}" for m in ("P", "R", "Recall", "MRR") for k in CUTOFFS)
"""Every metric a run's metrics.json holds: P@k, R@k (hit rate, the paper's), Recall@k and MRR@k."""
REPORTED = ("P@5", "R@5", "R@10", "MRR@10")
"""The columns of the ablation and search reports, the published numbers' keys and the CLI's summary line."""


def summary_line(means: dict[str, float]) -> str:
    """The reported metrics of one run in %, on one line (`P@5 41.2  R@5 80.0 ...`)."""
    return "  ".join(f"{k} {100 * means[k]:.1f}" for k in REPORTED if k in means)
