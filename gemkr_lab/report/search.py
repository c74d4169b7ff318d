"""Reports of an Optuna search: trials on validation, the selected configuration, and its test result.

`summary.md` first says what was tuned on what: every trial's objective is a validation number; the test split
appears once, for the selected configuration, labelled, with mean ± sample std over the final seeds.
"""

import json
import statistics
import textwrap
import warnings
from pathlib import Path

import optuna
import pandas as pd

from gemkr_lab.config.metric_names import REPORTED
from gemkr_lab.io import write_text
from gemkr_lab.report.output import check_out, report_directory
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.search import (
    SELECTED,
    SearchSweep,
    counted_trials,
    read_final,
    selected_trial,
    write_selected_preset,
)


def write_search_report(
    sweep: SearchSweep, out: str | Path, storage: str | None = None, overwrite: bool = False
) -> pd.DataFrame:
    """`trials.md`/`.csv`, `summary.md`, `selected.yaml` and plots (history, importances, slices).

    `storage`: the Optuna storage URL the search ran with (default: the journal under its root); it is only
    read: a missing storage or study is refused and nothing is created, in the storage or in `out`. `out` is
    written as a unit (`report.output`): files of an earlier report there are gone (its `explore/` stays); a
    folder that is not a report is refused unless `overwrite`.
    """
    out = Path(out)
    check_out(out, overwrite)  # before any work
    study = study_mod.existing_study(sweep.name, storage, Path(sweep.root))
    table = trials_table(sweep, study)
    final = read_final(sweep)
    with report_directory(out, sweep=sweep.name, kind="search", overwrite=overwrite) as stage:
        write_text(stage / "trials.md", table.to_markdown(index=False))
        write_text(stage / "trials.csv", table.to_csv(index=False))
        write_text(stage / "summary.md", summary(sweep, study, final))
        best = selected_trial(study, sweep.settings, required=False)
        written = Path(sweep.root) / SELECTED  # by the final step, with the prepared data it used
        if final is not None and written.is_file():
            write_text(stage / SELECTED, written.read_text(encoding="utf-8"))
        elif best is not None:
            write_selected_preset(sweep, best.params, stage / SELECTED, trial=best.number, values=best.values)
        _plots(sweep, study, stage, best)
    return table


