"""The synthetic world, clue targets and `prepare`, end to end on CPU."""

import filecmp
import json
import shutil
from pathlib import Path

import pytest

from gemkr_lab.baselines import bm25_search, kb_passages
from gemkr_lab.config import DataConfig
from gemkr_lab.data.clue_targets import ClueFinder
from gemkr_lab.data.datasets import Dataset
from gemkr_lab.data.prepare import Preparer, read_stamp, stamp_differences
from gemkr_lab.data.prompt import IMAGE_PLACEHOLDER, TEMPLATE, build_prompt
from gemkr_lab.data.regions import load_regions
from gemkr_lab.data.world import make_world
from gemkr_lab.kb import open_index
from gemkr_lab.kb.tokenize import load_tokenizer
from gemkr_lab.metrics import QrelsRelevance, evaluate, read_qrels


@pytest.fixture(scope="module")
def world(tiny_world):
    """The session's synthetic world (seed 0, small), read only."""
    return Path(tiny_world[0])


@pytest.fixture(scope="module")
def prepared(tiny_world, tmp_path_factory):
    """A copy of the session's prepared world (the world is prepared once per run; tests here prepare it again)."""
    out = tmp_path_factory.mktemp("prepared") / "p"
    shutil.copytree(tiny_world[1], out)
    return out


def _same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    files = [p.relative_to(a) for p in a.rglob("*") if p.is_file()]
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_world_is_deterministic(world, tmp_path):
    make_world(tmp_path / "again", seed=0, size="small")
    assert _same_tree(world, tmp_path / "again")
    make_world(tmp_path / "other", seed=1, size="small")
    assert (world / "corpus.csv").read_bytes() != (tmp_path / "other" / "corpus.csv").read_bytes()


def test_the_image_decides(world):
    dataset = Dataset("synthetic", world)
    ids, texts = kb_passages(dataset.corpus)
    queries = dataset.queries("test")
    qrels = QrelsRelevance(read_qrels(world / "qrels_test.txt"))
    text_only = bm25_search(ids, texts, {q.qid: f"{q.question} {q.caption}" for q in queries}, k=10)
    creatures = {c["name"]: c for c in json.loads((world / "world.json").read_text())["creatures"]}
    depicted = {}
    for q in queries:
        ci = int(q.qid.split("-")[1])
        depicted[q.qid] = list(creatures)[ci]
    oracle = bm25_search(ids, texts, {q.qid: f"{q.question} {depicted[q.qid]}" for q in queries}, k=10)
    blind = evaluate(text_only, qrels, ks=(5,)).means["R@5"]
    seeing = evaluate(oracle, qrels, ks=(5,)).means["R@5"]
    n_fact_passages = len(ids) / 4
    assert blind <= 3 * 5 / n_fact_passages  # near chance: 5 guesses among the passages of one fact
    assert seeing >= 0.9


@pytest.mark.parametrize(("min_tokens", "max_tokens", "at_least"), [(1, 3, 20), (2, 9, 110)])
def test_clue_targets_are_unique_spans_within_the_length_knob(world, prepared, min_tokens, max_tokens, at_least):
    index = open_index(prepared / "index")
    tok = load_tokenizer(world / "tokenizer")
    finder = ClueFinder(index, tok, min_tokens, max_tokens)
    from gemkr_lab.kb.corpus import read_corpus

    texts = {p.id: p.text for p in read_corpus(world / "corpus.csv")}
    found = 0
    for q in Dataset("synthetic", world).queries("train")[:120]:
        doc = index.position(q.positives[0])
        clue = finder.find(doc, texts[q.positives[0]], q.answers)
        if clue is None:
            continue
        found += 1
        passage = index.doc_tokens(doc).tolist()
        assert min_tokens <= len(clue.tokens) <= max_tokens
        assert passage[clue.start : clue.start + len(clue.tokens)] == clue.tokens
        assert index.docs(clue.tokens).tolist() == [doc]
    assert found >= at_least  # shorter caps leave more passages without a unique span


