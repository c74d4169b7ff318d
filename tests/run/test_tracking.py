"""W&B offline runs are written beside each run and read back without a server or network."""

import json

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.run.cell import read_manifest, run_cell, run_dir, with_seed
from gemkr_lab.tracking.offline import read_offline_run


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
