"""`gemkr-lab train` killed with SIGKILL at random points resumes to bit-identical weights (real processes)."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.run.cell import read_manifest, run_dir, with_seed

STEPS = 24


def _command(tiny_world, root):
    world, prepared = tiny_world
    overrides = [
        f"data_root={world}",
        f"prepared={prepared}",
        f"train.max_steps={STEPS}",
        "limit_train=40",
        "train.batch_size=6",  # 7 micro-batches an epoch: checkpoints every 4 steps fall mid-epoch
        "train.checkpoint_every_n_steps=4",
        "train.deterministic=true",
        "decoding.num_groups=2",
        "tracking.wandb=false",
    ]
    cmd = [sys.executable, "-m", "gemkr_lab.cli", "train", "tiny-cpu/lora", *overrides, "--root", str(root)]
    return cmd, load_experiment("tiny-cpu/lora", overrides)


def _weights(run):
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_world):
    cmd, config = _command(tiny_world, tmp_path / "whole")
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    whole = _weights(run_dir(tmp_path / "whole", with_seed(config, 0)))
    rng = random.Random(0)
    for attempt in range(2):
        root = tmp_path / f"killed-{attempt}"
        cmd, _ = _command(tiny_world, root)
        run = run_dir(root, with_seed(config, 0))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not (run / "checkpoints" / "last.ckpt").exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere after the first checkpoint
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        manifest = read_manifest(run)
        assert manifest["status"] == "complete" and manifest["attempts"] == 2
        if killed_at < STEPS:  # killed while training: the second attempt must have continued, not restarted
            assert manifest["resumed_from_steps"] and manifest["resumed_from_steps"][0] >= 4
        resumed = _weights(run)
        assert resumed.keys() == whole.keys()
        for k in whole:
            assert torch.equal(resumed[k], whole[k]), (attempt, killed_at, k)
