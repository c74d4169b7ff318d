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


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("c.csv", "kid,text\n0,first\n1,second\n", [Passage("0", "first"), Passage("1", "second")]),
        ("c.tsv", "id\ttext\ttitle\n1\tfirst\tT\n", [Passage("1", "first", "T")]),
        ("c.jsonl", '{"id": 1, "text": "first"}\n', [Passage("1", "first")]),
    ],
)
def test_a_utf8_byte_order_mark_is_read_as_utf8_sig(tmp_path, name, content, expected):
    # Excel's "CSV UTF-8" starts with a BOM; it was read into the first column's name ("\ufeffkid") and refused
    f = _write(tmp_path / name, b"\xef\xbb\xbf" + content.encode(), mode="wb")
    assert list(read_corpus(f)) == expected


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
        ("c.csv", "id,text\n1,ok\n2\n", r"c\.csv:3: row has 1 field, expected 2"),
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


# Strict parsing: every case below was read without complaint by the lenient reader, losing or garbling
# passages (exit 0). Each must name the file, the line where the damage starts and the fix.
STRICT_CASES = [
    # unclosed quotes
    ("eof.csv", 'id,text\n1,"abc\n2,def\n3,ghi\n', r"eof\.csv:2: a quote opened in this row is never closed"),
    ("later_quote.csv", 'id,text\n1,"abc\n2,def\n3,"ghi"\n4,x\n', r"later_quote\.csv:2: .*runs on to line 4"),
    ("stray_end.csv", 'id,text\n1,"abc\n2,def\n3,ghi"\n4,ok\n', r"stray_end\.csv:2: .*runs over line 3.*not closed"),
    ("word_ids.csv", 'id,text\nQ1,"abc\nQ2,def"\nQ3,ok\n', r"word_ids\.csv:2: .*looks like a row of its own"),
    ("three_cols.csv", 'kid,text,title\n1,"abc\n2,def,T2\n3,ghi",T3\n', r"three_cols\.csv:2: .*runs over line 3"),
    ("after_quote.csv", 'id,text\n1,"abc" def\n', r'after_quote\.csv:2: text follows a closing quote.*""'),
    ("eof.tsv", '1\t"abc\tT\n2\tdef\tT\n', r"eof\.tsv:1: a quote opened in this row is never closed"),
    ("stray_end.tsv", '1\t"abc\n2\tdef\tT2"\tT\n', r"stray_end\.tsv:1: .*looks like a row of its own"),
    # field counts
    ("comma.csv", "id,text\n1,ok\n2,hello, world\n", r"comma\.csv:3: row has 3 fields, expected 2.*unquoted comma"),
    ("commas.csv", "kid,text\n1,a, b, c\n", r"commas\.csv:2: row has 4 fields.*quote the text"),
    ("short.csv", "kid,text,title\n1,a,T\n2,c\n", r"short\.csv:3: row has 2 fields, expected 3"),
    ("tab.tsv", "1\tok\tT\n2\ta\tb\tT\n", r"tab\.tsv:2: row has 4 fields, expected 3.*unquoted tab"),
    ("width.tsv", "id\ttext\ttitle\n1\tok\n", r"width\.tsv:2: row has 2 fields, expected 3"),
    ("wide.tsv", "1\ta\tb\tc\n", r"wide\.tsv:1: row has 4 fields"),
    # empty ids and texts
    ("empty.csv", "id,text\n1,ok\n2,\n", r"empty\.csv:3: passage '2' has an empty text"),
    ("blank.csv", 'id,text\n1,"   "\n', r"blank\.csv:2: passage '1' has an empty text"),
    ("newline.csv", 'id,text\n1,"\n"\n', r"newline\.csv:2: passage '1' has an empty text"),
    ("noid.csv", "id,text\n,abc\n", r"noid\.csv:2: empty passage id"),
    ("empty.tsv", "1\tok\tT\n2\t \tT\n", r"empty\.tsv:2: passage '2' has an empty text"),
    ("empty.jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "text": ""}\n', r"empty\.jsonl:2: passage '2' has an empty"),
    ("blank.jsonl", '{"id": 1, "text": " \\n "}\n', r"blank\.jsonl:1: passage '1' has an empty text"),
    ("null.jsonl", '{"id": 1, "text": null}\n', r'null\.jsonl:1: "text" must be a string, not None'),
    ("listid.jsonl", '{"id": [1], "text": "a"}\n', r'listid\.jsonl:1: "id" must be a string or an integer'),
    ("noid.jsonl", '{"id": " ", "text": "a"}\n', r"noid\.jsonl:1: empty passage id"),
]


@pytest.mark.parametrize(("name", "content", "message"), STRICT_CASES, ids=[c[0] for c in STRICT_CASES])
def test_strict_parsing_refuses_what_would_lose_passages(tmp_path, name, content, message):
    f = _write(tmp_path / name, content)
    with pytest.raises(CorpusError, match=message):
        list(read_corpus(f))


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        # a quoted text over lines whose continuations do not look like rows
        (
            "multi.csv",
            'id,text\n1,"line one\nand line two, too"\n2,b\n',
            [("1", "line one and line two, too"), ("2", "b")],
        ),
        ("quoted.csv", 'id,text\n1,"a, b and ""c"""\n', [("1", 'a, b and "c"')]),
        ("inner.csv", 'id,text\n1,he said "hi"\n', [("1", 'he said "hi"')]),
        ("extra.csv", "kid,text,source\n1,a,wiki\n2,b,\n", [("1", "a"), ("2", "b")]),
        ("crlf.csv", 'id,text\r\n1,"x, y"\r\n2,z\r\n', [("1", "x, y"), ("2", "z")]),
        ("blanklines.csv", "id,text\n\n1,a\n\n2,b\n", [("1", "a"), ("2", "b")]),
        ("two.tsv", "1\ta\n2\tb\n", [("1", "a"), ("2", "b")]),
    ],
)
def test_strict_parsing_keeps_sound_files(tmp_path, name, content, expected):
    got = [(p.id, p.text) for p in read_corpus(_write(tmp_path / name, content))]
    assert got == expected


