"""Every shell block of README.md runs, in order, from a fresh clone (issue #25): the README cannot drift.

The slow test clones this repository (its committed HEAD) into a temporary folder, gives the clone the
environment `make` made here (the clone's `.venv` links this one's `bin`, `lib`, ... and carries make's stamp,
so `make demo` does not install again; `PYTHONPATH` makes the clone's own `gemkr_lab` the one imported), and
runs the README's ```bash blocks one after the other in the clone, each as a `bash -euo pipefail` script with
`.venv/bin` first on `PATH` (what `source .venv/bin/activate` does).

What is not the README's text:
- `GEMKR_LAB_OVERRIDES` (the documented mechanism, `gemkr_lab.config.experiment.OVERRIDES_ENV`) shrinks every
  experiment (`TINY`: 2 training steps, 2 beam groups of clues of at most 3 tokens, no W&B), in the runs the
  sweeps start too, so `make demo` (15 minutes at full size) runs its own code path, world, prepare, sweep and
  report, with tiny runs. (An untrained model is constrained decoding's worst case: 10 groups of 9-token clues
  took 3 s a query under load, 5 minutes a run.)
- The set-up block's `make test` is left out: it is the suite this test is part of.
- A block after `<!-- readme-test: skip: WHY -->` is not run (it needs a download, a dataset or root); after
  `<!-- readme-test: needs PROGRAM|PATH ... -->` it runs only where each program is on `PATH` (a name with a
  slash: where that path exists in the clone).
"""

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY = "train.max_steps=2 limit_train=16 decoding.num_groups=2 decoding.max_clue_tokens=3 tracking.wandb=false"
MARK = re.compile(r"^<!--\s*readme-test:\s*(skip|needs)\b:?\s*(.*?)\s*-->\s*$")
SETUP_ONLY = ("make test",)  # lines of the set-up block left out (the suite itself)


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    mark: str | None = None  # "skip" or "needs"
    why: str = ""


def shell_blocks(text: str) -> list[Block]:
    """The ```bash blocks of a Markdown text, each with the readme-test marker just above it (blank lines between)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    mark: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        found = MARK.match(line.strip())
        if found:
            mark = (found.group(1), found.group(2))
        elif line.strip() in ("```bash", "```sh", "```shell"):
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            block = Block(start, "\n".join(lines[start:j]) + "\n")
            if mark:
                block.mark, block.why = mark
            blocks.append(block)
            mark, i = None, j
        elif line.strip():
            mark = None  # a marker belongs to the block right below it
        i += 1
    return blocks


def test_readme_blocks_and_markers():
    blocks = shell_blocks(README.read_text(encoding="utf-8"))
    assert blocks[0].mark is None and "make demo" in blocks[0].text and "make test" in blocks[0].text
    skipped = [b for b in blocks if b.mark == "skip"]
    assert all(b.why for b in skipped), "a skipped block says why"
    run = [b for b in blocks if b.mark is None]
    assert len(run) >= 6, "most blocks run"
    # the commands that were wrong once: the paths the presets read, no placeholders (comments aside)
    commands = [ln.split("  #")[0] for b in run for ln in b.text.splitlines()]
    assert not [c for c in commands if "data/world" in c or "[--" in c or "|" in c or "path/to" in c], commands


def _clone(tmp: Path) -> Path:
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    venv, ours = clone / ".venv", Path(sys.prefix)
    venv.mkdir()
    for entry in ours.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # make's stamp, newer than the clone's pyproject.toml: no second install
    return clone


def _runnable(block: Block, clone: Path) -> str | None:
    """Why the block is not run here, or None."""
    if block.mark == "skip":
        return block.why
    if block.mark == "needs":
        missing = [n for n in block.why.split() if not ((clone / n).exists() if "/" in n else shutil.which(n))]
        return f"needs {', '.join(missing)}" if missing else None
    return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the blocks' processes, once they have ended
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_readme_shell_block_runs_from_a_fresh_clone(tmp_path):
    clone = _clone(tmp_path)
    env = dict(os.environ)
    env.update(
        PATH=f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(clone / ".venv"),
        PYTHONPATH=str(clone),
        GEMKR_LAB_OVERRIDES=TINY,
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        YOLO_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    where = subprocess.run(
        ["python", "-c", "import gemkr_lab; print(gemkr_lab.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(clone.resolve()), f"the clone's package is imported, not {where}"

    blocks = shell_blocks((clone / "README.md").read_text(encoding="utf-8"))
    timings, skipped = [], []
    for n, block in enumerate(blocks):
        why = _runnable(block, clone)
        if why:
            skipped.append(f"README.md:{block.line}: {why}")
            continue
        lines = [ln for ln in block.text.splitlines() if not ln.strip().startswith(SETUP_ONLY)] if n == 0 else None
        script = "set -euo pipefail\n" + ("\n".join(lines) + "\n" if lines is not None else block.text)
        log = tmp_path / f"block-{block.line}.log"
        started, cpu = time.perf_counter(), _children_cpu()
        with open(log, "w", encoding="utf-8") as out:
            code = subprocess.run(
                ["bash", "-c", script], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800
            ).returncode
        seconds = time.perf_counter() - started
        timings.append(f"README.md:{block.line}: {seconds:.0f} s wall, {_children_cpu() - cpu:.0f} s CPU")
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        assert code == 0, f"README.md:{block.line}: the block exited {code}:\n{block.text}\n--- output (tail):\n{tail}"
    load = os.getloadavg()[0]
    print("\n".join([f"README blocks run (load average at the end: {load:.1f}):", *timings]))
    print("\n".join(["skipped:", *skipped]))
    assert (clone / "reports" / "demo" / "table.md").is_file()
    assert (clone / "reports" / "lr-search" / "summary.md").is_file()
