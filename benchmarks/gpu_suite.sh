#!/usr/bin/env bash
# GPU performance suite: environment check, training throughput at the ViT-L-14 + LLaMA-7B shape (random bf16
# weights, LoRA), 10-beam constrained decoding at LLaMA-7B shape on a 1M-document KB, the harness's tax on a
# training step and the beam search beside transformers' generate (issue #26), and the real path end to
# end: make-world -> prepare -> `gemkr-lab train` (Lightning fit with checkpoints, region features on the
# tower's device, decoding on the run's device after fit, scoring) at ViT-L-14 + LLaMA-7B shape (random
# weights, the synthetic world's vocabulary). Writes JSON to $GEMKR_BENCH_RESULTS (default: $OUT on the device
# machine, else benchmarks/results).
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
  # issue #26: the harness's tax on a training step (tiny presets, Lightning fit vs a plain loop) and the
  # project's beam search beside transformers' generate at LLaMA-7B shape
  "$PY" benchmarks/train_bench.py --tax --device cuda --steps 20 --warmup 3 --repeats 2 --name gpu_train_tax
  OMP_NUM_THREADS=4 "$PY" benchmarks/decode_bench.py --against-generate --shape llama-7b --device cuda \
      --dtype bfloat16 --docs 1000000 --queries 20 --repeats 1 --name gpu_decode_bench_generate
else
  OMP_NUM_THREADS=1 "$PY" benchmarks/train_bench.py --steps 3 --warmup 1 --name cpu_suite_train_bench
  OMP_NUM_THREADS=1 "$PY" benchmarks/decode_bench.py --docs 10000 --queries 4 --name cpu_suite_decode_bench
  OMP_NUM_THREADS=1 "$PY" benchmarks/train_bench.py --tax --steps 4 --warmup 1 --repeats 1 --presets tiny-cpu/full \
      --name cpu_suite_train_tax
  OMP_NUM_THREADS=1 "$PY" benchmarks/decode_bench.py --against-generate --docs 10000 --queries 4 --repeats 1 \
      --name cpu_suite_decode_bench_generate
fi
# the real path, as a user runs it
REAL="$GEMKR_BENCH_RESULTS/real_path"
rm -rf "$REAL"
"$PY" -m gemkr_lab.cli make-world --out "$REAL/world" --seed 0
"$PY" -m gemkr_lab.cli prepare synthetic --data-root "$REAL/world" --out "$REAL/prepared"
COMMON=(data_root="$REAL/world" prepared="$REAL/prepared" tracking.wandb=false train.checkpoint_every_n_steps=10)
if [ "$MODE" = "gpu" ]; then
  SHAPE=(model.vision_model=ViT-L-14 model.use_lora=true model.llm_dtype=bfloat16 train.precision=bf16-mixed
         model.tiny_llm.hidden_size=4096 model.tiny_llm.intermediate_size=11008 model.tiny_llm.num_hidden_layers=32
         model.tiny_llm.num_attention_heads=32 model.tiny_llm.num_key_value_heads=32
         train.batch_size=12 train.accumulate_grad_batches=2 train.max_steps=20 train.accelerator=gpu)
else
  SHAPE=(train.batch_size=8 train.max_steps=20 train.accelerator=cpu)
fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m gemkr_lab.cli train tiny-cpu/full "${COMMON[@]}" "${SHAPE[@]}" \
    --root "$REAL/runs"
"$PY" - "$REAL/runs" "$GEMKR_BENCH_RESULTS/real_path.json" <<'PYEOF'
import json, sys
from pathlib import Path
(manifest_path,) = Path(sys.argv[1]).glob("*/seed-*/*/manifest.json")
m = json.loads(manifest_path.read_text())
metrics = json.loads((manifest_path.parent / "metrics.json").read_text())["means"]
import yaml
cfg = yaml.safe_load((manifest_path.parent / "config.yaml").read_text())["train"]
samples = cfg["max_steps"] * cfg["batch_size"] * cfg["accumulate_grad_batches"]
out = {"status": m["status"], "train_seconds": m["train_seconds"], "samples_per_s": round(samples / m["train_seconds"], 2),
       "decode_ms_per_query": m["decode_ms_per_query"], "queries_per_s": round(1000 / m["decode_ms_per_query"], 2),
       "peak_gpu_memory_gib": m.get("peak_gpu_memory_gib"), "gpus": m["hardware"]["gpus"],
       "metrics": {k: round(v, 4) for k, v in metrics.items()}, "run": str(manifest_path.parent)}
Path(sys.argv[2]).write_text(json.dumps(out, indent=2))
print(json.dumps(out, indent=2))
PYEOF
echo "results in $GEMKR_BENCH_RESULTS"
