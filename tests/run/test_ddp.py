"""DDP with 2 CPU processes (gloo): both ranks train, rank 0 alone writes the run."""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

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


def _fit(tmp_path, tiny_world, name, overrides, flags=(), killed=False):
    world, prepared = tiny_world
    out = tmp_path / name
    common = [f"data_root={world}", f"prepared={prepared}", "limit_train=20", "train.max_steps=5"]
    common += ["train.accumulate_grad_batches=2", "train.accelerator=cpu"]
    script = Path(__file__).with_name("ddp_fit.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(out), *flags, *common, *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # --kill-at kills the script's process group
    )
    if killed:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        return proc, None, None
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "metrics.csv").open() as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    weights = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    return proc, losses, weights


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, tiny_world):
    """2 ranks x batch 4 = 1 process x batch 8: same examples per step, the global token-mean loss.

    20 rows: each epoch is two global micro-batches of 8 and one of 4 (2 + 2 on the ranks, whose numbers of
    target tokens differ), accumulated 2 per optimizer step; 5 steps cross two epochs.
    """
    ddp = ["train.batch_size=4", "train.strategy=ddp", "train.devices=2"]
    proc, ddp_losses, ddp_weights = _fit(tmp_path, tiny_world, "ddp", ddp)
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    _, one_losses, one_weights = _fit(tmp_path, tiny_world, "one", ["train.batch_size=8", "train.devices=1"])
    assert sorted(ddp_losses) == sorted(one_losses) == [1, 2, 3, 4, 5]
    loss_gap = max(abs(ddp_losses[s] - one_losses[s]) for s in one_losses)
    assert ddp_weights.keys() == one_weights.keys()
    weight_gap = max((ddp_weights[k] - one_weights[k]).abs().max().item() for k in one_weights)
    print(f"max |loss difference| {loss_gap:.3g}, max |weight difference| {weight_gap:.3g}")
    assert loss_gap <= 1e-5
    for k in one_weights:
        torch.testing.assert_close(ddp_weights[k], one_weights[k], atol=1e-5, rtol=0)
    assert len({round(v, 4) for v in one_losses.values()}) == 5  # it trained: every step's loss differs

    # Killed (SIGKILL, both ranks) after the checkpoint of step 3, mid-epoch (one micro-batch of the second epoch
    # left), then resumed under DDP: the same as the uninterrupted single process. The position is global.
    every = ["train.checkpoint_every_n_steps=3"]
    _fit(tmp_path, tiny_world, "cut", [*ddp, *every], flags=["--kill-at=3"], killed=True)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    proc, cut_losses, cut_weights = _fit(tmp_path, tiny_world, "cut", [*ddp, *every], flags=["--resume"])
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5
    assert sorted(cut_losses) == [1, 2, 3, 4, 5]  # steps 1-3 from the checkpoint's history, 4-5 trained
    resume_gap = max(abs(cut_losses[s] - one_losses[s]) for s in one_losses)
    resume_weight_gap = max((cut_weights[k] - one_weights[k]).abs().max().item() for k in one_weights)
    print(f"resumed: max |loss difference| {resume_gap:.3g}, max |weight difference| {resume_weight_gap:.3g}")
    assert resume_gap <= 1e-5 and resume_weight_gap <= 1e-5
