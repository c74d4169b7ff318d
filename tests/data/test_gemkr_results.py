"""GeMKR's official result file through `import gemkr-results` and `score` equals the official evaluation loop."""

import csv
import itertools
import json
import random
import re

import pytest

from gemkr_lab.cli import main
from gemkr_lab.metrics import read_run

WORDS = ["bamboo", "panda", "Paris", "paris", "tower", "river", "apple", "appl", "cherry", "tree", "1950's", "us"]
WORDS += ["tv", "red", "blue", "green", "stone"]


def official_metric(results: list[list[str]], test: list[dict], id2text: dict[str, str]) -> dict[str, float]:
    """GeMKR's eval.py loop, written out: first occurrences in order, case-sensitive substrings, /5, hit rates."""
    p5 = r5 = r10 = 0
    for ids, record in zip(results, test, strict=True):
        predicts = []
        for pred in ids:
            if pred not in predicts:
                predicts.append(pred)
        result = [1 if any(ans in id2text[pid] for ans in record["output"]) else 0 for pid in predicts]
        p5 += sum(result[0:5])
        r5 += 1 if sum(result[0:5]) >= 1 else 0
        r10 += 1 if sum(result[0:10]) >= 1 else 0
    n = len(results)
    return {"P@5": p5 / n / 5, "R@5": r5 / n, "R@10": r10 / n}


@pytest.fixture
def official_files(tmp_path):
    """A corpus, a test.json and a result file in GeMKR's formats, random but seeded, with the edge cases."""
    rng = random.Random(16)
    texts = {str(i): " ".join(rng.choices(WORDS, k=6)) for i in range(40)}
    texts["7"] = "line one\nPanda, line two"  # a newline (the index builder's space) and a comma (CSV quoting)
    with open(tmp_path / "corpus.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kid", "text"])
        writer.writerows(texts.items())
    test = [
        {"input": f"what is it {i}? a picture {i}.", "output": rng.sample(WORDS, rng.randint(1, 3)), "image": f"im{i}"}
        for i in range(30)
    ]
    test[3]["output"] = [""]  # an empty answer matches every passage (as in the real test.json)
    test[4]["output"] = []  # no answers at all: still a query, always a miss
    test[5]["output"] = ["Panda"]  # case-sensitive: only passage 7 holds it
    results = [[rng.choice(sorted(texts)) for _ in range(10)] for _ in test]  # 10 beams, duplicates likely
    results[5] = ["7"] * 10  # one unique id
    results[6] = ["3", "3", "1", "2", "1", "4", "5", "6", "6", "8"]
    (tmp_path / "test.json").write_text(json.dumps(test), encoding="utf-8")
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    id2text = {k: v.replace("\n", " ").strip() for k, v in texts.items()}  # what the official index builder keeps
    return tmp_path, test, results, id2text


def _import(d) -> int:
    return main(
        [
            "import",
            "gemkr-results",
            str(d / "results.json"),
            "--test-json",
            str(d / "test.json"),
            "--run-out",
            str(d / "run.txt"),
            "--answers-out",
            str(d / "answers.jsonl"),
        ]
    )


def _score(d, run: str, capsys) -> dict[str, float]:
    capsys.readouterr()
    args = ["score", "--run", str(d / run), "--answers", str(d / "answers.jsonl"), "--corpus", str(d / "corpus.csv")]
    assert main([*args, "--match", "exact", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_import_and_score_equal_the_official_loop(official_files, capsys):
    d, test, results, id2text = official_files
    assert _import(d) == 0
    assert "30 queries (1 without answers), 300 ids" in capsys.readouterr().out
    ours = _score(d, "run.txt", capsys)
    expected = official_metric(results, test, id2text)
    assert 0 < expected["P@5"] < expected["R@5"] < expected["R@10"] < 1  # every rule of the loop matters here
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name

    run = read_run(d / "run.txt")  # no duplicates left (it would refuse them), ids kept in beam order
    assert set(run) == {str(i) for i in range(len(test))}
    assert run["6"] == ["3", "1", "2", "4", "5", "6", "8"] and run["5"] == ["7"]
    lines = [line.split() for line in (d / "run.txt").read_text().splitlines() if line.startswith("6 ")]
    scores = [float(f[4]) for f in lines]
    assert all(a > b for a, b in itertools.pairwise(scores))  # strictly decreasing: no ties to break
    answers = [json.loads(line) for line in (d / "answers.jsonl").read_text().splitlines()]
    assert [a["qid"] for a in answers] == [str(i) for i in range(30)]
    assert answers[4]["answers"] == [] and answers[3]["answers"] == [""]


def test_equal_scores_would_reorder_by_id(official_files, capsys):
    """The pitfall the import avoids: a conversion with one score for all ids is ranked by id, not by beam."""
    d, _, results, _ = official_files
    assert _import(d) == 0
    with open(d / "flat.txt", "w", encoding="utf-8") as fh:
        for qid, ids in enumerate(results):
            for rank, docid in enumerate(dict.fromkeys(ids), start=1):
                fh.write(f"{qid} Q0 {docid} {rank} 1.0 flat\n")
    assert _score(d, "flat.txt", capsys) != _score(d, "run.txt", capsys)


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ('[["1"]]', "1 result lists, but .* holds 2 queries"),
        ('{"a": 1}', "expected a JSON list"),
        ('[["1"], [null]]', "entry 1: expected a list of passage ids"),
        ('[[1, 2], ["a b"]]', "cannot contain spaces"),
    ],
)
def test_bad_result_files(tmp_path, capsys, results, message):
    (tmp_path / "test.json").write_text(
        json.dumps([{"input": "q? c.", "output": ["a"], "image": "i"}] * 2), encoding="utf-8"
    )
    (tmp_path / "results.json").write_text(results, encoding="utf-8")
    assert _import(tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("gemkr-lab: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
