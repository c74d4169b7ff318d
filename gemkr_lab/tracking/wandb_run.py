"""W&B for one run directory: Lightning's WandbLogger during training, then the evaluation on the same run.

Offline by default (no account, no network): files land in `<run>/wandb/` and `wandb sync` uploads them
later. The run id is kept in the manifest, so a resumed run logs to the same W&B run.

One history across attempts (`StepWandbLogger`): W&B's step is the optimizer step, and a resumed attempt
logs only the steps its run does not hold yet - first the points restored from the checkpoint
(`gemkr_lab.model.history.TrainingHistory`) that the earlier attempts lost, then the steps it trains. A killed
attempt's folder keeps what its W&B process had written when it died (offline it buffers its file: often
nothing of a short run). Steps it did write after its last checkpoint are retrained but not logged again: a W&B
run's steps only increase, a step is never replaced, so those points stay the killed attempt's (the same
values on CPU in deterministic mode; on a GPU they may differ by non-determinism from the retrained ones the
final weights descend from). The attempts' folders, in order, hold every logged step once, increasing.
"""

import os
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from gemkr_lab.tracking.offline import last_step, offline_attempts

OFFLINE_SERVICE_WAIT_SECONDS = 120
"""How long an offline run waits for W&B's service process to start (W&B's default, 30 s, is too short on a loaded
2-core machine); an explicit WANDB_X_SERVICE_WAIT wins. If it still does not start, the run goes on untracked."""


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
    """A `StepWandbLogger` (job_type "train") writing under `run_dir`, through a W&B process of this process."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "offline":  # nothing waits on a network: give a loaded machine time to start W&B's process
        os.environ.setdefault("WANDB_X_SERVICE_WAIT", str(OFFLINE_SERVICE_WAIT_SECONDS))
        os.environ.setdefault("WANDB_INIT_TIMEOUT", str(OFFLINE_SERVICE_WAIT_SECONDS))
    _own_wandb_process()
    return StepWandbLogger(
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


class StepWandbLogger(WandbLogger):
    """Logs each point at W&B step = the trainer's step, once per run across attempts (see the module)."""

    _first_new: int | None = None

    def first_new_step(self) -> int:
        """The lowest step this run does not hold yet.

        After the last step of its earlier offline attempts (their folders beside this one), or the step an
        online run resumed at.
        """
        if self._first_new is None:
            run = self.experiment
            current = Path(run.dir).parent
            earlier = [d for d in offline_attempts(Path(self.save_dir) / "wandb", run.id) if d != current]
            held = max((last_step(d) for d in earlier), default=-1)
            self._first_new = max(int(run.starting_step), held + 1)
        return self._first_new

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        """At W&B step `step` (with `trainer/global_step`, Lightning's x axis); steps the run holds are skipped."""
        if step is None:
            super().log_metrics(metrics, step)
        elif step >= self.first_new_step():  # W&B would drop a lower step: a run's steps only increase
            self.experiment.log({**metrics, "trainer/global_step": step}, step=step)


def _own_wandb_process() -> None:
    """Forget a W&B service inherited from the launching process (`WANDB_SERVICE`, set by a parent that used W&B).

    Through the parent's service, a trainer killed with SIGKILL leaves its run open there, and the resumed
    attempt fails with "run ID ... is in use"; with a service of its own, the run's W&B process dies with it.
    A token of this very process (W&B already used here) is kept.
    """
    token = os.environ.get("WANDB_SERVICE", "")
    if token and token.split("-")[1:2] != [str(os.getpid())]:
        del os.environ["WANDB_SERVICE"]


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
