#!/usr/bin/env bash
# GPU performance suite (issue 7): environment check, training throughput at the ViT-L-14 + LLaMA-7B shape
# (random bf16 weights, LoRA), and 10-beam constrained decoding at LLaMA-7B shape on a 1M-document KB.
# Writes JSON to $GEMKR_BENCH_RESULTS (default: $OUT on the device machine, else benchmarks/results).
#
#   bash benchmarks/gpu_suite.sh          # on one H100, well under 8 minutes
#   bash benchmarks/gpu_suite.sh cpu      # the same steps at tiny shapes, to test the script on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
export GEMKR_BENCH_RESULTS=${GEMKR_BENCH_RESULTS:-${OUT:-benchmarks/results}}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$GEMKR_BENCH_RESULTS"

"$PY" - "$MODE" <<'PYEOF' | tee "$GEMKR_BENCH_RESULTS/environment.json"
import json, platform, sys
import torch
mode = sys.argv[1]
env = {"mode": mode, "python": platform.python_version(), "torch": torch.__version__,
       "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env |= {"device": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
elif mode == "gpu":
    print(json.dumps(env)); sys.exit("no CUDA device: run `gpu_suite.sh cpu` for the tiny-shape check")
print(json.dumps(env))
PYEOF

if [ "$MODE" = "gpu" ]; then
  "$PY" benchmarks/train_bench.py --vision ViT-L-14 --llm llama-7b --device cuda --dtype bfloat16 \
      --batch 12 --warmup 3 --steps 10 --peak-tflops 989 --name gpu_train_bench
  OMP_NUM_THREADS=4 "$PY" benchmarks/decode_bench.py --shape llama-7b --device cuda --dtype bfloat16 \
      --docs 1000000 --queries 40 --name gpu_decode_bench
else
  OMP_NUM_THREADS=1 "$PY" benchmarks/train_bench.py --steps 3 --warmup 1 --name cpu_suite_train_bench
  OMP_NUM_THREADS=1 "$PY" benchmarks/decode_bench.py --docs 10000 --queries 4 --name cpu_suite_decode_bench
fi
echo "results in $GEMKR_BENCH_RESULTS"
