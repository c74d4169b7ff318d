"""Bad input through the CLI: exit 2, one message naming the problem and the fix, no traceback, nothing lost.

Each case checks the exit code, the message, that stderr holds no traceback, and that what was there before
(an earlier output at the same path, the files around it) is md5-identical afterwards with no debris.
"""

import errno
import hashlib
import os
import tempfile

import pytest
import yaml

from gemkr_lab import io as gio
from gemkr_lab.cli import build_parser, main


def _snapshot(*roots):
    """md5 of every file (hidden ones too) under the roots, keyed by path: outputs and debris both show."""
    out = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    out[p] = hashlib.md5(fh.read()).hexdigest()
            out.setdefault(dirpath, "dir")
    return out


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


def _assert_user_error(result, *needles):
    code, _out, err = result
    assert code == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "run.txt").write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\n", encoding="utf-8")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\n", encoding="utf-8")
    (tmp_path / "corpus.csv").write_text("kid,text\nd1,pandas eat bamboo\nd2,paris is big\n", encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text('{"qid": "q1", "text": "pandas"}\n', encoding="utf-8")
    (tmp_path / "old.json").write_text('{"previous": "output"}\n', encoding="utf-8")  # an earlier result
    return tmp_path


# -- number options: argparse refuses them naming the option, before anything runs ----------------------------

NUMBER_CASES = [
    (["sweep", "s.yaml", "--workers", "-3"], "argument --workers: '-3' is too small"),
    (["sweep", "s.yaml", "--workers", "two"], "argument --workers: 'two' is not a whole number"),
    (["sweep", "s.yaml", "--retries", "-1"], "argument --retries: '-1' is too small; give a whole number >= 0"),
    (["sweep", "s.yaml", "--gpus-per-trial", "-1"], "argument --gpus-per-trial: '-1' is too small"),
    (["score", "--run", "r", "--qrels", "q", "--k", "abc"], "argument --k: 'abc' is not a whole number"),
    (["score", "--run", "r", "--qrels", "q", "--k", "1.5"], "argument --k: '1.5' is not a whole number"),
    (["score", "--run", "r", "--qrels", "q", "--k", "0"], "argument --k: '0' is too small"),
    (["score", "--run", "r", "--qrels", "q", "--k", "5,-1"], "argument --k: '-1' is too small"),
    (["score", "--run", "r", "--qrels", "q", "--k", ","], "argument --k: ',' holds no cutoff"),
    (["baseline", "bm25", "--corpus", "c", "--queries", "q", "--out", "o", "--k", "0"], "argument --k: '0'"),
    (["index", "query", "idx", "--text", "x", "--limit", "-1"], "argument --limit: '-1' is too small"),
    (["index", "build", "c.csv", "--tokenizer", "t", "--out", "o", "--shards", "abc"], "argument --shards: 'abc'"),
    (["index", "build", "c.csv", "--tokenizer", "t", "--out", "o", "--shards", "0"], "argument --shards: '0'"),
    (["index", "build", "c.csv", "--tokenizer", "t", "--out", "o", "--batch-size", "0"], "argument --batch-size: '0'"),
    (["make-world", "--out", "w", "--seed", "-1"], "argument --seed: '-1' is too small"),
    (["train", "tiny-cpu/full", "--seed", "-2"], "argument --seed: '-2' is too small"),
    (["demo", "--workers", "0"], "argument --workers: '0' is too small"),
]


@pytest.mark.parametrize(("args", "message"), NUMBER_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in NUMBER_CASES])
def test_number_options_are_refused_naming_the_option(tmp_path, cli, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "world.json").write_text("{}")  # an earlier make-world output must stay as it was
    before = _snapshot(tmp_path)
    _assert_user_error(cli(*args), message)
    assert _snapshot(tmp_path) == before


def test_number_options_accept_what_they_should():
    parse = build_parser().parse_args
    assert parse(["score", "--run", "r", "--qrels", "q", "--k", "10, 1,5,5"]).k == [1, 5, 10]
    assert parse(["score", "--run", "r", "--qrels", "q"]).k == [1, 5, 10]
    assert parse(["index", "build", "c", "--tokenizer", "t", "--out", "o", "--shards", "auto"]).shards == "auto"
    assert parse(["index", "build", "c", "--tokenizer", "t", "--out", "o", "--shards", "4"]).shards == 4
    assert parse(["index", "query", "i", "--text", "x", "--limit", "0"]).limit == 0
    assert parse(["sweep", "s", "--retries", "0", "--workers", "3"]).retries == 0
    assert parse(["make-world", "--out", "w", "--seed", "7"]).seed == 7


# -- filesystem errors: one line naming the file and the fix ---------------------------------------------------


