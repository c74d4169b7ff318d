"""Ablation tables from run directories.

Mean ± sample std over the complete seeds with a Student-t 95% interval, the delta to the reference row, two
paired tests against it (over queries, and over seeds when ≥ 3 are common) with Holm–Bonferroni adjusted p
beside the raw ones, the published numbers with their source and a reproduction status, and cost columns. Every
output file says what its numbers are. Works on a sweep still running: missing seeds show as `n/N` and are left
out of the means. The statistics themselves live in `gemkr_lab.report.stats`.

Published numbers (`gemkr_lab.config.published`) sit on the row of the variant they came from and are graded
there only when first hand (the paper's table, an official file): OK / OK-ish / FAIL. A second-hand or
unsourced number shows its distance and never FAILs. The rows named `beside` show the same number with their
distance to it, not graded. Each number's source is a numbered note under the table.
"""

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from gemkr_lab.config.metric_names import REPORTED
from gemkr_lab.config.published import FIRST_HAND, KIND_NAMES, Published, PublishedError, read_published
from gemkr_lab.data.prepare import clue_targets_summary
from gemkr_lab.kb.storage import write_json, write_text
from gemkr_lab.metrics.relevance import MATCH_NAMES
from gemkr_lab.numerics import numerics_key, numerics_note
from gemkr_lab.report.output import check_out, report_directory
from gemkr_lab.report.stats import (
    EXACT_UP_TO,
    MAX_DRAWS,
    MIN_SEEDS_FOR_SEED_TEST,
    RANDOMIZATION_DRAWS,
    PairedTest,
    format_p,
    holm,
    paired_randomization,  # noqa: F401 (re-exported: the tests and callers use it from here)
    paired_randomization_test,
    sample_std,
    seed_paired_t,
    t_half_width,
    t_interval,
)
from gemkr_lab.run.identity import read_manifest, read_metrics
from gemkr_lab.sweep.grid import GridSweep, current_run, failed_for_good
from gemkr_lab.sweep.slurm import slurm_note

METRICS = REPORTED
TOLERANCE = {"ok": 1.0, "ok-ish": 3.0}  # points: |ours - paper| within these -> OK / OK-ish, else FAIL
EXPLORER_LINK = (
    '<p class="explorer"><a href="explore/index.html">Clue explorer</a>: per query, the clues, ranked passages and '
    "object crops of every cell (written by <code>gemkr-lab explore SWEEP --out REPORT/explore</code>).</p>\n"
)


def collect(sweep: GridSweep) -> pd.DataFrame:
    """One row per (cell, seed) with its status, mean metrics (in %), costs and per-query values.

    Only the run of the sweep's current config counts (`current_run`): runs of a cell made with other
    overrides, presets or prepared data stay on disk but are never reported as this cell.
    """
    rows = []
    for cell in sweep.cells:
        for seed in sweep.seeds:
            out = current_run(sweep, cell, seed)
            manifest = (read_manifest(out) if out is not None else None) or {}
            row = {"cell": cell, "seed": seed, "status": manifest.get("status", "pending")}
            metrics = read_metrics(out) if row["status"] == "complete" else None
            if metrics is not None:
                row |= {m: 100 * metrics["means"][m] for m in METRICS if m in metrics["means"]}
                row |= _other_match(metrics)
                row["per_query"] = metrics["per_query"]
                row["train_s"] = manifest.get("train_seconds")
                row["gpu_hours"] = (manifest.get("train_seconds") or 0) * len(manifest["hardware"]["gpus"]) / 3600
                row["decode_ms_per_query"] = manifest.get("decode_ms_per_query")
                row["numerics"] = numerics_key(manifest.get("hardware"))  # a note when runs differ in it
                row["clue_target_mean"] = _target_mean(manifest)
            rows.append(row)
    return pd.DataFrame(rows)


OTHER_MATCH_METRICS = ("P@5", "R@5")
"""The metrics shown again under the other answer match (answer-based relevance only)."""


