"""W&B for one run: started before training, never allowed to fail the run (a warning and a manifest note)."""

from pathlib import Path

from gemkr_lab.config.experiment import ExperimentConfig, to_dict


def start_logger(config: ExperimentConfig, out: Path, manifest: dict):
    """The run's WandbLogger (same id when resumed), or None when tracking is off or W&B could not start.

    Tracking is optional: W&B is started here, before training, and any failure to start it (its service not
    answering in time, a full disk, a version clash) is one warning; the run goes on untracked and its manifest
    says why (`tracking`).
    """
    if not config.tracking.wandb or config.tracking.mode == "disabled":
        manifest["tracking"] = {"wandb": "off"}
        return None
    from gemkr_lab.tracking.wandb_run import make_logger, new_run_id

    manifest["wandb_run_id"] = manifest.get("wandb_run_id") or new_run_id()
    try:
        logger = make_logger(
            out,
            manifest["wandb_run_id"],
            project=config.tracking.project,
            group=config.tracking.group or config.name,
            name=f"{config.name}-seed{manifest['seed']}",
            tags=[config.name, config.data.dataset, *config.tracking.tags],
            config=to_dict(config),
            mode=config.tracking.mode,
        )
        logger.experiment  # noqa: B018 - starts W&B now (its service, the run's files), not inside training
    except Exception as exc:  # tracking never fails a run
        tracking_skipped(manifest, "could not start W&B", exc)
        return None
    manifest["tracking"] = {"wandb": config.tracking.mode}
    return logger


def tracking_skipped(manifest: dict, what: str, exc: BaseException) -> None:
    """One warning and a manifest note: tracking is off for this run, and why."""
    import warnings

    why = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
    warnings.warn(f"tracking skipped, the run goes on: {what} ({why})", RuntimeWarning, stacklevel=3)
    manifest["tracking"] = {"wandb": "skipped", "why": f"{what}: {why}"}
