"""Issue #23: the clue-length rows train on targets of the length they name, around the answer as the reference.

Asserted on the files `prepare` writes for each preset's data settings on the synthetic test world.
"""

import json
from pathlib import Path

import pytest

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.data.prepare import Preparer, clue_targets_summary


@pytest.fixture(scope="module")
def clue_variants(tiny_world, tmp_path_factory):
    """{name: prepared folder} for the reference (the shared folder) and the tiny clue-length presets."""
    world, reference = tiny_world
    out = {"reference": Path(reference)}
    for n in (5, 7, 12):
        folder = tmp_path_factory.mktemp(f"clue{n}")
        Preparer(load_experiment(f"tiny-cpu/clue-length-{n}").data, world, folder, progress=False).run()
        out[str(n)] = folder
    return out


def _lengths(folder: Path) -> list[int]:
    rows = (folder / "instructions_train.jsonl").read_text(encoding="utf-8").splitlines()
    return [len(json.loads(r)["clue_tokens"]) for r in rows]


def test_clue_length_rows_are_centred_on_their_length(clue_variants):
    stats = {k: json.loads((f / "clue_stats.json").read_text(encoding="utf-8")) for k, f in clue_variants.items()}
    lengths = {k: _lengths(f) for k, f in clue_variants.items()}
    for k, s in stats.items():  # clue_stats.json says what the training file holds
        assert s["mean_length"] == pytest.approx(sum(lengths[k]) / len(lengths[k]))
        assert sum(s["length_histogram"].values()) == s["rows"] == len(lengths[k])
    mean = {k: s["mean_length"] for k, s in stats.items()}
    assert mean["5"] < mean["7"] < mean["12"]  # strictly increasing with the named length
    assert mean["12"] >= mean["reference"] + 2
    for n in (5, 7, 12):  # centred on n: n is the shortest and the commonest length
        assert min(lengths[str(n)]) == n and max(stats[str(n)]["length_histogram"].items(), key=lambda x: x[1])[
            0
        ] == str(n)
        assert abs(mean[str(n)] - n) < 1
    share = {k: s["answer_overlap_share"] for k, s in stats.items()}
    for k in ("5", "7", "12"):  # the same target policy as the reference: around the answer
        assert abs(share[k] - share["reference"]) <= 0.05, (k, share)
        assert stats[k]["rows"] == stats["reference"]["rows"]  # and no rows dropped
    assert stats["reference"]["length_policy"] == "shortest_unique"
    assert (stats["12"]["length_policy"], stats["12"]["target_tokens"]) == ("target_length", 12)


def test_the_prepare_summary_shows_the_targets_and_the_training_set_shape(clue_variants):
    for folder in clue_variants.values():
        summary = json.loads((folder / "prepare_summary.json").read_text(encoding="utf-8"))["clue_targets"]
        assert summary == clue_targets_summary(folder)
        assert summary["rows"] == sum(int(k) * v for k, v in summary["rows_per_question_histogram"].items())
        assert summary["questions_with_rows"] == sum(summary["rows_per_question_histogram"].values())
        assert summary["rows_per_question"] == pytest.approx(summary["rows"] / summary["questions_with_rows"])
        assert set(summary) >= {"mean_length", "length_histogram", "answer_overlap_share"}
