"""Readers parse fixture files written here in the benchmarks' exact schemas (no copied data)."""

import base64
import io
import json
import tracemalloc

import pytest
from PIL import Image

from gemkr_lab.data.datasets import Dataset
from gemkr_lab.data.images import FolderImages, TsvImages
from gemkr_lab.data.queries import DataError, ReadReport, read_gemkr_test_json, read_retriever_json
from gemkr_lab.kb.corpus import read_corpus

VRR = [
    {
        "question_id": 9000011,
        "img_id": "COCO_val2014_000000900001",
        "question": "what does this animal eat? a small reddish animal sitting on a branch.",
        "caption": "a small reddish animal sitting on a branch.",
        "answers": {"bamboo": 1.0, "leaves": 0.6, "leav": 0.6},
        "ctxs": [{"id": "0", "title": "", "text": "the red panda eats bamboo", "has_answer": True}],
    },
    {
        "question_id": 9000021,
        "img_id": "COCO_val2014_000000900002",
        "question": "what is this? a cup.",
        "caption": "a cup.",
        "answers": [""],
        "ctxs": [],
    },
    {"question_id": 9000031, "img_id": "COCO_val2014_000000900003", "question": "no answers?", "answers": {}},
]


def _png(color=(200, 10, 10), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_vrr_records_split_caption_and_count_skips(tmp_path):
    path = tmp_path / "retriever_test.json"
    path.write_text(json.dumps(VRR), encoding="utf-8")
    report = ReadReport()
    queries = read_retriever_json(path, report)
    assert [q.qid for q in queries] == ["9000011", "9000021"]
    q = queries[0]
    assert q.question == "what does this animal eat?"
    assert q.caption == "a small reddish animal sitting on a branch."
    assert q.answers == ("bamboo", "leaves", "leav") and q.positives == ("0",)
    assert q.image_id == "COCO_val2014_000000900001"
    assert queries[1].answers == ("",)  # an empty answer is kept (it matches everything, as in the references)
    assert report.kept == 2 and report.skipped == {"no answers and no gold passages": 1}


def test_gemkr_test_json(tmp_path):
    path = tmp_path / "test.json"
    rows = [
        {
            "input": "what sport? a black motorcycle.",
            "output": ["racing", "race"],
            "image": "COCO_val2014_000000000001",
        },
        {"input": "which? x.", "output": [], "image": "COCO_val2014_000000000002"},
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    report = ReadReport()
    (q,) = read_gemkr_test_json(path, report)
    assert (q.qid, q.question, q.caption, q.answers, q.image_id) == (
        "0",
        "what sport?",
        "a black motorcycle.",  # split off after the last "? ", so that append_caption can leave it out
        ("racing", "race"),
        rows[0]["image"],
    )
    assert f"{q.question} {q.caption}" == rows[0]["input"]  # what the official code feeds
    assert report.skipped == {"no answers": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "expected a JSON list"),
        ("[1]", "record 0: not a JSON object"),
        ('[{"img_id": 1}]', "missing question_id, question"),
        ("[", "not valid"),
    ],
)
def test_bad_query_files(tmp_path, content, message):
    path = tmp_path / "q.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_retriever_json(path)


def test_folder_images_by_coco_id_and_missing_image(tmp_path):
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000900001.jpg").write_bytes(_png())
    store = FolderImages(tmp_path)
    assert store.load("COCO_val2014_000000900001").size == (8, 6)
    with pytest.raises(DataError, match="image 'COCO_val2014_000000900002' not found"):
        store.load("COCO_val2014_000000900002")
    (tmp_path / "COCO_val2014_000000000009.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="not a readable image"):
        store.load("COCO_val2014_000000000009")


def _remuq_images(tmp_path, truncate=False):
    lines = []
    for i, color in [(30000000, (255, 0, 0)), (30000001, (0, 255, 0)), (30000002, (0, 0, 255))]:
        payload = base64.b64encode(_png(color)).decode()
        if truncate and i == 30000002:
            payload = payload[: len(payload) // 2]
        lines.append(f"{i}\t{payload}\n".encode())
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    (tmp_path / "imgs.tsv").write_bytes(b"".join(lines))
    (tmp_path / "imgs.lineidx").write_text("".join(f"{o}\n" for o in offsets))
    return TsvImages(tmp_path / "imgs.tsv", tmp_path / "imgs.lineidx")


def test_remuq_tsv_images_use_the_lineidx_modulo(tmp_path):
    store = _remuq_images(tmp_path)
    assert store.load("30000001").getpixel((0, 0)) == (0, 255, 0)  # line 30000001 % 10_000_000 = 1
    assert store.load("30000000").getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(DataError, match="beyond"):
        store.load("30000007")


def test_remuq_truncated_base64_is_an_error(tmp_path):
    store = _remuq_images(tmp_path, truncate=True)
    with pytest.raises(DataError, match=r"image 30000002 .*truncated or invalid"):
        store.load("30000002")


def test_dataset_layout_names_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"missing okvqa_train_corpus\.csv, retriever_test\.json, images"):
        Dataset("okvqa-gs112k", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        Dataset("vqa", tmp_path)


@pytest.mark.slow  # writes and streams a 15 MB corpus
def test_wk21m_tsv_streams_with_flat_memory(tmp_path):
    path = tmp_path / "psgs_w100.tsv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("id\ttext\ttitle\n")
        for i in range(1, 60_001):
            fh.write(f'{i}\t"passage {i} about Red pandas, {"and more " * 30}"\tTitle {i}\n')
    assert path.stat().st_size > 15_000_000
    tracemalloc.start()
    n = 0
    for p in read_corpus(path):
        n += 1
        if n == 1:
            assert p.id == "1" and p.title == "Title 1"
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 60_000
    assert peak < 2_000_000  # bytes: independent of the ~19 MB file
