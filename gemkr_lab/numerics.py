"""Portable CPU numerics: the same trained tensors on every x86-64 CPU with AVX2, and what a run's hardware was.

torch picks its CPU kernels by the instruction set it finds: ATen's vectorised kernels (DEFAULT / AVX2 /
AVX512), MKL's BLAS code path and oneDNN's primitives. Their results differ in the last bits (another vector
width sums in another order), and training amplifies that: after 40 steps a tiny model trained on an AVX-512
machine is not the one trained on an AVX2 machine. Portable mode (`train.portable_cpu_numerics`) holds all
ATen to AVX2 and MKL to its cross-vendor branch through the environment torch reads when it loads, and keeps
oneDNN out of the computation once torch is loaded (`hold_kernels`):

    ATEN_CPU_CAPABILITY=avx2   MKL_CBWR=COMPATIBLE   ONEDNN_MAX_CPU_ISA=AVX2   torch.backends.mkldnn.enabled=False

Why COMPATIBLE and not MKL's AVX2 branch: MKL documents its AVX2..AVX512 branches for Intel CPUs only; on other
CPUs (AMD) `MKL_CBWR=AVX2` runs its automatic branch, so an AMD-made table would not repeat on an Intel machine.
COMPATIBLE (SSE2 without approximate reciprocals, fixed blocking, deterministic reductions) is the branch MKL
supports on every x86-64 CPU. Why oneDNN off: its primitives pick their blocking from the CPU's cache sizes, so
the same instruction set may still sum in another order on another CPU; with it off, convolutions run ATen's own
kernels over MKL's GEMM, both held above. `ONEDNN_MAX_CPU_ISA` stays set for anything that reaches oneDNN anyway.

`apply_for(config)` sets them in `os.environ` (over whatever the user's environment says) before torch is
imported; every process started afterwards inherits them (a sweep's `run-cell` processes, Lightning's DDP
ranks, the jobs sbatch submits from a process that has them). The CLI calls it right after a config is resolved
(`train`, `run-cell`, `evaluate`); nothing before that imports torch.

Once torch is loaded the choice is made, so a process that imported torch first is refused (`NumericsError`)
unless it already runs with exactly these settings; it is never re-executed: re-executing replaces the whole
process, which is wrong for the in-process callers that can reach this point at all (tests, notebooks,
`cli.main(argv)`), and the CLI never gets here with torch loaded. A CPU without AVX2 (and FMA, which ATen's
AVX2 kernels need) falls back to its native kernels with a warning; the manifest records it.

Bit-for-bit holds for the same torch build and the same thread counts (both are in the manifest), on CPU;
GPUs are outside this mode (see `hardware`: the determinism switches are recorded).

A leaf: imports nothing of ours at module level, and torch only where a function asks it something.
"""

import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}
"""What portable mode sets: ATen's kernels held to AVX2, MKL's cross-vendor code path (conditional numerical
reproducibility, COMPATIBLE), oneDNN's instruction set held to AVX2."""
NUMERICS_ENV = (*PORTABLE_ENV, "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")
"""Environment variables that choose CPU code paths, recorded in the manifest as they are."""
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MARK_ENV = "GEMKR_PORTABLE_CPU_NUMERICS"
"""Set by `apply_portable_cpu_numerics` for the processes that follow: "1" (applied) or "fallback"."""
RELEVANT_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq")
"""CPU flags shown in the manifest, with every other avx512* and amx* flag the CPU has."""
NEEDED_FLAGS = ("avx2", "fma")
"""What ATen's AVX2 kernels need (a CPU without them would fault on ATEN_CPU_CAPABILITY=avx2)."""


class NumericsError(ValueError):
    """Portable numerics were asked for in a process that loaded torch with other settings."""


_state: dict[str, Any] | None = None
"""What `apply_portable_cpu_numerics` did in this process (the manifest records it)."""


