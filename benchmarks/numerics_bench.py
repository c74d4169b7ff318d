"""What portable CPU numerics (`train.portable_cpu_numerics`) cost: training and decoding time, with and without.

Each run is `gemkr-lab train tiny-cpu/full` in a fresh process (the mode must be set before torch loads) on the
synthetic world, into a fresh root: Lightning training for `--steps` optimizer steps, then decoding the test
split with the preset's decoding. Times are the run's own (its manifest: `train_seconds`, `decode_ms_per_query`)
and the process's wall time. Portable and native runs alternate (ABAB...) so drift of a shared machine hits
both; the 1-minute load average is recorded around each run. Writes `results/<name>.json` and `.md`.

    python benchmarks/numerics_bench.py --steps 100 --repeats 4
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MODES = {"portable": "true", "native": "false", "compatible": "false"}
"""Runs' `train.portable_cpu_numerics`. "compatible": native mode under portable mode's environment
(ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2) but with oneDNN left on: what keeping oneDNN
out adds to portable mode's cost."""
COMPATIBLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _git() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "gemkr_lab"], cwd=REPO, capture_output=True)
    return head.stdout.strip() + (" (gemkr_lab/ dirty)" if dirty.stdout.strip() else "")


def _world(folder: Path) -> tuple[Path, Path]:
    from gemkr_lab.config import DataConfig
    from gemkr_lab.data.prepare import Preparer
    from gemkr_lab.data.world import make_world

    world, prepared = folder / "world", folder / "prepared"
    if not (world / "world.json").is_file():
        make_world(world, seed=0, size="small")
    Preparer(DataConfig(), world, prepared, progress=False).run()
    return world, prepared


def _run(mode: str, i: int, args, world: Path, prepared: Path, folder: Path, env: dict) -> dict:
    root = folder / f"runs-{mode}-{i}"
    cmd = [
        sys.executable,
        "-m",
        "gemkr_lab.cli",
        "train",
        "tiny-cpu/full",
        f"data_root={world}",
        f"prepared={prepared}",
        f"train.max_steps={args.steps}",
        "train.accelerator=cpu",
        "tracking.wandb=false",
        f"train.portable_cpu_numerics={MODES[mode]}",
        "--root",
        str(root),
    ]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        cmd, env=env | (COMPATIBLE_ENV if mode == "compatible" else {}), capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} run {i} failed:\n{done.stdout}\n{done.stderr}")
    (manifest_path,) = root.glob("*/seed-*/*/manifest.json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    metrics = json.loads((manifest_path.parent / "metrics.json").read_text(encoding="utf-8"))["means"]
    hw = manifest["hardware"]
    return {
        "mode": mode,
        "repeat": i,
        "train_s": manifest["train_seconds"],
        "decode_ms_per_query": manifest["decode_ms_per_query"],
        "wall_s": round(wall, 2),
        "R@5": metrics.get("R@5"),
        "load1_before": round(load_before, 2),
        "load1_after": round(os.getloadavg()[0], 2),
        "torch_cpu_capability": hw.get("torch_cpu_capability"),
        "numerics_env": hw.get("numerics_env"),
        "threads": hw.get("threads"),
    }


def _summary(rows: list[dict]) -> dict:
    out = {}
    modes = sorted({r["mode"] for r in rows}, key=list(MODES).index)
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        out[mode] = {
            k: {
                "median": statistics.median(r[k] for r in mine),
                "min": min(r[k] for r in mine),
                "max": max(r[k] for r in mine),
            }
            for k in ("train_s", "decode_ms_per_query", "wall_s")
        }
    for mode in (m for m in modes if m != "native" and "native" in modes):  # against native
        out[f"ratio {mode}/native (medians)"] = {
            k: round(out[mode][k]["median"] / out["native"][k]["median"], 3) for k in out[mode]
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of tiny-cpu/full (batch 16)")
    p.add_argument("--repeats", type=int, default=4, help="runs per mode, interleaved")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS / MKL_NUM_THREADS of the runs")
    p.add_argument("--work", help="folder for the world and the runs (default: a temporary one)")
    p.add_argument("--modes", nargs="+", default=["portable", "native"], choices=list(MODES))
    p.add_argument("--name", default="numerics_bench")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    threads = str(args.threads)
    env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        folder = Path(tmp)
        world, prepared = _world(folder)
        rows = []
        for i in range(args.repeats):
            for mode in args.modes:  # ABAB: portable, native, portable, native, ...
                rows.append(_run(mode, i, args, world, prepared, folder, env))
                print(
                    json.dumps(
                        {
                            k: rows[-1][k]
                            for k in ("mode", "repeat", "train_s", "decode_ms_per_query", "wall_s", "load1_before")
                        }
                    ),
                    flush=True,
                )
    from gemkr_lab.numerics import cpu_flags, cpu_model

    flags = sorted(f for f in (cpu_flags() or ()) if f.startswith(("avx", "amx", "fma")))
    result = {
        "command": " ".join(["python", "benchmarks/numerics_bench.py", *sys.argv[1:]]),
        "commit": _git(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpu": cpu_model(), "flags": flags, "cpus": os.cpu_count(), "host": platform.node()},
        "steps": args.steps,
        "threads": args.threads,
        "runs": rows,
        "summary": _summary(rows),
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    s = result["summary"]
    lines = [
        f"# Portable CPU numerics: cost ({args.name})",
        "",
        f"`{result['command']}` at {result['commit']}, {result['date']}; {result['machine']['cpu']} "
        f"({', '.join(flags)}), {os.cpu_count()} cores, {args.threads} thread(s) per run.",
        f"Each run: `gemkr-lab train tiny-cpu/full train.max_steps={args.steps}` (batch 16) in a fresh process, "
        "then decoding the synthetic test split; portable and native runs interleaved.",
        "",
        "| mode | train s, median [min-max] | decode ms/query | process wall s |",
        "|---|---|---|---|",
    ]
    for mode in args.modes:
        cells = [
            f"{s[mode][k]['median']:.2f} [{s[mode][k]['min']:.2f}-{s[mode][k]['max']:.2f}]"
            for k in ("train_s", "decode_ms_per_query", "wall_s")
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    for mode in (m for m in args.modes if m != "native" and "native" in args.modes):
        ratio = s[f"ratio {mode}/native (medians)"]
        lines.append(
            f"{mode.capitalize()} / native, medians: train {ratio['train_s']}, decode "
            f"{ratio['decode_ms_per_query']}, wall {ratio['wall_s']}."
        )
    lines += [
        "1-minute load average before each run: "
        + ", ".join(f"{r['mode'][0]}{r['repeat']} {r['load1_before']}" for r in rows)
        + f" (on {os.cpu_count()} cores).",
        "torch CPU kernels: " + ", ".join(sorted({f"{r['mode']} {r['torch_cpu_capability']}" for r in rows})) + ".",
    ]
    (ROOT / "results" / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
