"""One cell's run directory: identity by resolved config, exact re-evaluation, refused data, GPU groups."""

import json
from pathlib import Path

import pytest

from gemkr_lab.config.experiment import ConfigError, load_experiment
from gemkr_lab.data.queries import DataError
from gemkr_lab.run.cell import evaluate_cell, find_run, read_manifest, run_cell, run_dir, seed_dir, with_seed
from gemkr_lab.sweep.grid import _gpu_groups

METRICS = ("P@5", "R@5", "R@10", "MRR@10")


def _config(tiny_overrides, *extra, preset="tiny-cpu/full"):
    return load_experiment(preset, [*tiny_overrides, *extra])


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_own_metrics_exactly(tmp_path, tiny_overrides):
    config = _config(tiny_overrides, "train.max_steps=60", "decoding.num_groups=4")
    assert config.model.use_image and config.model.vision_weights is None  # a random frozen tower, as the demo
    trained = run_cell(config, 0, tmp_path)
    assert trained["R@5"] > 0  # not a tie of zeros
    run = run_dir(tmp_path, with_seed(config, 0))
    again = evaluate_cell(run)
    for m in METRICS:
        assert again[m] == trained[m], m  # exactly: same weights, same frozen random parts, same decoding
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    (evaluated,) = (run / "eval").iterdir()
    redone = [json.loads(x) for x in (evaluated / "records.jsonl").read_text().splitlines()]
    assert [r["clues"] for r in redone] == [r["clues"] for r in records]  # tokens, scores, counts, documents
    assert [r["ranked_ids"] for r in redone] == [r["ranked_ids"] for r in records]
    unique = evaluate_cell(run, ["decoding.clue_to_docs=unique"])
    assert len(list((run / "eval").iterdir())) == 2  # one folder per decoding configuration
    assert unique["R@5"] <= trained["R@5"] + 1e-9  # dropping ambiguous clues cannot find more
    assert run_cell(config, 0, tmp_path) == trained  # complete runs are never redone


def test_evaluate_refuses_overrides_outside_decoding(tmp_path, tiny_overrides):
    config = _config(tiny_overrides)
    run_cell(config, 0, tmp_path)
    run = find_run("tiny-cpu/full", 0, tmp_path)
    for bad in ("model.use_gate=false", "train.lr=0.1", "data.append_caption=false"):
        with pytest.raises(ConfigError, match=f"not accepted: {bad}"):
            evaluate_cell(run, [bad])
    with pytest.raises(ConfigError, match=r"decoding\.num_groups = 0"):
        evaluate_cell(run, ["decoding.num_groups=0"])
    assert not (run / "eval").exists()


def test_a_changed_config_is_a_new_run_never_the_old_metrics(tmp_path, tiny_overrides):
    first = run_cell(_config(tiny_overrides), 0, tmp_path)
    changed = _config(tiny_overrides, "train.max_steps=8", "model.use_gate=false")
    second = run_cell(changed, 0, tmp_path)
    runs = sorted(seed_dir(tmp_path, "tiny-cpu/full", 0).iterdir())
    assert len(runs) == 2  # same cell and seed, two resolved configs
    assert {read_manifest(r)["attempts"] for r in runs} == {1}
    assert run_dir(tmp_path, with_seed(changed, 0)) != run_dir(tmp_path, with_seed(_config(tiny_overrides), 0))
    new = json.loads((run_dir(tmp_path, with_seed(changed, 0)) / "metrics.json").read_text())
    assert new["means"] == second
    assert first != second  # new metrics, from the new training (4 vs 8 steps, without gate)
    with pytest.raises(ConfigError, match="has 2 runs with different configs"):
        find_run("tiny-cpu/full", 0, tmp_path)
    # cosmetic fields do not change a run's identity
    tagged = _config(tiny_overrides, "tracking.tags=[x]", "tracking.project=other")
    assert run_dir(tmp_path, with_seed(tagged, 0)) == run_dir(tmp_path, with_seed(_config(tiny_overrides), 0))


def test_evaluate_needs_a_trained_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no trained run of tiny-cpu/full seed 3"):
        find_run("tiny-cpu/full", 3, tmp_path)


