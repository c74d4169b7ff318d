"""Bad input is answered in a second (#25): ten bad invocations (and five more), each in a fresh interpreter.

Each must exit 2 with exactly one line on stderr (the error, naming the file, line or key and the fix), write
nothing, and be refused before the ML stack loads: torch, transformers, Lightning, numba, Optuna and SQLAlchemy
are never imported (the heavy imports take seconds of CPU on a loaded machine; the refusals took 8 to 65 s).
A wrapper runs `gemkr_lab.cli.main` and reports the exit code and which of those modules `sys.modules` holds at
exit. The CPU time of each process is printed (`pytest -s`); it is not asserted, since it moves with the load,
while the imports do not.
"""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "lightning", "numba", "optuna", "sqlalchemy", "submitit", "pandas")
WRAPPER = f"""
import json, os, sys
from gemkr_lab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # argparse
    code = exc.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
with open(os.environ["BAD_INVOCATION_REPORT"], "w") as fh:
    json.dump({{"code": code, "heavy": heavy}}, fh)
"""

GRID = "name: g\ncells: [tiny-cpu/full]\nseeds: [0]\n"

CASES = {
    # name: (files to write, argv, what the one line must say)
    "missing sweep file": ({}, ["sweep", "missing.yaml"], ["missing.yaml: no such sweep file"]),
    "malformed sweep YAML": (
        {"bad.yaml": "name: g\ncells: [tiny-cpu/full\nseeds: [0]\n"},
        ["sweep", "bad.yaml"],
        ["bad.yaml:3: not valid YAML", "fix the YAML there"],
    ),
    "unknown verb flag": ({}, ["train", "tiny-cpu/full", "--bogus"], ["unrecognized arguments: --bogus", "--help"]),
    "bad override": (
        {},
        ["train", "tiny-cpu/full", "train.max_steps=abc"],
        ["train.max_steps = 'abc': expected an integer", "override 'train.max_steps=abc'"],
    ),
    "missing corpus": (
        {},
        ["index", "build", "corpus.csv", "--tokenizer", "tok", "--out", "kb"],
        ["corpus.csv: no such corpus file"],
    ),
    # read with its BOM dropped (the header has its id column), then refused for what is wrong: a repeated id
    "BOM corpus with a repeated id": (
        {"corpus.csv": "\ufeffkid,text\n1,a red panda\n1,the eiffel tower\n"},
        ["index", "build", "corpus.csv", "--tokenizer", "tok", "--out", "kb"],
        ["corpus.csv: passage id '1' occurs at passages 1 and 2", "needs an id of its own"],
    ),
    "bad storage URL": (
        {"g.yaml": GRID},
        ["sweep", "g.yaml", "--storage", "postgress://me@db/x"],
        ["storage postgress://...: names a database type SQLAlchemy does not know", "postgresql+psycopg2://"],
    ),
    "bad Slurm flag": (
        {"g.yaml": GRID},
        ["sweep", "g.yaml", "--launcher", "slurm", "--time", "soon"],
        ["--time: 'soon' is not a Slurm time limit", "HH:MM:SS"],
    ),
    "missing tokenizer (one more)": (
        {"corpus.csv": "kid,text\n1,a red panda\n"},
        ["index", "build", "corpus.csv", "--tokenizer", "tok", "--out", "kb"],
        ["tok: no such tokenizer directory"],  # was found only after transformers and torch had loaded
    ),
    "missing world (one more)": (
        {},
        ["prepare", "--experiment", "tiny-cpu/full", "--set", "data_root=world", "--set", "prepared=prepared"],
        ["world: missing corpus.csv", "gemkr-lab make-world --out world"],
    ),
    "mistyped index folder (one more)": ({}, ["index", "stats", "kbb"], ["kbb: no such index directory"]),
    "report of a missing sweep file (one more)": ({}, ["report", "sweeps/dem.yaml", "--out", "rep"], ["dem.yaml"]),
    "baseline without its queries (one more)": (
        {"corpus.csv": "kid,text\n1,a red panda\n"},
        ["baseline", "dense", "--corpus", "corpus.csv", "--queries", "q.jsonl", "--out", "run.txt"],
        ["q.jsonl: no such queries file"],  # the dense retriever loaded torch first
    ),
    "mistyped run folder": ({}, ["evaluate", "runs/experiments/tiny-cpu__ful"], ["tiny-cpu__ful"]),
    "empty qrels": (
        {"run.txt": "q1 Q0 d1 1 2.0 t\n", "qrels.txt": ""},
        ["score", "--run", "run.txt", "--qrels", "qrels.txt"],
        ["qrels.txt: holds no judgements"],
    ),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"dir" for p in sorted(root.rglob("*"))}


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_invocation_is_one_line_exit_2_nothing_written_and_no_ml_stack(tmp_path, case):
    files, argv, needles = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    for name, text in files.items():
        (work / name).write_text(text, encoding="utf-8")
    before = _files(work)
    report = tmp_path / "report.json"
    env = dict(os.environ, BAD_INVOCATION_REPORT=str(report))
    env.pop("GEMKR_LAB_OVERRIDES", None)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=work, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - used.ru_utime) + (after.ru_stime - used.ru_stime)
    print(f"{case}: {cpu:.2f} s CPU (load {os.getloadavg()[0]:.1f}): {proc.stderr.strip()}")
    result = json.loads(report.read_text())
    lines = proc.stderr.strip().splitlines()
    assert result["code"] == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("gemkr-lab: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result["heavy"] == [], f"{case} imported {result['heavy']} before refusing"
    assert _files(work) == before  # nothing written, nothing left behind
