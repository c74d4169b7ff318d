"""Statistics of ablation reports: t intervals, Holm–Bonferroni, paired tests over queries and over seeds.

Seeds are few (2–5), so intervals use Student's t with n − 1 degrees of freedom, never the normal 1.96: with
2 seeds t(0.975, 1) = 12.706 and the interval is 6.48× wider than 1.96 standard errors.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
MIN_SEEDS_FOR_SEED_TEST = 3
RANDOMIZATION_DRAWS = 100_000


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


MAX_DRAWS = 1_000_000
"""Monte Carlo draws stop here even when p's leading digit is not yet certain (a p near 0 with many queries)."""
EXACT_UP_TO = 20
"""Paired randomization is exact (all 2^k sign patterns) up to this many queries whose scores differ."""


@dataclass(frozen=True)
class PairedTest:
    """A paired randomization test's p-value and how precise it is."""

    p: float
    se: float
    """Monte Carlo standard error of `p` (0 when exact)."""
    draws: int | None
    """Random sign patterns drawn; None when every pattern was enumerated (exact)."""
    differing: int
    """Queries whose paired scores differ (the others cannot change the statistic)."""

    @property
    def exact(self) -> bool:
        """Whether every sign pattern was enumerated."""
        return self.draws is None

    def decimals(self, scale: float = 1.0) -> int:
        """Decimals `p` (times `scale`, e.g. Holm's factor) can be printed with.

        4 when exact; for a Monte Carlo p the most (at most 4) whose last unit is at least 4 standard errors, so
        that ± half a unit covers 2 SE.
        """
        if self.exact or self.se == 0:
            return 4
        return int(min(4, max(0, math.floor(-math.log10(4 * self.se * scale)))))


def paired_randomization_test(
    a: Sequence[float], b: Sequence[float], n: int = RANDOMIZATION_DRAWS, seed: int = 0
) -> PairedTest:
    """Two-sided paired sign-flip test that the mean of paired per-query scores differs.

    Query-level: the pairs are queries (values usually averaged over seeds), so seed variance is not seen. Only
    queries whose scores differ count (flipping a zero difference changes nothing). With at most `EXACT_UP_TO`
    of them every one of the 2^k sign patterns is enumerated and p is exact: the share of patterns whose |sum|
    reaches the observed one. Otherwise rounds of `n` random patterns, until the standard error lets p's leading
    digit be printed (`PairedTest.decimals`) or `MAX_DRAWS` are drawn: p = (hits + 1) / (draws + 1), with its SE.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = diff[~np.isclose(diff, 0)]
    k = diff.size
    if k == 0:
        return PairedTest(1.0, 0.0, None, 0)
    observed = abs(diff.sum()) - 1e-9 * max(1.0, abs(diff).sum())
    if k <= EXACT_UP_TO:
        hits, total = 0, 1 << k
        chunk = 1 << min(k, 16)
        bits = np.arange(k)
        for start in range(0, total, chunk):
            patterns = np.arange(start, min(start + chunk, total))[:, None]
            signs = 1.0 - 2.0 * ((patterns >> bits) & 1)
            hits += int(np.sum(np.abs(signs @ diff) >= observed))
        return PairedTest(hits / total, 0.0, None, k)
    rng = np.random.default_rng(seed)
    total, rows = diff.sum(), max(1, 2_000_000 // k)  # ~2M signs at a time
    hits = draws = 0
    while True:  # rounds of n draws until the leading digit of p is printed (or MAX_DRAWS)
        for start in range(0, n, rows):
            m = min(rows, n - start)
            flips = np.unpackbits(np.frombuffer(rng.bytes((m * k + 7) // 8), np.uint8))[: m * k].reshape(m, k)
            hits += int(np.sum(np.abs(total - 2 * (flips @ diff)) >= observed))  # flipped sum: total - 2 x flipped
        draws += n
        p = (hits + 1) / (draws + 1)
        test = PairedTest(p, math.sqrt(p * (1 - p) / draws), draws, k)
        below = p + 2 * test.se < 1e-4  # printed as "< 0.0001" whatever more draws say
        if below or draws + n > MAX_DRAWS or 10 ** -test.decimals() <= 10 ** math.floor(math.log10(p)):
            return test


def paired_randomization(a: Sequence[float], b: Sequence[float], n: int = RANDOMIZATION_DRAWS, seed: int = 0) -> float:
    """The p-value of `paired_randomization_test`."""
    return paired_randomization_test(a, b, n, seed).p


def format_p(p: float, test: PairedTest | None = None, scale: float = 1.0) -> str:
    """A p-value printed with the decimals its test supports ('' for none); Monte Carlo ones state their SE."""
    if p is None or np.isnan(p):
        return ""
    if test is None or test.exact:
        return f"{p:.4f}" if p >= 1e-4 or p == 0 else f"{p:.1e}"
    d = test.decimals(scale)
    if round(p, d) == 0:
        return f"< {10**-d:.{d}f}"
    return f"{p:.{d}f} ± {test.se * scale:.1g}"


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
