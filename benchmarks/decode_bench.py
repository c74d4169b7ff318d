"""Decoding benchmark: queries per second of clue decoding, constrained vs unconstrained, and the index's share.

A random-initialised Llama (speed does not depend on the weights) decodes 10 diverse clues of at most 9
tokens per query (the official configuration) over a KB of the fmindex.md §1 synthetic workload, with the
KB constraint and generating freely (clues then looked up), with the same model and beams. The two modes are
interleaved query by query (constrained, unconstrained, constrained, ...; `--repeats` passes over the queries),
so that the machine's load drifts alike over both; the ratio is taken per query pair and reported as its
median with its spread. A random model is the constraint's worst case: its best tokens are no likelier to
be in the KB than any others.

    python benchmarks/decode_bench.py                              # tiny model, 100k-document KB, CPU
    python benchmarks/decode_bench.py --shape llama-7b --device cuda --dtype bfloat16 --docs 1000000
    python benchmarks/decode_bench.py --against-generate --name decode_bench_generate   # vs transformers

`--against-generate` (issue #26) puts the project's plain beam search (10 beams in one group, <= 9 tokens, KV
cache), unconstrained and constrained, beside transformers' own `generate` (`num_beams` 10, `max_new_tokens` 9,
KV cache) on the same model, dtype, threads and prompt ids, interleaved query by query, and reports each
project mode's time / `generate`'s time per query (medians with p25-p75). Semantics that differ, stated in
the output: the project runs every beam to the cap and scores EOS after the 9th token (prompt + 9 forward
passes; `generate` with `max_new_tokens` 9 makes prompt + 8), so `generate` with `max_new_tokens` 10 (the same
forward passes) is timed too; `generate` uses `early_stopping` False (its heuristic stop, which a random model
never meets before the cap: the steps it made are recorded). Diverse group search is no longer in
transformers 5 (moved to a Hub `custom_generate` repository), so it is not compared.
"""

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("GEMKR_BENCH_RESULTS", ROOT / "results"))
SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "llama-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
}


def build_kb(n_docs: int, backend: str, work: Path):
    from gemkr_lab.kb import build_index, open_index
    from gemkr_lab.kb.workload import VOCAB_SIZE, ZipfWorkload

    path = work / f"decode-kb-{backend}-{n_docs}"
    if (path / "meta.json").exists():
        return open_index(path, verify=False)
    return build_index(
        ZipfWorkload(seed=0).batches(n_docs), path, eos_id=2, backend=backend, vocab_size=VOCAB_SIZE, progress=False
    )


def make_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from gemkr_lab.kb.workload import VOCAB_SIZE

    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def run(decoder, prompts, qids):
    """Decode one query at a time (batch 1, as the official evaluation); return seconds and the records."""
    t = time.perf_counter()
    records = []
    for qid, prompt in zip(qids, prompts, strict=True):
        records += decoder.decode([qid], input_ids=prompt[None])
    return time.perf_counter() - t, records


def _spread(values) -> dict:
    return {
        "median": float(np.median(values)),
        "p25": float(np.percentile(values, 25)),
        "p75": float(np.percentile(values, 75)),
        "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)),
        "n": len(values),
    }


