"""Portable CPU numerics (`train.portable_cpu_numerics`, `gemkr_lab.numerics`): the same trained tensors under
two instruction sets forced from the environment, different ones without it; the env reaches what a sweep
launches; the manifest records the hardware and numerics; a table of mixed numerics says so.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gemkr_lab import numerics
from gemkr_lab.config.experiment import EXPERIMENTS_DIR, load_experiment
from gemkr_lab.numerics import MARK_ENV, PORTABLE_ENV, NumericsError
from gemkr_lab.run.cell import check_prepared, run_dir, with_seed
from gemkr_lab.run.provenance import new_manifest
from gemkr_lab.sweep import grid

PY = sys.executable
HARDWARE_KEYS = {
    "machine",
    "cpus",
    "host",
    "gpus",
    "cpu_model",
    "cpu_flags",
    "torch_cpu_capability",
    "numerics_env",
    "portable_cpu_numerics",
    "threads",
    "determinism",
}


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the numerics settings (the suite runs portable), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in (*PORTABLE_ENV, MARK_ENV, "DNNL_MAX_CPU_ISA")}
    return env | extra


def instruction_sets() -> tuple[dict[str, str], dict[str, str]] | None:
    """Two instruction sets this CPU can run, forced through the environment: its best and one below.

    AVX-512: avx512 vs avx2 (the reported case); AVX2 only: avx2 vs the generic kernels (MKL's compatible path,
    oneDNN at SSE4.1). None where fewer than two are usable (no AVX2).
    """
    flags = numerics.cpu_flags() or set()
    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, avx2
    if {"avx2", "fma"} <= flags:
        return avx2, {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    return None


def _train(tmp_path: Path, name: str, overrides: list[str], env: dict[str, str]) -> dict:
    """`gemkr-lab train tiny-cpu/full` in a fresh process; its trained tensors, records, metrics and hardware."""
    root = tmp_path / name
    cmd = [PY, "-m", "gemkr_lab.cli", "train", "tiny-cpu/full", *overrides, "--root", str(root)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (out,) = (root / "tiny-cpu__full" / "seed-0").iterdir()
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    records = [json.loads(x) for x in (out / "records.jsonl").read_text(encoding="utf-8").splitlines() if x]
    return {
        "state": state,
        "clues": [r["clues"] for r in records],  # their log-prob scores: the decoder's numerics too
        "metrics": json.loads((out / "metrics.json").read_text(encoding="utf-8")),
        "hardware": json.loads((out / "manifest.json").read_text(encoding="utf-8"))["hardware"],
    }


def _differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys() and len(a) > 0
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
def test_portable_mode_trains_the_same_tensors_under_two_instruction_sets_and_native_mode_does_not(
    tmp_path, tiny_overrides
):
    sets = instruction_sets()
    if sets is None:
        pytest.skip("this CPU has fewer than two usable instruction sets (no AVX2): nothing to compare")
    high, low = sets
    overrides = [*tiny_overrides, "train.max_steps=30", "train.accelerator=cpu"]  # 30 steps x 8 rows, then decode
    runs = {
        (mode, which): _train(
            tmp_path,
            f"{mode}-{which}",
            [*overrides, f"train.portable_cpu_numerics={str(mode == 'portable').lower()}"],
            _clean_env(**forced),
        )
        for mode in ("portable", "native")
        for which, forced in (("high", high), ("low", low))
    }
    # native: each process ran the kernels its environment forced, and they trained other tensors
    native_high, native_low = runs["native", "high"], runs["native", "low"]
    assert native_high["hardware"]["torch_cpu_capability"] == high["ATEN_CPU_CAPABILITY"].upper()
    assert native_low["hardware"]["torch_cpu_capability"] == low["ATEN_CPU_CAPABILITY"].upper()
    assert _differing(native_high["state"], native_low["state"]), "the two instruction sets trained equal tensors"
    assert native_high["clues"] != native_low["clues"]
    # portable: the environment's choice was replaced by AVX2 everywhere, and the runs agree bit for bit
    portable_high, portable_low = runs["portable", "high"], runs["portable", "low"]
    for run in (portable_high, portable_low):
        assert run["hardware"]["torch_cpu_capability"] == "AVX2"
        assert {k: run["hardware"]["numerics_env"][k] for k in PORTABLE_ENV} == PORTABLE_ENV
        assert run["hardware"]["portable_cpu_numerics"]["applied"] is True
    assert _differing(portable_high["state"], portable_low["state"]) == []
    assert portable_high["clues"] == portable_low["clues"]
    assert portable_high["metrics"] == portable_low["metrics"]


def test_apply_sets_the_environment_before_torch_over_the_users(tmp_path):
    code = (
        "import json, sys\n"
        "from gemkr_lab.numerics import apply_portable_cpu_numerics\n"
        "state = apply_portable_cpu_numerics(True)\n"
        "assert 'torch' not in sys.modules\n"
        "import os, torch\n"
        "print(json.dumps([state, torch.backends.cpu.get_cpu_capability(), "
        "{k: os.environ.get(k) for k in ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA')}]))\n"
    )
    hostile = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    done = subprocess.run([PY, "-c", code], env=_clean_env(**hostile), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    state, capability, env = json.loads(done.stdout)
    if not state["applied"]:
        pytest.skip(f"portable mode falls back on this CPU: {state['note']}")
    assert capability == "AVX2" and env == PORTABLE_ENV
    assert state["overridden"] == hostile and "replaced ATEN_CPU_CAPABILITY=default" in state["note"]


def test_a_process_that_loaded_torch_with_other_kernels_is_refused():
    code = (
        "import torch\n"
        "torch.backends.cpu.get_cpu_capability()\n"
        "from gemkr_lab.numerics import apply_portable_cpu_numerics\n"
        "apply_portable_cpu_numerics(True)\n"
    )
    env = _clean_env(ATEN_CPU_CAPABILITY="default")
    done = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if numerics._missing_isa():
        pytest.skip(f"portable mode falls back on this CPU: {numerics._missing_isa()}")
    assert done.returncode != 0
    assert "NumericsError" in done.stderr and "before torch is imported" in done.stderr
    assert "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2" in done.stderr


def test_in_a_process_already_portable_apply_is_a_no_op_and_off_changes_nothing(monkeypatch):
    monkeypatch.setattr(numerics, "_state", None)
    before = dict(os.environ)
    state = numerics.apply_portable_cpu_numerics(True)  # the suite set it before torch (conftest)
    assert state["requested"] and (state["applied"] or state["note"].startswith("fallback"))
    assert numerics.apply_portable_cpu_numerics(False) == {
        "requested": False,
        "applied": False,
        "note": None,
        "overridden": {},
    }
    assert dict(os.environ) == before


def test_a_cpu_without_avx2_warns_and_falls_back(monkeypatch):
    monkeypatch.setattr(numerics, "_state", None)
    monkeypatch.setattr(numerics.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(numerics, "cpu_flags", lambda: {"sse4_2", "avx"})
    monkeypatch.setenv(MARK_ENV, "")
    for k in PORTABLE_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.warns(RuntimeWarning, match="lacks AVX2 and FMA"):
        state = numerics.apply_portable_cpu_numerics(True)
    assert state["applied"] is False and state["note"].startswith("fallback: the CPU lacks AVX2 and FMA")
    assert os.environ[MARK_ENV] == "fallback"
    assert not any(k in os.environ for k in PORTABLE_ENV)  # never ATEN_CPU_CAPABILITY=avx2 on such a CPU


def test_the_processes_a_sweep_launches_inherit_the_portable_environment(monkeypatch, tmp_path):
    seen = {}

    class FakePopen:
        def __init__(self, cmd, stdout, stderr, env):
            seen["cmd"], seen["env"] = cmd, env

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(grid.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # as apply_for set it in the sweep's (or a job's) process
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert grid.launch("tiny-cpu/full", [], 0, str(tmp_path), tmp_path / "run", None, env={"X": "1"}) == 0
    assert seen["cmd"][2:4] == ["gemkr_lab.cli", "run-cell"]  # which applies its own config's numerics again
    assert {k: seen["env"][k] for k in PORTABLE_ENV} == PORTABLE_ENV and seen["env"]["X"] == "1"


@pytest.mark.slow
def test_a_sweep_launched_trainer_runs_portable_whatever_the_sweeps_environment(monkeypatch, tmp_path, tiny_overrides):
    """The run-cell process applies its config's mode itself: a parent with other kernels cannot leak into it."""
    if numerics._missing_isa():
        pytest.skip(f"portable mode falls back on this CPU: {numerics._missing_isa()}")
    for k, v in {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}.items():
        monkeypatch.setenv(k, v)
    overrides = [*tiny_overrides, "train.accelerator=cpu"]
    out = run_dir(tmp_path, with_seed(load_experiment("tiny-cpu/full", overrides), 0))
    code = grid.launch("tiny-cpu/full", overrides, 0, str(tmp_path), out, None)
    assert code == 0, (out / "log.txt").read_text(encoding="utf-8")
    hw = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["hardware"]
    assert hw["torch_cpu_capability"] == "AVX2" and hw["portable_cpu_numerics"]["applied"] is True
    assert "replaced ATEN_CPU_CAPABILITY=default" in hw["portable_cpu_numerics"]["note"]


