"""`gemkr-lab score`: both relevance sources, JSON output, and bad input."""

import json
import re

import pytest

from gemkr_lab.cli import main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "run.txt").write_text(
        "q1 Q0 10 1 3 t\nq1 Q0 11 2 2 t\nq1 Q0 12 3 1 t\nq2 Q0 13 1 1 t\nq9 Q0 10 1 1 t\n", encoding="utf-8"
    )
    (tmp_path / "qrels.txt").write_text("q1 0 12 1\nq2 0 10 1\nq3 0 10 1\n", encoding="utf-8")
    (tmp_path / "answers.jsonl").write_text(
        '{"qid": "q1", "answers": ["bamboo"]}\n{"qid": "q2", "answers": ["Paris"]}\n', encoding="utf-8"
    )
    (tmp_path / "corpus.csv").write_text(
        "kid,text\n10,pandas eat bamboo\n11,nothing\n12,bamboo forest\n13,paris is big\n", encoding="utf-8"
    )
    return tmp_path


def test_qrels_mode_json(files, capsys):
    assert main(["score", "--run", str(files / "run.txt"), "--qrels", str(files / "qrels.txt"), "--json"]) == 0
    out = capsys.readouterr()
    means = json.loads(out.out)
    assert set(means) == {f"{m}@{k}" for m in ("P", "R", "Recall", "MRR") for k in (1, 5, 10)}
    assert means["R@5"] == pytest.approx(1 / 3)  # q1 hits at rank 3; q2 misses; q3 has no results
    assert means["MRR@10"] == pytest.approx((1 / 3) / 3)
    assert "1 judged queries have no results" in out.err and "1 queries of the run have no judgements" in out.err


@pytest.mark.parametrize(("match", "r1", "p2"), [("exact", 0.5, 0.25), ("lower", 1.0, 0.5)])
def test_answers_mode(files, capsys, match, r1, p2):
    args = ["score", "--run", str(files / "run.txt"), "--answers", str(files / "answers.jsonl")]
    assert main([*args, "--corpus", str(files / "corpus.csv"), "--match", match, "--k", "1,2", "--json"]) == 0
    means = json.loads(capsys.readouterr().out)
    assert means["R@1"] == pytest.approx(r1)
    assert means["P@2"] == pytest.approx(p2)  # q1: 1 of 2; q2 "Paris" vs "paris is big" only when lower-cased


def test_per_query_file(files, capsys):
    out = files / "pq.json"
    args = ["score", "--run", str(files / "run.txt"), "--qrels", str(files / "qrels.txt"), "--per-query", str(out)]
    assert main(args) == 0
    saved = json.loads(out.read_text())
    assert saved["per_query"]["q1"]["MRR@10"] == pytest.approx(1 / 3)
    assert saved["per_query"]["q2"]["R@5"] == 0.0 and saved["per_query"]["q3"]["R@5"] == 0.0
    assert saved["means"]["R@5"] == pytest.approx(1 / 3)  # the mean of the per-query values
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines()[1:])
    assert printed["R@5"] == "0.3333" and printed["P@5"] == f"{1 / 5 / 3:.4f}" and printed["MRR@10"] == "0.1111"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("q1 Q0 10 1 3\n", r"run\.txt:1: expected 6 fields"),
        ("q1 Q0 10 1 3 t\nq1 Q0 10 2 2 t\n", r"run\.txt:2: document '10' repeats for query 'q1' \(first at line 1\)"),
        ("q1 Q0 10 1 high t\n", r"run\.txt:1: score 'high' is not a number"),
        ("q1 Q0 10 1 3 t\nq1 Q0 11 2 nan t\n", r"run\.txt:2: score 'nan' is not a finite number"),  # was ranked 1st
        ("q1 Q0 10 1 inf t\n", r"run\.txt:1: score 'inf' is not a finite number"),
    ],
)
def test_bad_runs_name_the_line(files, capsys, content, message):
    (files / "run.txt").write_text(content, encoding="utf-8")
    assert main(["score", "--run", str(files / "run.txt"), "--qrels", str(files / "qrels.txt")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_dedup_flag_keeps_the_best_copy(files, capsys):
    (files / "run.txt").write_text("q1 Q0 11 1 3 t\nq1 Q0 12 2 2 t\nq1 Q0 11 3 1 t\n", encoding="utf-8")
    args = [
        "score",
        "--run",
        str(files / "run.txt"),
        "--qrels",
        str(files / "qrels.txt"),
        "--json",
        "--dedup",
        "--k",
        "2",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["P@2"] == pytest.approx(1 / 2 / 3)


def test_answers_need_the_corpus_and_its_documents(files, capsys):
    args = ["score", "--run", str(files / "run.txt"), "--answers", str(files / "answers.jsonl")]
    assert main(args) == 2
    assert "--answers needs --corpus" in capsys.readouterr().err
    (files / "small.csv").write_text("kid,text\n10,x\n", encoding="utf-8")
    assert main([*args, "--corpus", str(files / "small.csv")]) == 2
    assert "documents are not in" in capsys.readouterr().err


def test_malformed_qrels_and_answers(files, capsys):
    (files / "qrels.txt").write_text("q1 0 12\n", encoding="utf-8")
    assert main(["score", "--run", str(files / "run.txt"), "--qrels", str(files / "qrels.txt")]) == 2
    assert "qrels.txt:1: expected 4 fields" in capsys.readouterr().err
    (files / "answers.jsonl").write_text('{"qid": "q1"}\n', encoding="utf-8")
    args = ["score", "--run", str(files / "run.txt"), "--answers", str(files / "answers.jsonl")]
    assert main([*args, "--corpus", str(files / "corpus.csv")]) == 2
    assert "answers.jsonl:1:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"qrels\.txt: holds no judgements"),  # was: 0 queries, exit 0
        ("\n  \n", r"qrels\.txt: holds no judgements"),
        (
            "q1 0 12 1\nq2 0 10 1\nq1 0 12 0\n",  # was: the last label kept
            r"qrels\.txt:3: document '12' of query 'q1' is judged 0 here and 1 on line 1",
        ),
    ],
)
def test_empty_and_conflicting_qrels_are_refused(files, capsys, content, message):
    (files / "qrels.txt").write_text(content, encoding="utf-8")
    assert main(["score", "--run", str(files / "run.txt"), "--qrels", str(files / "qrels.txt")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err


def test_a_repeated_identical_judgement_is_accepted(files, capsys):
    (files / "qrels.txt").write_text("q1 0 12 1\nq1 0 12 1\n", encoding="utf-8")
    assert main(["score", "--run", str(files / "run.txt"), "--qrels", str(files / "qrels.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["R@5"] == 1.0


def test_answers_are_matched_in_the_official_texts_unless_switched(tmp_path, capsys):
    (tmp_path / "run.txt").write_text("q1 Q0 10 1 1 t\n", encoding="utf-8")
    (tmp_path / "answers.jsonl").write_text('{"qid": "q1", "answers": ["red panda"]}\n', encoding="utf-8")
    (tmp_path / "corpus.csv").write_bytes(b'kid,text\r\n10,"a red\rpanda"\r\n')  # a lone \r stays, officially
    args = ["score", "--run", str(tmp_path / "run.txt"), "--answers", str(tmp_path / "answers.jsonl")]
    args += ["--corpus", str(tmp_path / "corpus.csv"), "--k", "1", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["R@1"] == 0.0
    assert main([*args, "--carriage-returns-to-spaces"]) == 0
    assert json.loads(capsys.readouterr().out)["R@1"] == 1.0
