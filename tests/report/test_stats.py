"""Report statistics: Student-t intervals, Holm–Bonferroni, the paired tests, and what each output file says."""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from gemkr_lab.report import stats, table
from gemkr_lab.sweep.grid import GridSweep

T_975_1 = 12.706204736  # t(0.975, 1 df), from tables
T_975_2 = 4.302652730  # t(0.975, 2 df)


def test_t_interval_for_two_seeds_is_12_7_standard_errors():
    values = np.array([94.2, 98.6])
    s = values.std(ddof=1)
    assert stats.t_half_width(values) == pytest.approx(T_975_1 * s / np.sqrt(2), rel=1e-9)
    assert stats.t_half_width(values) / (1.96 * s / np.sqrt(2)) == pytest.approx(6.483, abs=1e-3)
    low, high = stats.t_interval(values)
    assert (low, high) == pytest.approx((96.4 - T_975_1 * s / np.sqrt(2), 96.4 + T_975_1 * s / np.sqrt(2)))
    three = np.array([1.0, 2.0, 4.0])
    ratio = stats.t_half_width(three) / (1.96 * three.std(ddof=1) / np.sqrt(3))
    assert ratio == pytest.approx(T_975_2 / 1.96, rel=1e-9) and ratio == pytest.approx(2.195, abs=1e-3)


def test_one_seed_has_no_interval_and_no_std():
    assert np.isnan(stats.t_half_width([80.0]))
    assert all(np.isnan(stats.t_interval([80.0])))
    assert np.isnan(stats.sample_std([80.0]))
    assert stats.sample_std([1.0, 3.0]) == pytest.approx(np.sqrt(2))  # ddof = 1, not sqrt(1) of ddof = 0


def test_holm_on_a_hand_worked_example():
    # sorted: 0.005, 0.01, 0.03, 0.04 (m = 4) -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> cummax 0.02 0.03 0.06 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 0.5 x 2 = 1.0 caps, 0.6 lifted by cummax
    assert stats.holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])
    assert stats.holm([0.02]) == pytest.approx([0.02])  # one test: nothing to correct
    nan_first = stats.holm([np.nan, 0.01, 0.04])  # an untested row does not count towards m
    assert np.isnan(nan_first[0]) and nan_first[1:] == pytest.approx([0.02, 0.04])
    assert stats.holm([]).size == 0


def test_holm_rejects_exactly_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.random(rng.integers(1, 8)) ** 3
        alpha = 0.05
        rejected = set()
        for i, j in enumerate(np.argsort(p)):  # step-down: stop at the first p_(i) > alpha / (m - i)
            if p[j] > alpha / (len(p) - i):
                break
            rejected.add(int(j))
        assert set(np.flatnonzero(stats.holm(p) <= alpha)) == rejected


def test_holm_matches_statsmodels_when_installed():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(2).random(9) ** 2
    assert stats.holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1])


def test_seed_level_paired_t_pairs_by_seed_and_needs_three_seeds():
    a = {0: 90.0, 1: 85.0, 2: 93.0, 3: 88.0}
    b = {3: 80.0, 1: 83.0, 0: 81.0, 2: 85.0, 7: 10.0}  # other order; seed 7 only in b
    d = np.array([90.0 - 81.0, 85.0 - 83.0, 93.0 - 85.0, 88.0 - 80.0])
    t = d.mean() / (d.std(ddof=1) / np.sqrt(4))
    assert stats.seed_paired_t(a, b) == pytest.approx(2 * sps.t.sf(abs(t), 3), rel=1e-9)
    assert stats.seed_paired_t({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5, 2: 3.0}) is None  # 2 common seeds
    assert stats.seed_paired_t({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0}) == 1.0


def test_paired_randomization_is_the_one_in_stats():
    assert table.paired_randomization is stats.paired_randomization
    rng = np.random.default_rng(0)
    a = rng.random(100)
    assert stats.paired_randomization(a + 0.2, a) == pytest.approx(1 / 100_001)  # no draw reaches it: one round


