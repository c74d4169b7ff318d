"""GS112K test queries: GeMKR's test.json or VRR's retriever_test.json, chosen, cross-checked and noted.

Fixtures are written here in the two files' exact schemas (benchmarks.md §2.2), no copied data.
"""

import dataclasses
import json

import pytest

from gemkr_lab.config import DataConfig
from gemkr_lab.config.checks import FieldError
from gemkr_lab.data.datasets import Dataset
from gemkr_lab.data.prepare import Preparer, read_stamp
from gemkr_lab.data.queries import CAPTION_KEPT, DataError, ReadReport, compare_queries, read_gemkr_test_json

VRR_TEST = [
    {
        "question_id": 9000011,
        "img_id": "COCO_val2014_000000900001",
        "question": "what does this animal eat? a small reddish animal sitting on a branch.",
        "caption": "a small reddish animal sitting on a branch.",
        "answers": {"bamboo": 1.0, "leaves": 0.6, "leav": 0.6},
        "ctxs": [],
    },
    {
        "question_id": 9000021,
        "img_id": "COCO_val2014_000000900002",
        "question": "what is this? a cup.",
        "caption": "a cup.",
        "answers": {"": 1.0},
        "ctxs": [],
    },
    {
        "question_id": 9000061,
        "img_id": "COCO_val2014_000000900006",
        "question": "name the dog. a dog on grass.",
        "caption": "a dog on grass.",
        "answers": {"rex": 1.0},
        "ctxs": [],
    },
    {
        "question_id": 9000051,
        "img_id": "COCO_val2014_000000900005",
        "question": "where is this? a beach.",
        "caption": "a beach.",
        "answers": {"hawaii": 1.0},
        "ctxs": [],
    },
]
GEMKR_TEST = [  # another order and case than VRR's; positions are the query ids
    {"input": "Name the dog. a dog on grass.", "output": ["rex"], "image": "COCO_val2014_000000900006"},
    {
        "input": "What does this animal eat? a small reddish animal sitting on a branch.",
        "output": ["leaves", "bamboo", "leav"],
        "image": "COCO_val2014_000000900001",
    },
    {"input": "what is this? a cup.", "output": ["", "mug"], "image": "COCO_val2014_000000900002"},
    {"input": "who made it? a red car.", "output": ["ford"], "image": "COCO_val2014_000000900004"},
]
CORPUS = "kid,text\n0,the red panda eats bamboo and leaves\n1,a cup or a mug\n2,a dog named rex\n"


def _root(tmp_path, gemkr=True, vrr=True, gemkr_rows=GEMKR_TEST):
    root = tmp_path / "gs112k"
    (root / "images").mkdir(parents=True)
    (root / "okvqa_train_corpus.csv").write_text(CORPUS, encoding="utf-8")
    if gemkr:
        (root / "test.json").write_text(json.dumps(gemkr_rows), encoding="utf-8")
    if vrr:
        (root / "retriever_test.json").write_text(json.dumps(VRR_TEST), encoding="utf-8")
    return root


def test_gemkr_inputs_without_a_question_mark_keep_the_caption_and_say_so(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(GEMKR_TEST), encoding="utf-8")
    report = ReadReport()
    queries = read_gemkr_test_json(path, report)
    assert [q.qid for q in queries] == ["0", "1", "2", "3"]
    assert (queries[0].question, queries[0].caption) == ("Name the dog. a dog on grass.", "")
    assert (queries[1].question, queries[1].caption) == (
        "What does this animal eat?",
        "a small reddish animal sitting on a branch.",
    )
    assert report.notes == {CAPTION_KEPT: 1}
    assert report.describe() == f"4 queries (none skipped; 1 {CAPTION_KEPT})"


def test_the_check_pairs_by_image_and_question_and_lists_every_difference(tmp_path):
    root = _root(tmp_path)
    check = Dataset("okvqa-gs112k", root).check_test_queries()
    assert check.pairs == {"0": "9000061", "1": "9000011", "2": "9000021"}  # "0" by its question's prefix
    assert check.only_gemkr == ["3"] and check.only_vrr == ["9000051"]
    assert check.other_answers == [{"gemkr": "2", "vrr": "9000021", "only_gemkr": ["mug"], "only_vrr": []}]
    assert not check.agree
    assert check.summary() == (
        "DIFFERENT: 3 paired by image and question, 1 only in GeMKR's (e.g. query 3), "
        "1 only in VRR's (e.g. question_id 9000051), "
        "1 with other answers (e.g. query 2 / question_id 9000021: only GeMKR's ['mug'], only VRR's [])"
    )
    same = compare_queries(read_gemkr_test_json(root / "test.json")[:2], [])
    assert same.only_gemkr == ["0", "1"] and not same.pairs


