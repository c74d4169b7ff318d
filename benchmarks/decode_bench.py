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