def _environment(device: str) -> dict:
    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in ln
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "machine": platform.machine(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _commit() -> str:
    """HEAD, and "+local changes" when the code measured differs from it."""
    import subprocess

    repo = ROOT.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        paths = ["gemkr_lab/decoding", "gemkr_lab/kb", "benchmarks/decode_bench.py"]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=repo, capture_output=True, text=True)
        return head.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def against_generate(args, index, model, prompts, qids) -> None:
    """The project's plain beam search (free and constrained) beside transformers' `generate`, query by query."""
    from gemkr_lab.config import DecodingConfig
    from gemkr_lab.decoding import ClueDecoder

    beams, cap = 10, 9
    plain = DecodingConfig(search="beam", num_groups=beams, beams_per_group=1, max_clue_tokens=cap)
    project = {
        "project_unconstrained": ClueDecoder(model, index, replace(plain, constrained=False)),
        "project_constrained": ClueDecoder(model, index, plain),
    }
    gen_kwargs = dict(
        num_beams=beams,
        num_return_sequences=beams,
        do_sample=False,
        early_stopping=False,
        length_penalty=plain.length_penalty,
        use_cache=True,
        eos_token_id=index.eos_id,
        pad_token_id=model.config.pad_token_id,
        bos_token_id=model.config.bos_token_id,
        return_dict_in_generate=True,
    )

    def generate(new_tokens: int):
        def call(prompt):
            ids = prompt[None]
            return model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, **gen_kwargs
            )

        return call

    arms = {
        "generate_9": generate(cap),
        "project_unconstrained": lambda prompt, qid: project["project_unconstrained"].decode(
            [qid], input_ids=prompt[None]
        ),
        "project_constrained": lambda prompt, qid: project["project_constrained"].decode([qid], input_ids=prompt[None]),
        "generate_10": generate(cap + 1),
    }
    for prompt, qid in zip(prompts[:2], qids[:2], strict=True):  # warm-up: JIT, caches, allocator
        for name, fn in arms.items():
            fn(prompt) if name.startswith("generate") else fn(prompt, qid)
    seconds = {name: [] for name in arms}
    search_ms = {name: [] for name in project}
    gen_steps, same_clues = [], []
    ratios = {f"{a}/{b}": [] for a in project for b in ("generate_9", "generate_10")}
    cpu_ratios = {key: [] for key in ratios}
    cpu_seconds = {name: [] for name in arms}
    loads = []
    for rep in range(args.repeats):
        # the order inside a query's group rotates per pass, so no arm always runs first (load drift, caches)
        names = list(arms)
        names = names[rep % len(names) :] + names[: rep % len(names)]
        for prompt, qid in zip(prompts, qids, strict=True):
            pair, cpu_pair, outs = {}, {}, {}
            for name in names:
                t, c = time.perf_counter(), time.process_time()
                outs[name] = arms[name](prompt) if name.startswith("generate") else arms[name](prompt, qid)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                pair[name], cpu_pair[name] = time.perf_counter() - t, time.process_time() - c
                seconds[name].append(pair[name])
                cpu_seconds[name].append(cpu_pair[name])
            for name in project:
                search_ms[name].append(outs[name][0].timings["decode_ms"])
                for g in ("generate_9", "generate_10"):
                    ratios[f"{name}/{g}"].append(pair[name] / pair[g])
                    cpu_ratios[f"{name}/{g}"].append(cpu_pair[name] / cpu_pair[g])
            if rep == 0:
                g9 = outs["generate_9"]
                gen_steps.append(int(g9.sequences.shape[1] - prompt.shape[0]))
                theirs = {
                    tuple(
                        t for t in row[prompt.shape[0] :].tolist() if t not in (index.eos_id, model.config.pad_token_id)
                    )
                    for row in g9.sequences
                }
                ours = {tuple(c.tokens) for c in outs["project_unconstrained"][0].clues}
                same_clues.append(len(theirs & ours) / beams)
        loads.append(os.getloadavg()[0])
        r = ratios["project_unconstrained/generate_9"]
        print(f"pass {rep + 1}/{args.repeats}: unconstrained/generate_9 median so far {np.median(r):.3f}", flush=True)
    rows = {
        name: {
            "ms_per_query": _spread([1000 * x for x in times]),
            "queries_per_second": len(times) / sum(times),
            "cpu_ms_per_query": _spread([1000 * x for x in cpu_seconds[name]]),
            **({"search_ms_per_query": _spread(search_ms[name])} if name in search_ms else {}),
        }
        for name, times in seconds.items()
    }
    ratio = {
        key: _spread(vals) | {"of_totals": sum(seconds[key.split("/")[0]]) / sum(seconds[key.split("/")[1]])}
        for key, vals in ratios.items()
    }
    cpu_ratio = {key: _spread(vals) for key, vals in cpu_ratios.items()}
    env = _environment(args.device) | {"load_average_per_pass": loads, "load_average_end": list(os.getloadavg())}
    payload = {
        "benchmark": args.name,
        "environment": env,
        "commit": _commit(),
        "setup": {
            "docs": args.docs,
            "tokens": index.n_tokens,
            "backend": args.backend,
            "shape": args.shape,
            "dtype": args.dtype,
            "queries": args.queries,
            "repeats": args.repeats,
            "prompt_len": args.prompt_len,
            "batch": 1,
            "project": "plain beam search, 10 beams in one group, <= 9 clue tokens then EOS (prompt + 9 forward "
            "passes), no early stop, EOS banned at step 0, length penalty 1.5, KV cache; wall time of "
            "ClueDecoder.decode (clue -> document lookup included; search_ms excludes it)",
            "generate": f"transformers {__import__('transformers').__version__} model.generate(num_beams=10, "
            "num_return_sequences=10, max_new_tokens=9 (generate_9) or 10 (generate_10: the project's forward "
            "passes), do_sample=False, early_stopping=False, length_penalty=1.5, use_cache=True)",
            "diverse_group_search": "not compared: transformers 5 moved group beam search to the Hub repository "
            "transformers-community/group-beam-search (custom_generate, trust_remote_code, a download)",
            "generate_new_tokens_made": _spread(gen_steps),
            "same_10_clues_as_generate_9": float(np.mean(same_clues)),
            "order": "interleaved per query: generate_9, project_unconstrained, project_constrained, generate_10, "
            "the order rotated by one each pass",
            "threads": torch.get_num_threads(),
        },
        "command": "python " + " ".join(["benchmarks/decode_bench.py", *sys.argv[1:]]),
        "results": rows,
        "time_ratios": ratio,
        "cpu_time_ratios": cpu_ratio,
        "targets": {"project_unconstrained/generate": 1.0, "project_constrained/generate": 1.15},
    }
    _write(args.name, payload, _generate_markdown(payload))


