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


def log_query_table(
    folder: Path,
    key: str,
    columns: list[str],
    rows: list[list],
    *,
    project: str,
    group: str,
    name: str,
    mode: str = "offline",
    summary: dict[str, Any] | None = None,
) -> Path:
    """Log a per-query table (with images) to a W&B run of its own (job_type "explore") under `folder`.

    A cell that is a dict `{"image": path, "boxes": [{"box": [x0, y0, x1, y1], "label": str}]}` becomes a
    `wandb.Image` with its boxes (in the image's pixels); None stays empty. Returns the run's folder
    (`folder/wandb/offline-run-*` when offline; `wandb sync` it to upload).
    """
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project, group=group, name=name, job_type="explore", dir=str(folder), mode=mode, reinit="create_new"
    )
    try:
        table = wandb.Table(columns=columns)
        for row in rows:
            table.add_data(*(_image(v) if isinstance(v, dict) and "image" in v else v for v in row))
        run.log({key: table})
        run.summary.update(summary or {})
        return Path(run.dir).parent
    finally:
        run.finish()


def _image(value: dict):
    import wandb

    boxes = [
        {
            "position": {"minX": b["box"][0], "minY": b["box"][1], "maxX": b["box"][2], "maxY": b["box"][3]},
            "domain": "pixel",
            "class_id": i,
            "box_caption": f"{i} {b['label']}",
        }
        for i, b in enumerate(value.get("boxes") or ())
    ]
    labels = {i: f"{i} {b['label']}" for i, b in enumerate(value.get("boxes") or ())}
    if not boxes:
        return wandb.Image(value["image"])
    return wandb.Image(value["image"], boxes={"objects": {"box_data": boxes, "class_labels": labels}})