def _other_match(metrics: dict) -> dict[str, float]:
    """`{"R@5 lowercase": …}` (or `case-sensitive`): the run's metrics judged with the match it is not headlined by."""
    by_match, headline = metrics.get("means_by_match"), metrics.get("match")
    if not by_match or headline not in by_match:
        return {}
    other = next(m for m in by_match if m != headline)
    return {f"{m} {MATCH_NAMES[other]}": 100 * by_match[other][m] for m in OTHER_MATCH_METRICS if m in by_match[other]}


def other_match_columns(frame: pd.DataFrame) -> list[str]:
    """The other-match metric columns the runs carry (none for gold relevance)."""
    return [f"{m} {name}" for m in OTHER_MATCH_METRICS for name in MATCH_NAMES.values() if f"{m} {name}" in frame]


def _target_mean(manifest: dict) -> float | None:
    """The realized mean length of the clue targets the run's prepared data holds (None when unknown)."""
    path = (manifest.get("prepared") or {}).get("path")
    targets = clue_targets_summary(path) if path else None
    return (targets or {}).get("mean_length")


TARGET_LENGTH = "clue target tokens (mean)"
"""Shown when the cells trained on targets of different lengths (the clue-length rows): what each row measured."""


def _per_query(frame: pd.DataFrame, cell: str, metric: str) -> pd.Series:
    """A cell's per-query values averaged over its complete seeds."""
    runs = frame[(frame.cell == cell) & (frame.status == "complete")]
    series = [pd.Series({q: v[metric] for q, v in pq.items()}) for pq in runs.per_query]
    return pd.concat(series, axis=1).mean(axis=1) if series else pd.Series(dtype=float)


COSTS = ("train s", "GPU h", "decode ms/q")


def _per_seed(frame: pd.DataFrame, cell: str, metric: str) -> dict[int, float]:
    """A cell's metric (in %) per complete seed; the seed-level test pairs these by seed."""
    runs = frame[(frame.cell == cell) & (frame.status == "complete")]
    if metric not in runs:
        return {}
    runs = runs[runs[metric].notna()]
    return dict(zip(runs.seed.astype(int), runs[metric].astype(float), strict=True))


def p_columns(metric: str, ref: str) -> dict[str, str]:
    """Names of the p columns: query-level and seed-level tests, each raw and Holm-adjusted."""
    return {
        "query": f"p query-level ({metric} vs {ref})",
        "query holm": f"p query-level Holm ({metric} vs {ref})",
        "query se": f"p query-level SE ({metric} vs {ref})",
        "seed": f"p seed-level t ({metric} vs {ref})",
        "seed holm": f"p seed-level t Holm ({metric} vs {ref})",
    }


def _reproduction(ours: float, paper: float) -> str:
    gap = abs(ours - paper)
    return "OK" if gap <= TOLERANCE["ok"] else "OK-ish" if gap <= TOLERANCE["ok-ish"] else "FAIL"


def reproduction_status(ours: float, published: Published) -> str:
    """OK / OK-ish / FAIL for a first-hand number; for another, its distance, marked as not graded."""
    if published.first_hand:
        return _reproduction(ours, published.value)
    gap = abs(ours - published.value)
    within = next((f"within {t:g}" for t in TOLERANCE.values() if gap <= t), f"off by {gap:.1f}")
    return f"{'2nd-hand' if published.kind == 'second-hand' else published.kind}: {within}, not graded"


def _published(sweep: GridSweep) -> dict:
    """The sweep's published numbers, checked; an error names the sweep."""
    try:
        return read_published(sweep.paper)
    except PublishedError as exc:
        raise PublishedError(f"sweep {sweep.name}: {exc}") from None


