"""Published numbers: read with their source, on the variant they came from, graded only when first hand."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from gemkr_lab.config.published import FIRST_HAND, METRICS, PublishedError, read_published
from gemkr_lab.report import table
from gemkr_lab.sweep.grid import GridSweep

SWEEP_FILE = Path(__file__).parents[2] / "sweeps" / "paper-okvqa-gs112k.yaml"
OFFICIAL = {"value": 49.1, "kind": "official-file", "source": "results_okvqa_p5: 0.491.json"}


def test_the_report_and_the_reader_know_the_same_metrics():
    assert METRICS == table.METRICS


@pytest.mark.parametrize(
    ("paper", "message"),
    [
        ([1], r"paper: expected a mapping of cell"),
        ({"a": 49.1}, r"paper: a: expected a mapping of metric -> number"),
        ({"a": {"P@1": 49.1}}, r"paper: a: unknown key\(s\) \['P@1'\]; a published cell has P@5, R@5"),
        ({"a": {"P@5": {"value": 49.1, "kind": "paper"}}}, r"paper: a: P@5: missing source; a published number is"),
        ({"a": {"P@5": {**OFFICIAL, "url": "x"}}}, r"paper: a: P@5: unknown key\(s\) \['url'\]"),
        ({"a": {"P@5": {**OFFICIAL, "kind": "ours"}}}, r"P@5: kind 'ours': expected one of paper, official-file"),
        ({"a": {"P@5": {**OFFICIAL, "kind": "unsourced"}}}, r"kind 'unsourced': expected one of"),
        ({"a": {"P@5": {**OFFICIAL, "value": 491}}}, r"paper: a: P@5: value = 491.*<= 100"),
        ({"a": {"P@5": {**OFFICIAL, "value": "high"}}}, r"paper: a: P@5: value = 'high'"),
        ({"a": {"P@5": {**OFFICIAL, "source": ""}}}, r"paper: a: P@5: source = ''"),
        ({"a": {"P@5": "49.1"}}, r"paper: a: P@5: expected \{value: 49.1"),
        ({"a": {"P@5": OFFICIAL, "beside": "b"}}, r"paper: a: beside: expected a list of cells"),
    ],
)
def test_a_bad_paper_entry_names_cell_metric_and_form(paper, message):
    with pytest.raises(PublishedError, match=message):
        read_published(paper)


def test_both_forms_read():
    cells = read_published(
        {"a": {"P@5": OFFICIAL, "R@5": 78.6, "beside": ["b"], "note": "size unverified"}, "c": {"R@10": 86}}
    )
    a = cells["a"]
    assert a.numbers["P@5"].first_hand and a.numbers["P@5"].value == 49.1 and a.beside == ("b",)
    assert a.numbers["R@5"].kind == "unsourced" and not a.numbers["R@5"].first_hand  # the old flat form
    assert cells["c"].numbers["R@10"].value == 86.0 and a.note == "size unverified"
    assert FIRST_HAND == ("paper", "official-file")


def _frame(means: dict[str, float]) -> pd.DataFrame:
    pq = {"q1": {"P@5": 0.2, "R@5": 1.0, "R@10": 1.0, "MRR@10": 1.0}}
    rows = []
    for cell, p5 in means.items():
        rows.append(
            {
                "cell": cell,
                "seed": 0,
                "status": "complete",
                "P@5": p5,
                "R@5": 70.0,
                "R@10": 80.0,
                "MRR@10": 50.0,
                "per_query": pq,
                "train_s": 1.0,
                "gpu_hours": 0.0,
                "decode_ms_per_query": 1.0,
            }
        )
    return pd.DataFrame(rows)


def test_only_a_first_hand_number_can_fail():
    frame = _frame({"official": 40.0, "fixed": 47.0})
    for kind, expected in [
        ("official-file", "FAIL"),
        ("paper", "FAIL"),
        ("second-hand", "2nd-hand: off by 9.1, not graded"),
    ]:
        sweep = GridSweep(
            "s", "r", ("fixed", "official"), (0,), paper={"official": {"P@5": {**OFFICIAL, "kind": kind}}}
        )
        numbers = table.statistics(sweep, frame).set_index("cell")
        assert numbers.loc["official", "paper P@5 status"] == expected
        assert "paper P@5" not in numbers or pd.isna(numbers.loc["fixed", "paper P@5"])  # not beside: not shown


def test_a_cell_missing_from_the_sweep_is_said_not_dropped():
    sweep = GridSweep("s", "r", ("fixed",), (0,), paper={"official": {"P@5": OFFICIAL, "beside": ["fixed", "13b"]}})
    shown = table.summarize(sweep, _frame({"fixed": 47.0}))
    assert shown.set_index("cell").loc["fixed", "paper P@5"] == "49.1 of official [1]: Δ -2.1"
    (note,) = [n for n in shown.attrs["notes"] if n.startswith("[1]")]
    assert "That cell is not in this sweep, so nothing is compared with it." in note
    assert "Not in this sweep: 13b." in note


def test_every_output_file_names_the_sources(tmp_path, monkeypatch):
    paper = {
        "official": {
            "P@5": OFFICIAL,
            "R@5": {"value": 78.6, "kind": "second-hand", "source": "ReAuSE Table 4"},
            "beside": ["fixed"],
        }
    }
    sweep = GridSweep("s", "r", ("fixed", "official"), (0,), reference="fixed", paper=paper)
    monkeypatch.setattr(table, "collect", lambda sweep: _frame({"official": 49.0, "fixed": 47.0}))
    table.write_report(sweep, tmp_path)
    for name in ("table.md", "table.html", "table.tex"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "results" in text and "0.491.json" in text and "ReAuSE Table 4" in text, name
        assert "second-hand; not graded" in text and "first hand, graded" in text, name
    assert "49.1 (OK) [1]" in (tmp_path / "table.md").read_text(encoding="utf-8")
    tex = (tmp_path / "table.tex").read_text(encoding="utf-8")
    assert r"results\_okvqa\_p5" in tex  # the source's underscores escaped in the caption
    csv = pd.read_csv(tmp_path / "table.csv").set_index("cell")
    assert csv.loc["official", "paper P@5 source"] == OFFICIAL["source"]
    assert csv.loc["official", "paper R@5 kind"] == "second-hand"
    assert csv.loc["fixed", "paper P@5 of"] == "official"


def test_the_paper_sweep_attaches_each_number_to_the_variant_it_came_from():
    spec = yaml.safe_load(SWEEP_FILE.read_text(encoding="utf-8"))
    published = read_published(spec["paper"])
    (cell,) = published  # one variant: the official code path, where object features are zero at test time
    entry = published[cell]
    assert cell in spec["cells"] and set(entry.beside) <= set(spec["cells"])
    assert {"paper/gemkr-7b", "paper/gemkr-13b"} <= set(entry.beside)  # the bug-fixed rows, beside
    assert entry.numbers["P@5"].value == 49.1 and entry.numbers["P@5"].kind == "official-file"
    assert "0.491" in entry.numbers["P@5"].source
    for m, value in (("R@5", 78.6), ("R@10", 86.2)):
        assert entry.numbers[m].value == value and entry.numbers[m].kind == "second-hand"
        assert "ReAuSE" in entry.numbers[m].source
    preset = yaml.safe_load((SWEEP_FILE.parents[1] / "experiments" / f"{cell}.yaml").read_text(encoding="utf-8"))
    assert preset["data"]["zero_region_features_at_test"] is True
