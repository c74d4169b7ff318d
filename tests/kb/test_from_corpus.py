"""Corpus file + local tokenizer -> index, with ids, duplicates, fingerprints and the CLI."""

import json

import numpy as np
import pytest

from gemkr_lab.cli import main
from gemkr_lab.kb import CorpusError, IndexFormatError, from_corpus, open_index
from gemkr_lab.kb.from_corpus import build_index_from_corpus
from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint, train_tokenizer

CORPUS = (
    "kid,text\n10,the eiffel tower is in paris\n11,a red circle lives near the harbour\n"
    "12,the eiffel tower is in paris\n13,Ünïcode wörds\n"
)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.mark.parametrize("backend", ["sa", "fm"])
def test_build_keeps_ids_and_deduplicates(tmp_path, corpus, tokenizer_dir, backend):
    index = build_index_from_corpus(corpus, tokenizer_dir, tmp_path / "kb", backend=backend, progress=False)
    tok = load_tokenizer(tokenizer_dir)
    assert index.n_docs == 3
    assert index.corpus_ids == ["10", "11", "13"]
    assert index.position("12") == index.position("10") == 0  # the duplicate's id resolves to the kept text
    assert index.meta["extra"]["duplicates_dropped"] == 1 and index.meta["extra"]["passages_read"] == 4
    ids = tok("the eiffel tower", add_special_tokens=False)["input_ids"]
    assert index.count(ids) == 1
    np.testing.assert_array_equal(index.docs(ids), [0])
    assert tok.decode(index.doc_tokens(2).tolist()).strip() == "Ünïcode wörds"
    assert index.meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tok)
    assert index.meta["eos_id"] == tok.eos_token_id


def test_no_dedup_keeps_every_passage(tmp_path, corpus, tokenizer_dir):
    index = build_index_from_corpus(corpus, tokenizer_dir, tmp_path / "kb", dedup=False, progress=False)
    assert index.corpus_ids == ["10", "11", "12", "13"]


def test_duplicate_ids_are_an_error(tmp_path, tokenizer_dir):
    path = tmp_path / "c.csv"
    path.write_text("id,text\n1,a\n1,b\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.csv: passage id '1' occurs at passages 1 and 2"):
        build_index_from_corpus(path, tokenizer_dir, tmp_path / "kb", progress=False)
    assert not (tmp_path / "kb").exists()


def test_a_duplicate_id_past_the_checked_head_is_an_error_too(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setattr(from_corpus, "HEAD_CHECKED", 2)
    path = tmp_path / "c.csv"
    path.write_text("id,text\n1,a\n2,b\n1,c\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.csv: passage id '1' occurs again at passage 3"):
        build_index_from_corpus(path, tokenizer_dir, tmp_path / "kb", progress=False)
    assert not (tmp_path / "kb").exists()


def test_other_tokenizer_is_detected(tmp_path, corpus, tokenizer_dir):
    build_index_from_corpus(corpus, tokenizer_dir, tmp_path / "kb", progress=False)
    other = train_tokenizer(["completely different text here"] * 5, tmp_path / "tok2", vocab_size=300)
    with pytest.raises(IndexFormatError, match="tokenizer"):
        open_index(tmp_path / "kb", tokenizer_fingerprint=tokenizer_fingerprint(other))


def test_cli_build_stats_query(tmp_path, corpus, tokenizer_dir, capsys):
    out = tmp_path / "kb"
    assert main(["index", "build", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["documents"] == 3 and built["backend"] == "fm"
    assert main(["index", "stats", str(out), "--json", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == built["tokens"]
    assert main(["index", "query", str(out), "--text", " the eiffel", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 1
    assert [d["id"] for d in result["documents"]] == ["10"]
    assert "eiffel tower" in result["documents"][0]["snippet"]
    assert result["n_continuations"] == 1
    assert main(["index", "query", str(out), "--text", " the eiffel"]) == 0
    assert "[10]" in capsys.readouterr().out


def test_cli_bad_input_exits_non_zero_with_the_reason(tmp_path, corpus, tokenizer_dir, capsys):
    out = tmp_path / "kb"
    args = ["index", "build", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,ok\n2\n", encoding="utf-8")
    assert main(["index", "build", str(bad), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "k2")]) == 2
    assert "bad.csv:3" in capsys.readouterr().err
    assert not (tmp_path / "k2").exists()
    assert main(["index", "stats", str(tmp_path / "missing")]) == 2
    assert "no such index directory" in capsys.readouterr().err
    assert (
        main(["index", "build", str(corpus), "--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "k3")]) == 2
    )
    assert "no such tokenizer directory" in capsys.readouterr().err


def test_cli_refuses_an_empty_corpus(tmp_path, tokenizer_dir, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    code = main(["index", "build", str(empty), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "kb")])
    assert code == 2
    assert "holds no passages" in capsys.readouterr().err
    assert not (tmp_path / "kb").exists()


def test_sharded_cli_build_answers_like_one_shard(tmp_path, tokenizer_dir):
    from gemkr_lab.kb.synthetic_text import synthetic_passages

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in synthetic_passages(200, seed=3)), encoding="utf-8")
    one = build_index_from_corpus(corpus, tokenizer_dir, tmp_path / "one", backend="sa", progress=False)
    three = build_index_from_corpus(corpus, tokenizer_dir, tmp_path / "three", backend="fm", shards=3, progress=False)
    assert len(three.shards) == 3 and three.corpus_ids == one.corpus_ids
    tok = load_tokenizer(tokenizer_dir)
    for text in [" lives near the", " eats figs", " was first seen in 18"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert one.count(ids) == three.count(ids) > 0
        np.testing.assert_array_equal(one.docs(ids), three.docs(ids))
        np.testing.assert_array_equal(one.next_tokens(ids), three.next_tokens(ids))


def test_index_texts_follow_the_official_builder_unless_switched(tmp_path, tokenizer_dir, capsys):
    path = tmp_path / "c.csv"
    path.write_bytes(b'kid,text\r\n0,"the eiffel\r\ntower"\r\n1,"a red\rcircle"\r\n2,"a red circle"\r\n')
    tok = load_tokenizer(tokenizer_dir)

    def texts(index):
        return [tok.decode(index.doc_tokens(d).tolist()).lstrip(" ") for d in range(index.n_docs)]

    official = build_index_from_corpus(path, tokenizer_dir, tmp_path / "official", progress=False)
    assert texts(official) == ["the eiffel\r tower", "a red\rcircle", "a red circle"]
    assert official.meta["extra"]["carriage_returns_to_spaces"] is False
    broad = build_index_from_corpus(path, tokenizer_dir, tmp_path / "broad", carriage_returns_to_spaces=True)
    assert texts(broad) == ["the eiffel  tower", "a red circle"]  # "a red\rcircle" is now a duplicate of 2
    assert broad.meta["extra"]["carriage_returns_to_spaces"] is True and broad.position("2") == 1
    args = ["index", "build", str(path), "--tokenizer", str(tokenizer_dir), "--json"]
    assert main([*args, "--out", str(tmp_path / "cli"), "--carriage-returns-to-spaces"]) == 0
    capsys.readouterr()
    assert open_index(tmp_path / "cli").meta["extra"]["carriage_returns_to_spaces"] is True
    assert main([*args, "--out", str(tmp_path / "cli-official")]) == 0
    assert open_index(tmp_path / "cli-official").meta["extra"]["carriage_returns_to_spaces"] is False
