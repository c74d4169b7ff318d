"""Index benchmark on the synthetic workload of shared/reference/fmindex.md §1.

For each corpus size and backend: build time and peak RSS (in a fresh process), disk bytes per token,
count and locate latency, and the CPU time of the constraint in a simulated constrained decode: 10 beams x 8
steps, each beam following a real corpus continuation, each step running the decoder's own candidate path
(`gemkr_lab.decoding.constraint.step_candidates`: each beam's 11 best allowed tokens, as the official 10
diverse groups need them, then `advance`) on model log-probabilities of two kinds, interleaved query by query:
"likely" (a trained model: the beam's continuation and its 32 most frequent followers score high) and
"random" (a flat, untrained model: no allowed token is favoured, the worst case). Both routes are timed: host
(log-probs read on the CPU, `KBIndex.best_next`) and device (mask + top-k as on a GPU, here on CPU tensors),
and the two are checked to give the same candidates. Writes JSON and markdown to benchmarks/results/.

    python benchmarks/index_bench.py --docs 10000 100000 1000000 [--backends sa fm]
    python benchmarks/index_bench.py --scale-tokens 500000000 --backends fm   # sharded scale check
"""

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

# issue #15's targets at 1M documents (this benchmark measures only this project's index, nothing external)
TARGETS_1M = {"fm_disk_bytes_per_token": 2.5, "peak_bytes_per_token": 8, "decode_ms_random": 5}
DECODE = {"queries": 30, "beams": 10, "steps": 8, "k": 11, "boosted_followers": 32}


def _peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM): unlike ru_maxrss, it does not inherit the parent's peak
    across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_build(args) -> None:
    """Runs in a fresh process: build from the pre-generated corpus; print a JSON line."""
    from gemkr_lab.kb import DocBatch, build_index

    lengths = np.load(args.corpus_dir / "lengths.npy")
    baseline = _peak_rss_bytes()

    def batches(step=100_000):
        # read, not mapped: a tokenizer's stream would not keep the whole corpus resident either
        offs = np.concatenate([[0], np.cumsum(lengths)])
        with open(args.corpus_dir / "tokens.npy", "rb") as fh:
            np.lib.format.read_magic(fh)
            np.lib.format.read_array_header_1_0(fh)
            start = fh.tell()
        for d0 in range(0, lengths.shape[0], step):
            d1 = min(d0 + step, lengths.shape[0])
            chunk = np.fromfile(
                args.corpus_dir / "tokens.npy",
                dtype=np.uint16,
                count=int(offs[d1] - offs[d0]),
                offset=start + 2 * int(offs[d0]),
            )
            yield DocBatch(chunk, lengths[d0:d1])

    t0 = time.perf_counter()
    shards = "auto"  # one shard up to the cap (all of 1M docs), more only past it (the 2.5B-token scale run)
    index = build_index(
        batches(),
        args.index_dir,
        eos_id=2,
        backend=args.backend,
        shards=shards,
        vocab_size=32_000,
        max_shard_tokens=args.max_shard_tokens,
        overwrite=True,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "build_s": seconds,
                "peak_rss_bytes": _peak_rss_bytes(),
                "baseline_rss_bytes": baseline,
                "shards": len(index.shards),
            }
        )
    )