def test_unprepared_data_is_refused_before_work(tmp_path):
    config = load_experiment("tiny-cpu/full", [f"prepared={tmp_path / 'nothing'}"])
    with pytest.raises(DataError, match="not prepared for tiny-cpu/full; run: gemkr-lab prepare --experiment"):
        run_cell(config, 0, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_data_prepared_with_other_settings_is_refused_naming_them(tmp_path, tiny_overrides):
    config = load_experiment("tiny-cpu/clue-length-5", tiny_overrides)  # the shared world was prepared with 9
    wants = r"data.clue_length_policy: prepared 'shortest_unique', tiny-cpu/clue-length-5 wants 'target_length'"
    with pytest.raises(DataError, match=wants + r"; data.clue_target_tokens: prepared None, .* wants 5") as err:
        run_cell(config, 0, tmp_path / "runs", tiny_overrides)
    assert "gemkr-lab prepare --experiment tiny-cpu/clue-length-5 --set data_root=" in str(err.value)
    assert not (tmp_path / "runs").exists()
    detector = load_experiment("tiny-cpu/full", [*tiny_overrides, "data.detector=none"])
    with pytest.raises(DataError, match=r"data.detector: prepared 'ground_truth', tiny-cpu/full wants 'none'"):
        run_cell(detector, 0, tmp_path / "runs")


def test_another_tokenizer_than_the_prepared_one_is_refused(tmp_path, tiny_overrides, tiny_world):
    import shutil

    world, _ = tiny_world
    other = tmp_path / "tok"
    shutil.copytree(Path(world) / "tokenizer", other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["zzzz-new-token"] = max(vocab["model"]["vocab"].values()) + 1
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    config = _config(tiny_overrides, f"tokenizer={other}")
    with pytest.raises(DataError, match=r"was prepared with another one .* --set prepared=NEW_FOLDER"):
        run_cell(config, 0, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_gpu_groups_pin_each_worker(monkeypatch):
    import torch

    assert _gpu_groups(3, 0) == [None, None, None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _gpu_groups(2, 2) == ["0,1", "2,3"]
    with pytest.raises(ConfigError, match="need 6 GPUs; 4 visible"):
        _gpu_groups(3, 2)


def test_cells_that_differ_only_in_decoding_share_one_training(tmp_path, tiny_overrides):
    full = _config(tiny_overrides)
    run_cell(full, 0, tmp_path)
    full_run = run_dir(tmp_path, with_seed(full, 0))
    free = load_experiment("tiny-cpu/unconstrained", tiny_overrides)
    means = run_cell(free, 0, tmp_path)
    free_run = run_dir(tmp_path, with_seed(free, 0))
    manifest = read_manifest(free_run)
    assert manifest["trained_in"] == str(full_run) and not (free_run / "checkpoints").exists()
    assert manifest["training_fingerprint"] == read_manifest(full_run)["training_fingerprint"]
    assert manifest["train_seconds"] == 0
    again = evaluate_cell(full_run, ["decoding.constrained=false"])  # the same model, decoded the same way
    assert means == again
    gated = load_experiment("tiny-cpu/no-gate", tiny_overrides)  # another training: never shared
    run_cell(gated, 0, tmp_path)
    assert "trained_in" not in read_manifest(run_dir(tmp_path, with_seed(gated, 0)))


def test_a_test_time_switch_decodes_the_reference_training(tmp_path, tiny_overrides, monkeypatch):
    from gemkr_lab.model import infer
    from gemkr_lab.run.cell import AT_TEST_TIME, run_fingerprint, training_fingerprint

    assert "data.zero_region_features_at_test" in AT_TEST_TIME
    stamp = {"fingerprint": "sha256:prepared"}
    for family, reference in (("paper", "paper/gemkr-7b"), ("tiny-cpu", "tiny-cpu/full")):
        ref, zero = load_experiment(reference), load_experiment(f"{family}/zero-region-features-at-test")
        assert zero.data.zero_region_features_at_test and not ref.data.zero_region_features_at_test
        assert training_fingerprint(zero, stamp) == training_fingerprint(ref, stamp)  # one training
        assert _fingerprint_of(zero, stamp) != _fingerprint_of(ref, stamp)  # two results
    full = _config(tiny_overrides)
    run_cell(full, 0, tmp_path)
    full_run = run_dir(tmp_path, with_seed(full, 0))
    seen = []  # the region features of every test batch the zero cell decodes
    decode = infer.decode_batches

    def spy(model, loader, *args, **kwargs):
        seen.extend(float(batch.objects.abs().sum()) for batch in loader)
        return decode(model, loader, *args, **kwargs)

    monkeypatch.setattr(infer, "decode_batches", spy)
    zero = _config(tiny_overrides, preset="tiny-cpu/zero-region-features-at-test")
    run_cell(zero, 0, tmp_path)
    zero_run = run_dir(tmp_path, with_seed(zero, 0))
    assert zero_run != full_run and run_fingerprint(zero) != run_fingerprint(full)
    manifest = read_manifest(zero_run)
    assert manifest["trained_in"] == str(full_run) and not (zero_run / "checkpoints").exists()  # no second training
    assert manifest["training_fingerprint"] == read_manifest(full_run)["training_fingerprint"]
    assert manifest["train_seconds"] == 0
    assert seen and not any(seen)  # its test-time region features are zero
    monkeypatch.setattr(infer, "decode_batches", decode)
    full_seen = []
    monkeypatch.setattr(
        infer,
        "decode_batches",
        lambda m, loader, *a, **k: (
            full_seen.extend(float(b.objects.abs().sum()) for b in loader) or decode(m, loader, *a, **k)
        ),
    )
    evaluate_cell(full_run)
    assert all(full_seen)  # the reference's are not


def _fingerprint_of(config, stamp):
    from gemkr_lab.run.identity import NOT_IDENTITY, config_fingerprint

    return config_fingerprint(config, stamp, NOT_IDENTITY)


@pytest.mark.slow
def test_a_decoding_variant_waits_for_the_training_in_progress(tmp_path, tiny_overrides):
    import subprocess
    import sys
    import time

    steps = [*tiny_overrides, "train.max_steps=40"]
    full = load_experiment("tiny-cpu/full", steps)
    full_run = run_dir(tmp_path, with_seed(full, 0))
    cmd = [sys.executable, "-m", "gemkr_lab.cli", "train", "tiny-cpu/full", *steps, "--root", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (read_manifest(full_run) or {}).get("training"):
        time.sleep(0.05)
    assert (read_manifest(full_run) or {}).get("training"), "the training never started"
    run_cell(load_experiment("tiny-cpu/unconstrained", steps), 0, tmp_path)  # waits for it, then decodes it
    assert proc.wait(timeout=300) == 0
    free = read_manifest(run_dir(tmp_path, with_seed(load_experiment("tiny-cpu/unconstrained", steps), 0)))
    assert free["trained_in"] == str(full_run) and free["status"] == "complete"