def _generate_markdown(payload: dict) -> list[str]:
    env, setup = payload["environment"], payload["setup"]
    md = [
        f"# {payload['benchmark']}",
        "",
        f"Command: `{payload['command']}` at {payload['commit']}",
        "",
        f"CPU: {env['cpu_model']} ({env['cpus']} cores, torch threads {env['torch_threads']}), load average "
        f"(1 min) at start {env['load_average_start'][0]:.2f}, per pass "
        f"{[round(x, 2) for x in env['load_average_per_pass']]}; "
        f"{env['date']}; torch {env['torch']}.",
        "",
        f"Setup: {setup['shape']} random Llama, {setup['dtype']}, batch 1, {setup['queries']} queries x "
        f"{setup['repeats']} passes, prompt {setup['prompt_len']} ids, KB {setup['docs']} docs ({setup['backend']}).",
        f"- project: {setup['project']}",
        f"- generate: {setup['generate']}; new tokens made (generate_9) median "
        f"{setup['generate_new_tokens_made']['median']:.0f}",
        f"- the unconstrained search's 10 clues equal generate_9's 10 sequences (as sets) for "
        f"{setup['same_10_clues_as_generate_9']:.1%} of them (the same search)",
        f"- diverse group search: {setup['diverse_group_search']}",
        f"- order: {setup['order']}",
        "",
        "| arm | ms/query median [p25-p75] | CPU ms/query median | queries/s | search ms (no lookup) median |",
        "|---|---|---|---|---|",
    ]
    for name, r in payload["results"].items():
        m = r["ms_per_query"]
        search = f"{r['search_ms_per_query']['median']:.1f}" if "search_ms_per_query" in r else "-"
        md.append(
            f"| {name} | {m['median']:.1f} [{m['p25']:.1f}-{m['p75']:.1f}] | {r['cpu_ms_per_query']['median']:.1f} | "
            f"{r['queries_per_second']:.2f} | {search} |"
        )
    md += [
        "",
        "| time ratio per query | wall median [p25-p75] | wall p10-p90 | wall of totals | CPU-time median [p25-p75] "
        "| n | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in payload["time_ratios"].items():
        c = payload["cpu_time_ratios"][key]
        target = payload["targets"][
            "project_unconstrained/generate" if "unconstrained" in key else "project_constrained/generate"
        ]
        md.append(
            f"| {key} | **{r['median']:.3f}** [{r['p25']:.3f}-{r['p75']:.3f}] | {r['p10']:.3f}-{r['p90']:.3f} | "
            f"{r['of_totals']:.3f} | {c['median']:.3f} [{c['p25']:.3f}-{c['p75']:.3f}] | {r['n']} | <= {target} |"
        )
    return md


def _write(name: str, payload: dict, md: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suffix, text in (("json", json.dumps(payload, indent=2) + "\n"), ("md", "\n".join(md) + "\n")):
        tmp = RESULTS / f".{name}.{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(RESULTS / f"{name}.{suffix}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--backend", default="fm", choices=["sa", "fm"])
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--work", type=Path, default=ROOT / "work")
    p.add_argument("--name", default="decode_bench")
    p.add_argument("--repeats", type=int, default=3, help="interleaved passes over the queries")
    p.add_argument("--against-generate", action="store_true", help="plain beam search vs transformers' generate")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from gemkr_lab.config import DecodingConfig
    from gemkr_lab.decoding import ClueDecoder

    t = time.perf_counter()
    index = build_kb(args.docs, args.backend, args.work)
    print(f"KB: {index} ({time.perf_counter() - t:.1f} s)", flush=True)
    model = make_model(args.shape, args.device, getattr(torch, args.dtype))
    rng = np.random.default_rng(0)
    prompts = torch.as_tensor(rng.integers(3, 32_000, size=(args.queries, args.prompt_len)), device=args.device)
    qids = [f"q{i}" for i in range(args.queries)]
    if args.against_generate:
        against_generate(args, index, model, prompts, qids)
        return
    constrained = ClueDecoder(model, index, DecodingConfig())
    free = ClueDecoder(model, index, replace(DecodingConfig(), constrained=False))
    run(constrained, prompts[:2], qids[:2])  # warm-up: JIT, caches, allocator
    run(free, prompts[:2], qids[:2])
    decoders = {"constrained": constrained, "unconstrained": free}
    seconds = {name: [] for name in decoders}
    cpu_seconds = {name: [] for name in decoders}
    records = {name: [] for name in decoders}
    ratios, cpu_ratios = [], []
    for rep in range(args.repeats):  # ABAB...: each query pair runs back to back
        for qid, prompt in zip(qids, prompts, strict=True):
            pair, cpu_pair = {}, {}
            for name, decoder in decoders.items():
                t, c = time.perf_counter(), time.process_time()
                out = decoder.decode([qid], input_ids=prompt[None])
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                pair[name], cpu_pair[name] = time.perf_counter() - t, time.process_time() - c
                seconds[name].append(pair[name])
                cpu_seconds[name].append(cpu_pair[name])
                if rep == 0:
                    records[name] += out
            ratios.append(pair["constrained"] / pair["unconstrained"])
            cpu_ratios.append(cpu_pair["constrained"] / cpu_pair["unconstrained"])
        print(f"pass {rep + 1}/{args.repeats}: median ratio so far {np.median(ratios):.3f}", flush=True)
    rows = {}
    for name, times in seconds.items():
        recs = records[name]
        index_ms = [r.timings["index_ms"] for r in recs]
        rows[name] = {
            "queries_per_second": len(times) / sum(times),
            "cpu_ms_per_query": _spread([1000 * x for x in cpu_seconds[name]]),
            "ms_per_query_median": 1000 * float(np.median(times)),
            "ms_per_query_p25": 1000 * float(np.percentile(times, 25)),
            "ms_per_query_p75": 1000 * float(np.percentile(times, 75)),
            "cpu_ms_per_query_median": 1000 * float(np.median(cpu_seconds[name])),
            "model_ms_per_query": float(np.mean([r.timings["model_ms"] for r in recs])),
            "index_ms_per_query": float(np.mean(index_ms)),
            "index_share": float(np.sum(index_ms) / (1000 * sum(times[: len(recs)]))),
            "clues_found_in_kb": float(np.mean([c.count > 0 for r in recs for c in r.clues])),
            "docs_per_query": float(np.mean([len(r.ranked_docs) for r in recs])),
        }
        print(name, json.dumps(rows[name]), flush=True)
    ratio = {
        "median": float(np.median(ratios)),
        "p25": float(np.percentile(ratios, 25)),
        "p75": float(np.percentile(ratios, 75)),
        "p10": float(np.percentile(ratios, 10)),
        "p90": float(np.percentile(ratios, 90)),
        "of_totals": sum(seconds["constrained"]) / sum(seconds["unconstrained"]),
        "pairs": len(ratios),
        "cpu_median": float(np.median(cpu_ratios)),
        "cpu_p25": float(np.percentile(cpu_ratios, 25)),
        "cpu_p75": float(np.percentile(cpu_ratios, 75)),
    }
    payload = {
        "benchmark": args.name,
        "environment": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "date": time.strftime("%Y-%m-%d"),
        },
        "setup": {
            "docs": args.docs,
            "tokens": index.n_tokens,
            "backend": args.backend,
            "shape": args.shape,
            "dtype": args.dtype,
            "queries": args.queries,
            "repeats": args.repeats,
            "prompt_len": args.prompt_len,
            "decoding": "diverse 10 groups x 1 beam, <= 9 tokens, batch 1",
            "order": "interleaved per query: constrained, unconstrained (ABAB...)",
        },
        "command": "python " + " ".join(["benchmarks/decode_bench.py", *sys.argv[1:]]),
        "results": rows,
        "constrained_to_unconstrained_time_ratio": ratio,
        "target_ratio": 1.15,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".{args.name}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(RESULTS / f"{args.name}.json")
    md = [
        f"# {args.name}",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Setup: {payload['setup']}",
        f"Environment: {payload['environment']}",
        "",
        "| mode | queries/s | ms/query median [p25-p75] | CPU ms/query | model ms/query | index ms/query "
        "| index share | clues in KB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['queries_per_second']:.2f} | {r['ms_per_query_median']:.1f} "
            f"[{r['ms_per_query_p25']:.1f}-{r['ms_per_query_p75']:.1f}] | {r['cpu_ms_per_query_median']:.1f} | "
            f"{r['model_ms_per_query']:.1f} | {r['index_ms_per_query']:.2f} | {r['index_share']:.1%} | "
            f"{r['clues_found_in_kb']:.1%} |"
        )
    md += [
        "",
        f"Constrained / unconstrained wall time per query pair: median **{ratio['median']:.3f}** "
        f"[p25-p75 {ratio['p25']:.3f}-{ratio['p75']:.3f}, p10-p90 {ratio['p10']:.3f}-{ratio['p90']:.3f}] over "
        f"{ratio['pairs']} interleaved pairs; ratio of totals {ratio['of_totals']:.3f} (target <= 1.15). "
        f"In process CPU time (less sensitive to other jobs' load): median {ratio['cpu_median']:.3f} "
        f"[p25-p75 {ratio['cpu_p25']:.3f}-{ratio['cpu_p75']:.3f}].",
    ]
    tmp = RESULTS / f".{args.name}.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(RESULTS / f"{args.name}.md")
    print(f"ratio median {ratio['median']:.3f} [{ratio['p25']:.3f}-{ratio['p75']:.3f}]")
    sys.exit(0)


if __name__ == "__main__":
    main()
