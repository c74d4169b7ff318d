"""W&B for one run directory: Lightning's WandbLogger during training, then the evaluation on the same run.

Offline by default (no account, no network): files land in `<run>/wandb/` and `wandb sync` uploads them
later. The run id is kept in the manifest, so a resumed run logs to the same W&B run.
"""

import os
import uuid
from pathlib import Path
from typing import Any


def make_logger(
    run_dir: Path,
    run_id: str,
    *,
    project: str,
    group: str,
    name: str,
    tags: list[str],
    config: dict[str, Any],
    mode: str = "offline",
):
    """A WandbLogger (job_type "train") writing under `run_dir`."""
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        project=project,
        group=group,
        name=name,
        id=run_id,
        save_dir=str(run_dir),
        offline=mode == "offline",
        resume="allow",
        job_type="train",
        tags=tags,
        config=config,
        mode=mode,
    )


def new_run_id() -> str:
    """A W&B-compatible run id."""
    return uuid.uuid4().hex[:8]


def log_evaluation(logger, metrics: dict[str, float], run_file: Path, records: list, sample: int = 20) -> None:
    """Evaluation metrics as summary, the TREC run as an artifact, a sample of clues as a table; then finish."""
    import wandb

    run = logger.experiment
    run.summary.update({f"test/{k}": v for k, v in metrics.items()})
    artifact = wandb.Artifact(f"run-{run.id}", type="trec-run")
    artifact.add_file(str(run_file))
    run.log_artifact(artifact)
    table = wandb.Table(columns=["qid", "rank", "clue", "score", "count", "docs"])
    for r in records[:sample]:
        for rank, c in enumerate(r.clues, start=1):
            table.add_data(r.qid, rank, c.text, c.score, c.count, " ".join(map(str, c.docs)))
    run.log({"test/clues": table})
    run.finish()