def test_identical_files_agree(tmp_path):
    gemkr = [{"input": r["question"], "output": list(r["answers"]), "image": r["img_id"]} for r in VRR_TEST]
    check = Dataset("okvqa-gs112k", _root(tmp_path, gemkr_rows=gemkr)).check_test_queries()
    assert check.agree and len(check.pairs) == 4
    assert check.summary() == "4 paired by image and question: the same queries and answers"


def test_the_test_file_is_chosen_by_the_setting(tmp_path):
    both = _root(tmp_path / "both")
    assert Dataset("okvqa-gs112k", both).test_source == "gemkr"  # auto: GeMKR's when present
    assert [q.qid for q in Dataset("okvqa-gs112k", both).queries("test")] == ["0", "1", "2", "3"]
    vrr = Dataset("okvqa-gs112k", both, test_queries="vrr")
    assert vrr.query_file("test").name == "retriever_test.json"
    assert [q.qid for q in vrr.queries("test")][:2] == ["9000011", "9000021"]
    only_vrr = _root(tmp_path / "vrr", gemkr=False)
    assert Dataset("okvqa-gs112k", only_vrr).test_source == "vrr"
    assert Dataset("okvqa-gs112k", only_vrr).check_test_queries() is None
    with pytest.raises(DataError, match=r"missing test\.json"):
        Dataset("okvqa-gs112k", only_vrr, test_queries="gemkr")
    only_gemkr = _root(tmp_path / "gemkr", vrr=False)
    with pytest.raises(DataError, match=r"missing retriever_test\.json"):
        Dataset("okvqa-gs112k", only_gemkr, test_queries="vrr")
    with pytest.raises(DataError, match="has no GeMKR test file"):
        Dataset("synthetic", only_gemkr, test_queries="gemkr")
    with pytest.raises(FieldError, match="gs112k_test_queries"):
        DataConfig(dataset="synthetic", gs112k_test_queries="gemkr")


def _prepare(root, out, tokenizer_dir, **settings):
    config = DataConfig(dataset="okvqa-gs112k", detector="none", **settings)
    steps = Preparer(config, root, out, tokenizer=tokenizer_dir, progress=False).run()
    return {s["step"]: s for s in steps}