def test_error_lines_after_a_multi_line_passage_are_exact(tmp_path):
    f = _write(tmp_path / "c.csv", 'id,text\n1,"one\ntwo\nthree"\n2,ok\n3,a,b\n')
    with pytest.raises(CorpusError, match=r"c\.csv:6: row has 3 fields"):
        list(read_corpus(f))


# Carriage returns inside passages (a CRLF file with multi-line quoted texts, a lone \r, \r before the strip).
CR_CSV = b'kid,text\r\n0,"alpha\r\nbeta"\r\n1,"gamma\rdelta"\r\n2,plain\r\n3," padded\r "\r\n'


def _as_the_official_builder_reads(path):
    """The official index builder's texts, restated: csv read with newline='', then `\\n` -> space, strip."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(r[0], r[1].replace("\n", " ").strip()) for r in csv.reader(fh)]
    return [r for r in rows if r[1] != "text"]


def test_carriage_returns_stay_as_in_the_official_index_builder(tmp_path):
    f = _write(tmp_path / "c.csv", CR_CSV, mode="wb")
    got = [(p.id, p.text) for p in read_corpus(f)]
    assert got == _as_the_official_builder_reads(f)
    assert got == [("0", "alpha\r beta"), ("1", "gamma\rdelta"), ("2", "plain"), ("3", "padded")]


def test_carriage_returns_to_spaces_is_the_broader_switch(tmp_path):
    f = _write(tmp_path / "c.csv", CR_CSV, mode="wb")
    got = [(p.id, p.text) for p in read_corpus(f, carriage_returns_to_spaces=True)]
    assert got == [("0", "alpha  beta"), ("1", "gamma delta"), ("2", "plain"), ("3", "padded")]
    tsv = _write(tmp_path / "c.tsv", b'1\t"a\r\nb"\tT\r\n2\tc\tU\r\n', mode="wb")
    assert [p.text for p in read_corpus(tsv)] == ["a\r b", "c"]
    assert [p.text for p in read_corpus(tsv, carriage_returns_to_spaces=True)] == ["a  b", "c"]
    jsonl = _write(tmp_path / "c.jsonl", '{"id": 1, "text": "x\\ry\\r\\nz\\r"}\n')
    assert [p.text for p in read_corpus(jsonl)] == ["x\ry\r z"]
    assert [p.text for p in read_corpus(jsonl, carriage_returns_to_spaces=True)] == ["x y  z"]


@pytest.mark.parametrize(("name", "content"), [("c.csv", b"kid,text\n0,ok\n1,foo\rbar\n"), ("c.tsv", b"1\tfoo\rbar\n")])
def test_a_carriage_return_in_an_unquoted_text_is_named(tmp_path, name, content):
    f = _write(tmp_path / name, content, mode="wb")
    line = 3 if name == "c.csv" else 1
    with pytest.raises(CorpusError, match=rf"c\.{name[2:]}:{line}: a carriage return \(\\r\) inside an unquoted text"):
        list(read_corpus(f))
