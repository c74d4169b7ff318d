"""Statistics of ablation reports: t intervals, Holm–Bonferroni, paired tests over queries and over seeds.

Seeds are few (2–5), so intervals use Student's t with n − 1 degrees of freedom, never the normal 1.96: with
2 seeds t(0.975, 1) = 12.706 and the interval is 6.48× wider than 1.96 standard errors.
"""

from collections.abc import Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
MIN_SEEDS_FOR_SEED_TEST = 3
RANDOMIZATION_DRAWS = 10_000


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1); NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1)) if x.size > 1 else float("nan")


def t_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t confidence interval of the mean: t(1 − α/2, n − 1) · s / √n.

    NaN for fewer than 2 values (no interval can be estimated from one seed).
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = x.size
    if n < 2:
        return float("nan")
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the Student-t confidence interval of the mean; (NaN, NaN) for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    half, mean = t_half_width(x, confidence), float(x.mean())
    return mean - half, mean + half


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Sorted ascending p_(1) ≤ … ≤ p_(m): adjusted p_(i) = max over j ≤ i of min(1, (m − j + 1) · p_(j)).
    NaN entries (rows without a test) are kept as NaN and do not count towards m.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * (m - np.arange(m))  # p_(i) × (m − i + 1), i counted from 1
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def paired_randomization(a: Sequence[float], b: Sequence[float], n: int = RANDOMIZATION_DRAWS, seed: int = 0) -> float:
    """Two-sided p-value that the mean of paired per-query scores differs (sign-flip permutation test).

    Query-level: the pairs are queries (values usually averaged over seeds), so seed variance is not seen.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0 or np.allclose(diff, 0):
        return 1.0
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, diff.size))
    return float((np.sum(np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12) + 1) / (n + 1))


def seed_paired_t(a: Mapping[int, float], b: Mapping[int, float]) -> float | None:
    """Two-sided p of a paired t-test over per-seed metric means, pairing runs by seed.

    Seed-level: the pairs are seeds (run-to-run variance is what is tested). None with fewer than
    `MIN_SEEDS_FOR_SEED_TEST` seeds present in both; 1.0 when every paired difference is zero.
    """
    from scipy import stats

    common = sorted(set(a) & set(b))
    if len(common) < MIN_SEEDS_FOR_SEED_TEST:
        return None
    x = np.array([a[s] for s in common], dtype=float)
    y = np.array([b[s] for s in common], dtype=float)
    diff = x - y
    if np.allclose(diff, 0):
        return 1.0
    if np.allclose(diff, diff[0]):
        return 0.0  # identical non-zero differences: t is infinite
    return float(stats.ttest_rel(x, y).pvalue)