def _fail_fsync(monkeypatch, code):
    real = os.fsync

    def fsync(fd):
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _fail_replace(monkeypatch, code):
    def replace(src, dst):
        raise OSError(code, os.strerror(code), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", replace)


def _fail_mkstemp(monkeypatch, exc_type, code):
    def mkstemp(dir=None, prefix="", **_):
        raise exc_type(code, os.strerror(code), os.path.join(dir, prefix + "abc"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (lambda mp: _fail_fsync(mp, errno.ENOSPC), "old.json: no space left on the device; free some space"),
        (lambda mp: _fail_fsync(mp, errno.EDQUOT), "old.json: disk quota exceeded"),
        (lambda mp: _fail_fsync(mp, errno.EIO), "old.json: input/output error"),
        (lambda mp: _fail_replace(mp, errno.EROFS), "old.json: read-only file system; write somewhere else"),
        (lambda mp: _fail_replace(mp, errno.EACCES), "old.json: permission denied; check the permissions"),
        (lambda mp: _fail_mkstemp(mp, PermissionError, errno.EACCES), "old.json: permission denied"),
        (lambda mp: _fail_mkstemp(mp, OSError, errno.EROFS), "old.json: read-only file system"),
    ],
    ids=["ENOSPC", "EDQUOT", "EIO", "EROFS-rename", "EACCES-rename", "EACCES-create", "EROFS-create"],
)
def test_score_per_query_write_failures(files, cli, monkeypatch, fault, message):
    before = _snapshot(files)
    fault(monkeypatch)
    err = _assert_user_error(
        cli("score", "--run", files / "run.txt", "--qrels", files / "qrels.txt", "--per-query", files / "old.json"),
        message,
    )
    assert len(err.strip().splitlines()) == 1
    assert ".tmp-" not in err  # the user's file is named, not our temporary one
    monkeypatch.undo()
    assert _snapshot(files) == before  # the earlier output intact, no temporary file left


def test_real_permission_error(files, cli):
    target = "/sys/gemkr-lab-test.json"  # sysfs refuses new files even to root
    try:
        os.close(tempfile.mkstemp(dir="/sys")[0])
        pytest.skip("/sys accepts files here")
    except PermissionError:
        pass
    except OSError:
        pytest.skip("no sysfs")
    _assert_user_error(
        cli("score", "--run", files / "run.txt", "--qrels", files / "qrels.txt", "--per-query", target),
        f"{target}: permission denied",
    )


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda f: ["--per-query", f / "adir"], "adir: is a directory where a file belongs; give the path of a file"),
        (lambda f: ["--per-query", f / "nope" / "x.json"], "its folder"),
        (lambda f: ["--per-query", f / "old.json" / "x.json"], "a file is in the way"),
    ],
    ids=["directory", "missing-folder", "file-in-the-way"],
)
def test_score_per_query_bad_paths(files, cli, make_args, message):
    (files / "adir").mkdir()
    before = _snapshot(files)
    _assert_user_error(
        cli("score", "--run", files / "run.txt", "--qrels", files / "qrels.txt", *make_args(files)), message
    )
    assert _snapshot(files) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda f: ["score", "--run", f, "--qrels", f / "qrels.txt"], "is a directory where a file belongs"),
        (lambda f: ["score", "--run", f / "run.txt", "--qrels", f], "is a directory where a file belongs"),
        (
            lambda f: ["baseline", "bm25", "--corpus", f, "--queries", f / "queries.jsonl", "--out", f / "r"],
            "is a directory where the corpus file belongs",
        ),
        (
            lambda f: ["baseline", "bm25", "--corpus", f / "corpus.csv", "--queries", f, "--out", f / "r"],
            "is a directory where the queries file belongs",
        ),
        (
            lambda f: [
                "baseline",
                "bm25",
                "--corpus",
                f / "corpus.csv",
                "--queries",
                f / "queries.jsonl",
                "--out",
                f / "adir",
            ],
            "adir: is a directory where a file belongs",
        ),
    ],
    ids=["score-run", "score-qrels", "baseline-corpus", "baseline-queries", "baseline-out"],
)
def test_a_directory_where_a_file_belongs(files, cli, args, message):
    (files / "adir").mkdir()
    before = _snapshot(files)
    _assert_user_error(cli(*args(files)), message)
    assert _snapshot(files) == before


