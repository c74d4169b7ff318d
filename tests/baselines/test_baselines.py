"""Baselines write runs the scorer reads, and find what they should on a small corpus."""

import json

import pytest

from gemkr_lab.baselines import bm25_search, dense_search, kb_passages
from gemkr_lab.cli import main
from gemkr_lab.metrics import read_run

CORPUS = (
    "kid,text\n"
    "1,giant pandas eat bamboo in the mountains of china\n"
    "2,the eiffel tower stands in paris\n"
    "3,giant pandas eat bamboo in the mountains of china\n"
    "4,salmon swim upstream to spawn in rivers\n"
    "5,espresso is a strong coffee from italy\n"
)


def _files(tmp_path):
    corpus = tmp_path / "corpus.csv"
    corpus.write_text(CORPUS, encoding="utf-8")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(
            json.dumps(q) + "\n"
            for q in [
                {"qid": "q1", "text": "what do pandas eat"},
                {"qid": "q2", "text": "famous tower in paris"},
                {"qid": "q3", "text": "fish that swims up rivers"},
            ]
        ),
        encoding="utf-8",
    )
    return corpus, queries


def test_passages_are_deduplicated_like_the_index(tmp_path):
    corpus, _ = _files(tmp_path)
    ids, texts = kb_passages(corpus)
    assert ids == ["1", "2", "4", "5"] and len(texts) == 4
    assert kb_passages(corpus, dedup=False)[0] == ["1", "2", "3", "4", "5"]


def test_bm25_ranks_the_matching_passage_first(tmp_path):
    corpus, _ = _files(tmp_path)
    ids, texts = kb_passages(corpus)
    run = bm25_search(ids, texts, {"a": "pandas bamboo", "b": "tower paris", "c": "zzz"}, k=3)
    assert run["a"][0] == "1" and run["b"][0] == "2"
    assert run["c"] == []  # no query term in any passage: nothing ranked


@pytest.mark.slow  # loads a sentence-transformers model (about 11 s of CPU)
def test_dense_ranks_the_matching_passage_first(tmp_path):
    corpus, _ = _files(tmp_path)
    ids, texts = kb_passages(corpus)
    run = dense_search(ids, texts, {"q1": "what do pandas eat", "q3": "fish that swims up rivers"}, k=2)
    assert run["q1"][0] == "1" and run["q3"][0] == "4"
    assert all(len(v) == 2 for v in run.values())


@pytest.mark.parametrize("method", ["bm25", pytest.param("dense", marks=pytest.mark.slow)])
def test_cli_baselines_write_scoreable_runs(tmp_path, capsys, method):
    corpus, queries = _files(tmp_path)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 1 1\nq2 0 2 1\nq3 0 4 1\n", encoding="utf-8")
    out = tmp_path / f"{method}.txt"
    args = ["baseline", method, "--corpus", str(corpus), "--queries", str(queries), "--out", str(out)]
    assert main([*args, "--k", "3"]) == 0
    assert set(read_run(out)) <= {"q1", "q2", "q3"}
    capsys.readouterr()
    assert main(["score", "--run", str(out), "--qrels", str(qrels), "--json"]) == 0
    means = json.loads(capsys.readouterr().out)
    assert means["R@5"] >= 2 / 3, method


def test_bad_queries_file(tmp_path, capsys):
    corpus, queries = _files(tmp_path)
    queries.write_text('{"qid": "q1"}\n', encoding="utf-8")
    args = ["baseline", "bm25", "--corpus", str(corpus), "--queries", str(queries), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "queries.jsonl:1:" in capsys.readouterr().err
