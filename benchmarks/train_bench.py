"""Training throughput of GeMKR at a given size: samples/s, tokens/s, peak memory and MFU.

Random weights (speed does not depend on them), synthetic batches of the official layout (prompt ~48
tokens, 3 visual tokens, a 9-token clue), LoRA r=8 on q/v, AdamW. Warm-up steps, then timed steps.

    python benchmarks/train_bench.py                                         # tiny model on CPU
    python benchmarks/train_bench.py --vision ViT-L-14 --llm llama-7b --device cuda --dtype bfloat16 \\
        --batch 12 --peak-tflops 989                                          # paper shape on one H100
    python benchmarks/train_bench.py --tax --name train_tax                  # the harness's tax (issue #26)

`--tax` measures what the harness costs on a training step: each preset (default tiny-cpu/full, the tiny GeMKR
fully fine-tuned, and tiny-cpu/lora, the same with LoRA on the tiny Llama) on the synthetic world trains
`--steps` optimizer steps through `gemkr_lab.model.train.fit` (Lightning, its callbacks: progress lines, the
training history, checkpoints, stop-on-SIGTERM; the resumable loader) and through a plain PyTorch loop written
here over the same module and loader (`build_model_and_data`: the same seed, initial weights, batches in the
same order), with the module's own `configure_optimizers` (AdamW and the step schedule), the same clipping and
loss. The preset's `max_steps` stays (so the schedule and the logging interval are the real run's); a callback
stops fit after `--steps`. Harness and plain runs alternate (ABAB, `--repeats` pairs); a step's time is the
interval between consecutive step ends (batch fetch, hooks, forward, backward, clip, optimizer, schedule),
the first `--warmup` steps of each run left out. `--profile` adds one cProfile'd run of each and reports per
step where the time goes.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from gemkr_lab.config.model import ModelConfig
from gemkr_lab.model.gemkr import LLM_SHAPES, Batch, GeMKR

ROOT = Path(__file__).resolve().parent


def _world(work: Path) -> tuple[Path, Path]:
    """The synthetic world (seed 0) and its prepared data, made once under `work`."""
    from gemkr_lab.config import DataConfig
    from gemkr_lab.data.prepare import Preparer
    from gemkr_lab.data.world import make_world

    world, prepared = work / "tax-world", work / "tax-world-prepared"
    if not (prepared / "instructions_train.jsonl").is_file():
        make_world(world, seed=0)
        Preparer(DataConfig(), world, prepared, progress=False).run()
    return world, prepared


class _StepClock:
    """Step-end timestamps of a Lightning fit; stops it after `steps` optimizer steps."""

    def __new__(cls, steps: int):
        import lightning as L

        class StepClock(L.Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []
                self.marks: list[tuple[str, float]] = []  # phase marks in process CPU time (see _phases)

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                self.marks.append(("start", time.process_time()))

            def on_before_backward(self, trainer, pl_module, loss) -> None:
                self.marks.append(("backward", time.process_time()))

            def on_after_backward(self, trainer, pl_module) -> None:
                self.marks.append(("backward_done", time.process_time()))

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize()
                self.ends.append((time.perf_counter(), time.process_time()))
                self.marks.append(("end", self.ends[-1][1]))
                if trainer.global_step >= steps:
                    trainer.should_stop = True

        return StepClock()


def _harness_run(exp, tokenizer, out: Path, steps: int, device: str = "cpu") -> tuple[list, float, list]:
    """Step-end (wall, CPU) times, total seconds and phase marks of `fit` (the harness path), `steps` steps."""
    import shutil

    from gemkr_lab.model.train import fit

    shutil.rmtree(out, ignore_errors=True)
    clock = _StepClock(steps)
    started = time.perf_counter()
    fit(
        exp.prepared,
        exp.data_root,
        tokenizer,
        out,
        model_config=exp.model,
        data_config=exp.data,
        train_config=exp.train,
        limit_train=exp.limit_train,
        callbacks=[clock],
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        resume=False,
    )
    return clock.ends, time.perf_counter() - started, clock.marks


def _plain_run(exp, tokenizer, steps: int, device: str = "cpu") -> tuple[list, float, list]:
    """The same module, loader, optimizer and schedule in a plain PyTorch loop: as `_harness_run`."""
    import itertools

    from gemkr_lab.model.build import build_model_and_data

    if exp.train.precision != "32-true":  # the loop below does no autocast: the comparison would not be fair
        raise ValueError(f"--tax compares 32-true training only, not {exp.train.precision}")
    started = time.perf_counter()
    module, data = build_model_and_data(
        exp.prepared,
        exp.data_root,
        tokenizer,
        model_config=exp.model,
        data_config=exp.data,
        train_config=exp.train,
        limit_train=exp.limit_train,
    )
    module.to(device)  # before the loader: region features are computed on the tower's device, as under fit
    data.setup("fit")
    loader = data.train_dataloader()
    optim = module.configure_optimizers()
    opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    clip, acc = exp.train.gradient_clip_val, exp.train.accumulate_grad_batches
    params = [q for q in module.parameters() if q.requires_grad]
    module.train()
    ends: list[float] = []
    marks: list[tuple[str, float]] = []
    done, micro = 0, 0
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            batch = dataclasses.replace(batch, images=batch.images.to(device), objects=batch.objects.to(device))
            marks.append(("start", time.process_time()))
            total, count = module.model.loss_terms(batch)
            loss = total / count / acc
            marks.append(("backward", time.process_time()))
            loss.backward()
            marks.append(("backward_done", time.process_time()))
            micro += 1
            if micro % acc:
                continue
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            done += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            ends.append((time.perf_counter(), time.process_time()))
            marks.append(("end", ends[-1][1]))
            if done >= steps:
                return ends, time.perf_counter() - started, marks
    raise AssertionError("unreachable")


_MODEL_CPU: list[float] = []
"""CPU seconds of each `GeMKR.loss_terms` call while `--tax` runs (the model's forward, the same work both ways)."""


def _time_model_forward() -> None:
    """Wrap `GeMKR.loss_terms` (for both paths alike) to record its CPU time in `_MODEL_CPU`."""
    original = GeMKR.loss_terms

    def timed(self, batch):
        started = time.process_time()
        out = original(self, batch)
        _MODEL_CPU.append(time.process_time() - started)
        return out

    GeMKR.loss_terms = timed


PHASES = {
    "batch fetch and transfer": ("end", "start"),
    "forward (training_step and its hooks)": ("start", "backward"),
    "backward": ("backward", "backward_done"),
    "clip, optimizer, schedule, batch-end hooks": ("backward_done", "end"),
}
"""Per-step phases between the marks both paths make (process CPU time; accumulation 1 assumed)."""


def _phases(marks: list[tuple[str, float]], warmup: int) -> dict[str, list[float]]:
    """Each phase's CPU seconds per step after `warmup` steps (fetch: from the previous step's end)."""
    steps, current = [], {}
    for key, t in marks:
        if key == "start" and "end" in current:
            current = {"prev_end": current["end"]}
        current[key] = t
        if key == "end":
            steps.append(dict(current))
    out = {name: [] for name in PHASES}
    for st in steps[warmup:]:
        for name, (a, b) in PHASES.items():
            a = "prev_end" if a == "end" else a
            if a in st and b in st:
                out[name].append(st[b] - st[a])
    return out


def _step_times(ends: list[tuple[float, float]], warmup: int, clock: int = 0) -> list[float]:
    """Intervals between step ends after `warmup` steps: wall (clock 0) or process CPU time (clock 1)."""
    return [b[clock] - a[clock] for a, b in zip(ends[warmup:], ends[warmup + 1 :], strict=False)]


def _profile(fn) -> dict[str, float]:
    """cProfile `fn`; seconds inside the frames that both paths share, and the whole."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats
    groups = {
        "forward (GeMKR.loss_terms)": lambda f: f[2] == "loss_terms" and f[0].endswith("gemkr.py"),
        "backward": lambda f: f[2] == "backward" and f[0].endswith("torch/_tensor.py"),
        "optimizer step (AdamW)": lambda f: f[2] == "step" and f[0].endswith("adamw.py"),
        "gradient clipping": lambda f: f[2] == "clip_grad_norm_" and "torch/nn/utils/clip_grad" in f[0],
        "batch fetch (DataLoader __next__)": lambda f: f[2] == "__next__" and f[0].endswith("dataloader.py"),
        "checkpoint save": lambda f: f[2] == "save_checkpoint" and f[0].endswith("trainer.py"),
    }
    out = {}
    for name, match in groups.items():
        # the outermost matching frames only: cumulative time of calls not made from another match
        out[name] = sum(
            st[3] for func, st in stats.items() if match(func) and not any(match(caller) for caller in st[4])
        )
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])
    out["_top_tottime"] = [
        {"function": f"{Path(f[0]).name}:{f[1]}({f[2]})", "tottime_s": round(st[2], 4), "calls": st[1]}
        for f, st in top[:25]
    ]
    return out


def _transfer_cost(exp, tokenizer, repeats: int = 100) -> dict[str, float]:
    """CPU ms to move one real training batch to the CPU: Lightning's default walk vs the data module's hook."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from gemkr_lab.model.build import build_model_and_data

    _, data = build_model_and_data(
        exp.prepared,
        exp.data_root,
        tokenizer,
        model_config=exp.model,
        data_config=exp.data,
        train_config=exp.train,
        limit_train=exp.limit_train,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    device = torch.device("cpu")
    out = {}
    for name, fn in (
        ("lightning_default_ms", lambda: move_data_to_device(batch, device)),
        ("gemkr_datamodule_hook_ms", lambda: data.transfer_batch_to_device(batch, device, 0)),
    ):
        started = time.process_time()
        for _ in range(repeats):
            fn()
        out[name] = 1000 * (time.process_time() - started) / repeats
    return out


def harness_tax(args) -> None:
    """Harness (Lightning `fit`) vs plain PyTorch loop, per preset, ABAB; JSON + markdown."""
    import numpy as np

    from gemkr_lab.config.experiment import load_experiment
    from gemkr_lab.kb.tokenize import load_tokenizer

    work = args.work
    world, prepared = _world(work)
    tokenizer = load_tokenizer(world / "tokenizer")
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    result = {
        "benchmark": args.name,
        "command": "python " + " ".join(["benchmarks/train_bench.py", *__import__("sys").argv[1:]]),
        "commit": _commit(),
        "environment": {
            "machine": platform.machine(),
            "cpu_model": cpu,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": __import__("lightning").__version__,
            "load_average_start": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "setup": {
            "device": args.device,
            "steps_per_run": args.steps,
            "warmup_steps_left_out": args.warmup,
            "pairs": args.repeats,
            "order": "harness, plain, plain, harness, ... (ABBA: pairs alternate which side runs first)",
            "harness_batch_transfer": "Lightning's default (before #26)"
            if args.lightning_batch_transfer
            else "GeMKRDataModule.transfer_batch_to_device (#26)",
            "step_time": "interval between consecutive optimizer-step ends (batch fetch, hooks, forward, backward, "
            "clip, optimizer, schedule)",
        },
        "presets": {},
    }
    for preset in args.presets:
        exp = load_experiment(preset, [f"data_root={world}", f"prepared={prepared}", "tracking.wandb=false"])
        harness, plain, ratios, totals, loads = [], [], [], {"harness": [], "plain": []}, []
        cpu = {"harness": [], "plain": [], "ratios": []}
        phases = {side: {name: [] for name in PHASES} for side in ("harness", "plain")}
        model_cpu = {"harness": [], "plain": []}
        for rep in range(args.repeats):
            runs = {
                "harness": lambda exp=exp: _harness_run(exp, tokenizer, work / "tax-run", args.steps, args.device),
                "plain": lambda exp=exp: _plain_run(exp, tokenizer, args.steps, args.device),
            }
            order = list(runs) if rep % 2 == 0 else list(runs)[::-1]  # ABBA: neither side always runs first
            ends = {}
            for side in order:
                _MODEL_CPU.clear()
                ends[side], total, marks = runs[side]()
                model_cpu[side] += _MODEL_CPU[args.warmup + 1 :]
                totals[side].append(total)
                for name, values in _phases(marks, args.warmup).items():
                    phases[side][name] += values
            h, pl = _step_times(ends["harness"], args.warmup), _step_times(ends["plain"], args.warmup)
            hc, pc = _step_times(ends["harness"], args.warmup, 1), _step_times(ends["plain"], args.warmup, 1)
            harness += h
            plain += pl
            cpu["harness"] += hc
            cpu["plain"] += pc
            ratios.append(float(np.median(h) / np.median(pl)))
            cpu["ratios"].append(float(np.median(hc) / np.median(pc)))
            loads.append(os.getloadavg()[0])
            print(
                f"{preset} pair {rep + 1}/{args.repeats} ({', '.join(order)}): harness {1000 * np.median(h):.1f} "
                f"ms/step, plain {1000 * np.median(pl):.1f} ms/step, ratio {ratios[-1]:.3f}, CPU-time ratio "
                f"{cpu['ratios'][-1]:.3f} (load {loads[-1]:.2f})",
                flush=True,
            )

        def spread(values, scale=1.0):
            return {
                "median": scale * float(np.median(values)),
                "p25": scale * float(np.percentile(values, 25)),
                "p75": scale * float(np.percentile(values, 75)),
                "n": len(values),
            }

        entry = {
            "train": {
                k: getattr(exp.train, k)
                for k in ("batch_size", "accumulate_grad_batches", "max_steps", "gradient_clip_val", "precision", "lr")
            },
            "use_lora": exp.model.use_lora,
            "harness_ms_per_step": spread(harness, 1000),
            "plain_ms_per_step": spread(plain, 1000),
            "ratio_of_median_step_times": float(np.median(harness) / np.median(plain)),
            "ratio_per_pair": spread(ratios),
            "ratio_of_mean_step_times": float(np.mean(harness) / np.mean(plain)),
            "cpu_ms_per_step_by_phase": {
                side: {name: spread(v, 1000) for name, v in by.items() if v} for side, by in phases.items()
            },
            "model_forward_cpu_ms": {side: spread(v, 1000) for side, v in model_cpu.items()},
            "harness_cpu_ms_per_step": spread(cpu["harness"], 1000),
            "plain_cpu_ms_per_step": spread(cpu["plain"], 1000),
            "cpu_ratio_of_median_step_times": float(np.median(cpu["harness"]) / np.median(cpu["plain"])),
            "cpu_ratio_per_pair": spread(cpu["ratios"]),
            "run_seconds_incl_setup": {k: spread(v) for k, v in totals.items()},
            "load_average_per_pair": loads,
        }
        # the harness's own cost, robust to the machine's drift: CPU time per step outside the model's forward and
        # backward (the same work on both sides), harness minus plain, over the plain step
        outside = {
            side: float(np.median(cpu[side]) - np.median(model_cpu[side]) - np.median(phases[side]["backward"]))
            for side in ("harness", "plain")
        }
        entry["cpu_ms_per_step_outside_model"] = {k: 1000 * v for k, v in outside.items()}
        entry["tax_outside_model"] = 1 + (outside["harness"] - outside["plain"]) / float(np.median(cpu["plain"]))
        entry["batch_transfer_cpu_ms"] = _transfer_cost(exp, tokenizer)
        if args.profile:
            prof = {}
            for name, fn in (
                ("harness", lambda exp=exp: _harness_run(exp, tokenizer, work / "tax-run", args.steps, args.device)),
                ("plain", lambda exp=exp: _plain_run(exp, tokenizer, args.steps, args.device)),
            ):
                t = time.perf_counter()
                prof[name] = _profile(fn)
                prof[name]["_wall_s"] = time.perf_counter() - t
            entry["profile_s_per_run"] = prof
        result["presets"][preset] = entry
        print(json.dumps({k: v for k, v in entry.items() if k != "profile_s_per_run"}, indent=1), flush=True)
    result["environment"]["load_average_end"] = list(os.getloadavg())
    out = Path(os.environ.get("GEMKR_BENCH_RESULTS", ROOT / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{args.name}.md").write_text("\n".join(_tax_markdown(result)) + "\n")


def _tax_markdown(result: dict) -> list[str]:
    env, setup = result["environment"], result["setup"]
    md = [
        f"# {result['benchmark']}",
        "",
        f"Command: `{result['command']}` at {result['commit']}",
        "",
        f"CPU: {env['cpu_model']} ({env['cpus']} cores, torch threads {env['torch_threads']}); load average (1 min) "
        f"at start {env['load_average_start'][0]:.2f}, at end {env['load_average_end'][0]:.2f}; {env['date']}; "
        f"torch {env['torch']}, lightning {env['lightning']}.",
        "",
        f"{setup['pairs']} pairs of runs, {setup['order']}, {setup['steps_per_run']} optimizer steps a run, the "
        f"first {setup['warmup_steps_left_out']} left out; step time = {setup['step_time']}. Harness batch "
        f"transfer: {setup['harness_batch_transfer']}.",
        "",
        "| preset | harness ms/step median [p25-p75] | plain ms/step median [p25-p75] | harness / plain (medians) "
        "| per-pair ratio median [p25-p75] | ratio of means | CPU ms/step harness / plain | CPU-time ratio (medians) "
        "[per-pair p25-p75] | load per pair |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, e in result["presets"].items():
        h, p, r = e["harness_ms_per_step"], e["plain_ms_per_step"], e["ratio_per_pair"]
        md.append(
            f"| {preset} | {h['median']:.1f} [{h['p25']:.1f}-{h['p75']:.1f}] (n {h['n']}) | {p['median']:.1f} "
            f"[{p['p25']:.1f}-{p['p75']:.1f}] (n {p['n']}) | **{e['ratio_of_median_step_times']:.3f}** | "
            f"{r['median']:.3f} [{r['p25']:.3f}-{r['p75']:.3f}] | {e['ratio_of_mean_step_times']:.3f} | "
            f"{e['harness_cpu_ms_per_step']['median']:.1f} / {e['plain_cpu_ms_per_step']['median']:.1f} | "
            f"**{e['cpu_ratio_of_median_step_times']:.3f}** [{e['cpu_ratio_per_pair']['p25']:.3f}-"
            f"{e['cpu_ratio_per_pair']['p75']:.3f}] | {[round(x, 2) for x in e['load_average_per_pair']]} |"
        )
    for preset, e in result["presets"].items():
        by = e["cpu_ms_per_step_by_phase"]
        md += [
            "",
            f"Where the time goes, {preset}: process CPU ms per step by phase, median [p25-p75] over all pairs "
            "(marks: Lightning hooks in fit, the same points in the plain loop)",
            "",
            "| phase | harness | plain | harness - plain (medians) |",
            "|---|---|---|---|",
        ]
        for name in PHASES:
            h, p = by["harness"].get(name), by["plain"].get(name)
            if h and p:
                md.append(
                    f"| {name} | {h['median']:.1f} [{h['p25']:.1f}-{h['p75']:.1f}] | {p['median']:.1f} "
                    f"[{p['p25']:.1f}-{p['p75']:.1f}] | {h['median'] - p['median']:+.1f} |"
                )
        mf, out = e["model_forward_cpu_ms"], e["cpu_ms_per_step_outside_model"]
        md += [
            "",
            f"The model's forward (`GeMKR.loss_terms`, the same work both ways) takes {mf['harness']['median']:.1f} "
            f"CPU ms a step in the harness and {mf['plain']['median']:.1f} in the plain loop. CPU time per step "
            f"outside the model's forward and backward: harness {out['harness']:.1f} ms, plain {out['plain']:.1f} ms; "
            f"the harness's own cost as a step-time ratio: **{e['tax_outside_model']:.3f}** (1 + (harness - plain "
            "outside the model) / plain step; insensitive to the drift of the model's own speed between runs).",
        ]
        tr = e["batch_transfer_cpu_ms"]
        md += [
            "",
            f"Moving one of its batches to the device (CPU ms a batch, 100 calls): Lightning's default "
            f"{tr['lightning_default_ms']:.2f}, GeMKRDataModule.transfer_batch_to_device "
            f"{tr['gemkr_datamodule_hook_ms']:.3f} (the fix of #26, in the harness figures above).",
        ]
    for preset, e in result["presets"].items():
        prof = e.get("profile_s_per_run")
        if not prof:
            continue
        steps = setup["steps_per_run"]
        md += [
            "",
            f"## Profile, {preset} (cProfile, one run each, ms per step; cProfile slows Python-heavy code)",
            "",
            "| part | harness | plain |",
            "|---|---|---|",
        ]
        for part in prof["harness"]:
            if not part.startswith("_"):
                md.append(
                    f"| {part} | {1000 * prof['harness'][part] / steps:.1f} | "
                    f"{1000 * prof['plain'][part] / steps:.1f} |"
                )
        md.append(
            f"| whole run (setup included) | {1000 * prof['harness']['_wall_s'] / steps:.1f} | "
            f"{1000 * prof['plain']['_wall_s'] / steps:.1f} |"
        )
        md += ["", "Harness run, top functions by own time:", ""]
        md += [
            f"- {t['function']}: {t['tottime_s']:.3f} s, {t['calls']} calls"
            for t in prof["harness"]["_top_tottime"][:15]
        ]
    return md


def _commit() -> str:
    """HEAD, and "+local changes" when the code measured differs from it."""
    import subprocess

    repo = ROOT.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        paths = ["gemkr_lab/model", "gemkr_lab/data", "benchmarks/train_bench.py"]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=repo, capture_output=True, text=True)
        return head.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", default="tiny-vit")
    p.add_argument("--llm", default="tiny", choices=["tiny", *LLM_SHAPES])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--clue-tokens", type=int, default=9)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (H100 bf16 dense: 989)")
    p.add_argument("--name", default="train_bench")
    p.add_argument("--tax", action="store_true", help="harness (Lightning fit) vs a plain PyTorch loop")
    p.add_argument("--presets", nargs="+", default=["tiny-cpu/full", "tiny-cpu/lora"], help="--tax: presets")
    p.add_argument("--repeats", type=int, default=3, help="--tax: harness/plain pairs per preset")
    p.add_argument("--profile", action="store_true", help="--tax: one cProfile'd run of each, per preset")
    p.add_argument("--work", type=Path, default=ROOT / "work", help="--tax: the synthetic world and runs")
    p.add_argument(
        "--lightning-batch-transfer",
        action="store_true",
        help="--tax: the harness with Lightning's default batch transfer (the step before issue #26's fix)",
    )
    args = p.parse_args()
    if args.tax:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        _time_model_forward()
        if args.lightning_batch_transfer:
            import lightning as L

            from gemkr_lab.model.datamodule import GeMKRDataModule

            GeMKRDataModule.transfer_batch_to_device = L.LightningDataModule.transfer_batch_to_device
        harness_tax(args)
        return
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    config = ModelConfig(vision_model=args.vision, llm_dtype=args.dtype)
    vocab = LLM_SHAPES[args.llm]["vocab_size"] if args.llm != "tiny" else 1000
    model = GeMKR(config, vocab, device=args.device, llm_shape=None if args.llm == "tiny" else args.llm)
    model.vision.to(dtype)
    model.train()
    spec = model.vision.spec
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    def batch() -> Batch:
        ids = torch.randint(3, vocab, (args.batch, args.prompt_tokens + args.clue_tokens), generator=gen).tolist()
        return Batch(
            images=torch.randn(args.batch, 3, spec.image_size, spec.image_size, generator=gen).to(args.device, dtype),
            objects=torch.randn(args.batch, config.prefix_length, spec.width, generator=gen).to(args.device, dtype),
            before=[[1, *row[: args.prompt_tokens - 8]] for row in ids],
            after=ids[0][:7],
            targets=[row[args.prompt_tokens :] for row in ids],
        )

    def step() -> None:
        with torch.autocast(device_type=args.device.split(":")[0], dtype=dtype, enabled=args.dtype != "float32"):
            loss = model(batch())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    samples = args.batch * args.steps
    llm_params = sum(q.numel() for q in model.llm.parameters())
    vit_params = sum(q.numel() for q in model.vision.parameters())
    llm_tokens = args.prompt_tokens + 1 + config.object_tokens + args.clue_tokens + 1
    vit_tokens = (spec.image_size // spec.patch_size) ** 2 + 1
    # frozen weights: forward 2NT + activation-gradient backward 2NT (LoRA's weight gradients are negligible)
    flops_per_sample = 4 * (llm_params * llm_tokens + vit_params * vit_tokens)
    achieved = flops_per_sample * samples / seconds
    result = {
        "setup": vars(args) | {"trainable": dict(model.components())},
        "samples_per_second": samples / seconds,
        "tokens_per_second": samples * llm_tokens / seconds,
        "seconds_per_step": seconds / args.steps,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated()
        if args.device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "environment": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        },
    }
    out = Path(os.environ.get("GEMKR_BENCH_RESULTS", ROOT / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "setup"}, indent=2))


if __name__ == "__main__":
    main()