def apply_for(config) -> dict[str, Any]:
    """Apply the numerics an experiment config asks for (`config.train.portable_cpu_numerics`), before torch loads.

    Returns what was done (see `apply_portable_cpu_numerics`).
    """
    return apply_portable_cpu_numerics(config.train.portable_cpu_numerics)


def apply_for_run(run: str | Path) -> dict[str, Any]:
    """`apply_for` the config a run directory was trained with (its `config.yaml`), for decoding it again."""
    import yaml

    from gemkr_lab.config.experiment import ExperimentConfig, build

    path = Path(run) / "config.yaml"
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    return apply_for(build(ExperimentConfig, values, where=str(path), sources={}))


def apply_portable_cpu_numerics(enabled: bool) -> dict[str, Any]:
    """Hold torch's CPU kernels, MKL and oneDNN to AVX2 in this process and those it starts (when `enabled`).

    Returns {"requested", "applied", "note", "overridden"}: `overridden` names the user's settings it replaced.
    Disabled, nothing is changed (the environment is as the user set it). Raises `NumericsError` when torch is
    already loaded with other settings; warns and falls back (native kernels) on a CPU without AVX2 and FMA.
    """
    global _state
    if not enabled:
        _state = {"requested": False, "applied": False, "note": None, "overridden": {}}
        return _state
    if _state is not None and _state["requested"] and _state["applied"] and _in_place():
        return _state  # applied already in this process (the CLI, then the manifest)
    missing = _missing_isa()
    if missing:
        note = f"fallback: {missing}; torch, MKL and oneDNN use this CPU's native kernels"
        warnings.warn(f"portable CPU numerics (train.portable_cpu_numerics) {note}", RuntimeWarning, stacklevel=2)
        os.environ[MARK_ENV] = "fallback"
        _state = {"requested": True, "applied": False, "note": note, "overridden": {}}
        return _state
    if "torch" in sys.modules:
        if not _in_place():
            raise NumericsError(
                "portable CPU numerics (train.portable_cpu_numerics=true) must be set before torch is imported, "
                f"and this process imported torch with {_describe_current()}; start it with "
                + " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
                + " in its environment (the gemkr-lab verbs do that themselves), or set "
                "train.portable_cpu_numerics=false"
            )
        _state = {"requested": True, "applied": True, "note": "set before torch was imported", "overridden": {}}
        os.environ[MARK_ENV] = "1"
        return _state
    overridden = {k: os.environ[k] for k, v in PORTABLE_ENV.items() if os.environ.get(k, v) != v}
    os.environ.update(PORTABLE_ENV)
    os.environ[MARK_ENV] = "1"
    note = ("replaced " + ", ".join(f"{k}={v}" for k, v in overridden.items())) if overridden else None
    _state = {"requested": True, "applied": True, "note": note, "overridden": overridden}
    return _state


def hold_kernels(enabled: bool) -> None:
    """Once torch is loaded, in a process that applied portable mode: keep oneDNN out (see the module doc).

    Called where a model is built for training or decoding (`GeMKRModule`); a no-op when the mode is off or fell
    back. The flag is process-wide, as the environment settings are.
    """
    if not enabled or os.environ.get(MARK_ENV) != "1":
        return
    import torch

    torch.backends.mkldnn.enabled = False
    if _state is not None:
        _state["onednn"] = "off (torch.backends.mkldnn.enabled=False)"


def _in_place() -> bool:
    """The portable settings are in the environment and, where torch is loaded, ATen runs its AVX2 kernels."""
    if any(os.environ.get(k) != v for k, v in PORTABLE_ENV.items()):
        return False
    return "torch" not in sys.modules or _torch_capability() == "AVX2"


def _describe_current() -> str:
    env = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in PORTABLE_ENV)
    return f"CPU capability {_torch_capability()} ({env})"


def _torch_capability() -> str | None:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability()).upper()
    except (ImportError, AttributeError):
        return None


