"""Reports of an Optuna search: the trials table, the optimisation history and parameter importance."""

import warnings
from pathlib import Path

import optuna
import pandas as pd

from gemkr_lab.io import write_text
from gemkr_lab.report.output import check_out, report_directory
from gemkr_lab.sweep import study as study_mod
from gemkr_lab.sweep.search import SearchSweep


def write_search_report(
    sweep: SearchSweep, out: str | Path, storage: str | None = None, overwrite: bool = False
) -> pd.DataFrame:
    """Trials as Markdown/CSV, plus `history.png` and (with 2+ complete trials) `importance.png`.

    `storage`: the Optuna storage URL the search ran with (default: the journal under its root); it is only
    read: a missing storage or study is refused and nothing is created, in the storage or in `out`. `out` is
    written as a unit (`report.output`): files of an earlier report there are gone (its `explore/` stays); a
    folder that is not a report is refused unless `overwrite`.
    """
    out = Path(out)
    check_out(out, overwrite)  # before any work
    study = study_mod.existing_study(sweep.name, storage, Path(sweep.root))
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                sweep.objective: t.value,
                **t.params,
                "error": t.user_attrs.get("error", ""),
            }
        )
    table = pd.DataFrame(rows)
    with report_directory(out, sweep=sweep.name, kind="search", overwrite=overwrite) as stage:
        write_text(stage / "trials.md", table.to_markdown(index=False))
        write_text(stage / "trials.csv", table.to_csv(index=False))
        _plots(sweep, study, stage)
    return table


def _plots(sweep: SearchSweep, study: optuna.Study, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = [("history.png", ovm.plot_optimization_history)]
    if len(complete) >= 2 and len(sweep.space) >= 1:
        plots.append(("importance.png", ovm.plot_param_importances))
    for name, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except (ValueError, RuntimeError):
            continue  # too few distinct trials for this plot
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
