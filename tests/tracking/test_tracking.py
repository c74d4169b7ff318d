"""W&B offline runs are written beside each run and read back without a server or network."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.run.cell import read_manifest, run_cell, run_dir, with_seed
from gemkr_lab.tracking.offline import offline_attempts, read_offline_run


def test_offline_wandb_run_is_read_back(tmp_path, tiny_world, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    world, prepared = tiny_world
    config = load_experiment(
        "tiny-cpu/full",
        [
            f"data_root={world}",
            f"prepared={prepared}",
            "train.max_steps=6",
            "limit_train=16",
            "train.batch_size=8",
            "decoding.num_groups=2",
            "decoding.max_clue_tokens=3",
        ],
    )
    means = run_cell(config, 0, tmp_path)
    out = run_dir(tmp_path, with_seed(config, 0))
    run_id = read_manifest(out)["wandb_run_id"]
    (offline,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    run = read_offline_run(offline)
    assert run["config"]["model"]["vision_model"] == "tiny-vit"
    assert run["config"]["train"]["max_steps"] == 6
    assert any("train/loss" in row for row in run["history"])
    assert run["summary"]["test/R@5"] == means["R@5"]
    assert json.loads((out / "metrics.json").read_text())["means"]["R@5"] == means["R@5"]


STEPS = 30


@pytest.mark.slow
@pytest.mark.integration  # W&B
def test_a_killed_and_resumed_run_keeps_one_wandb_history(tmp_path, tiny_world):
    """SIGKILL after the first checkpoint, then resume: one W&B run, its steps 1..STEPS once and in order.

    The killed attempt's W&B process dies with it and loses what it had buffered; the resumed attempt logs the
    history restored from the checkpoint for the steps no earlier attempt holds, then the steps it trains.
    """
    world, prepared = tiny_world
    overrides = [
        f"data_root={world}",
        f"prepared={prepared}",
        f"train.max_steps={STEPS}",
        "limit_train=40",
        "train.batch_size=4",
        "train.checkpoint_every_n_steps=5",
        "train.deterministic=true",
        "decoding.num_groups=2",
        "decoding.max_clue_tokens=3",
        "tracking.mode=offline",
    ]
    cmd = [sys.executable, "-m", "gemkr_lab.cli", "train", "tiny-cpu/full", *overrides, "--root", str(tmp_path)]
    run = run_dir(tmp_path, with_seed(load_experiment("tiny-cpu/full", overrides), 0))
    env = {**os.environ, "WANDB_MODE": "offline"}
    # W&B used in the launching process: the trainers inherit its service (and must not use it: it would keep a
    # killed run open, and the resumed attempt would fail with "run ID ... is in use")
    _attempt(tmp_path / "launcher", [1], in_process=True)
    env["WANDB_SERVICE"] = os.environ["WANDB_SERVICE"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its W&B process
    proc.wait()
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < killed_at < STEPS
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = read_manifest(run)
    assert manifest["status"] == "complete" and manifest["attempts"] == 2
    assert manifest["resumed_from_steps"] == [killed_at]
    run_id = manifest["wandb_run_id"]
    attempts = offline_attempts(run / "wandb", run_id)
    assert sorted((run / "wandb").glob("offline-run-*")) == attempts and len(attempts) == 2  # one run id
    histories = [read_offline_run(d)["history"] for d in attempts]
    rows = [row for history in histories for row in history]
    steps = [row["_step"] for row in rows]
    assert steps == sorted(set(steps))  # one increasing sequence, each step once
    trained = [row["_step"] for row in rows if "train/loss" in row]
    assert trained == list(range(1, STEPS + 1)), (killed_at, [len(h) for h in histories])
    assert all(row["trainer/global_step"] == row["_step"] for row in rows if "train/loss" in row)
    assert (
        read_offline_run(attempts[-1])["summary"]["test/R@5"]
        == json.loads((run / "metrics.json").read_text())["means"]["R@5"]
    )


_ATTEMPT = """
import sys
from pathlib import Path
from gemkr_lab.tracking.wandb_run import make_logger
logger = make_logger(Path(sys.argv[1]), "abcd1234", project="p", group="g", name="n", tags=[], config={})
for step in map(int, sys.argv[2:]):
    logger.log_metrics({"train/loss": float(step)}, step=step)
logger.experiment.finish()
"""


def _attempt(tmp_path, steps, in_process=False):
    """One attempt's W&B run (id abcd1234) logging `steps`; in a process of its own, as a trainer's."""
    if in_process:
        from gemkr_lab.tracking.wandb_run import make_logger

        logger = make_logger(tmp_path, "abcd1234", project="p", group="g", name="n", tags=[], config={})
        for step in steps:
            logger.log_metrics({"train/loss": float(step)}, step=step)
        logger.experiment.finish()
    else:
        cmd = [sys.executable, "-c", _ATTEMPT, str(tmp_path), *map(str, steps)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    return offline_attempts(tmp_path / "wandb", "abcd1234")[-1]


def test_a_resumed_attempt_logs_only_the_steps_its_run_does_not_hold(tmp_path, monkeypatch):
    """Attempt 1 wrote steps 1-7 and was then killed after a checkpoint of step 4; attempt 2 replays 1-4 from the
    checkpoint and trains 5-10: its folder gets 8-10 (W&B would drop 1-7), so the run's steps stay increasing."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = _attempt(tmp_path, range(1, 8))
    time.sleep(1.1)  # folders are named by the second they start
    second = _attempt(tmp_path, [*range(1, 5), *range(5, 11)])
    assert offline_attempts(tmp_path / "wandb", "abcd1234") == [first, second]
    steps = [[row["_step"] for row in read_offline_run(d)["history"]] for d in (first, second)]
    assert steps == [list(range(1, 8)), list(range(8, 11))]


def test_a_killed_writers_file_reads_up_to_its_last_whole_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = _attempt(tmp_path, range(1, 400))
    (path,) = folder.glob("run-*.wandb")
    whole = read_offline_run(folder)["history"]
    data = path.read_bytes()
    for cut in [0, 3, 7, 100, *range(1000, len(data), 997)]:
        path.write_bytes(data[:cut])
        history = read_offline_run(folder)["history"]
        assert history == whole[: len(history)], cut
    path.write_bytes(data)
