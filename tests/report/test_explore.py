"""The clue explorer of a tiny sweep: its data equal the run records, its filters work in a real browser (headless
Chromium), it logs its table with images to W&B offline, and the report links to it."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from gemkr_lab.cli import main
from gemkr_lab.report.browser import browser_missing
from gemkr_lab.report.explore import clue_hits, repeated_clues, right_wrong, summary, write_explorer
from gemkr_lab.sweep.grid import current_run, load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("GEMKR_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
A, B = "tiny-cpu/full", "tiny-cpu/unconstrained"  # B's free clues are almost never in the KB: A right, B wrong


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, sweep_file):
    """2 cells x 1 seed of tiny runs on the test world."""
    root = tmp_path_factory.mktemp("explore")
    path = sweep_file(root / "sweep.yaml", [A, B], name="explore-test", drop=("decoding.max_clue_tokens",), reference=A)
    sweep = load_sweep(path)
    result = run_sweep(sweep, workers=1, progress=False)
    assert result["complete"] == 2, result
    return sweep


def _records(sweep, cell: str) -> dict[str, dict]:
    path = current_run(sweep, cell, 0) / "records.jsonl"
    return {r["qid"]: r for r in map(json.loads, path.read_text().splitlines())}


def _gold(sweep) -> dict[str, set[str]]:
    config_prepared = yaml.safe_load((current_run(sweep, A, 0) / "config.yaml").read_text())["prepared"]
    rows = map(json.loads, (Path(config_prepared) / "queries_test.jsonl").read_text().splitlines())
    return {r["qid"]: set(r["positives"]) for r in rows}


def _right(sweep, cell: str, k: int = 5) -> set[str]:
    """Queries the cell gets right at k, straight from its records and the gold passages (the world's relevance)."""
    gold = _gold(sweep)
    return {q for q, r in _records(sweep, cell).items() if gold[q] & set(r["ranked_ids"][:k])}


@pytest.mark.slow
def test_explorer_data_equal_the_records(sweep, tmp_path):
    out = tmp_path / "explore"
    explorer = write_explorer(sweep, out)
    data = json.loads((out / "data.js").read_text()[len("window.GEMKR_EXPLORER = ") :].rstrip().rstrip(";"))
    assert data["cells"] == [A, B] and [r["cell"] for r in data["runs"]] == [A, B]
    assert data["runs"][1]["sees"] == "image and object crops"
    gold = _gold(sweep)
    assert [q["qid"] for q in data["queries"]] == list(gold)  # every test query, in the prepared order
    for q in data["queries"]:
        assert set(q["gold"]) == gold[q["qid"]] and all(d in data["passages"] for d in q["gold"])
        assert (out / q["image"]["src"]).is_file() and len(q["image"]["crops"]) == q["n_objects"] > 0
        assert all((out / c).is_file() for c in q["image"]["crops"])
    for i, cell in enumerate((A, B)):
        text = (out / "runs" / f"{i}.js").read_text()
        assert text.startswith(f"gemkrExplorerRun({i}, ")
        run = json.loads(text[len(f"gemkrExplorerRun({i}, ") :].rstrip().removesuffix(");"))
        for qid, record in _records(sweep, cell).items():
            shown = run["queries"][qid]
            assert shown["r"] == record["ranked_ids"]
            assert shown["h"] == [int(d in gold[qid]) for d in record["ranked_ids"]]
            ids = dict(zip(record["ranked_docs"], record["ranked_ids"], strict=True))
            assert [c[0] for c in shown["c"]] == [c["text"] for c in record["clues"]]  # score order kept
            assert [c[3] for c in shown["c"]] == [c["count"] for c in record["clues"]]
            assert [c[5] for c in shown["c"]] == [
                int(any(ids[d] in gold[qid] for d in c["docs"])) for c in record["clues"]
            ]
            assert all(d in run["passages"] for d in record["ranked_ids"])
    # the Python side of the filters and the summary panel
    assert set(right_wrong(explorer, A, B, 0)) == _right(sweep, A) - _right(sweep, B)
    stats = summary(explorer, explorer.run(A, 0))
    records = _records(sweep, A)
    clues = [c for r in records.values() for c in r["clues"]]
    assert stats["clues"] == len(clues) and stats["queries"] == len(records)
    assert stats["unique_share"] == pytest.approx(sum(c["count"] == 1 for c in clues) / len(clues))
    assert stats["R@5"] == pytest.approx(len(_right(sweep, A)) / len(records))
    metrics = json.loads((current_run(sweep, A, 0) / "metrics.json").read_text())["means"]
    assert stats["R@5"] == pytest.approx(metrics["R@5"]) and not explorer.notes


def test_repeated_clues_and_clue_hits():
    record = {
        "clues": [{"tokens": [1, 2], "docs": [5]}, {"tokens": [3], "docs": []}, {"tokens": [1, 2], "docs": [5]}],
        "ranked_docs": [5],
        "ranked_ids": ["d5"],
        "rel": [True],
    }
    assert repeated_clues(record) == [False, False, True]
    assert clue_hits(record) == [True, False, True]


@pytest.mark.slow
@pytest.mark.integration  # a browser
def test_a_right_b_wrong_in_headless_chromium(sweep, tmp_path):
    missing = browser_missing()
    if missing:
        assert os.environ.get("CI") != "true", f"CI must run the browser test (.ci/browser.sh installs it): {missing}"
        pytest.skip(missing)
    from selenium.webdriver.common.by import By

    from gemkr_lab.report.browser import choose, chromium, full_page_screenshot, open_explorer, wait_ready

    out = tmp_path / "explore"
    assert main(["explore", _sweep_path(sweep), "--out", str(out)]) == 0
    expected = {
        "a-not-b": _right(sweep, A) - _right(sweep, B),
        "b-not-a": _right(sweep, B) - _right(sweep, A),
        "both": _right(sweep, A) & _right(sweep, B),
    }
    assert expected["a-not-b"], "the tiny full model should get some query right that unconstrained decoding misses"
    driver = chromium()
    try:
        open_explorer(driver, out / "index.html")
        assert driver.find_element(By.ID, "count").text == "96 of 96 queries"
        choose(driver, "cell-a", A)
        choose(driver, "cell-b", B)
        choose(driver, "page-size", "10")
        for compare, qids in expected.items():
            choose(driver, "compare", compare)
            assert _shown(driver) == qids, compare
            assert driver.find_element(By.ID, "count").text == f"{len(qids)} of 96 queries"
        choose(driver, "compare", "a-not-b")
        cell = driver.find_element(By.CSS_SELECTOR, f'td[data-cell="{A}"][data-stat="R@5"]')
        n = len(expected["a-not-b"])
        assert cell.text == f"100.0% ({n}/{n})"  # the summary panel follows the filter
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = full_page_screenshot(driver, ARTIFACTS / "explorer-a-right-b-wrong.png")
        assert shot.stat().st_size > 10_000
        choose(driver, "compare", "all")
        driver.execute_script("document.body.dataset.ready = 'false'")
        driver.find_element(By.ID, "search").send_keys("Glacier")  # case-insensitive, over texts and clues
        wait_ready(driver)
        assert _shown(driver) == _matching(sweep, "glacier")
    finally:
        driver.quit()


def _sweep_path(sweep) -> str:
    return str(Path(sweep.root).parent / "sweep.yaml")


def _matching(sweep, term: str) -> set[str]:
    """Queries whose id, question, caption, answers, gold ids or clues (of any cell) contain the term."""
    config_prepared = yaml.safe_load((current_run(sweep, A, 0) / "config.yaml").read_text())["prepared"]
    rows = list(map(json.loads, (Path(config_prepared) / "queries_test.jsonl").read_text().splitlines()))
    clues = {cell: _records(sweep, cell) for cell in (A, B)}
    out = set()
    for r in rows:
        texts = [r["qid"], r["question"], r["caption"], *r["answers"], *r["positives"]]
        texts += [c["text"] for cell in (A, B) for c in clues[cell][r["qid"]]["clues"]]
        if any(term in t.lower() for t in texts):
            out.add(r["qid"])
    assert out, f"no query mentions {term!r}"
    return out


def _shown(driver) -> set[str]:
    """The query ids on every page of the current filter (clicking through the pager)."""
    from selenium.webdriver.common.by import By

    from gemkr_lab.report.browser import wait_ready

    qids = []
    while True:
        qids += [a.get_attribute("data-qid") for a in driver.find_elements(By.CSS_SELECTOR, "article.query")]
        button = driver.find_element(By.ID, "next")
        if not button.is_enabled():
            break
        driver.execute_script("document.body.dataset.ready = 'false'")
        button.click()
        wait_ready(driver)
    assert len(qids) == len(set(qids))
    page = driver.find_element(By.ID, "page-info").text
    if qids:
        assert re.fullmatch(r"page (\d+) of \1", page), page
    return set(qids)


@pytest.mark.slow
@pytest.mark.integration  # W&B
def test_explore_logs_its_table_to_wandb_offline(sweep, tmp_path, monkeypatch):
    from gemkr_lab.report.explore import log_explorer
    from gemkr_lab.tracking.offline import read_offline_artifacts, read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    explorer = write_explorer(sweep, tmp_path / "explore")
    folder = log_explorer(explorer, enabled=True)
    assert folder is not None and folder.parent == tmp_path / "explore" / "wandb"
    summary_logged = read_offline_run(folder)["summary"]
    assert summary_logged[f"{A}/seed-0/queries"] == 96
    assert summary_logged[f"{A}/seed-0/unique_share"] == pytest.approx(
        summary(explorer, explorer.run(A, 0))["unique_share"]
    )
    tables = list((folder / "files" / "media" / "table" / "explore").glob("queries_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["seed", "qid", "image"] and f"{A} clues" in table["columns"]
    assert len(table["data"]) == 96 and {row[1] for row in table["data"]} == set(_gold(sweep))
    assert all(row[2] == "Image" for row in table["data"])  # images travel in the table's artifact (wandb sync)
    (artifact,) = [a for a in read_offline_artifacts(folder) if a["type"] == "run_table"]
    staged = json.loads(Path(artifact["files"]["explore/queries.table.json"]).read_text())
    assert len(staged["data"]) == 96
    images = [row[2] for row in staged["data"]]
    assert all(i["_type"] == "image-file" and i["boxes"]["objects"] for i in images)  # each with its object boxes
    assert {i["path"] for i in images} <= set(artifact["files"])
    assert len({i["path"] for i in images}) == len({q["image_id"] for q in explorer.queries})


@pytest.mark.slow
def test_report_links_the_explorer_and_explore_refuses_other_folders(sweep, tmp_path, capsys):
    from gemkr_lab.report.table import write_report

    write_report(sweep, tmp_path / "report")
    assert 'href="explore/index.html"' in (tmp_path / "report" / "table.html").read_text()
    assert main(["explore", _sweep_path(sweep), "--out", str(tmp_path / "report" / "explore")]) == 0
    assert (tmp_path / "report" / "explore" / "index.html").is_file()
    assert main(["explore", _sweep_path(sweep), "--out", str(tmp_path / "report" / "explore")]) == 0  # replaced
    capsys.readouterr()
    assert main(["explore", _sweep_path(sweep), "--out", str(tmp_path / "report")]) == 2  # a report, not an explorer
    assert "is not a clue explorer folder" in capsys.readouterr().err
    assert (tmp_path / "report" / "table.html").is_file()