def test_a_small_case_is_enumerated_and_printed_exactly():
    from fractions import Fraction
    from itertools import product

    eight = stats.paired_randomization_test([1.0] * 8, [0.0] * 8)  # the row: 2 of 256 patterns
    assert eight.exact and eight.p == 2 / 256 and stats.format_p(eight.p, eight) == "0.0078"
    # 6 differing queries, sum 4: |2j - 6| >= 4 for j in {0, 1, 5, 6} plus-signs: (1 + 6 + 6 + 1) / 64
    six = stats.paired_randomization_test([1, 1, 1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 1, 1, 0])
    assert (six.p, six.differing, stats.format_p(six.p, six)) == (14 / 64, 6, "0.2188")
    a = [0.5, 1.0, 1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.5]  # per-query values averaged over two seeds
    b = [0.0, 0.5, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 1.0]
    d = [Fraction(x).limit_denominator() - Fraction(y).limit_denominator() for x, y in zip(a, b, strict=True)]
    d = [x for x in d if x]
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= abs(sum(d))
        for signs in product((1, -1), repeat=len(d))
    )
    test = stats.paired_randomization_test(a, b)
    assert test.exact and test.se == 0 and test.p == hits / 2 ** len(d)
    assert stats.format_p(test.p, test) == f"{hits / 2 ** len(d):.4f}"


def test_a_large_case_holds_its_printed_precision_over_seeds():
    # 60 differing queries, 40 won and 20 lost: exact p = P(|2B - 60| >= 20), B ~ Binomial(60, 1/2)
    a, b = [1.0] * 40 + [0.0] * 20 + [1.0] * 30, [0.0] * 40 + [1.0] * 20 + [1.0] * 30
    exact = sps.binom.cdf(20, 60, 0.5) + sps.binom.sf(39, 60, 0.5)
    within, estimates = 0, []
    for seed in range(20):
        test = stats.paired_randomization_test(a, b, seed=seed)
        assert not test.exact and test.differing == 60
        assert test.se == pytest.approx(np.sqrt(test.p * (1 - test.p) / test.draws))
        shown = stats.format_p(test.p, test)
        value, stated = (float(x) for x in shown.split(" ± "))
        unit = 10.0 ** -test.decimals()
        assert unit >= 4 * test.se and value == round(test.p, test.decimals())  # the last digit is worth 4 SE
        assert stated == float(f"{test.se:.1g}")  # the SE is stated beside it
        assert abs(value - exact) <= 2 * unit
        within += abs(value - exact) <= unit
        estimates.append(test.p)
    assert within >= 18  # ± one unit of the printed value holds for >= 95% of seeds (2 SE)
    assert 0.5 * test.se <= np.std(estimates, ddof=1) <= 1.5 * test.se  # the stated SE is the spread over seeds


# A sweep still running: reference "a" and "b" have 3 seeds, "c" 2 of 3, "d" nothing yet.
SEEDS = {"a": (0, 1, 2), "b": (0, 1, 2), "c": (0, 2), "d": ()}
HIT_RATE = {"a": 0.9, "b": 0.6, "c": 0.85, "d": 0.5}


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for cell, seeds in SEEDS.items():
        for seed in (0, 1, 2):
            if seed not in seeds:
                rows.append({"cell": cell, "seed": seed, "status": "running" if cell == "c" else "pending"})
                continue
            hits = (rng.random(60) < HIT_RATE[cell] + 0.03 * seed).astype(float)
            per_query = {f"q{i}": {"R@5": h, "P@5": h / 5} for i, h in enumerate(hits)}
            rows.append(
                {
                    "cell": cell,
                    "seed": seed,
                    "status": "complete",
                    "R@5": 100 * hits.mean(),
                    "P@5": 20 * hits.mean(),
                    "per_query": per_query,
                    "train_s": 10.0,
                    "gpu_hours": 0.01,
                    "decode_ms_per_query": 2.0,
                }
            )
    return pd.DataFrame(rows)


def _sweep() -> GridSweep:
    paper = {"a": {"R@5": {"value": 90.0, "kind": "paper", "source": "Table 2"}}}
    return GridSweep("s", "runs/s", tuple(SEEDS), (0, 1, 2), reference="a", paper=paper)