def test_make_world_into_a_read_only_place(tmp_path, cli, monkeypatch):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "world.json").write_text('{"old": true}')
    before = _snapshot(tmp_path)

    def refuse(path, mode=0o777, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", refuse)
    err = _assert_user_error(cli("make-world", "--out", tmp_path / "w", "--overwrite"), "read-only file system")
    assert str(tmp_path) in err
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before


def test_debug_shows_the_traceback(files, cli):
    args = ["score", "--run", files, "--qrels", files / "qrels.txt"]
    assert "Traceback" not in cli(*args)[2]
    for where in (["--debug", *args], [*args, "--debug"]):
        code, _out, err = cli(*where)
        assert code == 2
        assert "Traceback" in err and "is a directory where a file belongs" in err


def test_index_build_from_a_directory(files, cli, tokenizer_dir):
    before = _snapshot(files)
    _assert_user_error(
        cli("index", "build", files, "--tokenizer", tokenizer_dir, "--out", files / "kb"),
        "is a directory where the corpus file belongs; give the file (.csv, .tsv or .jsonl)",
    )
    assert _snapshot(files) == before


def test_index_build_on_a_full_disk_keeps_the_old_index(tmp_path, cli, tokenizer_dir, monkeypatch):
    corpus = tmp_path / "c.csv"
    corpus.write_text("id,text\n1,the eiffel tower is in paris\n2,a red circle\n", encoding="utf-8")
    out = tmp_path / "kb"
    assert cli("index", "build", corpus, "--tokenizer", tokenizer_dir, "--out", out)[0] == 0
    before = _snapshot(tmp_path)
    _fail_fsync(monkeypatch, errno.ENOSPC)
    err = _assert_user_error(
        cli("index", "build", corpus, "--tokenizer", tokenizer_dir, "--out", out, "--overwrite"),
        "no space left on the device",
    )
    assert f"{out}/" in err and ".partial" not in err  # the file is named inside the index asked for
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before


# -- strict corpus parsing through `index build`: the earlier index stays as it was ---------------------------

BAD_CORPORA = [
    ('id,text\n1,"never closed\n2,second\n3,third\n', "bad.csv:2: a quote opened in this row is never closed"),
    (
        'id,text\n1,"swallows\n2,second\n3,third"\n4,x\n',
        "bad.csv:2: the quoted text opened in this row runs over line 3",
    ),
    ("id,text\n1,ok\n2,hello, world\n", "bad.csv:3: row has 3 fields, expected 2"),
    ("id,text\n1,ok\n2,   \n", "bad.csv:3: passage '2' has an empty text"),
]


@pytest.mark.parametrize(("content", "message"), BAD_CORPORA, ids=["eof-quote", "swallow", "comma", "empty"])
def test_index_build_refuses_a_damaged_corpus_and_keeps_the_old_index(tmp_path, cli, tokenizer_dir, content, message):
    good = tmp_path / "good.csv"
    good.write_text("id,text\n1,the eiffel tower is in paris\n2,a red circle\n", encoding="utf-8")
    out = tmp_path / "kb"
    assert cli("index", "build", good, "--tokenizer", tokenizer_dir, "--out", out)[0] == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    before = _snapshot(tmp_path)
    _assert_user_error(cli("index", "build", bad, "--tokenizer", tokenizer_dir, "--out", out, "--overwrite"), message)
    assert _snapshot(tmp_path) == before


# -- credentials: a storage URL's password appears in no output and no file -----------------------------------

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # plain postgresql:// goes through psycopg2 (installed), so the real cause shows: nothing listens
        (f"postgresql://bob:{SECRET}@127.0.0.1:1/gemkr", "postgresql://bob:***@127.0.0.1:1/gemkr cannot be reached"),
        (f"postgresql+psycopg2://bob:{SECRET}@127.0.0.1:1/db", "cannot be reached (connection to server"),
        (f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/db", "needs the Python driver 'psycopg'"),
        (f"mysql://bob:{SECRET}@127.0.0.1:1/db", "needs the Python driver 'MySQLdb', which is not installed"),
        (f"nosuchdb://bob:{SECRET}@host/db", "names a database type SQLAlchemy does not know"),
        (f"bob:{SECRET} at host", "is not a database URL (not shown"),
        (f"postgresql+psycopg2://bob@127.0.0.1:1/db?password={SECRET}", "?password=***"),
    ],
    ids=["plain-pg", "psycopg2", "psycopg3", "mysql", "unknown", "garbage", "query-password"],
)
def test_storage_password_appears_in_no_output_and_no_file(tmp_path, cli, tiny_overrides, url, message):
    spec = {"name": "pw", "root": str(tmp_path / "runs"), "cells": ["tiny-cpu/full"], "seeds": [0]}
    spec["overrides"] = tiny_overrides
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec), encoding="utf-8")
    prepared = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("prepared="))
    code, out, err = cli("sweep", sweep, "--storage", url)
    assert code == 2, err
    assert message in err and "nothing was started" in err
    assert "Traceback" not in err
    assert SECRET not in out + err
    for path in _snapshot(tmp_path, prepared):
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                assert SECRET.encode() not in fh.read(), path
    assert not (tmp_path / "runs" / "optuna-journal.log").exists()


def test_redaction_helpers():
    from gemkr_lab.sweep.study import redact_url, storage_url

    assert redact_url(f"postgresql://u:{SECRET}@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert SECRET not in redact_url(f"weird//u:{SECRET}@h")
    assert storage_url("postgresql://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert storage_url("postgresql+psycopg2://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_io_error_messages():
    assert gio.describe_os_error(FileExistsError("x exists; pass --overwrite")) == "x exists; pass --overwrite"
    msg = gio.describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/out.json"))
    assert msg == "/data/out.json: no space left on the device; free some space or write somewhere else"
    assert gio.describe_os_error(OSError(errno.ELOOP, "Too many levels of symbolic links", "/a")).startswith("/a: ")