def published_rows(sweep: GridSweep) -> dict[str, dict[str, tuple[Published, str]]]:
    """Per cell and metric, the published number its row shows and the cell it was published for.

    A cell shows its own numbers; a cell named `beside` another shows that one's (its own win where both are).
    """
    rows: dict[str, dict[str, tuple[Published, str]]] = {}
    entries = _published(sweep)
    for cell, entry in entries.items():
        for m, pub in entry.numbers.items():
            rows.setdefault(cell, {})[m] = (pub, cell)
    for cell, entry in entries.items():
        for other in entry.beside:
            for m, pub in entry.numbers.items():
                rows.setdefault(other, {}).setdefault(m, (pub, cell))
    return rows


def _sources(sweep: GridSweep) -> tuple[dict[tuple[str, str], int], list[str]]:
    """Numbered notes naming each published number's source: ({(cell, metric): note number}, note lines).

    Numbers of one cell with the same source, kind and note share a note.
    """
    refs: dict[tuple[str, str], int] = {}
    groups: dict[tuple, list[tuple[str, Published]]] = {}
    entries = _published(sweep)
    for cell, entry in entries.items():
        for m, pub in entry.numbers.items():
            groups.setdefault((cell, pub.source, pub.kind, pub.note), []).append((m, pub))
    lines = []
    for i, ((cell, source, kind, note), numbers) in enumerate(groups.items(), start=1):
        for m, _ in numbers:
            refs[cell, m] = i
        entry = entries[cell]
        what = ", ".join(f"{m} {pub.value:g}" for m, pub in numbers)
        graded = "first hand, graded" if kind in FIRST_HAND else "not graded"
        if kind == "unsourced":
            line = f"[{i}] {what}: published for {cell}. Source not given (the old flat form; {graded})."
        else:
            line = f"[{i}] {what}: published for {cell}. Source ({KIND_NAMES[kind]}; {graded}): {source}."
        if cell not in sweep.cells:
            line += " That cell is not in this sweep, so nothing is compared with it."
        if entry.beside:
            missing = [b for b in entry.beside if b not in sweep.cells]
            line += f" Shown beside (distance only, not graded): {', '.join(entry.beside)}."
            if missing:
                line += f" Not in this sweep: {', '.join(missing)}."
        for caveat in (n for n in (entry.note, note) if n):
            line += f" Note: {caveat}"
        lines.append(line)
    return refs, lines


