"""Metrics on hand-written runs, cross-checked against ir-measures (trec_eval semantics)."""

import ir_measures
import numpy as np
import pytest

from gemkr_lab.metrics import AnswerRelevance, QrelsRelevance, evaluate, read_run, write_run
from gemkr_lab.metrics.measures import parse_metric

OURS_TO_IRM = {"P": "P@{k}", "R": "Success@{k}", "Recall": "R@{k}", "MRR": "RR@{k}"}


def _irm_per_query(qrels, scored_run, names):
    measures = {n: ir_measures.parse_measure(OURS_TO_IRM[n.split("@")[0]].format(k=n.split("@")[1])) for n in names}
    out = {}
    for m in ir_measures.iter_calc(list(measures.values()), qrels, scored_run):
        name = next(n for n, meas in measures.items() if meas == m.measure)
        out.setdefault(m.query_id, {})[name] = m.value
    return out


def _scored(run):
    return {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in run.items()}


def _cross_check(run_ranked, qrels, ks=(1, 2, 5, 10)):
    ev = evaluate(run_ranked, QrelsRelevance(qrels), ks)
    names = list(next(iter(ev.per_query.values())).keys())
    irm = _irm_per_query(qrels, _scored(run_ranked), names)
    for qid, values in ev.per_query.items():
        for name, v in values.items():
            expected = irm.get(qid, {}).get(name, 0.0)  # ir-measures omits queries absent from the run
            assert v == pytest.approx(expected), (qid, name)
    return ev


def test_random_runs_match_ir_measures():
    rng = np.random.default_rng(0)
    for _ in range(30):
        qrels = {
            f"q{i}": {
                f"d{j}": int(rng.integers(0, 3)) for j in rng.choice(30, size=int(rng.integers(1, 8)), replace=False)
            }
            for i in range(6)
        }
        run = {
            f"q{i}": [f"d{j}" for j in rng.choice(30, size=int(rng.integers(0, 12)), replace=False)]
            for i in range(6)
            if rng.random() < 0.85
        }
        _cross_check(run, qrels)


def test_edge_cases_match_ir_measures():
    qrels = {
        "fewer": {"a": 1, "b": 1, "c": 0},  # fewer than k retrieved
        "none_relevant": {"a": 0},  # judged, nothing relevant
        "missing": {"x": 1},  # absent from the run: zeros
        "late": {"z": 1},  # relevant only past k
    }
    run = {"fewer": ["a", "c"], "none_relevant": ["a", "b"], "late": [f"n{i}" for i in range(10)] + ["z"]}
    ev = _cross_check(run, qrels, ks=(1, 5, 10))
    assert ev.per_query["fewer"]["P@5"] == pytest.approx(1 / 5)
    assert ev.per_query["missing"] == {k: 0.0 for k in ev.per_query["missing"]}
    assert ev.per_query["late"]["R@10"] == 0.0
    assert ev.missing_from_run == ["missing"]


