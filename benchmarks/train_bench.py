"""Training throughput of GeMKR at a given size: samples/s, tokens/s, peak memory and MFU.

Random weights (speed does not depend on them), synthetic batches of the official layout (prompt ~48
tokens, 3 visual tokens, a 9-token clue), LoRA r=8 on q/v, AdamW. Warm-up steps, then timed steps.

    python benchmarks/train_bench.py                                         # tiny model on CPU
    python benchmarks/train_bench.py --vision ViT-L-14 --llm llama-7b --device cuda --dtype bfloat16 \\
        --batch 12 --peak-tflops 989                                          # paper shape on one H100
"""

import argparse
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
    args = p.parse_args()
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