def statistics(sweep: GridSweep, frame: pd.DataFrame, significance_metric: str = "R@5") -> pd.DataFrame:
    """The ablation table in numbers, one row per cell (written as table.csv).

    Columns: `n seeds` (complete, used) and `N seeds` (planned); per metric (in %) `<m> mean`,
    `<m> sample std` (ddof 1), `<m> ci95 low (t)` and `<m> ci95 high (t)` (Student t, n − 1 df), `Δ<m>` (mean
    minus the reference's), `paper <m>` (a published number), `paper <m> status` (see `reproduction_status`; on
    a row shown beside another variant's number: not graded), `paper <m> kind`, `paper <m> source` and `paper <m>
    of` (the cell it was published for); the p columns of `p_columns` (raw, and Holm adjusted across the ablation
    rows of this table); costs.
    """
    ref = sweep.reference or sweep.cells[0]
    done = frame[frame.status == "complete"]
    ref_runs = done[done.cell == ref]
    cols = p_columns(significance_metric, ref)
    published = published_rows(sweep)
    rows = []
    for cell in sweep.cells:
        runs = done[done.cell == cell]
        row = {"cell": cell, "n seeds": len(runs), "N seeds": len(sweep.seeds)}
        for m in METRICS:
            values = runs[m].dropna().to_numpy(dtype=float) if m in runs else np.empty(0)
            if values.size:
                low, high = t_interval(values)
                row |= {
                    f"{m} mean": float(values.mean()),
                    f"{m} sample std": sample_std(values),
                    f"{m} ci95 low (t)": low,
                    f"{m} ci95 high (t)": high,
                }
                ref_values = ref_runs[m].dropna() if m in ref_runs else pd.Series(dtype=float)
                if cell != ref and len(ref_values):
                    row[f"Δ{m}"] = float(values.mean() - ref_values.mean())
            if m in published.get(cell, {}):
                pub, of = published[cell][m]
                row |= {f"paper {m}": pub.value, f"paper {m} kind": pub.kind, f"paper {m} source": pub.source}
                row[f"paper {m} of"] = of
                if of != cell:
                    row[f"paper {m} status"] = f"not graded: published for {of}"
                elif values.size:
                    row[f"paper {m} status"] = reproduction_status(float(values.mean()), pub)
        if cell != ref and len(runs):
            a, b = _per_query(frame, cell, significance_metric), _per_query(frame, ref, significance_metric)
            common = a.index.intersection(b.index)
            if len(common):
                test = paired_randomization_test(a[common], b[common])
                row[cols["query"]], row[cols["query se"]] = test.p, test.se  # SE 0: exact
            p_seed = seed_paired_t(
                _per_seed(frame, cell, significance_metric), _per_seed(frame, ref, significance_metric)
            )
            if p_seed is not None:
                row[cols["seed"]] = p_seed
        for c in other_match_columns(runs):
            values = runs[c].dropna().to_numpy(dtype=float)
            if values.size:
                row |= {f"{c} mean": float(values.mean()), f"{c} sample std": sample_std(values)}
        if len(runs) and "clue_target_mean" in runs and runs.clue_target_mean.notna().any():
            row[TARGET_LENGTH] = float(runs.clue_target_mean.dropna().mean())
        if len(runs):
            row["train s"] = runs.train_s.mean()
            row["GPU h"] = runs.gpu_hours.sum()
            row["decode ms/q"] = runs.decode_ms_per_query.mean()
        rows.append(row)
    table = pd.DataFrame(rows)
    for raw, adjusted in (("query", "query holm"), ("seed", "seed holm")):
        if cols[raw] in table:
            table[cols[adjusted]] = holm(table[cols[raw]].to_numpy(dtype=float))
    order = ["cell", "n seeds", "N seeds"]
    if TARGET_LENGTH in table and table[TARGET_LENGTH].dropna().round(6).nunique() > 1:
        order.append(TARGET_LENGTH)  # only where the rows' training targets differ in length
    for m in METRICS:
        per_metric = ("mean", "sample std", "ci95 low (t)", "ci95 high (t)")
        order += [
            c
            for c in [f"{m} {k}" for k in per_metric]
            + [f"Δ{m}"]
            + [f"paper {m}{k}" for k in ("", " status", " kind", " source", " of")]
            if c in table
        ]
    order += [f"{c} {k}" for c in other_match_columns(frame) for k in ("mean", "sample std") if f"{c} mean" in table]
    order += [c for c in cols.values() if c in table] + [c for c in COSTS if c in table]
    table = table[order]
    table.attrs["hardware notes"] = _mixed_numerics(frame)  # shown under the table, not a column of table.csv
    return table