def test_the_manifest_records_cpu_numerics_threads_and_determinism(tiny_overrides):
    config = with_seed(load_experiment("tiny-cpu/full", tiny_overrides), 0)
    hw = new_manifest(config, 0, check_prepared(config), None)["hardware"]
    assert hw.keys() >= HARDWARE_KEYS
    assert hw["machine"] and hw["cpus"] >= 1 and isinstance(hw["gpus"], list)
    assert hw["torch_cpu_capability"] == str(torch.backends.cpu.get_cpu_capability()).upper()
    assert hw["portable_cpu_numerics"]["requested"] is True
    assert {"deterministic_algorithms", "cudnn_deterministic", "cudnn_benchmark"} <= hw["determinism"].keys()
    assert hw["threads"]["torch"] == torch.get_num_threads() and "OMP_NUM_THREADS" in hw["threads"]
    assert set(PORTABLE_ENV) <= hw["numerics_env"].keys()
    if numerics.cpu_flags() is not None:
        assert {"avx2", "fma"} & set(hw["cpu_flags"]) == {"avx2", "fma"} & numerics.cpu_flags()


def test_tiny_cpu_presets_are_portable_and_paper_presets_are_not():
    for path in EXPERIMENTS_DIR.rglob("*.yaml"):
        preset = str(path.relative_to(EXPERIMENTS_DIR))[: -len(".yaml")]
        assert load_experiment(preset).train.portable_cpu_numerics is preset.startswith("tiny-cpu/"), preset