def test_ties_follow_trec_eval_order(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("q1 Q0 a 1 5.0 t\nq1 Q0 c 2 5.0 t\nq1 Q0 b 3 5.0 t\nq1 Q0 d 4 7.0 t\n")
    ranked = read_run(path)
    assert ranked["q1"] == ["d", "c", "b", "a"]  # score desc, then docid desc
    qrels = {"q1": {"a": 1}}
    ours = evaluate(ranked, QrelsRelevance(qrels), ks=(1, 2, 3, 4))
    scored = {"q1": {"a": 5.0, "c": 5.0, "b": 5.0, "d": 7.0}}
    # ir-measures computes RR@k with its msmarco provider, which breaks ties its own way; its uncut RR comes
    # from trec_eval, like P, Success and R
    names = [n for n in ours.per_query["q1"] if not n.startswith("MRR")]
    irm = _irm_per_query(qrels, scored, names)
    for name in names:
        assert ours.per_query["q1"][name] == pytest.approx(irm["q1"][name]), name
    (rr,) = ir_measures.iter_calc([ir_measures.parse_measure("RR")], qrels, scored)
    assert ours.per_query["q1"]["MRR@4"] == pytest.approx(rr.value) == 0.25


def _answer_qrels(run, answers, texts, lower):
    def rel(q, d):
        t = texts[d].lower() if lower else texts[d]
        return any((a.lower() if lower else a) in t for a in answers[q])

    return {q: {d: int(rel(q, d)) for d in run.get(q, [])} or {"__none__": 0} for q in answers}


@pytest.mark.parametrize("match", ["exact", "lower"])
def test_answer_relevance_matches_ir_measures_on_pooled_qrels(match):
    texts = {
        "d1": "giant pandas eat bamboo",
        "d2": "The US capital",
        "d3": "Bamboo forests",
        "d4": "old houses",
        "d5": "1950's cars",
    }
    answers = {
        "bamboo": ["bamboo"],
        "short": ["us", "2"],  # a two-character answer fires inside other words
        "empty": [""],  # matches every passage (reference evaluations do the same)
        "punct": ["1950's"],
        "unanswered": [],
        "absent": ["zebra"],
    }
    run = {
        "bamboo": ["d1", "d2", "d3"],
        "short": ["d4", "d2", "d1"],
        "empty": ["d4", "d5"],
        "punct": ["d5"],
        "unanswered": ["d1"],
    }
    relevance = AnswerRelevance(answers, texts, match=match)
    ev = evaluate(run, relevance, ks=(1, 5, 10))
    qrels = _answer_qrels(run, answers, texts, lower=match == "lower")
    irm = _irm_per_query(qrels, _scored(run), list(ev.per_query["bamboo"]))
    for qid, values in ev.per_query.items():
        for name, v in values.items():
            assert v == pytest.approx(irm.get(qid, {}).get(name, 0.0)), (qid, name)
    assert ev.per_query["bamboo"]["P@5"] == pytest.approx((2 if match == "lower" else 1) / 5)
    assert ev.per_query["short"]["R@1"] == 1.0  # "us" fires inside "houses", as substring matching does
    assert ev.per_query["short"]["P@5"] == pytest.approx((2 if match == "lower" else 1) / 5)  # "The US" by case
    assert ev.per_query["empty"]["P@5"] == pytest.approx(2 / 5)


def test_worked_example_of_the_benchmark_notes():
    # benchmarks.md §3.6: GeMKR mode P@5 = 0.1, R@5 = 0.5; VRR-style (lower-cased) P@5 = 0.2 (A: 0.4, B: 0)
    texts = {"d1": "pandas eat bamboo", "d2": "a zoo", "d3": "Bamboo grows fast", "d4": "rivers"}
    answers = {"A": ["bamboo"], "B": ["salmon"]}
    run = {"A": ["d1", "d2", "d3"], "B": ["d4"]}
    exact = evaluate(run, AnswerRelevance(answers, texts, "exact"), ks=(5,))
    assert exact.means["P@5"] == pytest.approx(0.1) and exact.means["R@5"] == pytest.approx(0.5)
    lower = evaluate(run, AnswerRelevance(answers, texts, "lower"), ks=(5,))
    assert lower.per_query["A"]["P@5"] == pytest.approx(0.4) and lower.means["P@5"] == pytest.approx(0.2)


def test_duplicates_are_removed_by_first_occurrence_before_scoring():
    qrels = {"q": {"b": 1}}
    ev = evaluate({"q": ["a", "a", "a", "b"]}, QrelsRelevance(qrels), ks=(2,))
    assert ev.per_query["q"]["P@2"] == pytest.approx(0.5)  # deduplicated: [a, b]


def test_write_then_read_run_keeps_the_order(tmp_path):
    ranked = {"q1": ["z", "a", "z", "m"], "q2": []}
    write_run(tmp_path / "r.txt", ranked)
    assert read_run(tmp_path / "r.txt") == {"q1": ["z", "a", "m"]}


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="unknown metric 'NDCG@5'"):
        parse_metric("NDCG@5")