def notes(sweep: GridSweep, significance_metric: str = "R@5", metrics: tuple[str, ...] = METRICS) -> list[str]:
    """What the shown table's numbers are; written under it in every output file."""
    ref, m = sweep.reference or sweep.cells[0], significance_metric
    return [
        f"{', '.join(metrics)} in %: mean ± sample std (n seeds): the standard deviation with ddof = 1 over the "
        "n complete seeds of N planned (column seeds = n/N; 'n/a' with one seed); seeds still missing are left out.",
        "95% CI (t): Student-t 95% confidence interval of the mean over seeds, "
        "mean ± t(0.975, n − 1) · s / √n (none with one seed).",
        f"Δ: difference of means to the reference row {ref}.",
        f"p query-level: two-sided paired sign-flip randomization test on per-query {m}, each query averaged over "
        f"the complete seeds; it does not see seed-to-seed variance. Exact (all 2^k sign patterns) when at most "
        f"{EXACT_UP_TO} queries differ, printed to 4 decimals; otherwise Monte Carlo in rounds of "
        f"{RANDOMIZATION_DRAWS:,} draws (up to {MAX_DRAWS:,}) until p's leading digit is sure, printed as p ± its "
        "standard error with the decimals whose last unit is at least 4 SE (SE column in table.csv; 0 = exact).",
        f"p seed-level t: two-sided paired t-test over per-seed {m} means, pairing runs by seed "
        f"(only with ≥ {MIN_SEEDS_FOR_SEED_TEST} seeds complete in both rows).",
        "Holm: Holm–Bonferroni adjusted p across the ablation rows of this table tested against the reference "
        "(raw p beside it).",
        f"paper: a published number [source note], on the row of the variant it came from. Only a first-hand "
        f"number (the paper's own table, or a file of the official release) is graded: |ours − paper| ≤ "
        f"{TOLERANCE['ok']:g} point OK, ≤ {TOLERANCE['ok-ish']:g} OK-ish, else FAIL. A second-hand or unsourced "
        "number shows its distance and is never graded; a row shown beside another variant's number shows "
        "Δ (ours − published), not graded.",
        *_sources(sweep)[1],
        *_given_up(sweep),
        *slurm_note(sweep),
    ]


def _given_up(sweep: GridSweep) -> list[str]:
    """One note per cell with seeds whose retries are exhausted (`<root>/failed.json`, written by the sweep)."""
    return [
        f"Failed for good (retries exhausted; `gemkr-lab sweep --retry-failed` queues them again): {cell}: "
        + "; ".join(f"seed {s['seed']} after {s['attempts']} attempts: {s['error']}" for s in seeds)
        for cell, seeds in failed_for_good(sweep).items()
    ]


def _mixed_numerics(frame: pd.DataFrame) -> list[str]:
    """A note when the complete runs come from different CPUs, torch CPU kernels, numerics modes or GPUs."""
    runs: dict[tuple, list[str]] = {}
    if "numerics" in frame:
        for row in frame[frame.status == "complete"].itertuples():
            if isinstance(row.numerics, tuple):
                runs.setdefault(row.numerics, []).append(f"{row.cell} seed {row.seed}")
    note = numerics_note(runs)
    return [note] if note else []


def _num(x, spec: str) -> str:
    return "" if x is None or pd.isna(x) else format(x, spec)