def test_table_numbers_use_t_intervals_holm_and_seed_pairs():
    frame = _frame()
    numbers = table.statistics(_sweep(), frame).set_index("cell")
    r5 = {c: frame[(frame.cell == c) & (frame.status == "complete")]["R@5"].to_numpy() for c in SEEDS}
    for cell in ("a", "b", "c"):
        assert numbers.loc[cell, "n seeds"] == len(SEEDS[cell]) and numbers.loc[cell, "N seeds"] == 3
        assert numbers.loc[cell, "R@5 sample std"] == pytest.approx(r5[cell].std(ddof=1))
        half = sps.t.ppf(0.975, len(r5[cell]) - 1) * r5[cell].std(ddof=1) / np.sqrt(len(r5[cell]))
        assert numbers.loc[cell, "R@5 ci95 high (t)"] - numbers.loc[cell, "R@5 mean"] == pytest.approx(half)
        assert numbers.loc[cell, "R@5 mean"] - numbers.loc[cell, "R@5 ci95 low (t)"] == pytest.approx(half)
    assert numbers.loc["d", "n seeds"] == 0 and np.isnan(numbers.loc["d", "R@5 mean"])
    query, query_holm = "p query-level (R@5 vs a)", "p query-level Holm (R@5 vs a)"
    seed, seed_holm = "p seed-level t (R@5 vs a)", "p seed-level t Holm (R@5 vs a)"
    raw = numbers.loc[["b", "c"], query].to_numpy()
    assert np.isnan(numbers.loc["a", query]) and np.isnan(numbers.loc["d", query])  # reference; nothing run
    assert numbers.loc[["b", "c"], query_holm].to_numpy() == pytest.approx(stats.holm(raw))
    assert numbers.loc["c", query_holm] >= numbers.loc["c", query]
    # seed level: only "b" shares 3 seeds with the reference; a family of one is not adjusted
    assert numbers.loc["b", seed] == pytest.approx(sps.ttest_rel(r5["b"], r5["a"]).pvalue)
    assert np.isnan(numbers.loc["c", seed]) and numbers.loc["b", seed_holm] == numbers.loc["b", seed]
    a_mean = numbers.loc["a", "R@5 mean"]
    assert numbers.loc["a", "paper R@5 status"] == table._reproduction(a_mean, 90.0)  # first hand: graded
    assert numbers.loc["a", "paper R@5 kind"] == "paper" and numbers.loc["a", "paper R@5 source"] == "Table 2"


def test_shown_table_of_a_running_sweep():
    shown = table.summarize(_sweep(), _frame()).set_index("cell")
    assert list(shown.seeds) == ["3/3", "3/3", "2/3", "0/3"]
    assert re.fullmatch(r"\d+\.\d ± \d+\.\d", shown.loc["b", "R@5"])
    assert re.fullmatch(r"\[\d+\.\d, \d+\.\d\]", shown.loc["c", "R@5 95% CI (t)"])
    assert shown.loc["d", "R@5"] == "" and shown.loc["d", "p query-level (R@5 vs a)"] == ""
    assert shown.loc["c", "p seed-level t (R@5 vs a)"] == ""  # 2 common seeds: no seed-level test
    assert shown.loc["b", "p seed-level t Holm (R@5 vs a)"] != ""


