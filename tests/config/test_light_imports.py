"""Config checks never import the vision or LLM stacks (#24): loading and refusing configs stays light.

A fresh interpreter loads every preset, refuses bad values (an unknown vision tower among them) and accepts an
open_clip architecture by name, then reports which heavy packages got imported: none may be.
"""

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("open_clip", "transformers", "torch", "lightning", "peft", "timm", "ultralytics", "wandb", "optuna")

SCRIPT = """
import json, sys
from pathlib import Path
from gemkr_lab.config.experiment import ConfigError, load_experiment

presets = sorted(Path("experiments").rglob("*.yaml"))
assert len(presets) > 40, presets
for preset in presets:
    load_experiment(str(preset.relative_to("experiments").with_suffix("")))
load_experiment("tiny-cpu/full", ["model.vision_model=ViT-B-16"])
bad_values = ["model.vision_model=ViT-Nope", "model.prefix_layers=5", "train.lr=fast"]
bad_values.append("model.tiny_llm.num_key_value_heads=3")
for bad in bad_values:
    try:
        load_experiment("tiny-cpu/full", [bad])
    except ConfigError:
        pass
    else:
        raise SystemExit("accepted " + bad)
print(json.dumps(sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)))
"""


@pytest.mark.slow  # a fresh interpreter: the only way to see what the checks import
def test_config_checks_import_no_vision_or_llm_stack():
    import json

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(HEAVY)], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