def child_query(args) -> None:
    """Runs in a fresh process: latency of count, locate and a simulated constrained decode."""
    from gemkr_lab.kb import open_index

    index = open_index(args.index_dir, verify=False)
    tokens = np.load(args.corpus_dir / "tokens.npy", mmap_mode="r")
    lengths = np.load(args.corpus_dir / "lengths.npy")
    offs = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng(123)

    def real_span(length):
        while True:
            d = int(rng.integers(lengths.shape[0]))
            if lengths[d] >= length:
                i = int(rng.integers(lengths[d] - length + 1))
                return np.asarray(tokens[offs[d] + i : offs[d] + i + length], dtype=np.int64), d

    def timed(fn, reps=3):
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter_ns()
            out = fn()
            best = min(best, time.perf_counter_ns() - t)
        return best / 1000.0, out

    # warm the JIT and the caches of the first calls
    for _ in range(100):  # sanity: every real span is found, in the document it came from
        q, d = real_span(12)
        assert index.count(q) >= 1 and d in index.docs(q)
    q, _ = real_span(3)
    index.count(q), index.docs(q), index.next_tokens(q[:2])
    simulate_decode(index, real_span, np.random.default_rng(0), n_queries=2)  # warm the JIT
    res: dict = {}

    def latencies(fn, length):
        return [timed(functools.partial(fn, real_span(length)[0]))[0] for _ in range(200)]

    count_us = {L: latencies(index.count, L) for L in range(1, 9)}
    res["count_us_median_by_len"] = {L: float(np.median(v)) for L, v in count_us.items()}
    next_us = {L: latencies(index.next_tokens, L) for L in (1, 2, 3, 8)}
    res["next_tokens_us_mean_by_len"] = {L: float(np.mean(v)) for L, v in next_us.items()}
    res["next_tokens_us_median_by_len"] = {L: float(np.median(v)) for L, v in next_us.items()}
    uniq = []
    while len(uniq) < 200:
        q, _ = real_span(12)
        if index.count(q) == 1:
            uniq.append(q)
    loc = [timed(lambda q=q: index.docs(q))[0] for q in uniq]
    res["locate_unique12_us_median"] = float(np.median(loc))
    res["locate_unique12_us_p90"] = float(np.percentile(loc, 90))
    freq, occ = [], []
    for _ in range(5000):
        if len(freq) >= 50:
            break
        q, _ = real_span(int(rng.integers(2, 4)))
        c = index.count(q)
        if 100 <= c <= 1000:
            freq.append(q)
            occ.append(c)
    if freq:
        t = sum(timed(lambda q=q: index.docs(q), reps=1)[0] for q in freq)
        res["locate_us_per_occurrence"] = t / sum(occ)
    res.update(simulate_decode(index, real_span, rng, n_queries=DECODE["queries"]))
    print(json.dumps(res))


def simulate_decode(index, real_span, rng, n_queries=30):
    """CPU time of the constraint per decoded query: `step_candidates` + `advance` for 10 beams x 8 steps.

    Per query, the same 10 real continuations are decoded with "likely" then "random" log-probabilities, on
    the host route then the device route (interleaved, so that machine load drifts alike over all four).
    Log-probabilities are made outside the timed region. "free" times the unconstrained counterpart (each
    beam's best 11 tokens of the whole row), for scale.
    """
    import torch

    from gemkr_lab.decoding.constraint import IndexConstraint, StepRows, step_candidates

    torch.set_num_threads(1)
    beams, steps, k = DECODE["beams"], DECODE["steps"], DECODE["k"]
    vocab = 32_000
    constraint = IndexConstraint(index, vocab, check_top_m=64, enumerate_below=256)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    kinds = [(c, r) for c in ("likely", "random") for r in ("host", "device")]
    wall = {kind: [] for kind in kinds}
    cpu = {kind: [] for kind in kinds}
    per_step = {kind: np.zeros(steps) for kind in kinds}
    free = []
    for _ in range(n_queries):
        paths = np.stack([real_span(steps)[0] for _ in range(beams)])
        for candidates in ("likely", "random"):
            logprobs, states = [], index.root_states(beams)
            for s in range(steps):  # the log-probabilities of each step, made before timing
                logprobs.append(_logprobs(index, states, paths[:, s], candidates, vocab, gen))
                states = index.advance(states, paths[:, s])
            picked = {}
            for route in ("host", "device"):
                states, total, total_cpu, out = index.root_states(beams), 0.0, 0.0, []
                for s in range(steps):
                    t, c = time.perf_counter(), time.process_time()
                    rows = StepRows(indexed=np.arange(beams))
                    out.append(step_candidates(logprobs[s], k, rows, states, constraint, on_host=route == "host"))
                    states = index.advance(states, paths[:, s])
                    dt, dc = time.perf_counter() - t, time.process_time() - c
                    total, total_cpu = total + dt, total_cpu + dc
                    per_step[(candidates, route)][s] += 1000 * dt
                wall[(candidates, route)].append(1000 * total)
                cpu[(candidates, route)].append(1000 * total_cpu)
                picked[route] = out
            for (th, vh), (td, vd) in zip(picked["host"], picked["device"], strict=True):
                assert (th == td).all() and (vh == vd).all(), "host and device routes disagree"
            if candidates == "likely":  # the continuation is allowed and the model's favourite
                assert all((t[:, 0] == paths[:, s]).all() for s, (t, _) in enumerate(picked["host"]))
        t = time.perf_counter()
        for s in range(steps):
            step_candidates(logprobs[s], k, StepRows(free=np.arange(beams)), on_host=True)
        free.append(1000 * (time.perf_counter() - t))
    res = {"decode_setup": dict(DECODE, queries=n_queries)}
    for (candidates, route), times in wall.items():
        key = f"decode_ms_{candidates}" + ("" if route == "host" else "_device_route")
        res[key + "_median"] = float(np.median(times))
        res[key + "_p25"] = float(np.percentile(times, 25))
        res[key + "_p75"] = float(np.percentile(times, 75))
        res[key + "_p90"] = float(np.percentile(times, 90))
        res[key + "_cpu_median"] = float(np.median(cpu[(candidates, route)]))
        res[key + "_per_step"] = (per_step[(candidates, route)] / n_queries).round(4).tolist()
        res[key + "_queries"] = np.round(times, 4).tolist()
        res[key + "_cpu_queries"] = np.round(cpu[(candidates, route)], 4).tolist()
    res["decode_ms_free_median"] = float(np.median(free))
    return res


