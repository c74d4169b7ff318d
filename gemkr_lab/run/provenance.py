"""What a run's manifest records about where its result came from: code, packages, hardware, data, attempts."""

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from gemkr_lab.config.experiment import ExperimentConfig
from gemkr_lab.numerics import hardware
from gemkr_lab.run.identity import (
    NOT_IDENTITY,
    RUN_FORMAT,
    RUN_LOCK,
    config_fingerprint,
    split_file,
    training_fingerprint,
)

PACKAGES = ("torch", "transformers", "peft", "lightning", "open_clip_torch", "numpy", "numba", "gemkr_lab")


def new_manifest(config: ExperimentConfig, seed: int, stamp: dict, previous: dict | None) -> dict[str, Any]:
    """The manifest of a new attempt at a run (`previous`: the manifest of its earlier attempts, if any)."""
    from gemkr_lab.data.prepare import file_fingerprint

    prepared = Path(config.prepared)
    index_meta = json.loads((prepared / "index" / "meta.json").read_text(encoding="utf-8"))
    return {
        "format": RUN_FORMAT,
        "cell": config.name,
        "seed": seed,
        "status": "running",
        "split": config.split,
        "started": (previous or {}).get("started", now()),
        "attempts": (previous or {}).get("attempts", 0) + 1,
        "failures": (previous or {}).get("failures", 0),  # attempts that failed (not stopped or pruned)
        "git": _git(),
        "packages": {p: _version(p) for p in PACKAGES},
        "hardware": hardware(config, gpus=_gpus()),  # CPU, numerics, threads, determinism (gemkr_lab.numerics)
        "dataset": {
            "name": config.data.dataset,
            "data_root": str(config.data_root),
            "queries_fingerprint": file_fingerprint(prepared / split_file(config.split)),
        },
        "index": {
            "corpus_fingerprint": index_meta["corpus_fingerprint"],
            "tokenizer_fingerprint": index_meta["tokenizer_fingerprint"],
        },
        "prepared": {"path": str(prepared), "fingerprint": stamp["fingerprint"]},
        "fingerprint": config_fingerprint(config, stamp, NOT_IDENTITY),  # the stamp is checked already
        "training_fingerprint": training_fingerprint(config, stamp),
        "wandb_run_id": (previous or {}).get("wandb_run_id"),
        # every resume of the run, not only this attempt's (each attempt appends the step it went on from)
        **(
            {"resumed_from_steps": list(previous["resumed_from_steps"])}
            if (previous or {}).get("resumed_from_steps")
            else {}
        ),
    }


def earlier_train_seconds(previous: dict | None, out: Path) -> list[float]:
    """Training seconds of the run's earlier attempts; a killed one (no record) counts until its last write."""
    seconds = list((previous or {}).get("train_seconds_attempts") or [])
    if previous and previous.get("status") == "running" and previous.get("attempt_started_at"):
        mine = (RUN_LOCK, "log.txt")  # written by this attempt (and its launcher) already
        last = max((p.stat().st_mtime for p in out.rglob("*") if p.is_file() and p.name not in mine), default=0.0)
        seconds.append(round(max(0.0, last - previous["attempt_started_at"]), 2))
    return seconds


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def peak_gpu_memory() -> float | None:
    """Peak CUDA memory allocated in this process, GiB (None without a GPU)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _gpus() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def now() -> str:
    """UTC now, ISO 8601 to the second (the manifest's times)."""
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