def trials_table(sweep: SearchSweep, study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, params, the validation objective, what was reported along the way, cost."""
    rows = []
    column = f"{sweep.objective} (validation)"
    trials = study.get_trials(deepcopy=False)
    resumed_by = {t.user_attrs["resumes"]: t.number for t in trials if t.user_attrs.get("resumes") is not None}
    for t in trials:
        manifest = _run_file(t.user_attrs.get("run"), "manifest.json")
        steps = sorted(t.intermediate_values)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name
                if t.number not in resumed_by
                else f"GIVEN BACK (resumed as {resumed_by[t.number]})",
                **t.params,
                column: t.values[0] if t.values and t.state.name == "COMPLETE" else None,  # pruned: partial
                **(
                    {f"{sweep.settings.cost} (cost)": t.values[1] if t.values and len(t.values) > 1 else None}
                    if sweep.settings.cost
                    else {}
                ),
                "last reported step": steps[-1] if steps else None,
                "value there": t.intermediate_values[steps[-1]] if steps else None,
                "train s": manifest.get("train_seconds"),
                "decode ms/query": manifest.get("decode_ms_per_query"),
                "error": t.user_attrs.get("error", ""),
            }
        )
    return pd.DataFrame(rows)


def summary(sweep: SearchSweep, study: optuna.Study, final: dict | None) -> str:
    """Markdown: what was tuned on which split, the selected trial, and its test result (or how to get it)."""
    states = [t.state.name for t in counted_trials(study)]
    counted = ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states)))
    s = sweep.settings
    lines = [
        f"# Search {sweep.name}",
        "",
        f"Tuned on the **validation** split (held out of the training questions); {s.n_trials} trials "
        f"({counted}); objective {s.objective} ({s.direction}); sampler {s.sampler}, pruner {s.pruner}"
        + (
            f" on decoded validation subsets of {s.eval_queries} queries every {s.eval_every_n_steps} steps."
            if s.eval_every_n_steps
            else "."
        ),
        "",
    ]
    best = selected_trial(study, sweep.settings, required=False)
    if best is None:
        return "\n".join([*lines, "No trial completed: nothing selected.", ""])
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    lines += [
        f"Selected: trial {best.number} ({params}); rule: {s.selection_rule()}. Written as `{SELECTED}` "
        f"(train it: `gemkr-lab train {Path(sweep.root) / SELECTED}`).",
        "",
    ]
    if final is None:
        lines += [
            "The test split has not been evaluated: it is touched once, after every trial "
            "(`gemkr-lab sweep SWEEP.yaml --finalize`).",
            "",
        ]
        return "\n".join(lines)
    seeds = final["seeds"]
    metrics = list(dict.fromkeys([*SHOWN, sweep.objective]))
    head = f"| split | what | {' | '.join(metrics)} |"
    rule = "|" + "---|" * (len(metrics) + 2)
    # the selected trial's own run: its whole validation split
    trial_means = _run_file(best.user_attrs.get("run"), "metrics.json").get("means", {})
    validation = (
        f"| validation | trial {final['trial']} (seed {sweep.seed}) | "
        + " | ".join(_pct(trial_means.get(m)) for m in metrics)
        + " |"
    )
    test = (
        f"| test | selected, seeds {', '.join(seeds)} | "
        + " | ".join(_mean_std([v["means"][m] for v in seeds.values()]) for m in metrics)
        + " |"
    )
    lines += [head, rule, validation, test, "", "Values in %; test: mean ± sample std over the final seeds.", ""]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


SHOWN = REPORTED
"""The metrics the summary shows (the objective is added when it is another)."""


def _run_file(run: str | None, name: str) -> dict:
    """A run directory's JSON file (`metrics.json`, `manifest.json`); {} when there is none."""
    try:
        return json.loads((Path(run) / name).read_text(encoding="utf-8")) if run else {}
    except (OSError, ValueError):
        return {}


def _plots(sweep: SearchSweep, study: optuna.Study, out: Path, best) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    s = sweep.settings
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    objective = {"target": lambda t: t.values[0], "target_name": f"{s.objective} (validation)"}
    one = {} if s.cost is None else objective  # multi-objective studies need the value to plot named
    plots = [("history.png", lambda: ovm.plot_optimization_history(study, **one))]
    if s.cost is None:
        plots.append(("intermediate.png", lambda: ovm.plot_intermediate_values(study)))
    else:
        names = [f"{s.objective} (validation)", f"{s.cost} (cost)"]
        plots.append(("pareto.png", lambda: _pareto(study, names, best, s.selection_rule())))
    if len(complete) >= 2:
        plots.append(("importance.png", lambda: ovm.plot_param_importances(study, **one)))
        plots.append(("slice.png", lambda: ovm.plot_slice(study, **one)))
    for name, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot()
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # too few distinct trials (or values) for this plot
        first = ax.flat[0] if hasattr(ax, "flat") else ax
        fig = first.figure
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def _pareto(study: optuna.Study, names: list[str], best, rule: str):
    """Optuna's Pareto-front plot with the selected trial ringed and the rule that chose it in the title."""
    from optuna.visualization import matplotlib as ovm

    ax = ovm.plot_pareto_front(study, target_names=names)
    if best is not None:
        ax.scatter([best.values[0]], [best.values[1]], s=220, facecolors="none", edgecolors="red", linewidths=2)
        ax.annotate(f"selected: trial {best.number}", (best.values[0], best.values[1]), color="red")
    ax.set_title("\n".join(textwrap.wrap(f"Pareto front; selected {rule}", 70)), fontsize=8)
    return ax