def _logprobs(index, states, path_tokens, candidates, vocab, gen):
    """[beams, vocab] log-probabilities: flat noise; "likely" raises each beam's continuation (+40) and its 32
    most frequent followers (+8 + log count) the way a trained model favours what the KB holds."""
    import torch

    logits = torch.randn(len(states), vocab, generator=gen)
    if candidates == "likely":
        ptr, tok, cnt = index.allowed_next(states, with_counts=True)
        for j in range(len(states)):
            t, c = tok[ptr[j] : ptr[j + 1]], cnt[ptr[j] : ptr[j + 1]]
            top = np.argsort(-c, kind="stable")[: DECODE["boosted_followers"]]
            logits[j, torch.as_tensor(t[top])] += torch.as_tensor(8.0 + np.log(c[top]), dtype=torch.float32)
        logits[torch.arange(len(states)), torch.as_tensor(path_tokens)] += 40.0
    return torch.log_softmax(logits, dim=-1)


def generate(corpus_dir: Path, n_docs: int) -> int:
    from gemkr_lab.kb.workload import ZipfWorkload

    if (corpus_dir / "lengths.npy").exists():
        return int(np.load(corpus_dir / "lengths.npy").sum())
    corpus_dir.mkdir(parents=True, exist_ok=True)
    toks, lens = [], []
    for b in ZipfWorkload(seed=0).batches(n_docs):
        toks.append(b.tokens)
        lens.append(b.lengths)
    np.save(corpus_dir / "tokens.npy", np.concatenate(toks))
    np.save(corpus_dir / "lengths.npy", np.concatenate(lens))
    return int(sum(x.sum() for x in lens))