def test_prepare_outputs_and_idempotence(world, prepared):
    stats = json.loads((prepared / "clue_stats.json").read_text())
    assert stats["coverage"] > 0.95 and stats["queries_without_clue"] == stats["queries"] - stats["pairs_with_clue"]
    rows = [json.loads(x) for x in (prepared / "instructions_train.jsonl").read_text().splitlines()]
    index = open_index(prepared / "index")
    for r in rows[:50]:
        assert index.docs(r["clue_tokens"]).tolist() == [index.position(r["doc_id"])]
    regions = load_regions(prepared / "regions", rows[0]["image_id"], "train")
    assert regions and regions[0][0].label == "creature"  # the largest box, the creature, comes first
    assert regions[0][1].size == (
        regions[0][0].box[2] - regions[0][0].box[0],
        regions[0][0].box[3] - regions[0][0].box[1],
    )
    assert load_regions(prepared / "regions", rows[0]["image_id"], "test", zero_at_test=True) == []
    again = Preparer(DataConfig(), world, prepared, progress=False).run()
    assert [s["status"] for s in again] == ["skipped"] * 4
    changed = Preparer(DataConfig(clue_max_tokens=5), world, prepared, progress=False).run()
    assert {s["step"]: s["status"] for s in changed} == {
        "index": "skipped",
        "queries": "skipped",
        "clues": "made",
        "regions": "skipped",
    }
    forced = Preparer(DataConfig(clue_max_tokens=5), world, prepared, force=True, progress=False).run()
    assert [s["status"] for s in forced] == ["made"] * 4
    stamp = read_stamp(prepared)  # the folder says what it was prepared with
    assert stamp["settings"]["clue_max_tokens"] == 5 and stamp["settings"]["detector"] == "ground_truth"
    assert stamp_differences(stamp, DataConfig(clue_max_tokens=5)) == []
    assert stamp_differences(stamp, DataConfig()) == [("clue_max_tokens", 5, 9)]


def test_relevant_passages_absent_from_the_corpus_are_counted(world, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(world, root)
    records = json.loads((root / "retriever_train.json").read_text())
    records[0]["ctxs"][0]["id"] = "999999"
    (root / "retriever_train.json").write_text(json.dumps(records))
    Preparer(DataConfig(detector="none"), root, tmp_path / "out", progress=False).run()
    stats = json.loads((tmp_path / "out" / "clue_stats.json").read_text())
    assert stats["relevant_passages_absent_from_corpus"] == 1


@pytest.mark.slow  # builds and runs a YOLO (about 36 s of CPU)
def test_random_yolo_from_its_yaml_may_detect_nothing(world, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    from ultralytics import YOLO

    weights = tmp_path / "random.pt"
    YOLO("yolov8n.yaml").save(str(weights))
    config = DataConfig(detector="yolo", yolo_weights=str(weights))
    summary = Preparer(config, world, tmp_path / "out", progress=False).run()
    detail = {s["step"]: s.get("detail", "") for s in summary}["regions"]
    n_images = len(list((world / "images").iterdir()))
    assert f"{n_images} images detected" in detail
    some = next((tmp_path / "out" / "regions").glob("*.json"))
    assert isinstance(json.loads(some.read_text()), list)  # possibly empty: the empty case works


def test_missing_yolo_weights_fail_before_any_work(world, tmp_path):
    from gemkr_lab.data.queries import DataError

    with pytest.raises(DataError, match="no such YOLO weights"):
        Preparer(DataConfig(detector="yolo", yolo_weights=str(tmp_path / "none.pt")), world, tmp_path / "o").run()
    assert not (tmp_path / "o").exists()


def test_prompt_template_and_caption_switch():
    before, after = build_prompt("what does this creature eat?", "a picture.", append_caption=True)
    assert before.endswith("### Question:\nwhat does this creature eat? a picture.\n\n### Image:\n")
    assert after == "\n\n### Response:\n"
    before, _ = build_prompt("what does this creature eat?", "a picture.", append_caption=False)
    assert "a picture." not in before and IMAGE_PLACEHOLDER in TEMPLATE


def test_cli_make_world_and_prepare(tmp_path, capsys):
    from gemkr_lab.cli import main

    assert main(["make-world", "--out", str(tmp_path / "w"), "--seed", "3"]) == 0
    assert main(["prepare", "synthetic", "--data-root", str(tmp_path / "w"), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "clues" in out and "made" in out
    assert main(["prepare", "synthetic", "--data-root", str(tmp_path / "w"), "--out", str(tmp_path / "p")]) == 0
    assert capsys.readouterr().out.count("skipped") == 4
    assert main(["prepare", "remuq", "--data-root", str(tmp_path / "w"), "--out", str(tmp_path / "p2")]) == 2
    assert "missing" in capsys.readouterr().err
