"""The validation split: held out of the training questions by whole images, seeded, stamped."""

import json
from pathlib import Path

import pytest

from gemkr_lab.config import DataConfig
from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.data.queries import DataError, Query
from gemkr_lab.data.validation import hold_out


def _queries(n_images: int = 20, per_image: int = 3) -> list[Query]:
    return [
        Query(qid=f"q{i}-{j}", image_id=f"img{i}", question=f"question {j}?", caption="", answers=("a",))
        for i in range(n_images)
        for j in range(per_image)
    ]


def test_whole_images_are_held_out_and_the_draw_is_stable_for_a_seed():
    qs = _queries()
    split = hold_out(qs, 0.2, seed=3)
    train_images = {q.image_id for q in split.train}
    assert {q.image_id for q in split.validation}.isdisjoint(train_images)
    assert {q.qid for q in split.validation}.isdisjoint({q.qid for q in split.train})
    assert len(split.train) + len(split.validation) == len(qs)
    assert len(split.validation) == 12 and split.description["images"] == 4  # 20% of 60 = 12 = 4 images of 3
    assert [q.qid for q in hold_out(qs, 0.2, seed=3).validation] == [q.qid for q in split.validation]
    assert [q.qid for q in hold_out(qs, 0.2, seed=4).validation] != [q.qid for q in split.validation]
    assert [q.qid for q in split.train] == [q.qid for q in qs if q not in split.validation]  # file order kept


def test_a_count_takes_whole_images_until_it_is_reached():
    split = hold_out(_queries(), 7, seed=0)
    assert len(split.validation) == 9  # 3 images of 3 questions: the third image's other questions come along


def test_none_holds_out_nothing_and_too_much_is_refused():
    assert hold_out(_queries(), None, seed=0).validation == []
    with pytest.raises(DataError, match="nothing to train on"):
        hold_out(_queries(), 60, seed=0)


def test_zero_means_none_and_bad_sizes_are_refused():
    assert DataConfig(validation_size=0).validation_size is None
    for bad in (1.0, -1, "x", True):
        with pytest.raises(ValueError, match="validation_size"):
            DataConfig(validation_size=bad)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]


@pytest.fixture(scope="module")
def held_out_world(tiny_world, tmp_path_factory):
    from gemkr_lab.data.prepare import Preparer

    world, _ = tiny_world
    out = tmp_path_factory.mktemp("held-out") / "p"
    Preparer(DataConfig(validation_size=0.25, validation_seed=0), world, out, progress=False).run()
    return world, out


def test_prepare_writes_the_split_and_training_never_sees_it(held_out_world, tiny_world):
    _, out = held_out_world
    validation = _rows(out / "queries_validation.jsonl")
    train_queries = _rows(out / "queries_train.jsonl")
    instructions = _rows(out / "instructions_train.jsonl")
    test = _rows(out / "queries_test.jsonl")
    assert validation and instructions
    held_qids, held_images = {r["qid"] for r in validation}, {r["image_id"] for r in validation}
    assert held_qids.isdisjoint(r["qid"] for r in instructions)
    assert held_images.isdisjoint(r["image_id"] for r in instructions)
    assert held_qids.isdisjoint(r["qid"] for r in train_queries)
    assert held_qids.isdisjoint(r["qid"] for r in test)
    # all training questions are accounted for, and the unsplit world trains on every one of them
    everything = _rows(Path(tiny_world[1]) / "queries_train.jsonl")
    assert len(validation) + len(train_queries) == len(everything)
    summary = json.loads((out / "prepare_summary.json").read_text(encoding="utf-8"))
    assert summary["validation"]["questions"] == len(validation) and summary["validation"]["size"] == 0.25
    stamp = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    assert stamp["settings"]["validation_size"] == 0.25 and stamp["settings"]["validation_seed"] == 0


def test_a_run_refuses_data_prepared_with_another_split(held_out_world):
    from gemkr_lab.run.cell import check_prepared

    world, out = held_out_world
    base = [f"data_root={world}", f"prepared={out}"]
    check_prepared(load_experiment("tiny-cpu/full", [*base, "data.validation_size=0.25"]))  # matches
    for other in ("data.validation_size=0.3", "data.validation_seed=1", "data.validation_size=null"):
        with pytest.raises(DataError, match=r"data\.validation_"):
            check_prepared(load_experiment("tiny-cpu/full", [*base, other]))


def test_decoding_validation_needs_a_prepared_split(tiny_world):
    from gemkr_lab.run.cell import check_prepared

    world, prepared = tiny_world
    config = load_experiment("tiny-cpu/full", [f"data_root={world}", f"prepared={prepared}", "split=validation"])
    with pytest.raises(DataError, match="no validation split to decode"):
        check_prepared(config)


def test_changing_the_size_prepares_again(held_out_world, tmp_path):
    import shutil

    from gemkr_lab.data.prepare import Preparer

    world, out = held_out_world
    copy = tmp_path / "p"
    shutil.copytree(out, copy)
    steps = Preparer(DataConfig(validation_size=0.25), world, copy, progress=False).run()
    assert {s["step"]: s["status"] for s in steps}["queries"] == "skipped"
    steps = Preparer(DataConfig(validation_size=10), world, copy, progress=False).run()
    status = {s["step"]: s["status"] for s in steps}
    assert status["queries"] == "made" and status["clues"] == "made" and status["index"] == "skipped"
    assert len(_rows(copy / "queries_validation.jsonl")) >= 10
    steps = Preparer(DataConfig(), world, copy, progress=False).run()
    assert not (copy / "queries_validation.jsonl").exists()