def test_every_output_file_says_mean_sample_std_and_n_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "collect", lambda sweep: _frame())
    shown = table.write_report(_sweep(), tmp_path)
    for name in ("table.md", "table.tex", "table.html", "table.csv"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "sample std" in text and "n seeds" in text, name
    for name in ("table.md", "table.tex", "table.html"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "mean ± sample std (n seeds)" in text and "Student-t" in text and "Holm" in text, name
        assert "p seed-level t" in text and "p query-level" in text, name
    tex = (tmp_path / "table.tex").read_text(encoding="utf-8")
    assert not re.search(r"(?<!\\)%", tex)  # an unescaped % would comment out the rest of a LaTeX line
    assert "\\caption{" in tex
    csv = pd.read_csv(tmp_path / "table.csv").set_index("cell")
    for column in ("n seeds", "N seeds", "R@5 mean", "R@5 sample std", "R@5 ci95 low (t)", "R@5 ci95 high (t)"):
        assert column in csv, column
    assert {"p query-level (R@5 vs a)", "p query-level Holm (R@5 vs a)", "p seed-level t (R@5 vs a)"} <= set(csv)
    assert csv.loc["c", "n seeds"] == 2 and csv.loc["c", "N seeds"] == 3
    assert shown.loc[2, "seeds"] == "2/3"
    assert (tmp_path / "ablation_r5.png").stat().st_size > 0


def test_plot_error_bars_are_the_t_half_widths():
    frame = _frame()
    fig = table._figure(_sweep(), frame)
    try:
        ax = fig.axes[0]
        from matplotlib.container import BarContainer

        (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
        segments = bars.errorbar.lines[2][0].get_segments()
        drawn = [(seg[1][1] - seg[0][1]) / 2 if len(seg) else None for seg in segments]
        expected = []
        for cell in SEEDS:
            values = frame[(frame.cell == cell) & (frame.status == "complete")]["R@5"].to_numpy(dtype=float)
            expected.append(
                sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0
            )
        assert drawn[:3] == pytest.approx(expected[:3]) and drawn[3] is None  # "d" has no runs: no bar
        c = frame[(frame.cell == "c") & (frame.status == "complete")]["R@5"].to_numpy(dtype=float)
        assert drawn[2] / (1.96 * c.std(ddof=1) / np.sqrt(2)) == pytest.approx(T_975_1 / 1.96)  # not 1.96 SE
        assert "Student-t 95% CI" in ax.get_title()
        assert [t.get_text() for t in ax.get_xticklabels()][2] == "c\n(n=2)"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert list(table.plot_data(_sweep(), frame)["ci95 half (t)"][:3]) == pytest.approx(expected[:3])


def test_clue_length_rows_show_the_realized_target_length(tmp_path):
    from gemkr_lab.kb.storage import write_json

    realized = {"a": 4.83, "b": 5.65, "c": 12.0, "d": None}
    for cell, mean in realized.items():  # each cell's prepared data, as `prepare` writes it
        if mean is not None:
            (tmp_path / cell).mkdir()
            write_json(tmp_path / cell / "clue_stats.json", {"mean_length": mean, "rows": 384})
    assert table._target_mean({"prepared": {"path": str(tmp_path / "b")}}) == 5.65
    assert table._target_mean({"prepared": {"path": str(tmp_path / "nothing")}}) is None
    frame = _frame()
    frame["clue_target_mean"] = [
        table._target_mean({"prepared": {"path": str(tmp_path / c)}}) if s == "complete" else None
        for c, s in zip(frame.cell, frame.status, strict=True)
    ]
    numbers = table.statistics(_sweep(), frame).set_index("cell")
    assert numbers[table.TARGET_LENGTH].to_dict() == pytest.approx(
        {"a": 4.83, "b": 5.65, "c": 12.0, "d": np.nan}, nan_ok=True
    )
    shown = table.summarize(_sweep(), frame).set_index("cell")
    assert list(shown[table.TARGET_LENGTH]) == ["4.83", "5.65", "12.00", ""]
    assert any(n.startswith(table.TARGET_LENGTH) for n in shown.attrs["notes"])
    frame["clue_target_mean"] = [4.83 if s == "complete" else None for s in frame.status]  # one length: no column
    assert table.TARGET_LENGTH not in table.summarize(_sweep(), frame)


def test_answer_based_rows_show_the_other_match_beside_the_headline():
    """#23: lowercase relevance is shown beside the case-sensitive headline (from metrics.json's means_by_match)."""
    metrics = {
        "match": "exact",
        "means_by_match": {"exact": {"P@5": 0.1, "R@5": 0.4}, "lower": {"P@5": 0.12, "R@5": 0.5}},
    }
    assert table._other_match(metrics) == pytest.approx({"P@5 lowercase": 12.0, "R@5 lowercase": 50.0})
    assert table._other_match({**metrics, "match": "lower"}) == pytest.approx(
        {"P@5 case-sensitive": 10.0, "R@5 case-sensitive": 40.0}
    )
    assert table._other_match({"means": {}}) == {}  # gold relevance: nothing beside
    frame = _frame()
    frame["R@5 lowercase"] = [
        r + 2.0 if s == "complete" else None for r, s in zip(frame["R@5"], frame.status, strict=True)
    ]
    numbers = table.statistics(_sweep(), frame).set_index("cell")
    lower = frame[(frame.cell == "b") & (frame.status == "complete")]["R@5 lowercase"].to_numpy()
    assert numbers.loc["b", "R@5 lowercase mean"] == pytest.approx(lower.mean())
    assert numbers.loc["b", "R@5 lowercase sample std"] == pytest.approx(lower.std(ddof=1))
    shown = table.summarize(_sweep(), frame).set_index("cell")
    assert shown.loc["b", "R@5 lowercase"] == f"{lower.mean():.1f} ± {lower.std(ddof=1):.1f}"
    assert shown.loc["d", "R@5 lowercase"] == ""
    assert any(n.startswith("P@5 / R@5 lowercase") for n in shown.attrs["notes"])
    assert "R@5 lowercase" not in table.summarize(_sweep(), _frame())  # gold relevance: no column, no note
