"""Bad input, damaged files and hostile filesystems through the CLI (#14, the classes after tests/test_cli_errors.py).

Every bad-input case asserts exit code 2, one message naming the problem, no traceback in stderr, and that what
was there before (earlier outputs, the files around them) is md5-identical afterwards, with no debris
(`.tmp-`, `.partial-`, `.old-` leftovers). The classes:

1. `report --storage`: reports of RDB search sweeps; a missing storage or study is refused, nothing is created.
2. Reports written as a unit: another sweep's report files go, `explore/` stays, a folder that is not a report
   is refused (or replaced with --overwrite).
3. `index query` on damaged indexes: cheap checks by default, every checksum with --verify.
4. Stale caches: a partly deleted region cache is repaired, changed detector weights clear it (also after an
   interrupted switch), optional detector packages are checked before any step.
5. Kills and filesystems: SIGTERM/SIGKILL of real `index build` and `prepare` processes leave no debris after
   the next run; a full disk and a read-only output give one clear message in every verb.
"""

import builtins
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from gemkr_lab.cli import main

DEBRIS = re.compile(r"\.(tmp|partial|old)-[0-9a-f]{6}-\d+-")
SECRET = "s3cr3t-Pa55"


# -- helpers ---------------------------------------------------------------------------------------------------


def _snapshot(*roots):
    """md5 of every file (hidden ones too) under the roots, keyed by path; directories as 'dir'."""
    out = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            out[dirpath] = "dir"
            for f in files:
                p = os.path.join(dirpath, f)
                if os.path.isfile(p):
                    with open(p, "rb") as fh:
                        out[p] = hashlib.md5(fh.read()).hexdigest()
    return out


def _debris(*roots):
    return sorted(p for p in _snapshot(*roots) if DEBRIS.search(os.path.basename(p)))


def _kept(before, after):
    """Every earlier file and folder is still there, md5-identical, and nothing new is debris."""
    changed = {p: (v, after.get(p)) for p, v in before.items() if after.get(p) != v}
    assert not changed, changed
    assert not [p for p in after if DEBRIS.search(os.path.basename(p))]


@pytest.fixture
def cli(capfd):
    """Run the CLI in-process; returns (exit code, stdout, stderr) with argparse's SystemExit as a code."""

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capfd.readouterr()
        return code, out, err

    return run


def _user_error(result, *needles):
    code, out, err = result
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert err.startswith("gemkr-lab: error: "), err
    assert len(err.strip().splitlines()) == 1, err  # one line
    for needle in needles:
        assert needle in err, err
    return err


def _ok(result):
    code, out, err = result
    assert code == 0, err
    assert "Traceback" not in err
    return out


# -- 1. report --storage ----------------------------------------------------------------------------------------

SPACE = {"train.lr": {"type": "float", "low": 3.0e-4, "high": 5.0e-3, "log": True}}