def test_a_table_of_mixed_numerics_says_so():
    same = {("AMD EPYC", "AVX2", "portable", "no GPU"): ["tiny-cpu/full seed 0", "tiny-cpu/full seed 1"]}
    assert numerics.numerics_note(same) is None
    mixed = same | {numerics.numerics_key({"cpu_model": "Xeon", "torch_cpu_capability": "AVX512", "gpus": []}): ["x"]}
    note = numerics.numerics_note(mixed)
    assert "'AMD EPYC', torch CPU kernels AVX2, portable numerics, no GPU: 2 runs" in note
    assert "'Xeon', torch CPU kernels AVX512, unrecorded numerics, no GPU: 1 run (x)" in note
    assert numerics.numerics_key(None) == ("unrecorded", "unrecorded", "unrecorded", "no GPU")


def test_the_report_notes_runs_of_different_numerics(monkeypatch, tmp_path):
    import pandas as pd

    from gemkr_lab.report import table

    runs = {("a", 0): tmp_path / "a0", ("a", 1): tmp_path / "a1"}
    hw = {"cpu_model": "AMD EPYC", "torch_cpu_capability": "AVX2", "gpus": []}
    manifests = {out: {"status": "complete", "hardware": hw} for out in runs.values()}
    for out in runs.values():
        out.mkdir()
        (out / "metrics.json").write_text(json.dumps({"means": {"R@5": 0.5}, "per_query": {"q": {"R@5": 0.5}}}))
    monkeypatch.setattr(table, "current_run", lambda sweep, cell, seed: runs[cell, seed])
    monkeypatch.setattr(table, "read_manifest", lambda out: manifests[out])
    sweep = grid.GridSweep(name="t", root=str(tmp_path), cells=("a",), seeds=(0, 1))
    assert not any("Hardware/numerics differ" in n for n in table.summarize(sweep, table.collect(sweep)).attrs["notes"])
    manifests[tmp_path / "a1"] = {"status": "complete", "hardware": hw | {"torch_cpu_capability": "AVX512"}}
    notes = table.summarize(sweep, table.collect(sweep)).attrs["notes"]
    (note,) = [n for n in notes if n.startswith("Hardware/numerics differ")]
    assert "AVX2, unrecorded numerics, no GPU: 1 run (a seed 0)" in note and "AVX512" in note and "a seed 1" in note
    frame = pd.DataFrame([{"cell": "a", "seed": 0, "status": "complete", "R@5": 50.0, "per_query": {}}])
    assert table._mixed_numerics(frame) == []  # a frame without the column (older callers): no note


def test_numerics_error_is_a_user_error():
    assert issubclass(NumericsError, ValueError)  # the CLI prints one line and exits 2


def test_evaluate_applies_the_numerics_the_run_was_trained_with(monkeypatch, tmp_path):
    import yaml

    from gemkr_lab.config.experiment import to_dict

    monkeypatch.setattr(numerics, "_state", None)
    for preset, wanted in (("tiny-cpu/full", True), ("paper/gemkr-7b", False)):
        run = tmp_path / preset.replace("/", "__")
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_experiment(preset)), sort_keys=False))
        assert numerics.apply_for_run(run)["requested"] is wanted
