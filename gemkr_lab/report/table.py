"""Ablation tables from run directories.

Mean ± std over seeds, the delta to the reference row, paired significance over queries, the paper's numbers
with a reproduction status, and cost columns. Works on a sweep still running: missing seeds show as `n/N`
and are left out of the means.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from gemkr_lab.kb.storage import write_json, write_text
from gemkr_lab.run.cell import read_manifest, run_dir
from gemkr_lab.sweep.grid import GridSweep

METRICS = ("P@5", "R@5", "R@10", "MRR@10")
TOLERANCE = {"ok": 1.0, "ok-ish": 3.0}  # points: |ours - paper| within these -> OK / OK-ish, else FAIL


def collect(sweep: GridSweep) -> pd.DataFrame:
    """One row per (cell, seed) with its status, mean metrics (in %), costs and per-query values."""
    rows = []
    for cell in sweep.cells:
        for seed in sweep.seeds:
            out = run_dir(sweep.root, cell, seed)
            manifest = read_manifest(out) or {}
            row = {"cell": cell, "seed": seed, "status": manifest.get("status", "pending")}
            metrics_file = out / "metrics.json"
            if row["status"] == "complete" and metrics_file.is_file():
                metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
                row |= {m: 100 * metrics["means"][m] for m in METRICS if m in metrics["means"]}
                row["per_query"] = metrics["per_query"]
                row["train_s"] = manifest.get("train_seconds")
                row["gpu_hours"] = (manifest.get("train_seconds") or 0) * len(manifest["hardware"]["gpus"]) / 3600
                row["decode_ms_per_query"] = manifest.get("decode_ms_per_query")
            rows.append(row)
    return pd.DataFrame(rows)


def paired_randomization(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that the mean of paired per-query scores differs (sign-flip permutation test)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0 or np.allclose(diff, 0):
        return 1.0
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, diff.size))
    return float((np.sum(np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12) + 1) / (n + 1))


def _per_query(frame: pd.DataFrame, cell: str, metric: str) -> pd.Series:
    """A cell's per-query values averaged over its complete seeds."""
    runs = frame[(frame.cell == cell) & (frame.status == "complete")]
    series = [pd.Series({q: v[metric] for q, v in pq.items()}) for pq in runs.per_query]
    return pd.concat(series, axis=1).mean(axis=1) if series else pd.Series(dtype=float)


def summarize(sweep: GridSweep, frame: pd.DataFrame, significance_metric: str = "R@5") -> pd.DataFrame:
    """The ablation table, one row per cell."""
    ref = sweep.reference or sweep.cells[0]
    rows = []
    for cell in sweep.cells:
        runs = frame[(frame.cell == cell) & (frame.status == "complete")]
        row = {"cell": cell, "seeds": f"{len(runs)}/{len(sweep.seeds)}"}
        for m in METRICS:
            if m in runs and runs[m].notna().any():
                row[m] = f"{runs[m].mean():.1f} ± {runs[m].std(ddof=1) if len(runs) > 1 else 0.0:.1f}"
                ref_runs = frame[(frame.cell == ref) & (frame.status == "complete")]
                if cell != ref and m in ref_runs and len(ref_runs):
                    row[f"Δ{m}"] = f"{runs[m].mean() - ref_runs[m].mean():+.1f}"
            paper = sweep.paper.get(cell, {}).get(m)
            if paper is not None and m in runs and len(runs):
                gap = abs(runs[m].mean() - paper)
                status = "OK" if gap <= TOLERANCE["ok"] else "OK-ish" if gap <= TOLERANCE["ok-ish"] else "FAIL"
                row[f"paper {m}"] = f"{paper:.1f} ({status})"
        if cell != ref and len(runs):
            a, b = _per_query(frame, cell, significance_metric), _per_query(frame, ref, significance_metric)
            common = a.index.intersection(b.index)
            if len(common):
                row[f"p ({significance_metric} vs {ref})"] = f"{paired_randomization(a[common], b[common]):.4f}"
        if len(runs):
            row["train s"] = f"{runs.train_s.mean():.0f}"
            row["GPU h"] = f"{runs.gpu_hours.sum():.2f}"
            row["decode ms/q"] = f"{runs.decode_ms_per_query.mean():.1f}"
        rows.append(row)
    table = pd.DataFrame(rows).fillna("")
    order = ["cell", "seeds"]
    for m in METRICS:
        order += [c for c in (m, f"Δ{m}", f"paper {m}") if c in table]
    order += [c for c in table if c.startswith("p (")] + [c for c in ("train s", "GPU h", "decode ms/q") if c in table]
    return table[order]


def write_report(sweep: GridSweep, out: str | Path) -> pd.DataFrame:
    """Write the table as Markdown, LaTeX, HTML and CSV (atomically), a bar plot, and raw results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = collect(sweep)
    table = summarize(sweep, frame)
    writers = {
        "table.md": lambda: table.to_markdown(index=False),
        "table.tex": lambda: table.to_latex(index=False),
        "table.html": lambda: table.to_html(index=False),
        "table.csv": lambda: table.to_csv(index=False),
    }
    for name, render in writers.items():
        write_text(out / name, render())
    raw = frame.drop(columns=["per_query"], errors="ignore")
    write_json(out / "runs.json", {"sweep": sweep.name, "runs": json.loads(raw.to_json(orient="records"))})
    _plot(sweep, frame, out / "ablation_r5.png")
    return table


def _ci95(values: np.ndarray) -> float:
    """Half-width of the 95% confidence interval of a mean over seeds (Student t: few seeds)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return 0.0
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


def _plot(sweep: GridSweep, frame: pd.DataFrame, path: Path, metric: str = "R@5") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[frame.status == "complete"]
    if done.empty or metric not in done:
        return
    means = [done[done.cell == c][metric].mean() for c in sweep.cells]
    errs = [
        1.96 * done[done.cell == c][metric].std(ddof=1) / np.sqrt(max((done.cell == c).sum(), 1))
        if (done.cell == c).sum() > 1
        else 0.0
        for c in sweep.cells
    ]
    fig, ax = plt.subplots(figsize=(1.4 * len(sweep.cells) + 2, 3.2))
    ax.bar(range(len(means)), means, yerr=errs, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(means)), [c.split("/")[-1] for c in sweep.cells], rotation=20, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{sweep.name}: mean over seeds, 95% CI (t)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