@pytest.fixture
def search_file(tmp_path):
    spec = {
        "name": "lr-search",
        "root": str(tmp_path / "runs"),
        "base": "tiny-cpu/full",
        "overrides": ["data.validation_size=0.2"],  # a search tunes on a validation split
        "search": {"space": SPACE},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _study(url, name="lr-search", trials=3):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    dist = {"train.lr": optuna.distributions.FloatDistribution(3.0e-4, 5.0e-3, log=True)}
    for i in range(trials):
        lr = 1e-3 * (i + 1)
        study.add_trial(optuna.trial.create_trial(params={"train.lr": lr}, distributions=dist, value=10 * lr))
    return study


def _earlier_report(out, extra=()):
    """An earlier report of ours at `out` (marker and tables), with an explore/ folder beside."""
    out.mkdir(parents=True)
    (out / "report.json").write_text('{"format": 1, "kind": "grid", "sweep": "old", "files": []}\n')
    (out / "table.md").write_text("| old | table |\n")
    (out / "ablation_r5.png").write_bytes(b"\x89PNG old plot")
    (out / "explore").mkdir()
    (out / "explore" / "explorer.json").write_text('{"format": 1}\n')
    for name in extra:
        (out / name).write_text("the user's own file\n")


def _empty_sqlite(path):
    con = sqlite3.connect(path)
    con.execute("create table notes (x text)")
    con.commit()
    con.close()


REPORT_STORAGE_CASES = [
    (lambda t: None, "no study 'lr-search': {t}/runs/optuna-journal.log does not exist; run `gemkr-lab sweep`"),
    (lambda t: f"sqlite:///{t}/missing.db", "the SQLite file {t}/missing.db does not exist; check the URL"),
    (lambda t: (_empty_sqlite(t / "empty.db"), f"sqlite:///{t}/empty.db")[1], "empty.db holds no Optuna studies"),
    (
        lambda t: (_study(f"sqlite:///{t}/other.db", name="other"), f"sqlite:///{t}/other.db")[1],
        "has no study 'lr-search' (studies there: other)",
    ),
    (lambda t: f"postgresql://bob:{SECRET}@127.0.0.1:1/optuna", "postgresql://bob:***@127.0.0.1:1/optuna cannot be"),
    (lambda t: f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/db", "needs the Python driver 'psycopg'"),
    (lambda t: f"mysql://bob:{SECRET}@127.0.0.1:1/db", "needs the Python driver 'MySQLdb'"),
    (lambda t: f"bob:{SECRET} at somewhere", "is not a database URL (not shown"),
    (lambda t: f"nosuchdb://bob:{SECRET}@h/db", "names a database type SQLAlchemy does not know"),
]


@pytest.mark.parametrize(
    ("storage", "message"),
    REPORT_STORAGE_CASES,
    ids=["no-journal", "no-sqlite-file", "no-tables", "other-study", "pg-down", "psycopg3", "mysql", "garbage", "bad"],
)
def test_report_storage_refuses_a_missing_study_and_creates_nothing(tmp_path, cli, search_file, storage, message):
    url = storage(tmp_path)
    _earlier_report(tmp_path / "rep")
    before = _snapshot(tmp_path)
    args = ["report", search_file, "--out", tmp_path / "rep"] + (["--storage", url] if url else [])
    err = _user_error(cli(*args), message.format(t=tmp_path))
    assert SECRET not in err
    assert _snapshot(tmp_path) == before  # no journal, no database file or table, the earlier report intact
    assert not (tmp_path / "runs").exists()


def test_report_storage_reads_a_search_from_sqlite_without_writing_to_it(tmp_path, cli, search_file):
    _study(f"sqlite:///{tmp_path}/s.db")
    db = hashlib.md5((tmp_path / "s.db").read_bytes()).hexdigest()
    out = _ok(cli("report", search_file, "--out", tmp_path / "rep", "--storage", f"sqlite:///{tmp_path}/s.db"))
    assert "COMPLETE" in out
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {"trials.md", "trials.csv", "history.png", "report.json"}
    marker = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert marker["kind"] == "search" and marker["sweep"] == "lr-search" and "trials.md" in marker["files"]
    assert hashlib.md5((tmp_path / "s.db").read_bytes()).hexdigest() == db  # only read
    assert not (tmp_path / "runs").exists()


def test_report_of_a_journal_search_without_storage(tmp_path, cli, search_file):
    from gemkr_lab.sweep.study import open_storage

    _study(open_storage(None, tmp_path / "runs"))
    _ok(cli("report", search_file, "--out", tmp_path / "rep"))
    assert (tmp_path / "rep" / "trials.md").is_file()


# -- 2. reports written as a unit ---------------------------------------------------------------------------


@pytest.fixture
def grid_file(tmp_path):
    spec = {"name": "g", "root": str(tmp_path / "runs"), "cells": ["tiny-cpu/full", "tiny-cpu/text-only"], "seeds": [0]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_a_report_replaces_another_sweeps_report_whole_and_keeps_explore(tmp_path, cli, grid_file, search_file):
    _study(f"sqlite:///{tmp_path}/s.db")
    rep = tmp_path / "rep"
    _ok(cli("report", search_file, "--out", rep, "--storage", f"sqlite:///{tmp_path}/s.db"))
    (rep / "explore").mkdir()
    (rep / "explore" / "index.html").write_text("<html>explorer</html>\n")
    explore = _snapshot(rep / "explore")
    assert (rep / "history.png").is_file()
    _ok(cli("report", grid_file, "--out", rep))
    names = {p.name for p in rep.iterdir()}
    assert names == {"report.json", "table.md", "table.tex", "table.html", "table.csv", "runs.json", "explore"}
    assert _snapshot(rep / "explore") == explore  # another command's folder, carried over untouched
    assert json.loads((rep / "report.json").read_text())["sweep"] == "g"
    assert not _debris(tmp_path)


def test_a_report_from_before_the_marker_is_replaced(tmp_path, cli, grid_file):
    rep = tmp_path / "rep"
    rep.mkdir()
    for name in ("trials.md", "trials.csv", "history.png", "importance.png"):
        (rep / name).write_text("old search report\n")
    _ok(cli("report", grid_file, "--out", rep))
    assert not (rep / "history.png").exists() and (rep / "table.md").is_file()


def test_the_demo_report_folder_is_rewritten_keeping_the_explorer_and_its_screenshot(tmp_path, cli, grid_file):
    """As reports/demo is kept in git: table.md/csv, the plot and explorer.png (no marker), explore/ beside."""
    rep = tmp_path / "demo"
    rep.mkdir()
    for name in ("table.md", "table.csv", "ablation_r5.png"):
        (rep / name).write_text("from an earlier demo\n")
    (rep / "explorer.png").write_bytes(b"\x89PNG the README's screenshot")
    (rep / "explore").mkdir()
    (rep / "explore" / "data.js").write_text("window.GEMKR_EXPLORER = {};\n")
    kept = {p: v for p, v in _snapshot(rep).items() if "explore" in p}
    _ok(cli("report", grid_file, "--out", rep))
    assert {p: v for p, v in _snapshot(rep).items() if "explore" in p} == kept
    assert not (rep / "ablation_r5.png").exists()  # nothing complete in this sweep: no plot, the old one gone


NOT_A_REPORT = [
    (lambda r: _earlier_report(r, extra=["notes.txt"]), "notes.txt"),
    (lambda r: (r.mkdir(), (r / "index.html").write_text("x"), (r / "data.csv").write_text("y")), "'data.csv'"),
    (lambda r: (r.mkdir(), (r / ".git").mkdir(), (r / ".git" / "HEAD").write_text("ref")), "'.git'"),
    (lambda r: (r.mkdir(), *[(r / f"f{i}.txt").write_text("x") for i in range(5)]), "and 2 more"),
    (lambda r: (r.mkdir(), (r / "table.md").write_text("x"), (r / "paper.tex").write_text("y")), "'paper.tex'"),
]


@pytest.mark.parametrize(
    ("make", "named"), NOT_A_REPORT, ids=["notes-in-report", "other-tool", "git-folder", "many-files", "own-tex"]
)
def test_an_out_that_is_not_a_report_is_refused(tmp_path, cli, grid_file, make, named):
    make(tmp_path / "rep")
    before = _snapshot(tmp_path)
    _user_error(cli("report", grid_file, "--out", tmp_path / "rep"), "not part of a gemkr-lab report", named)
    assert _snapshot(tmp_path) == before


def test_an_out_that_is_a_file_is_refused(tmp_path, cli, grid_file):
    (tmp_path / "rep").write_text("a file\n")
    before = _snapshot(tmp_path)
    _user_error(cli("report", grid_file, "--out", tmp_path / "rep"), "rep: a file is in the way")
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_a_folder_that_is_not_a_report_but_keeps_explore(tmp_path, cli, grid_file):
    _earlier_report(tmp_path / "rep", extra=["notes.txt"])
    explore = _snapshot(tmp_path / "rep" / "explore")
    _ok(cli("report", grid_file, "--out", tmp_path / "rep", "--overwrite"))
    assert not (tmp_path / "rep" / "notes.txt").exists()
    assert _snapshot(tmp_path / "rep" / "explore") == explore


def test_a_report_that_fails_keeps_the_earlier_one(tmp_path, cli, grid_file, monkeypatch):
    _earlier_report(tmp_path / "rep")
    before = _snapshot(tmp_path)
    _disk_full(monkeypatch)
    _user_error(cli("report", grid_file, "--out", tmp_path / "rep"), "rep/", "no space left on the device")
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before


# -- 3. index query on damaged indexes ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sa", "fm"])
def sound_index(request, tmp_path_factory, tokenizer_dir):
    """A small index with duplicate texts (so it has doc_aliases.tsv), built through the CLI."""
    root = tmp_path_factory.mktemp(f"index-{request.param}")
    rows = [f"{i},the creature number {i} eats figs near the harbour" for i in range(40)]
    rows += ["d1,the eiffel tower is in paris", "d2,the eiffel tower is in paris"]
    (root / "c.csv").write_text("id,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    code = main(
        [
            "index",
            "build",
            str(root / "c.csv"),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(root / "kb"),
            "--backend",
            request.param,
        ]
    )
    assert code == 0
    assert (root / "kb" / "doc_aliases.tsv").is_file()
    return root / "kb", request.param


def _meta(kb):
    return json.loads((kb / "meta.json").read_text())


def _write_meta(kb, meta):
    (kb / "meta.json").write_text(json.dumps(meta))


def _flip(path, where=-3):
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0x5A
    path.write_bytes(bytes(raw))


def _big(backend):
    return "text" if backend == "sa" else "wm_bits"


def _second(backend):
    return "sa" if backend == "sa" else "eos_doc"


def _set_meta(change):
    def damage(kb, backend):
        meta = _meta(kb)
        change(meta, backend)
        _write_meta(kb, meta)

    return damage


DAMAGE = [
    (lambda kb, b: _flip(kb / "shard-000" / f"{_big(b)}.npy"), "checksum mismatch (the file is corrupted)"),
    (lambda kb, b: _flip(kb / "shard-000" / f"{_second(b)}.npy"), "checksum mismatch"),
    (lambda kb, b: _flip(kb / "shard-000" / "C.npy"), "C.npy: checksum mismatch"),
    (lambda kb, b: _flip(kb / "shard-000" / "bigram_sym.npy", -1), "bigram_sym.npy: checksum mismatch"),
    (lambda kb, b: _flip(kb / "doc_ids.npy", -1), "doc_ids.npy: checksum mismatch"),
    (lambda kb, b: _flip(kb / "doc_aliases.tsv", 1), "doc_aliases.tsv: checksum mismatch"),
    (
        lambda kb, b: (kb / "shard-000" / "C.npy").write_bytes((kb / "shard-000" / "C.npy").read_bytes()[:-8]),
        "truncated or replaced",
    ),
    (lambda kb, b: (kb / "doc_aliases.tsv").unlink(), "doc_aliases.tsv: missing; the index is incomplete"),
    (_set_meta(lambda m, b: m.update(n_docs=m["n_docs"] + 1)), "inconsistent index (the shards hold 41 documents"),
    (_set_meta(lambda m, b: m.update(n_tokens=m["n_tokens"] - 1)), "inconsistent index (the shards hold"),
    (_set_meta(lambda m, b: m.update(vocab_size=m["vocab_size"] + 1)), "inconsistent index"),
    (_set_meta(lambda m, b: m.update(eos_id=m["vocab_size"] + 5)), "outside the vocabulary"),
    (_set_meta(lambda m, b: m["shards"][0].update(doc_base=1)), "starts at document 1"),
    (_set_meta(lambda m, b: m["shards"][0]["files"]["C"].update(crc32="00000000")), "C.npy: checksum mismatch"),
    (_set_meta(lambda m, b: m.update(n_docs="many")), "damaged metadata (ValueError"),
    (_set_meta(lambda m, b: m.pop("shards")), "metadata lacks key 'shards'"),
    (lambda kb, b: (kb / "meta.json").write_text("[1, 2]"), "unreadable metadata (not a JSON object)"),
    (lambda kb, b: (kb / "meta.json").write_text('{"format": "gemkr-kb-index", "format_ver'), "unreadable metadata"),
    (lambda kb, b: (kb / "meta.json").unlink(), "not a finished index (no meta.json)"),
]
DAMAGE_IDS = [
    "flip-big-array",
    "flip-second-array",
    "flip-C",
    "flip-bigram",
    "flip-doc-ids",
    "flip-aliases",
    "truncated",
    "aliases-gone",
    "meta-n-docs",
    "meta-n-tokens",
    "meta-vocab",
    "meta-eos",
    "meta-doc-base",
    "meta-crc",
    "meta-type",
    "meta-key",
    "meta-not-object",
    "meta-cut",
    "meta-gone",
]


@pytest.mark.parametrize(("damage", "message"), DAMAGE, ids=DAMAGE_IDS)
def test_index_query_refuses_a_damaged_index(tmp_path, cli, sound_index, damage, message):
    kb, backend = sound_index
    shutil.copytree(kb, tmp_path / "kb")
    damage(tmp_path / "kb", backend)
    before = _snapshot(tmp_path)
    _user_error(cli("index", "query", tmp_path / "kb", "--text", "eiffel tower"), message)
    _user_error(cli("index", "query", tmp_path / "kb", "--text", "eiffel tower", "--verify"), message)
    _user_error(cli("index", "stats", tmp_path / "kb"), message)
    assert _snapshot(tmp_path) == before


def test_index_query_of_a_sound_index(tmp_path, cli, sound_index):
    kb, _ = sound_index
    for extra in ([], ["--verify"]):
        out = _ok(cli("index", "query", kb, "--text", "eiffel tower", "--json", *extra))
        result = json.loads(out)
        assert result["count"] == 1 and [d["id"] for d in result["documents"]] == ["d1"]


def _rewrite(path, change):
    """Change an array's values in place, keeping its dtype, shape and so its size (only a check can tell)."""
    arr = np.load(path)
    change(arr)
    np.save(path, arr)


LARGE_INDEX_DAMAGE = [
    (lambda kb, b: _rewrite(kb / "shard-000" / "C.npy", lambda a: a.__setitem__(-1, a[-1] + 1)), "does not count"),
    (lambda kb, b: _rewrite(kb / "shard-000" / "C.npy", lambda a: a.__setitem__(3, a[-1] + 9)), "does not count"),
    (lambda kb, b: _rewrite(kb / "shard-000" / "bigram_ptr.npy", lambda a: a.__setitem__(-1, 0)), "is not a table"),
    (_set_meta(lambda m, b: m["shards"][0]["files"]["C"].update(shape=[3])), "metadata says int64[3]"),
    (lambda kb, b: _flip(kb / "shard-000" / "C.npy", 2), "C.npy: not a readable .npy file"),
]


@pytest.mark.parametrize(
    ("damage", "message"), LARGE_INDEX_DAMAGE, ids=["C-total", "C-order", "bigram-table", "meta-shape", "npy-header"]
)
def test_cheap_checks_without_checksums_catch_inconsistent_tables(
    tmp_path, cli, sound_index, monkeypatch, damage, message
):
    """On a large index (here: every file over the checksum threshold) the consistency checks still catch it."""
    import gemkr_lab.kb.storage as storage

    kb, backend = sound_index
    shutil.copytree(kb, tmp_path / "kb")
    damage(tmp_path / "kb", backend)
    monkeypatch.setattr(storage, "SMALL_FILE_BYTES", 0)
    before = _snapshot(tmp_path)
    _user_error(cli("index", "query", tmp_path / "kb", "--text", "eiffel tower"), message)
    assert _snapshot(tmp_path) == before


def test_verify_catches_what_cheap_checks_leave_to_it(tmp_path, cli, sound_index, monkeypatch):
    """Flipped bytes inside a file above the threshold: only the full checksum (--verify) can tell."""
    import gemkr_lab.kb.storage as storage

    kb, backend = sound_index
    shutil.copytree(kb, tmp_path / "kb")
    _flip(tmp_path / "kb" / "shard-000" / f"{_big(backend)}.npy")
    monkeypatch.setattr(storage, "SMALL_FILE_BYTES", 0)
    _user_error(cli("index", "query", tmp_path / "kb", "--text", "eiffel", "--verify"), "checksum mismatch")
    _user_error(cli("index", "stats", tmp_path / "kb", "--verify"), "checksum mismatch")


# -- 4. stale caches and optional detector packages --------------------------------------------------------------


@pytest.fixture
def prepared_copy(tmp_path, tiny_world):
    """A copy of the prepared test world (regions from ground-truth boxes), and its world."""
    world, prepared = tiny_world
    shutil.copytree(prepared, tmp_path / "p")
    return Path(world), tmp_path / "p"


def _prepare(cli, world, out, *extra):
    return cli("prepare", "synthetic", "--data-root", world, "--out", out, *extra)


def test_a_partly_deleted_region_cache_is_repaired(cli, prepared_copy):
    world, prepared = prepared_copy
    regions = prepared / "regions"
    complete = _snapshot(regions)
    jsons = sorted(p for p in regions.glob("*.json") if not p.name.startswith("."))
    for path in jsons[:3]:
        path.unlink()  # three images without their regions
    crop = next(p for p in sorted(regions.glob("*/0.png")) if p.parent.name not in {j.stem for j in jsons[:3]})
    crop.unlink()  # and one image without one of its crops
    shutil.rmtree(regions / jsons[4].stem)  # and one without any crop
    out = _ok(_prepare(cli, world, prepared))
    assert "regions  made     outputs missing: 5 images detected" in out
    assert _snapshot(regions) == complete  # the same bytes as before (ground-truth regions are deterministic)
    assert "regions  skipped" in _ok(_prepare(cli, world, prepared))


def test_loading_regions_with_a_crop_missing_names_it(prepared_copy):
    from gemkr_lab.data.queries import DataError
    from gemkr_lab.data.regions import load_regions

    _, prepared = prepared_copy
    crop = sorted((prepared / "regions").glob("*/0.png"))[0]
    crop.unlink()
    with pytest.raises(DataError, match=r"0\.png: a crop of image .* is missing .* run gemkr-lab prepare again"):
        load_regions(prepared / "regions", crop.parent.name, "train")


class _FakeYolo:
    """Stands in for ultralytics: one region per image, labelled with the weights file's content."""

    calls = 0
    fail_after: int | None = None

    def __init__(self, weights, confidence, iou, max_objects):
        self.label = Path(weights).read_text().strip()

    def detect(self, images):
        from gemkr_lab.data.regions import Region

        _FakeYolo.calls += len(images)
        if _FakeYolo.fail_after is not None and _FakeYolo.calls > _FakeYolo.fail_after:
            from gemkr_lab.data.queries import DataError

            raise DataError("detector died")
        return [[Region((0, 0, 8, 8), 0.9, self.label)] for _ in images]


def _labels(regions):
    return {json.loads(p.read_text())[0]["label"] for p in regions.glob("*.json") if not p.name.startswith(".")}


def test_changed_yolo_weights_clear_the_region_cache(tmp_path, cli, tiny_world, monkeypatch):
    import gemkr_lab.data.prepare as prepare

    monkeypatch.setattr(prepare, "YoloDetector", _FakeYolo)
    monkeypatch.setattr(_FakeYolo, "fail_after", None)
    world, out, weights = tiny_world[0], tmp_path / "p", tmp_path / "yolo.pt"
    yolo = ["--detector", "yolo", "--yolo-weights", weights]
    weights.write_text("weights-A")
    _ok(_prepare(cli, world, out, *yolo))
    assert _labels(out / "regions") == {"weights-A"}
    (out / "regions" / "COCO_train2014_000100000000" / "7.png").write_bytes(b"a stale crop")
    weights.write_text("weights-B")  # same path, other weights: part of the step's fingerprint
    assert "regions  made     inputs changed" in _ok(_prepare(cli, world, out, *yolo))
    assert _labels(out / "regions") == {"weights-B"}
    assert not (out / "regions" / "COCO_train2014_000100000000" / "7.png").exists()
    # a switch interrupted half-way, then back: the cache knows the inputs its detections were made with
    weights.write_text("weights-C")
    monkeypatch.setattr(_FakeYolo, "calls", 0)
    monkeypatch.setattr(_FakeYolo, "fail_after", 40)
    _user_error(_prepare(cli, world, out, *yolo), "detector died")
    assert _labels(out / "regions") == {"weights-C"}  # 40 images done under C, the step's stamp still says B
    monkeypatch.setattr(_FakeYolo, "fail_after", None)
    weights.write_text("weights-B")
    assert "regions  made" in _ok(_prepare(cli, world, out, *yolo))
    assert _labels(out / "regions") == {"weights-B"}
    assert not _debris(out)
    renamed = tmp_path / "copied" / "yolov8x-renamed.pt"  # the same weights under another name: the cache stays
    renamed.parent.mkdir()
    renamed.write_bytes(weights.read_bytes())
    assert "regions  skipped  inputs unchanged" in _ok(
        _prepare(cli, world, out, "--detector", "yolo", "--yolo-weights", renamed)
    )


def _without(monkeypatch, *modules):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


@pytest.mark.parametrize(
    ("weights", "hidden", "message"),
    [
        ("yolo.onnx", (), "yolo.onnx: .onnx YOLO weights need"),
        ("yolo.onnx", ("onnxruntime",), "(onnxruntime-gpu instead of onnxruntime on a GPU machine)"),
        ("yolo.ONNX", ("onnx", "onnxruntime"), "pip install onnx onnxruntime"),
        ("yolo.pt", ("ultralytics",), "yolo.pt: YOLO weights need ultralytics, which is not installed"),
        ("missing.pt", (), "missing.pt: no such YOLO weights file"),
    ],
    ids=["onnx", "onnxruntime", "onnx-upper", "no-ultralytics", "no-weights"],
)
def test_detector_packages_are_checked_before_any_step(
    tmp_path, cli, prepared_copy, monkeypatch, weights, hidden, message
):
    import importlib.util

    world, prepared = prepared_copy
    if weights.endswith((".onnx", ".ONNX")) and not hidden and importlib.util.find_spec("onnxruntime") is not None:
        pytest.skip("onnxruntime is installed here")
    if hidden:
        _without(monkeypatch, *hidden)
    if weights != "missing.pt":
        (tmp_path / weights).write_bytes(b"not really weights")
    before = _snapshot(tmp_path)
    _user_error(_prepare(cli, world, prepared, "--detector", "yolo", "--yolo-weights", tmp_path / weights), message)
    assert _snapshot(tmp_path) == before  # refused before any step: the prepared folder as it was


def test_detector_packages_are_checked_for_an_experiment_too(tmp_path, cli, tiny_world, monkeypatch):
    world = tiny_world[0]
    _without(monkeypatch, "onnxruntime")
    (tmp_path / "y.onnx").write_bytes(b"x")
    sets = [
        f"data_root={world}",
        f"prepared={tmp_path / 'p'}",
        "data.detector=yolo",
        f"data.yolo_weights={tmp_path}/y.onnx",
    ]
    args = ["prepare", "--experiment", "tiny-cpu/full", *[a for s in sets for a in ("--set", s)]]
    before = _snapshot(tmp_path)
    _user_error(cli(*args), "not installed: pip install", "onnxruntime-gpu instead of onnxruntime")
    assert _snapshot(tmp_path) == before


# -- 5a. kills: SIGTERM and SIGKILL of real processes ----------------------------------------------------------


def _spawn(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "gemkr_lab.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill_when(proc, ready, sig, timeout=120.0):
    """Send `sig` once `ready()` holds (polled); returns (exit code, stderr)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended before it could be killed: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the process never got to the point where it is killed")
        time.sleep(0.005)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """A corpus that takes a few seconds to index: time to kill the build half-way."""
    from gemkr_lab.kb.synthetic_text import synthetic_passages

    root = tmp_path_factory.mktemp("big-corpus")
    rows = [f"{i},{p['text']}" for i, p in enumerate(synthetic_passages(20000))]
    (root / "c.csv").write_text("id,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return root / "c.csv"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_index_build_leaves_no_debris_after_the_next_run(tmp_path, tiny_world, big_corpus, sig):
    tok = Path(tiny_world[0]) / "tokenizer"
    out = tmp_path / "kb"
    (tmp_path / "earlier.txt").write_text("an earlier output beside\n")
    before = _snapshot(tmp_path)
    proc = _spawn("index", "build", big_corpus, "--tokenizer", tok, "--out", out)
    code, err = _kill_when(proc, lambda: any(p.name.startswith(".kb.partial-") for p in tmp_path.iterdir()), sig)
    assert "Traceback" not in err
    if sig == signal.SIGTERM:
        assert code == 143 and "stopped by SIGTERM" in err
        assert _snapshot(tmp_path) == before  # the staging folder went at once
    else:
        assert code == -signal.SIGKILL and _debris(tmp_path)  # a SIGKILL leaves its staging folder
    assert not out.exists()
    rerun = subprocess.run(
        [sys.executable, "-m", "gemkr_lab.cli", "index", "build", big_corpus, "--tokenizer", tok, "--out", out],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert not _debris(tmp_path)
    assert json.loads((out / "meta.json").read_text())["n_docs"] > 1000


def _comparable(prepared):
    """What a prepare writes that does not carry times: the region cache and the query and clue files."""
    out = {}
    for name in ("regions", "queries_train.jsonl", "queries_test.jsonl", "instructions_train.jsonl", "clue_stats.json"):
        path = prepared / name
        if path.is_dir():
            out |= {os.path.relpath(p, prepared): v for p, v in _snapshot(path).items() if v != "dir"}
        else:
            out[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "when"),
    [
        (signal.SIGTERM, "regions"),
        (signal.SIGKILL, "regions"),
        (signal.SIGTERM, "index"),
        (signal.SIGKILL, "index"),
    ],
    ids=["SIGTERM-regions", "SIGKILL-regions", "SIGTERM-index", "SIGKILL-index"],
)
def test_a_killed_prepare_leaves_no_debris_after_the_next_run(tmp_path, tiny_world, sig, when):
    world, reference = Path(tiny_world[0]), Path(tiny_world[1])
    out = tmp_path / "p"

    def ready():
        if when == "regions":
            return (out / "regions").is_dir() and sum(1 for _ in (out / "regions").glob("*.json")) >= 3
        return out.is_dir() and any(p.name.startswith(".index.partial-") for p in out.iterdir())

    code, err = _kill_when(_spawn("prepare", "synthetic", "--data-root", world, "--out", out), ready, sig)
    assert "Traceback" not in err
    if sig == signal.SIGTERM:
        assert code == 143 and "stopped by SIGTERM" in err and not _debris(tmp_path)
    else:
        assert code == -signal.SIGKILL
    assert not (out / "prepare.json").exists()  # not a prepared folder
    rerun = subprocess.run(
        [sys.executable, "-m", "gemkr_lab.cli", "prepare", "synthetic", "--data-root", world, "--out", out],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert not _debris(tmp_path)
    assert _comparable(out) == _comparable(reference)  # the same bytes as an uninterrupted prepare


# -- 5b. a full disk and a read-only output in every verb -----------------------------------------------------


def _disk_full(monkeypatch):
    """ENOSPC from every write of the IO layer (each file it writes is fsynced: atomic files, directories as
    units, Optuna's journal), as a full disk shows at the latest."""
    real = os.fsync

    def fsync(fd):
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _read_only(monkeypatch, folder):
    """`folder` read-only (chmod 0o555). Root writes there anyway, so for root the refusal is simulated: creating,
    renaming or removing an entry of `folder` fails with EACCES, as it would for anyone else."""
    folder = Path(folder)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    ro = os.path.realpath(folder)

    def denied(path):
        return os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(path)))) == ro

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    def guard(real, *positions, creating=None):
        def wrapped(*args, **kwargs):
            for i in positions:
                named = i < len(args) and not isinstance(args[i], int) and denied(args[i])
                if named and (creating is None or creating(args, kwargs)):
                    refuse(args[i])
            return real(*args, **kwargs)

        return wrapped

    def creates_file(args, kwargs):
        return not os.path.exists(args[0])

    def os_creates(args, kwargs):
        flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
        return bool(flags & os.O_CREAT) and not os.path.exists(args[0])

    def open_creates(args, kwargs):
        mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
        return (
            isinstance(args[0], (str, bytes, os.PathLike))
            and any(c in mode for c in "wax+")
            and creates_file(args, kwargs)
        )

    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, 0, creating=creates_file))  # an existing one: EEXIST
    for name in ("rmdir", "unlink", "remove"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), 0))
    for name in ("replace", "rename", "symlink", "link"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), 0, 1) if name != "symlink" else guard(os.symlink, 1))
    monkeypatch.setattr(os, "open", guard(os.open, 0, creating=os_creates))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, 0, creating=open_creates))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_world):
    """A complete tiny run (4 steps), made once: the earlier output of train, evaluate, score and sweep."""
    world, prepared = tiny_world
    root = tmp_path_factory.mktemp("trained")
    overrides = [
        f"data_root={world}",
        f"prepared={prepared}",
        "train.max_steps=4",
        "limit_train=16",
        "train.batch_size=8",
        "decoding.num_groups=2",
        "decoding.max_clue_tokens=3",
        "tracking.wandb=false",
    ]
    assert main(["train", "tiny-cpu/full", *overrides, "--root", str(root / "runs")]) == 0
    run = next((root / "runs").glob("tiny-cpu__full/seed-0/*/metrics.json")).parent
    return root / "runs", run, overrides


