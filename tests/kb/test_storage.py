"""The on-disk format: atomic builds, and clear errors for anything that is not a sound index."""

import json

import numpy as np
import pytest

from gemkr_lab.kb import IndexFormatError, build_index, open_index

DOCS = [[3, 4, 5], [4, 5, 6], [7]]


@pytest.fixture(params=["sa", "fm"])
def built(request, tmp_path):
    build_index(DOCS, tmp_path / "kb", eos_id=2, backend=request.param, progress=False)
    return tmp_path / "kb"


def _meta(path):
    return json.loads((path / "meta.json").read_text())


def test_reopened_index_answers_the_same(built):
    index = open_index(built)
    assert index.count([4, 5]) == 2
    np.testing.assert_array_equal(index.docs([4, 5]), [0, 1])
    assert index.meta["format_version"] == 1
    assert set(index.meta) >= {"backend", "vocab_size", "eos_id", "tokenizer_fingerprint", "corpus_fingerprint"}


def test_truncated_file_is_named(built):
    entry = _meta(built)["shards"][0]["files"]["C"]
    path = built / "shard-000" / entry["file"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match=r"C\.npy.*truncated"):
        open_index(built)


def test_corrupted_file_fails_the_checksum(built):
    files = _meta(built)["shards"][0]["files"]
    name = "sa" if "sa" in files else "wm_bits"
    path = built / "shard-000" / files[name]["file"]
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="checksum"):
        open_index(built)
    open_index(built, verify=False)  # sizes still match: only a checksum can tell


def test_unknown_format_version_is_refused(built):
    meta = _meta(built)
    meta["format_version"] = 99
    (built / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=r"version 99.*rebuild"):
        open_index(built)


def test_other_tokenizer_is_refused(tmp_path):
    build_index(DOCS, tmp_path / "kb", eos_id=2, tokenizer_fingerprint="sha256:aaa", progress=False)
    open_index(tmp_path / "kb", tokenizer_fingerprint="sha256:aaa")
    with pytest.raises(IndexFormatError, match="tokenizer"):
        open_index(tmp_path / "kb", tokenizer_fingerprint="sha256:bbb")


def test_missing_directory_and_unfinished_index(tmp_path):
    with pytest.raises(IndexFormatError, match="no such index"):
        open_index(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(IndexFormatError, match=r"not a finished index"):
        open_index(tmp_path / "half")


def test_interrupted_build_leaves_nothing(tmp_path):
    def docs():
        yield [3, 4]
        yield [5, 6]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(docs(), tmp_path / "kb", eos_id=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_is_refused_unless_overwrite(built):
    with pytest.raises(FileExistsError, match="overwrite"):
        build_index([[9]], built, eos_id=2, progress=False)
    assert open_index(built).n_docs == 3
    index = build_index([[9]], built, eos_id=2, progress=False, overwrite=True)
    assert index.n_docs == 1 and open_index(built).count([9]) == 1


def test_failed_overwrite_keeps_the_old_index(built):
    with pytest.raises(ValueError, match="EOS"):
        build_index([[9, 2]], built, eos_id=2, progress=False, overwrite=True)
    assert open_index(built).n_docs == 3
    assert [p.name for p in built.parent.iterdir()] == [built.name]


@pytest.mark.parametrize(
    ("docs", "kwargs", "message"),
    [
        ([], {}, "no documents"),
        ([[3, 2, 4]], {}, "document 0: token id 2 is the EOS id"),
        ([[3], [1, 12]], {"vocab_size": 10}, r"document 1: token id 12 is outside \[0, 10\)"),
        ([[3], [-4]], {}, "document 1: token id -4"),
        ([[3]], {"backend": "bwt"}, "unknown backend"),
        ([[3]], {"shards": 0}, "shards"),
        ([[3]], {"shards": 2}, "cannot cut 1 documents into 2 shards"),
        ([[3]], {"doc_ids": ["a", "b"]}, "doc_ids has 2 entries for 1 documents"),
    ],
)
def test_bad_build_input(tmp_path, docs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_index(docs, tmp_path / "kb", eos_id=2, progress=False, **kwargs)
    assert not (tmp_path / "kb").exists()


def test_corpus_ids_round_trip(tmp_path):
    index = build_index(DOCS, tmp_path / "kb", eos_id=2, doc_ids=["x1", "x2", "x3"], progress=False)
    assert index.corpus_id(1) == "x2"
    assert index.position("x3") == 2
    assert open_index(tmp_path / "kb").corpus_ids == ["x1", "x2", "x3"]


def test_doc_id_lookups_and_errors(tmp_path):
    ids = ["wiki:10", "wiki:9", "Ünï"]
    index = build_index(DOCS, tmp_path / "kb", eos_id=2, doc_ids=ids, progress=False)
    assert [index.position(i) for i in ids] == [0, 1, 2]
    with pytest.raises(KeyError, match="wiki:11"):
        index.position("wiki:11")
    with pytest.raises(ValueError, match="'a' is given to more than one document"):
        build_index(DOCS, tmp_path / "kb2", eos_id=2, doc_ids=["a", "b", "a"], progress=False)
    plain = build_index(DOCS, tmp_path / "kb3", eos_id=2, progress=False)
    assert plain.corpus_id(2) == "2" and plain.position("1") == 1
    with pytest.raises(KeyError):
        plain.position("7")


# -- a full disk: numpy's own writers lose the bytes without an error (#25) --------------------------------------

FULL = "/dev/full"  # every write fails with ENOSPC, as on a full disk


@pytest.fixture
def full_disk(monkeypatch):
    """Every file the index build writes (through Python's `open`) is on a full disk."""
    import builtins
    import os

    from gemkr_lab.kb import build as build_mod
    from gemkr_lab.kb import storage

    if not os.path.exists(FULL):
        pytest.skip(f"no {FULL}")

    def full_open(path, mode="r", *args, **kwargs):
        return builtins.open(FULL if "w" in mode else path, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "open", full_open, raising=False)
    monkeypatch.setattr(build_mod, "open", full_open, raising=False)


def test_array_writers_raise_on_a_full_disk_naming_the_file(tmp_path):
    from pathlib import Path

    from gemkr_lab.kb.storage import save_array_parts, write_array_file

    if not Path(FULL).exists():
        pytest.skip(f"no {FULL}")
    with pytest.raises(OSError, match="No space left") as caught:  # ndarray.tofile(FULL) returns quietly
        write_array_file(Path(FULL), np.arange(10))
    assert caught.value.filename == FULL
    (tmp_path / "a.npy").symlink_to(FULL)
    with pytest.raises(OSError, match="No space left") as caught:  # so does np.save
        save_array_parts(tmp_path, "a", np.dtype(np.int64), (3,), [np.arange(3)])
    assert caught.value.filename == str(tmp_path / "a.npy")


def test_an_overwrite_on_a_full_disk_fails_with_enospc_and_keeps_the_old_index(built, full_disk):
    before = {p.name: p.read_bytes() for p in built.rglob("*") if p.is_file()}
    with pytest.raises(OSError, match="No space left"):  # was: "cannot mmap an empty file" (offsets.tmp lost)
        build_index(DOCS, built, eos_id=2, backend="fm", overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in built.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in built.parent.iterdir()) == ["kb"]  # no staging left behind
