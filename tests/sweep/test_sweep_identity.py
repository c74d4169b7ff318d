"""A sweep's results belong to its current configs: changed cells rerun, data variants are prepared once."""

import json
from pathlib import Path

import pytest
import yaml

from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.data.prepare import read_stamp
from gemkr_lab.report.table import collect, write_report
from gemkr_lab.run.cell import read_manifest, seed_dir
from gemkr_lab.sweep.grid import cell_run, current_run, load_sweep, pending, run_sweep


def _write(sweep_file, tmp_path, cells, overrides=(), seeds=(0,), name="s.yaml"):
    """A sweep file named "ident" (changing it keeps the study) on the tiny overrides, clue length as presets set it."""
    drop = ("decoding.max_clue_tokens",)
    return sweep_file(tmp_path / name, cells, seeds, name="ident", overrides=overrides, drop=drop, reference=cells[0])


@pytest.mark.slow
def test_a_changed_cell_reruns_and_the_report_shows_only_the_current_run(tmp_path, sweep_file):
    path = _write(sweep_file, tmp_path, ["tiny-cpu/full"])
    sweep = load_sweep(path)
    assert run_sweep(sweep, progress=False)["complete"] == 1
    old = current_run(sweep, "tiny-cpu/full", 0)
    old_metrics = json.loads((old / "metrics.json").read_text())["means"]

    new_overrides = ["train.max_steps=12", "model.use_gate=false"]
    changed = load_sweep(_write(sweep_file, tmp_path, ["tiny-cpu/full"], new_overrides))
    assert pending(changed) == [("tiny-cpu/full", 0)]  # the old run is not this config's result
    with pytest.raises(ConfigError, match="--new-study"):
        run_sweep(changed, progress=False)
    result = run_sweep(changed, new_study=True, progress=False)
    assert result["ran"] == 1 and result["complete"] == 1
    new = current_run(changed, "tiny-cpu/full", 0)
    assert new != old and len(list(seed_dir(changed.root, "tiny-cpu/full", 0).iterdir())) == 2
    new_metrics = json.loads((new / "metrics.json").read_text())["means"]
    assert new_metrics != old_metrics
    assert read_manifest(new)["attempts"] == 1  # trained afresh, not resumed from the other config

    frame = collect(changed)
    assert len(frame) == 1 and frame.loc[0, "R@5"] == pytest.approx(100 * new_metrics["R@5"])
    table = write_report(changed, tmp_path / "report")
    assert table.loc[0, "seeds"] == "1/1"
    # the first sweep file still reports its own run
    assert collect(sweep).loc[0, "R@5"] == pytest.approx(100 * old_metrics["R@5"])


@pytest.mark.slow
def test_clue_length_5_trains_on_targets_centred_on_5_tokens(tmp_path, sweep_file):
    path = _write(sweep_file, tmp_path, ["tiny-cpu/full", "tiny-cpu/clue-length-5"])
    sweep = load_sweep(path)
    result = run_sweep(sweep, progress=False)
    assert result["complete"] == 2 and not result["failed"]
    config, overrides = cell_run(sweep, "tiny-cpu/clue-length-5", 0)
    full, _ = cell_run(sweep, "tiny-cpu/full", 0)
    assert config.prepared != full.prepared  # its own prepared variant, made by the sweep
    assert overrides[-1] == f"prepared={config.prepared}"
    settings = read_stamp(config.prepared)["settings"]
    assert (settings["clue_length_policy"], settings["clue_target_tokens"]) == ("target_length", 5)
    run = current_run(sweep, "tiny-cpu/clue-length-5", 0)
    assert read_manifest(run)["prepared"]["path"] == config.prepared
    used = yaml.safe_load((run / "config.yaml").read_text())
    assert used["data"]["clue_target_tokens"] == 5 and used["decoding"]["max_clue_tokens"] == 9
    rows = [json.loads(x) for x in Path(config.prepared, "instructions_train.jsonl").read_text().splitlines()]
    lengths = [len(r["clue_tokens"]) for r in rows]
    assert lengths and min(lengths) == 5 and max(lengths) <= 9  # the targets it trained on: 5, or the nearest
    full_rows = [json.loads(x) for x in Path(full.prepared, "instructions_train.jsonl").read_text().splitlines()]
    assert min(len(r["clue_tokens"]) for r in full_rows) < 5  # the reference's shortest unique targets


def test_sweep_files_with_duplicates_are_refused_with_their_line(tmp_path, tiny_world):
    path = tmp_path / "d.yaml"
    path.write_text("name: d\ncells:\n  - tiny-cpu/full\n  - tiny-cpu/text-only\n  - tiny-cpu/full\nseeds: [0, 1]\n")
    with pytest.raises(ConfigError, match=r"d.yaml:5: cell 'tiny-cpu/full' is listed twice \(first on line 3\)"):
        load_sweep(path)
    path.write_text("name: d\ncells: [tiny-cpu/full]\nseeds:\n  - 0\n  - 1\n  - 0\n")
    with pytest.raises(ConfigError, match=r"d.yaml:6: seed 0 is listed twice"):
        load_sweep(path)
    path.write_text("name: d\ncells: [tiny-cpu/full]\nseeds: [zero]\n")
    with pytest.raises(ConfigError, match=r"d.yaml:3: seed 'zero' is not an integer"):
        load_sweep(path)
    path.write_text("name: d\ncells: tiny-cpu/full\nseeds: [0]\n")
    with pytest.raises(ConfigError, match=r"d.yaml:2: cells must be a list"):
        load_sweep(path)
    path.write_text("name: d\ncells: [tiny-cpu/full, tiny-cpu/nope]\nseeds: [0]\n")
    with pytest.raises(ConfigError, match=r"d.yaml:2: cell 'tiny-cpu/nope'.*no such experiment preset"):
        load_sweep(path)
    path.write_text("name: d\ncells: [tiny-cpu/full]\nseeds: [0]\nreference: tiny-cpu/text-only\n")
    with pytest.raises(ConfigError, match=r"d.yaml:4: reference 'tiny-cpu/text-only' is not one of the cells"):
        load_sweep(path)
    path.write_text("name: d\ncells: [tiny-cpu/full]\nseeds: [0]\noverrides: [model.use_gate=flase]\n")
    with pytest.raises(ConfigError, match=r"model.use_gate = 'flase'"):
        load_sweep(path)