def _verb_setup(verb, place, tmp_path, tiny_world, trained):
    """Args of one verb writing under `place` (a folder that holds an earlier output of the verb), and the
    folder whose writes are refused for the read-only case."""
    world, prepared = Path(tiny_world[0]), Path(tiny_world[1])
    runs, run, overrides = trained
    place.mkdir(parents=True, exist_ok=True)
    (place / "earlier.txt").write_text("an earlier output beside\n")
    if verb == "make-world":
        shutil.copytree(world, place / "w")
        return ["make-world", "--out", place / "w", "--overwrite"]
    if verb == "prepare":
        shutil.copytree(prepared, place / "p0")
        return ["prepare", "synthetic", "--data-root", world, "--out", place / "p"]
    if verb == "index":
        shutil.copytree(prepared / "index", place / "kb")
        return ["index", "build", world / "corpus.csv", "--tokenizer", world / "tokenizer", "--out", place / "kb",
                "--overwrite"]  # fmt: skip
    if verb == "train":
        shutil.copytree(runs, place / "runs")
        return ["train", "tiny-cpu/full", *overrides, "--root", place / "runs", "--seed", "5"]
    if verb == "evaluate":
        shutil.copytree(run, place / "run")
        return ["evaluate", place / "run", "decoding.num_groups=3"]
    if verb == "sweep":
        shutil.copytree(runs, place / "runs")
        spec = {"name": "g", "root": str(place / "runs"), "cells": ["tiny-cpu/full"], "seeds": [7]}
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec | {"overrides": overrides}), encoding="utf-8")
        return ["sweep", tmp_path / "sweep.yaml"]
    if verb == "report":
        _earlier_report(place / "rep")
        spec = {"name": "g", "root": str(runs), "cells": ["tiny-cpu/full"], "seeds": [0]}
        (tmp_path / "grid.yaml").write_text(yaml.safe_dump(spec | {"overrides": overrides}), encoding="utf-8")
        return ["report", tmp_path / "grid.yaml", "--out", place / "rep"]
    if verb == "score":
        (place / "pq.json").write_text('{"earlier": "per-query values"}\n')
        return [
            "score",
            "--run",
            run / "run.txt",
            "--qrels",
            world / "qrels_test.txt",
            "--per-query",
            place / "pq.json",
        ]
    if verb == "baseline":
        (tmp_path / "q.jsonl").write_text('{"qid": "q1", "text": "figs"}\n', encoding="utf-8")
        (place / "bm25.run").write_text("q0 Q0 d0 1 1 earlier\n")
        return ["baseline", "bm25", "--corpus", world / "corpus.csv", "--queries", tmp_path / "q.jsonl", "--out",
                place / "bm25.run"]  # fmt: skip
    raise AssertionError(verb)


