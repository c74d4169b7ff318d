"""Shared test set-up: offline, single-threaded, and quiet."""

import ast
import functools
import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path

import pytest

# Before torch/numba import anything: tiny models are 20-50x slower with competing threads on 2 cores.
for _k, _v in {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",
    "YOLO_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

# The suite runs in portable CPU numerics (AVX2 kernels, MKL and oneDNN held to AVX2), as the tiny-cpu presets do:
# the same tensors on every x86-64 CPU with AVX2. Set before torch loads; a CPU without AVX2 warns and falls back.
from gemkr_lab.numerics import apply_portable_cpu_numerics  # noqa: E402 (imports nothing heavy)

apply_portable_cpu_numerics(True)


# ---- The inner loop (#24): `make test-fast` runs `pytest -m "not slow"`, aiming at two minutes on 2 cores ---------
# Policy: a test that trains a model, spawns a process, or starts or needs a service (PostgreSQL, Slurm, a browser,
# W&B) is `slow`; one needing a service is also `integration` (which implies `slow`). Marks come three ways:
# - by hand, @pytest.mark.slow / @pytest.mark.integration on the test (or `pytestmark` on its file);
# - at collection, by the heavy fixtures a test uses, directly or through other fixtures (HEAVY_FIXTURES,
#   SERVICE_FIXTURES), by a service among its parameters (SERVICE_PARAMS), and by the calls its source makes,
#   itself or through functions of its module (HEAVY_CALLS: training a cell, running a sweep, starting a process);
# - and a guard, so the policy cannot drift: an unmarked test whose set-up or body starts a process (subprocess,
#   os.fork/exec/spawn/system, multiprocessing) or calls Lightning's Trainer.fit fails, naming what it did.
# Unmarked tests that still took more than SLOW_CPU_S of CPU time are listed at the end of the run.

HEAVY_FIXTURES = {
    "trained": "trains a run for every verb (test_bad_inputs)",
    "sweep": "runs a two-cell sweep (test_explore)",
    "llm_checkpoint": "saves a tiny LLM checkpoint and its tokenizer (test_tokenizer_identity)",
    "clue_variants": "prepares the world under several clue settings (test_clue_length)",
    "slurm": "starts a Slurm cluster",
}
"""Fixtures that train, spawn or prepare more than the shared tiny world: every test using one is `slow`."""
SERVICE_FIXTURES = {"slurm"}
"""Fixtures that start or reach a service: their tests are also `integration`."""
SERVICE_PARAMS = {"backend": {"postgresql"}}
"""Parameter values that reach a service (an optuna storage on PostgreSQL): those cases are `integration`."""
QUICK_TOOLS = frozenset({"uname", "ldconfig", "gcc", "cc", "ld", "fc-list", "git"})
"""Processes that take milliseconds, allowed in unmarked tests: probes of the system that a first import may make
(platform.processor, ctypes.util.find_library, matplotlib's font list when its cache is empty) and git, which a
run's manifest asks for the commit (run/provenance)."""
SLOW_CPU_S = 5.0


HEAVY_CALLS = {
    "run_cell": "trains a cell",
    "evaluate_cell": "decodes a trained cell",
    "run_sweep": "runs a sweep",
    "Popen": "starts a process",
    "check_call": "starts a process",
    "check_output": "starts a process",
    "Process": "starts a process",
}
"""Calls that make a test `slow` when its body makes them, directly or through functions of its own module, read
from the source at collection; a call inside `with pytest.raises(...)` is a refusal and does not count. (Training
through other names, e.g. a `fit` whose Trainer a test replaced, is left to the guard, which sees what runs.)"""
HEAVY_MODULE_CALLS = {("subprocess", "run"): "starts a process", ("subprocess", "call"): "starts a process"}


def _is_raises(item: ast.withitem) -> bool:
    call = item.context_expr
    return isinstance(call, ast.Call) and getattr(call.func, "attr", getattr(call.func, "id", None)) == "raises"


def _called(node) -> tuple[set[str], set[str]]:
    """Reasons from HEAVY_CALLS / HEAVY_MODULE_CALLS for the calls in `node`, and the bare names it calls."""
    reasons, names, todo = set(), set(), [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.With) and any(map(_is_raises, n.items)):
            continue  # an expected refusal
        todo.extend(ast.iter_child_nodes(n))
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        if isinstance(f, ast.Name):
            names.add(f.id)
            reasons.add(HEAVY_CALLS.get(f.id))
        elif isinstance(f, ast.Attribute):
            reasons.add(HEAVY_CALLS.get(f.attr))
            if isinstance(f.value, ast.Name):
                reasons.add(HEAVY_MODULE_CALLS.get((f.value.id, f.attr)))
    return reasons - {None}, names


@functools.cache
def _heavy_functions(path: str) -> dict[str, str]:
    """Module-level functions of the test file at `path` that make a heavy call, transitively: name -> reason."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return {}
    calls = {n.name: _called(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
    heavy = {name: min(reasons) for name, (reasons, _) in calls.items() if reasons}
    changed = True
    while changed:
        changed = False
        for name, (_, names) in calls.items():
            via = sorted(names & heavy.keys())
            if name not in heavy and via:
                heavy[name] = f"{heavy[via[0]]} (through {via[0]})"
                changed = True
    return heavy


def _heavy_call(item) -> str | None:
    fn = getattr(item, "function", None)
    path = getattr(getattr(item, "module", None), "__file__", None)
    if fn is None or path is None:
        return None
    return _heavy_functions(path).get(fn.__name__)


def _mark_by_policy(items) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        service = names & SERVICE_FIXTURES or any(params.get(k) in v for k, v in SERVICE_PARAMS.items())
        if service and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("slow"):
            continue
        heavy = sorted(names & HEAVY_FIXTURES.keys())
        why = f"uses {', '.join(heavy)}" if heavy else _heavy_call(item)
        if why is None and item.get_closest_marker("integration"):
            why = "integration"
        if why is not None:
            item.add_marker(pytest.mark.slow(reason=why))


@pytest.hookimpl(tryfirst=True)  # marks before -m deselects
def pytest_collection_modifyitems(config, items):
    """Mark by the inner-loop policy (below), then skip `gpu`-marked tests where no CUDA device is present (CI has
    none); they run on a GPU machine."""
    _mark_by_policy(items)
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


class UnmarkedHeavyTest(RuntimeError):
    """Raised where an unmarked test starts a process or trains (the inner-loop policy)."""


class _Guard:
    """Which test is guarded now, and what it did that the policy reserves for `slow` tests."""

    def __init__(self) -> None:
        self.item = None
        self.seen: list[str] = []

    def violation(self, what: str) -> None:
        if self.item is None:
            return
        self.seen.append(what)
        raise UnmarkedHeavyTest(
            f"{self.item.nodeid} {what}, but is not marked slow: mark it @pytest.mark.slow (or integration for a "
            "service), or use a fixture the policy in tests/conftest.py marks"
        )


_GUARD = _Guard()
_SPAWN_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system"}


def _audit(event: str, args: tuple) -> None:
    if _GUARD.item is None:  # the common case, first: this runs on every audited event
        return
    if event == "subprocess.Popen":
        executable, argv = args[0], args[1]
        first = executable or (argv.split()[0] if isinstance(argv, str | bytes) else next(iter(argv), ""))
        if os.path.basename(os.fsdecode(first)) not in QUICK_TOOLS:
            _GUARD.violation(f"starts a process ({argv if isinstance(argv, str) else ' '.join(map(str, argv))})"[:300])
    elif event in _SPAWN_EVENTS:
        _GUARD.violation(f"starts a process ({event})")


sys.addaudithook(_audit)


def _guard_process_start() -> None:
    """multiprocessing's spawn and forkserver start processes without an audit event."""
    import multiprocessing.process

    start = multiprocessing.process.BaseProcess.start

    def guarded_start(self):
        _GUARD.violation(f"starts a process (multiprocessing, {self.name})")
        return start(self)

    multiprocessing.process.BaseProcess.start = guarded_start


_guard_process_start()


class _GuardTrainerFit(importlib.abc.MetaPathFinder):
    """Wraps Lightning's Trainer.fit when its module is first imported (never importing Lightning itself)."""

    MODULES = frozenset({"lightning.pytorch.trainer.trainer", "pytorch_lightning.trainer.trainer"})

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            fit = module.Trainer.fit

            @functools.wraps(fit)
            def guarded_fit(*args, **kwargs):
                _GUARD.violation("trains a model (Trainer.fit)")
                return fit(*args, **kwargs)

            module.Trainer.fit = guarded_fit

        spec.loader.exec_module = exec_and_wrap
        return spec


assert not _GuardTrainerFit.MODULES & sys.modules.keys(), "Lightning was imported before the guard"
sys.meta_path.insert(0, _GuardTrainerFit())
_CPU: dict[str, float] = {}


def _guarded(item) -> bool:
    return not (item.get_closest_marker("slow") or item.get_closest_marker("integration"))


def _phase(item):
    """Guard the set-up or call of an unmarked test; fail it for what it did even if the code caught the error."""
    if not _guarded(item):
        return (yield)
    _GUARD.item, _GUARD.seen, cpu = item, [], time.process_time()
    try:
        result = yield
    finally:
        _GUARD.item, seen = None, _GUARD.seen
        _CPU[item.nodeid] = _CPU.get(item.nodeid, 0.0) + time.process_time() - cpu
    if seen:
        pytest.fail(
            f"{item.nodeid} is not marked slow but {'; '.join(seen)} (the inner-loop policy, tests/conftest.py)"
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _phase(item))


def pytest_terminal_summary(terminalreporter):
    over = sorted(((s, n) for n, s in _CPU.items() if s > SLOW_CPU_S), reverse=True)
    if over:
        terminalreporter.section(f"unmarked tests over {SLOW_CPU_S:.0f} s of CPU (the inner loop: mark them slow?)")
        for cpu, nodeid in over:
            terminalreporter.write_line(f"{cpu:6.1f} s  {nodeid}")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A small byte-level BPE tokenizer trained here (nothing is downloaded)."""
    from gemkr_lab.kb.synthetic_text import synthetic_passages
    from gemkr_lab.kb.tokenize import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [p["text"] for p in synthetic_passages(300)] + ["the eiffel tower is in paris", "Ünïcode wörds"]
    train_tokenizer(texts, out, vocab_size=400)
    return out


@pytest.fixture(scope="session")
def tiny_llama():
    """A factory of random-initialised 2-layer Llamas small enough for CPU tests."""
    return make_tiny_llama


def make_tiny_llama(vocab_size: int, seed: int = 0, eos_id: int = 2, pad_id: int = 3):
    """A random-initialised 2-layer Llama small enough for CPU tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A prepared synthetic world (small, seed 0), shared by the tests that train or decode."""
    from gemkr_lab.config import DataConfig
    from gemkr_lab.data.prepare import Preparer
    from gemkr_lab.data.world import make_world

    root = tmp_path_factory.mktemp("tiny-world")
    make_world(root / "w", seed=0)
    Preparer(DataConfig(), root / "w", root / "p", progress=False).run()
    return str(root / "w"), str(root / "p")


def _tiny(tiny_world, steps: int = 4) -> list[str]:
    world, prepared = tiny_world
    return [
        f"data_root={world}",
        f"prepared={prepared}",
        f"train.max_steps={steps}",
        "limit_train=16",
        "train.batch_size=8",
        "decoding.num_groups=2",
        "decoding.max_clue_tokens=3",
        "tracking.wandb=false",
    ]


@pytest.fixture
def tiny_overrides(tiny_world):
    """Overrides that point a tiny-cpu preset at the prepared test world and keep runs to seconds."""
    return _tiny(tiny_world)


@pytest.fixture(scope="session")
def sweep_file(tiny_world):
    """A factory of sweep files on the tiny overrides: `sweep_file(path, cells, seeds, ...)` writes one, returns path.

    The sweep's runs go to `runs/` beside the file; `name` defaults to a fresh one (PostgreSQL studies are shared
    between tests); `steps` replaces the tiny step count, `overrides` come after the tiny ones, `drop` leaves
    tiny overrides out by key (e.g. "decoding.max_clue_tokens"), and other fields (search:, launcher:, reference:,
    root:) go into the file as given.
    """
    import uuid

    import yaml

    def write(path, cells=("tiny-cpu/full",), seeds=(0,), *, name=None, steps=4, overrides=(), drop=(), **fields):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tiny = [o for o in _tiny(tiny_world, steps) if o.split("=", 1)[0] not in drop]
        spec = {
            "name": name or f"test-{uuid.uuid4().hex[:10]}",
            "root": str(path.parent / "runs"),
            "cells": list(cells),
            "seeds": list(seeds),
            "overrides": [*tiny, *overrides],
            **fields,
        }
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
        return path

    return write