def _commit() -> str:
    """The code measured: HEAD, marked `+changes` when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT.parent, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gemkr_lab", "benchmarks/index_bench.py"],
            cwd=ROOT.parent,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def run_child(mode: str, **kw) -> dict:
    argv = [sys.executable, __file__, "--child", mode]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--backends", nargs="*", default=["sa", "fm"])
    p.add_argument("--work", type=Path, default=ROOT / "work")
    p.add_argument("--scale-tokens", type=int, default=0, help="sharded build of about this many tokens")
    p.add_argument("--max-shard-tokens", type=int, default=0)
    p.add_argument("--name", default="index_bench")
    p.add_argument("--repeats", type=int, default=1, help="runs per size and backend, backends interleaved")
    p.add_argument("--keep-index", action="store_true", help="keep each built index (and its build figures)")
    p.add_argument(
        "--reuse-index",
        action="store_true",
        help="time the queries on an index a --keep-index run left in --work (its recorded build figures and "
        "commit are reported) instead of building it again",
    )
    p.add_argument("--child", choices=["build", "query"])
    p.add_argument("--corpus-dir", type=Path)
    p.add_argument("--index-dir", type=Path)
    p.add_argument("--backend")
    p.add_argument("--render", action="store_true", help="rewrite the markdown of --name from its JSON")
    args = p.parse_args()
    if args.render:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        write_results(args.name, saved["rows"], saved.get("command"), saved.get("runs"), saved["environment"])
        return
    if args.child:
        args.max_shard_tokens = args.max_shard_tokens or None
        (child_build if args.child == "build" else child_query)(args)
        return

    runs = []
    sizes = [args.scale_tokens // 100] if args.scale_tokens else args.docs
    for n_docs in sizes:
        corpus_dir = args.work / f"corpus-{n_docs}"
        t = time.perf_counter()
        n_tokens = generate(corpus_dir, n_docs)
        print(f"corpus {n_docs} docs, {n_tokens} tokens ({time.perf_counter() - t:.1f} s)", flush=True)
        # repeats interleave the backends (sa, fm, sa, fm, ...): machine load drifts alike over both
        for rep, backend in ((r, b) for r in range(args.repeats) for b in args.backends):
            index_dir = args.work / f"index-{backend}-{n_docs}"
            record = args.work / f"index-{backend}-{n_docs}.build.json"  # a kept index's build figures
            if args.reuse_index and index_dir.is_dir() and record.is_file():
                b = json.loads(record.read_text())
                print(f"reusing {index_dir}: built at commit {b['commit']} on {b['built_on']}", flush=True)
            else:
                b = run_child(
                    "build",
                    corpus_dir=corpus_dir,
                    index_dir=index_dir,
                    backend=backend,
                    max_shard_tokens=args.max_shard_tokens,
                )
                b.update(commit=_commit(), built_on=time.strftime("%Y-%m-%d %H:%M"))
                record.write_text(json.dumps(b))
            disk = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file())
            row = {
                "docs": n_docs,
                "tokens": n_tokens,
                "backend": backend,
                "run": rep,
                "shards": b["shards"],
                "build_s": round(b["build_s"], 2),
                "peak_rss_bytes": b["peak_rss_bytes"],
                "peak_bytes_per_token": round(b["peak_rss_bytes"] / n_tokens, 2),
                "baseline_rss_bytes": b["baseline_rss_bytes"],
                "build_peak_above_baseline_bytes_per_token": round(
                    (b["peak_rss_bytes"] - b["baseline_rss_bytes"]) / n_tokens, 2
                ),
                "disk_bytes": disk,
                "disk_bytes_per_token": round(disk / n_tokens, 3),
                "built_at_commit": b["commit"],
            }
            print(json.dumps(row), flush=True)
            row.update(run_child("query", corpus_dir=corpus_dir, index_dir=index_dir, backend=backend))
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_queries")}), flush=True)
            runs.append(row)
            if not args.keep_index:
                shutil.rmtree(index_dir, ignore_errors=True)
                record.unlink(missing_ok=True)
    rows = [
        aggregate([r for r in runs if (r["docs"], r["backend"]) == key])
        for key in dict.fromkeys((r["docs"], r["backend"]) for r in runs)
    ]
    write_results(args.name, rows, runs=runs)


SPREAD = ("build_s", "peak_bytes_per_token", "disk_bytes_per_token", "locate_unique12_us_median")


def aggregate(runs: list[dict]) -> dict:
    """One row from repeated runs: medians (per-query decode times pooled over the runs), with the spread
    (min, max over runs) of the build figures."""
    row = {"runs": len(runs)}
    for key, first in runs[0].items():
        values = [r[key] for r in runs if key in r]
        if key == "run":
            continue
        if key.endswith("_queries"):
            row[key] = [x for v in values for x in v]
        elif (
            isinstance(first, bool)
            or not isinstance(first, int | float | dict | list)
            or len(set(map(str, values))) == 1
        ):
            row[key] = first
        elif isinstance(first, dict):
            row[key] = {k: float(np.median([v[k] for v in values])) if isinstance(first[k], int | float) else first[k]
                        for k in first}  # fmt: skip
        elif isinstance(first, list):
            row[key] = np.mean(values, axis=0).round(4).tolist()
        else:
            row[key] = float(np.median(values))
    for key in SPREAD:
        values = [r[key] for r in runs if key in r]
        if values:
            row[key + "_range"] = [float(min(values)), float(max(values))]
    for key in [k[: -len("_queries")] for k in row if k.endswith("_queries") and not k.endswith("_cpu_queries")]:
        wall, cpu = row[key + "_queries"], row.get(key + "_cpu_queries", [])
        row[key + "_median"] = float(np.median(wall))
        for q in (25, 75, 90):
            row[f"{key}_p{q}"] = float(np.percentile(wall, q))
        if cpu:
            row[key + "_cpu_median"] = float(np.median(cpu))
        row[key + "_run_medians"] = [float(r[key + "_median"]) for r in runs if key + "_median" in r]
    return row


def write_results(
    name: str, rows: list[dict], command: str | None = None, runs: list[dict] | None = None, env: dict | None = None
) -> None:
    """JSON + markdown of a run (`env` and `command` given: re-rendering a saved one)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if env is None:
        env = {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "commit": _commit(),
        }
        try:
            import numba

            env["numba"] = numba.__version__
        except ImportError:
            pass
    payload = {
        "benchmark": name,
        "command": command or "python " + " ".join(["benchmarks/index_bench.py", *sys.argv[1:]]),
        "environment": env,
        "targets_1m": TARGETS_1M,
        "rows": rows,
    }
    if runs is not None:
        payload["runs"] = [{k: v for k, v in r.items() if not k.endswith("_queries")} for r in runs]
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(RESULTS / f"{name}.json")
    cols = [
        "docs",
        "tokens",
        "backend",
        "runs",
        "shards",
        "build_s",
        "peak_bytes_per_token",
        "disk_bytes_per_token",
        "locate_unique12_us_median",
        "locate_us_per_occurrence",
    ]
    decode_cols = [
        ("likely", "decode_ms_likely"),
        ("random (worst case)", "decode_ms_random"),
        ("likely, device route", "decode_ms_likely_device_route"),
        ("random, device route", "decode_ms_random_device_route"),
    ]
    lines = [
        f"# {name}",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Environment: {env}",
        "",
        f"Targets at 1M docs (issue #15): {TARGETS_1M}",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = []
        for c in cols:
            cell = _fmt(r.get(c, ""))
            if r.get("runs", 1) > 1 and c + "_range" in r:
                cell += " [{}-{}]".format(*(_fmt(x) for x in r[c + "_range"]))
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("runs", 1) > 1 for r in rows):
        lines += ["", "Medians over `runs` repeats (backends interleaved), [min-max] over the repeats."]
    lines += [
        "",
        "Constraint time per decoded query (10 beams x 8 real steps, each beam's 11 best allowed tokens, then "
        "advance), ms: median [p25-p75], p90 over the queries (of all repeats), wall clock; CPU-time median in "
        "parentheses. "
        "'free' is the unconstrained counterpart (best 11 of the whole row). Host route: log-probs read on the "
        "CPU (`KBIndex.best_next`); device route: mask + top-k as on a GPU, run on CPU tensors.",
        "",
        "| docs | backend | " + " | ".join(label for label, _ in decode_cols) + " | free |",
        "|" + "---|" * (len(decode_cols) + 3),
    ]
    for r in rows:
        if "decode_ms_random_median" not in r:
            continue
        cells = [
            f"{r[k + '_median']:.2f} [{r[k + '_p25']:.2f}-{r[k + '_p75']:.2f}], p90 {r[k + '_p90']:.2f} "
            f"({r[k + '_cpu_median']:.2f})"
            for _, k in decode_cols
        ]
        lines.append(
            f"| {r['docs']} | {r['backend']} | " + " | ".join(cells) + f" | {r['decode_ms_free_median']:.2f} |"
        )
    lines += ["", "Count latency (median µs by clue length) and next-token latency (mean µs by prefix length):", ""]
    for r in rows:
        if "count_us_median_by_len" in r:
            lines.append(
                f"- {r['backend']} {r['docs']} docs: count {_fmt(r['count_us_median_by_len'])}; "
                f"next_tokens {_fmt(r['next_tokens_us_mean_by_len'])}"
                + (
                    f"; decode ms per step (random, host) {r['decode_ms_random_per_step']}"
                    if "decode_ms_random_per_step" in r
                    else ""
                )
                + (
                    f"; measured before #15 with the old simulation (index calls only, no mask, no fallback): "
                    f"{r['decode_index_ms_median']:.2f} ms per decoded query (median)"
                    if "decode_index_ms_median" in r
                    else ""
                )
            )
    tmp = RESULTS / f".{name}.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS / f"{name}.md")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


if __name__ == "__main__":
    main()