VERBS = ["make-world", "prepare", "index", "train", "evaluate", "sweep", "report", "score", "baseline"]
NAMED = {  # the path each verb's message names
    "make-world": "w/",
    "prepare": "p/index/",
    "index": "kb/",
    "train": "seed-5/",
    "evaluate": "run/eval/",
    "sweep": "optuna-journal.log",
    "report": "rep/",
    "score": "pq.json",
    "baseline": "bm25.run",
}


@pytest.mark.parametrize("verb", VERBS)
def test_a_full_disk_gives_one_clear_message_in_every_verb(tmp_path, cli, tiny_world, trained, monkeypatch, verb):
    place = tmp_path / "out"
    args = _verb_setup(verb, place, tmp_path, tiny_world, trained)
    before = _snapshot(tmp_path)
    _disk_full(monkeypatch)
    err = _user_error(cli(*args), "no space left on the device; free some space or write somewhere else")
    monkeypatch.undo()
    assert NAMED[verb] in err and str(place) in err
    _kept(before, _snapshot(tmp_path))
    if verb not in ("train", "evaluate", "sweep"):  # those may leave a resumable attempt (a run dir and its lock)
        assert _snapshot(tmp_path) == before


READ_ONLY = {  # verb -> (the folder made read-only, relative to the verb's place; the path the message names)
    "make-world": (".", "out/w"),
    "prepare": (".", "out/p"),
    "index": (".", "out/kb"),
    "train": ("runs/tiny-cpu__full", "tiny-cpu__full/seed-5"),
    "evaluate": ("run", "run/eval"),
    "sweep": ("runs", "runs/"),
    "report": (".", "out/rep"),
    "score": (".", "out/pq.json"),
    "baseline": (".", "out/bm25.run"),
}


@pytest.mark.parametrize("verb", VERBS)
def test_a_read_only_output_gives_one_clear_message_in_every_verb(
    tmp_path, cli, tiny_world, trained, monkeypatch, verb
):
    place = tmp_path / "out"
    args = _verb_setup(verb, place, tmp_path, tiny_world, trained)
    folder, named = READ_ONLY[verb]
    before = _snapshot(tmp_path)
    _read_only(monkeypatch, place / folder)
    try:
        err = _user_error(cli(*args), "permission denied; check the permissions of the file and its folder")
    finally:
        monkeypatch.undo()
        (place / folder).chmod(0o755)
    assert named in err, err
    after = _snapshot(tmp_path)
    _kept(before, after)
    assert after == before
