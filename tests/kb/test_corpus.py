"""Corpus readers: the three formats, exactly, and errors that name the file and line."""

import pytest

from gemkr_lab.kb import CorpusError
from gemkr_lab.kb.corpus import Passage, read_corpus


def _write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("id_col", ["kid", "id"])
def test_csv_with_either_id_header(tmp_path, id_col):
    f = _write(tmp_path / "c.csv", f'{id_col},text\n0,"first passage\nwith a newline"\n1,second\n')
    assert list(read_corpus(f)) == [Passage("0", "first passage with a newline"), Passage("1", "second")]


def test_dpr_tsv_with_and_without_header(tmp_path):
    rows = '1\t"Aaron is a prophet"\tAaron\n2\tsecond passage\tTitle Two\n'
    for name, text in [("h.tsv", "id\ttext\ttitle\n" + rows), ("n.tsv", rows)]:
        got = list(read_corpus(_write(tmp_path / name, text)))
        assert got == [Passage("1", "Aaron is a prophet", "Aaron"), Passage("2", "second passage", "Title Two")]


def test_jsonl(tmp_path):
    f = _write(tmp_path / "c.jsonl", '{"id": 7, "text": " a\\nb ", "title": "T"}\n\n{"id": "x", "text": "c"}\n')
    assert list(read_corpus(f)) == [Passage("7", "a b", "T"), Passage("x", "c", "")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.csv", "pid,body\n1,x\n", r"c\.csv:1: header .* needs an id column"),
        ("c.csv", "id,text\n1,ok\n2\n", r"c\.csv:3: row has 1 fields"),
        ("c.tsv", "id\ttext\ttitle\n1\tok\tt\nonlyone\n", r"c\.tsv:3: row has 1 field"),
        ("c.jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "text": \n', r"c\.jsonl:2: not a JSON object"),
        ("c.jsonl", '{"id": 1, "text": "a"}\n{"text": "b"}\n', r'c\.jsonl:2: .*"id" and "text"'),
        ("c.csv", "id,text\n", "holds no passages"),
        ("c.txt", "x", "unknown corpus format"),
    ],
)
def test_malformed_corpora_name_file_and_line(tmp_path, name, content, message):
    f = _write(tmp_path / name, content)
    with pytest.raises(CorpusError, match=message):
        list(read_corpus(f))


def test_invalid_utf8_is_reported(tmp_path):
    f = _write(tmp_path / "c.jsonl", b'{"id": 1, "text": "ok"}\n{"id": 2, "text": "\xff\xfe"}\n', mode="wb")
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid UTF-8"):
        list(read_corpus(f))


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="no such corpus file"):
        list(read_corpus(tmp_path / "none.csv"))
