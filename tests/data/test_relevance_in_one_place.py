"""#24: a benchmark's relevance is built in one place (data.relevance), for a run's metrics and the explorer alike."""

import ast
from pathlib import Path

import pytest

import gemkr_lab
from gemkr_lab.data.relevance import benchmark_relevance, judged_by_answers

PACKAGE = Path(gemkr_lab.__file__).parent
ALLOWED = {"data/relevance.py", "cli.py"}  # cli: `score` judges a user's own qrels or answers file, no benchmark


def test_relevance_objects_are_built_only_in_data_relevance():
    built = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE))
        if where.startswith("metrics/") or where in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in {"AnswerRelevance", "QrelsRelevance"}:
                built.append(f"{where}:{node.lineno}")
    assert not built, f"use gemkr_lab.data.relevance.benchmark_relevance: {built}"


def test_each_layout_judges_as_its_benchmark_defines():
    gold, answers = {"q": ["d1"]}, {"q": ["Rex"]}
    texts = {"d1": "a dog", "d2": "a dog named rex", "d3": "a dog named Rex"}
    assert not judged_by_answers("synthetic") and not judged_by_answers("remuq")
    assert benchmark_relevance("remuq", gold, answers).judge("q", ["d1", "d2"]) == [True, False]
    assert benchmark_relevance("okvqa-gs112k", gold, answers, texts).judge("q", ["d1", "d2", "d3"]) == [
        False,
        False,
        True,
    ]  # GeMKR's case-sensitive substring test
    assert benchmark_relevance("okvqa-wk21m", gold, answers, texts).judge("q", ["d2", "d3"]) == [True, True]
    with pytest.raises(ValueError, match="pass the texts"):
        benchmark_relevance("okvqa-gs112k", gold, answers)