def _shown(sweep: GridSweep, numbers: pd.DataFrame, significance_metric: str = "R@5") -> pd.DataFrame:
    """The table as shown (Markdown, LaTeX, HTML, console) from `statistics`; notes in `attrs['notes']`."""
    shown = pd.DataFrame({"cell": numbers["cell"]})
    refs, _ = _sources(sweep)
    shown["seeds"] = [f"{n}/{total}" for n, total in zip(numbers["n seeds"], numbers["N seeds"], strict=True)]
    if TARGET_LENGTH in numbers:
        shown[TARGET_LENGTH] = [_num(x, ".2f") for x in numbers[TARGET_LENGTH]]
    col = lambda name: numbers[name] if name in numbers else pd.Series([np.nan] * len(numbers))  # noqa: E731
    for m in METRICS:
        if f"{m} mean" in numbers:
            shown[m] = [
                "" if pd.isna(mu) else f"{mu:.1f} ± {'n/a' if pd.isna(s) else f'{s:.1f}'}"
                for mu, s in zip(numbers[f"{m} mean"], numbers[f"{m} sample std"], strict=True)
            ]
            shown[f"{m} 95% CI (t)"] = [
                "" if pd.isna(lo) else f"[{lo:.1f}, {hi:.1f}]"
                for lo, hi in zip(numbers[f"{m} ci95 low (t)"], numbers[f"{m} ci95 high (t)"], strict=True)
            ]
        if f"Δ{m}" in numbers:
            shown[f"Δ{m}"] = [_num(x, "+.1f") for x in numbers[f"Δ{m}"]]
        if f"paper {m}" in numbers:
            shown[f"paper {m}"] = [
                _shown_paper(p, st, of, cell, mu, refs.get((of, m)))
                for cell, p, st, of, mu in zip(
                    numbers["cell"],
                    numbers[f"paper {m}"],
                    col(f"paper {m} status"),
                    col(f"paper {m} of"),
                    col(f"{m} mean"),
                    strict=True,
                )
            ]
    other = [f"{m} {n}" for m in OTHER_MATCH_METRICS for n in MATCH_NAMES.values() if f"{m} {n} mean" in numbers]
    for c in other:
        shown[c] = [
            "" if pd.isna(mu) else f"{mu:.1f} ± {'n/a' if pd.isna(s) else f'{s:.1f}'}"
            for mu, s in zip(numbers[f"{c} mean"], numbers[f"{c} sample std"], strict=True)
        ]
    cols = p_columns(significance_metric, sweep.reference or sweep.cells[0])
    for key, name in cols.items():
        if key == "query se" or name not in numbers:
            continue  # a Monte Carlo p shows its SE beside it
        if key.startswith("query") and cols["query se"] in numbers:
            raw, se = numbers[cols["query"]], numbers[cols["query se"]]
            shown[name] = [_shown_p(p, r, e) for p, r, e in zip(numbers[name], raw, se, strict=True)]
        else:
            shown[name] = [_num(x, ".4f") for x in numbers[name]]
    for name, spec in zip(COSTS, (".0f", ".2f", ".1f"), strict=True):
        if name in numbers:
            shown[name] = [_num(x, spec) for x in numbers[name]]
    shown.attrs["notes"] = notes(sweep, significance_metric, tuple(m for m in METRICS if m in shown) or METRICS)
    if any(c in shown for c in other):
        shown.attrs["notes"].append(
            "P@5 / R@5 lowercase (or case-sensitive): the same runs judged with the other answer match: relevance "
            "is answer-based, the headline columns use the dataset's own match (GeMKR's case-sensitive substring "
            "test on OKVQA-GS112K), the other is a variant reported in the field (mean ± sample std over seeds)."
        )
    if TARGET_LENGTH in numbers:
        shown.attrs["notes"].append(
            f"{TARGET_LENGTH}: the realized mean length of the clue targets each row trained on (its prepared "
            "data's clue_stats.json), shown because the rows' targets differ in length."
        )
    shown.attrs["notes"] += numbers.attrs.get("hardware notes", [])
    return shown


def _shown_p(p, raw, se) -> str:
    """A query-level p (raw, or Holm-adjusted from `raw`) with the decimals its test supports (`format_p`)."""
    if pd.isna(p):
        return ""
    if pd.isna(se) or se == 0:
        return format_p(p)
    scale = p / raw if raw > 0 else 1.0  # Holm's factor scales the SE too
    return format_p(p, PairedTest(raw, se, RANDOMIZATION_DRAWS, 0), scale)


def _shown_paper(value, status, of, cell: str, mean, ref: int | None) -> str:
    """'49.1 (OK) [1]' on the row it was published for; '49.1 of official-code [1]: Δ −2.1' on a row beside."""
    if pd.isna(value):
        return ""
    note = f" [{ref}]" if ref is not None else ""
    if isinstance(of, str) and of != cell:
        delta = "" if pd.isna(mean) else f": Δ {mean - value:+.1f}"
        return f"{value:.1f} of {of}{note}{delta}"
    return f"{value:.1f}{note}" if pd.isna(status) else f"{value:.1f} ({status}){note}"


def summarize(sweep: GridSweep, frame: pd.DataFrame, significance_metric: str = "R@5") -> pd.DataFrame:
    """The ablation table as shown, one row per cell; what its numbers are is in `table.attrs['notes']`."""
    return _shown(sweep, statistics(sweep, frame, significance_metric), significance_metric)


