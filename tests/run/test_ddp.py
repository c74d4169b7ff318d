"""DDP with 2 CPU processes (gloo): both ranks train, rank 0 alone writes the run."""

import json
import subprocess
import sys

import pytest
import torch

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.run.cell import read_manifest, run_dir, with_seed


@pytest.mark.slow
def test_two_process_ddp_writes_one_run(tmp_path, tiny_world):
    world, prepared = tiny_world
    overrides = [
        f"data_root={world}",
        f"prepared={prepared}",
        "train.max_steps=4",
        "limit_train=32",
        "train.batch_size=4",
        "decoding.num_groups=2",
        "tracking.wandb=false",
        "train.strategy=ddp",
        "train.devices=2",
        "train.accelerator=cpu",
    ]
    cmd = [sys.executable, "-m", "gemkr_lab.cli", "train", "tiny-cpu/full", *overrides, "--root", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("tiny-cpu/full seed 0 ->") == 1  # one report: rank 0's
    assert "All distributed processes registered. Starting with 2 processes" in proc.stdout + proc.stderr
    run = run_dir(tmp_path, with_seed(load_experiment("tiny-cpu/full", overrides), 0))
    manifest = read_manifest(run)
    assert manifest["status"] == "complete" and manifest["attempts"] == 1 and "error" not in manifest
    assert len((run / "records.jsonl").read_text().splitlines()) == 96
    assert len(json.loads((run / "metrics.json").read_text())["per_query"]) == 96
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-cpu__full"]