def test_prepare_notes_the_source_and_reports_the_differences(tmp_path, tokenizer_dir):
    root, out = _root(tmp_path), tmp_path / "prepared"
    steps = _prepare(root, out, tokenizer_dir)
    detail = steps["queries"]["detail"]
    assert detail.startswith(
        f"test: 4 queries (none skipped; 1 {CAPTION_KEPT}) from GeMKR's test.json (gs112k_test_queries=auto: present)"
    )
    assert "test.json vs retriever_test.json: DIFFERENT: 3 paired" in detail and "query_check.json" in detail
    written = [json.loads(x) for x in (out / "queries_test.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in written] == ["0", "1", "2", "3"] and written[2]["answers"] == ["", "mug"]
    check = json.loads((out / "query_check.json").read_text())
    assert check["only_vrr"] == ["9000051"] and check["gemkr_to_vrr"]["1"] == "9000011"
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["test_queries"] == "from GeMKR's test.json (gs112k_test_queries=auto: present)"
    assert read_stamp(out)["settings"]["gs112k_test_queries"] == "auto"

    steps = _prepare(root, out, tokenizer_dir, gs112k_test_queries="vrr")
    assert steps["queries"]["status"] == "made"  # another file: made again, not skipped
    assert steps["queries"]["detail"].startswith(
        "test: 4 queries (none skipped) from VRR's retriever_test.json (gs112k_test_queries=vrr)"
    )
    written = [json.loads(x)["qid"] for x in (out / "queries_test.jsonl").read_text().splitlines()]
    assert written == ["9000011", "9000021", "9000061", "9000051"]
    assert read_stamp(out)["settings"]["gs112k_test_queries"] == "vrr"


def test_prepare_with_one_file_says_it_was_not_checked(tmp_path, tokenizer_dir):
    steps = _prepare(_root(tmp_path, gemkr=False), tmp_path / "p", tokenizer_dir)
    assert steps["queries"]["detail"] == (
        "test: 4 queries (none skipped) from VRR's retriever_test.json (gs112k_test_queries=auto: test.json absent); "
        "not checked against the other query file (test.json absent)"
    )
    assert not (tmp_path / "p" / "query_check.json").exists()


def test_prepare_indexes_the_official_texts_unless_switched(tmp_path, tokenizer_dir):
    from gemkr_lab.kb import open_index

    root = _root(tmp_path)
    (root / "okvqa_train_corpus.csv").write_bytes(b'kid,text\r\n0,"red panda\r\neats bamboo"\r\n1,"a\rcup"\r\n')
    official = _prepare(root, tmp_path / "official", tokenizer_dir)
    assert "official texts" in official["index"]["detail"]
    assert open_index(tmp_path / "official" / "index").meta["extra"]["carriage_returns_to_spaces"] is False
    broad = _prepare(root, tmp_path / "official", tokenizer_dir, carriage_returns_to_spaces=True)
    assert broad["index"]["status"] == "made" and "turned into spaces" in broad["index"]["detail"]
    assert open_index(tmp_path / "official" / "index").meta["extra"]["carriage_returns_to_spaces"] is True
    assert read_stamp(tmp_path / "official")["settings"]["carriage_returns_to_spaces"] is True


def test_cli_prepare_takes_both_settings(tmp_path, tokenizer_dir, capsys):
    from gemkr_lab.cli import main

    root, out = _root(tmp_path), tmp_path / "p"
    args = ["prepare", "okvqa-gs112k", "--data-root", str(root), "--out", str(out), "--tokenizer", str(tokenizer_dir)]
    assert main([*args, "--detector", "none", "--gs112k-test-queries", "vrr", "--carriage-returns-to-spaces"]) == 0
    assert "from VRR's retriever_test.json (gs112k_test_queries=vrr)" in capsys.readouterr().out
    settings = read_stamp(out)["settings"]
    assert settings["gs112k_test_queries"] == "vrr" and settings["carriage_returns_to_spaces"] is True


def test_answer_relevance_is_scored_case_sensitive_and_lowercase(tmp_path, tokenizer_dir):
    """#23: an answer-based run's metrics carry both matches, its own (GS112K: case-sensitive) the headline."""
    from gemkr_lab.config.experiment import ExperimentConfig
    from gemkr_lab.metrics import evaluate
    from gemkr_lab.metrics.score import means_by_match
    from gemkr_lab.run.cell import relevance_for

    root, out = _root(tmp_path), tmp_path / "prepared"
    (root / "okvqa_train_corpus.csv").write_text(CORPUS.replace("named rex", "named Rex"), encoding="utf-8")
    _prepare(root, out, tokenizer_dir)
    config = ExperimentConfig(data=DataConfig(dataset="okvqa-gs112k", detector="none"))
    config = dataclasses.replace(config, data_root=str(root), prepared=str(out))
    ranked = {"0": ["2", "1"], "1": ["0", "1"], "2": ["1"], "3": ["2"]}  # q0: "rex", in passage 2 as "Rex"
    relevance = relevance_for(config, ranked)
    assert relevance.match == "exact"
    by_match = means_by_match(ranked, relevance, ks=(1, 5))
    assert by_match["exact"] == evaluate(ranked, relevance, ks=(1, 5)).means  # the headline is unchanged
    assert by_match["exact"]["R@1"] == pytest.approx(2 / 4)  # q1 bamboo, q2 "" (matches every passage)
    assert by_match["lower"]["R@1"] == pytest.approx(3 / 4)  # and q0's "rex" in "Rex"
    gold = {"0": {"2": 1}}
    from gemkr_lab.metrics import QrelsRelevance

    assert means_by_match(ranked, QrelsRelevance(gold), ks=(1,)) is None  # gold relevance has no match