def _latex_escape(text: str) -> str:
    return "".join({"%": r"\%", "&": r"\&", "#": r"\#", "_": r"\_", "$": r"\$"}.get(c, c) for c in text)


def write_report(sweep: GridSweep, out: str | Path, overwrite: bool = False) -> pd.DataFrame:
    """Write the ablation table, its bar plot and the raw results into `out`, replaced whole (`report.output`).

    Markdown, LaTeX and HTML carry the shown table with its notes (what ±, the interval and each p are); the CSV
    carries the numbers in explicit columns (mean, sample std, t interval, n seeds, raw and Holm-adjusted p).
    Files of an earlier report in `out` that this one does not write are gone (its `explore/` stays); a folder
    that is not a report is refused unless `overwrite`.
    """
    out = Path(out)
    check_out(out, overwrite)  # before any work
    frame = collect(sweep)
    numbers = statistics(sweep, frame)
    table = _shown(sweep, numbers)
    lines = table.attrs["notes"]
    writers = {
        "table.md": lambda: (
            table.to_markdown(index=False, disable_numparse=True) + "\n\n" + "\n".join(f"- {x}" for x in lines) + "\n"
        ),
        "table.tex": lambda: table.to_latex(index=False, escape=True, caption=_latex_escape(" ".join(lines))),
        "table.html": lambda: (
            table.to_html(index=False)
            + '\n<ul class="notes">\n'
            + "".join(f"<li>{html.escape(x)}</li>\n" for x in lines)
            + "</ul>\n"
            + EXPLORER_LINK
        ),
        "table.csv": lambda: numbers.to_csv(index=False),
    }
    raw = frame.drop(columns=["per_query"], errors="ignore")
    with report_directory(out, sweep=sweep.name, kind="grid", overwrite=overwrite) as stage:
        for name, render in writers.items():
            write_text(stage / name, render())
        write_json(stage / "runs.json", {"sweep": sweep.name, "runs": json.loads(raw.to_json(orient="records"))})
        _plot(sweep, frame, stage / "ablation_r5.png")
    return table


def plot_data(sweep: GridSweep, frame: pd.DataFrame, metric: str = "R@5") -> pd.DataFrame:
    """Per cell: n complete seeds, mean and the Student-t 95% half-width drawn as its error bar (0 for n < 2)."""
    done = frame[frame.status == "complete"]
    rows = []
    for cell in sweep.cells:
        values = done[done.cell == cell][metric].dropna().to_numpy(dtype=float) if metric in done else np.empty(0)
        half = t_half_width(values)
        rows.append(
            {
                "cell": cell,
                "n": values.size,
                "mean": float(values.mean()) if values.size else np.nan,
                "ci95 half (t)": 0.0 if np.isnan(half) else half,
            }
        )
    return pd.DataFrame(rows)


def _figure(sweep: GridSweep, frame: pd.DataFrame, metric: str = "R@5"):
    """The bar plot of `plot_data` (None when nothing is complete)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = plot_data(sweep, frame, metric)
    if not data.n.any():
        return None
    fig, ax = plt.subplots(figsize=(1.4 * len(sweep.cells) + 2, 3.4))
    ax.bar(range(len(data)), data["mean"], yerr=data["ci95 half (t)"], capsize=4, color="#4c72b0")
    labels = [f"{c.split('/')[-1]}\n(n={n})" for c, n in zip(data.cell, data.n, strict=True)]
    ax.set_xticks(range(len(data)), labels, rotation=20, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{sweep.name}: mean over n seeds, Student-t 95% CI\n(t(0.975, n−1)·s/√n; no error bar for n = 1)")
    fig.tight_layout()
    return fig


def _plot(sweep: GridSweep, frame: pd.DataFrame, path: Path, metric: str = "R@5") -> None:
    import matplotlib.pyplot as plt

    fig = _figure(sweep, frame, metric)
    if fig is None:
        return
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