def _missing_isa() -> str | None:
    """Why portable mode cannot run here (not x86-64, or no AVX2/FMA), or None."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "x86-64"):
        return f"the CPU is {platform.machine() or 'unknown'}, not x86-64"
    flags = cpu_flags()
    if flags is None:  # no /proc/cpuinfo (macOS, Windows): every x86-64 Mac and nearly every PC since 2013 has both
        return None
    lacking = [f for f in NEEDED_FLAGS if f not in flags]
    return f"the CPU lacks {' and '.join(f.upper() for f in lacking)}" if lacking else None


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where it cannot be read."""
    info = _cpuinfo()
    return set(info["flags"].split()) if "flags" in info else None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; else what platform knows)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def hardware(config, gpus: list[str]) -> dict[str, Any]:
    """The run manifest's `hardware`: machine, CPU, numerics, threads, determinism switches and `gpus`.

    CPU: model and relevant flags; numerics: torch's CPU capability, the MKL/oneDNN settings, portable mode;
    `gpus`: the names of the visible GPUs. First makes sure the process runs the numerics the config asks for
    (`apply_for`), so that a manifest never says portable of a run that is not. The determinism switches are
    torch's when the manifest is written; the trainer sets them from `train.deterministic` afterwards (which the
    run's config holds).
    """
    portable = apply_for(config)
    hold_kernels(config.train.portable_cpu_numerics)  # as the model built for this run will
    import torch

    flags = cpu_flags()
    shown = None
    if flags is not None:
        shown = sorted(f for f in flags if f in RELEVANT_FLAGS or f.startswith(("avx512", "amx")))
    cudnn = torch.backends.cudnn
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_flags": shown,
        "torch_cpu_capability": _torch_capability(),
        "numerics_env": {k: os.environ.get(k) for k in NUMERICS_ENV},
        "onednn_enabled": bool(torch.backends.mkldnn.enabled),
        "portable_cpu_numerics": {k: portable[k] for k in ("requested", "applied", "note")},
        "threads": {
            "torch": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
            **{k: os.environ.get(k) for k in THREAD_ENV},
        },
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(cudnn.deterministic),
            "cudnn_benchmark": bool(cudnn.benchmark),
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(cudnn.allow_tf32),
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
        "gpus": gpus,
    }


def numerics_key(hardware: dict[str, Any] | None) -> tuple[str, str, str, str]:
    """What must agree for two runs to agree to the digit: (CPU model, torch CPU kernels, numerics mode, GPUs).

    For manifests written before these fields existed, the parts they lack read "unrecorded".
    """
    hw = hardware or {}
    portable = hw.get("portable_cpu_numerics")
    mode = "unrecorded" if portable is None else "portable" if portable.get("applied") else "native"
    gpus = ", ".join(hw["gpus"]) if hw.get("gpus") else "no GPU"
    return (str(hw.get("cpu_model") or "unrecorded"), str(hw.get("torch_cpu_capability") or "unrecorded"), mode, gpus)


def numerics_note(runs: dict[tuple, list[str]], shown: int = 4) -> str | None:
    """A report note when a table's runs come from different hardware or numerics (`numerics_key` -> runs).

    None when they all share one key.
    """
    if len(runs) < 2:
        return None
    parts = []
    for (model, capability, mode, gpus), names in sorted(runs.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
        what = f"CPU {model!r}, torch CPU kernels {capability}, {mode} numerics, {gpus}"
        parts.append(f"{what}: {len(names)} run{'s' * (len(names) != 1)} ({listed})")
    return (
        "Hardware/numerics differ between the runs of this table (from each run's manifest.json), so numbers may "
        "differ in the last digits for that reason alone: " + "; ".join(parts) + ". Runs in portable CPU numerics "
        "(train.portable_cpu_numerics) train the same tensors on any x86-64 CPU with AVX2."
    )
