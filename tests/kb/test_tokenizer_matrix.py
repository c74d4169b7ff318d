"""The KB path under three tokenizer families: clue targets, index lookups, constrained decoding, `index query`.

(a) a SentencePiece BPE in LLaMA's style (`▁` word starts, byte fallback), trained here with the
    `sentencepiece` package and loaded through transformers as a LlamaTokenizer from its `tokenizer.model`;
(b) a byte-level BPE in GPT-2's style (no prefix space: a text's first word is another token than the same
    word inside a passage; one `<|endoftext|>` for BOS, EOS and UNK);
(c) the synthetic world's own tokenizer (`gemkr_lab.kb.tokenize.train_tokenizer`: byte-level, prefix space).
Nothing is downloaded.
"""

import io
import json

import numpy as np
import pytest
import torch

from gemkr_lab.cli import main
from gemkr_lab.config import DecodingConfig
from gemkr_lab.data.clue_targets import ClueFinder
from gemkr_lab.decoding import ClueDecoder
from gemkr_lab.kb.from_corpus import build_index_from_corpus
from gemkr_lab.kb.inspect import AFTER_A_SPACE, AS_TYPED, query_index, word_forms
from gemkr_lab.kb.synthetic_text import synthetic_passages
from gemkr_lab.kb.tokenize import load_tokenizer, train_tokenizer

from .brute import BruteForceKB

KINDS = ["sentencepiece", "byte-level", "world"]

PHRASE = "regular expression"
MIDDLE = [  # the phrase after a space, inside 8 passages
    "A regular expression describes a set of strings.",
    "Every regular expression can be turned into an automaton.",
    "The parser reads one regular expression per line.",
    "Write the regular expression before the replacement.",
    "This library compiles a regular expression into bytecode.",
    "Zelkalo once wrote a regular expression for dates.",
    "Testing a regular expression needs many examples.",
    "No regular expression matches a balanced bracket language.",
]
FIRST = "regular expression engines scan text from left to right."  # the phrase at a passage's start


def _passages() -> list[dict[str, str]]:
    rows = [{"id": p["id"], "text": p["text"]} for p in synthetic_passages(120, seed=3)]
    rows += [{"id": f"re{i}", "text": t} for i, t in enumerate([*MIDDLE, FIRST])]
    rows.append({"id": "uni", "text": "Ünïcode wörds like naïve café pass through the byte fallback."})
    return rows


def _train_texts() -> list[str]:
    return [p["text"] for p in synthetic_passages(300, seed=0)] + MIDDLE + [FIRST]


def _sentencepiece(out):
    """LLaMA's recipe at a small size: BPE, byte fallback, digits split, `▁` dummy prefix, unk/bos/eos = 0/1/2."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_train_texts()),
        model_writer=model,
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    out.mkdir(parents=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def _byte_level(out):
    """GPT-2's style: byte-level BPE without a prefix space, one special token for BOS, EOS and UNK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_train_texts(), trainer)
    eot = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=eot, eos_token=eot, unk_token=eot).save_pretrained(str(out))


@pytest.fixture(scope="module", params=KINDS)
def kb(request, tmp_path_factory):
    """(kind, tokenizer, index, passages, tokenised documents, corpus path) for one tokenizer family."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"matrix-{kind}")
    tok_dir = root / "tokenizer"
    if kind == "sentencepiece":
        _sentencepiece(tok_dir)
    elif kind == "byte-level":
        _byte_level(tok_dir)
    else:
        train_tokenizer(_train_texts(), tok_dir, vocab_size=500)
    tok = load_tokenizer(tok_dir)
    passages = _passages()
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in passages), encoding="utf-8")
    index = build_index_from_corpus(corpus, tok_dir, root / "kb", backend="fm", progress=False)
    docs = [tok(p["text"], add_special_tokens=False)["input_ids"] for p in passages]
    return kind, tok, index, passages, docs, root / "kb"


def test_the_tokenizers_are_what_they_claim(kb):
    kind, tok, _, _, _, _ = kb
    pieces = tok.convert_ids_to_tokens(tok("naïve regular", add_special_tokens=False)["input_ids"])
    if kind == "sentencepiece":
        assert type(tok).__name__ == "LlamaTokenizer"
        assert pieces[0].startswith("▁") and any(p.startswith("<0x") for p in pieces)  # word start, byte fallback
        assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    elif kind == "byte-level":
        assert not pieces[0].startswith("Ġ") and any(p.startswith("Ġ") for p in pieces)  # no prefix space
        assert tok.bos_token_id == tok.eos_token_id == 0
    else:
        assert pieces[0].startswith("Ġ")  # the world's tokenizer adds a prefix space
    text = "Ünïcode wörds like naïve café"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]).strip() == text  # lossless


def test_index_lookups_equal_brute_force(kb):
    _, tok, index, passages, docs, _ = kb
    brute = BruteForceKB(docs, tok.eos_token_id)
    rng = np.random.default_rng(0)
    assert index.n_docs == len(passages)
    for d in range(len(docs)):
        assert index.doc_tokens(d).tolist() == docs[d]  # the passage as it tokenises on its own
    for _ in range(150):
        d = int(rng.integers(len(docs)))
        s = int(rng.integers(len(docs[d])))
        span = [*docs[d], tok.eos_token_id][s : s + int(rng.integers(1, 6))]  # at a document's end too
        assert index.count(span) == brute.count(span)
        assert sorted(set(index.docs(span).tolist())) == brute.docs_of(span).tolist()
        assert index.next_tokens(span).tolist() == brute.next_tokens(span).tolist()
    assert index.count(word_forms(tok, "purple hexagon")[-1][1]) > 0  # as it tokenises inside passages


def test_clue_targets_are_unique_spans_of_the_passage(kb):
    _, tok, index, passages, docs, _ = kb
    finder = ClueFinder(index, tok, min_tokens=2, max_tokens=8)
    found = 0
    for d, p in enumerate(passages):
        answer = p["text"].split()[3]  # a word inside the passage
        clue = finder.find(d, p["text"], [answer])
        if clue is None:
            continue
        found += 1
        assert docs[d][clue.start : clue.start + len(clue.tokens)] == clue.tokens  # a path the decoder can take
        assert index.docs(clue.tokens).tolist() == [d]  # unique to this passage
        assert clue.text.strip() in p["text"]  # decodes to the passage's own text
        assert 2 <= len(clue.tokens) <= 8
    assert found >= 0.9 * len(passages)


def _prompts(rng, n, vocab, length=6):
    return torch.as_tensor(rng.integers(3, vocab, size=(n, length)))


@pytest.mark.parametrize("search", ["diverse", "beam"])
def test_every_constrained_clue_occurs_in_the_kb(kb, search, tiny_llama):
    _, tok, index, _, docs, _ = kb
    cfg = DecodingConfig(search=search, num_groups=4, max_clue_tokens=6)
    rng = np.random.default_rng(1)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for seed in range(2):
        model = tiny_llama(len(tok), seed=seed, eos_id=tok.eos_token_id, pad_id=pad)
        records = ClueDecoder(model, index, cfg, tokenizer=tok).decode(["a", "b"], input_ids=_prompts(rng, 2, len(tok)))
        for rec in records:
            assert rec.clues
            for clue in rec.clues:
                key = [*clue.tokens, index.eos_id] if clue.ended_with_eos else clue.tokens
                assert clue.count == index.count(key) > 0
                assert clue.text == tok.decode(clue.tokens)
                for d in clue.docs:
                    doc = [*docs[d], index.eos_id]
                    assert any(doc[i : i + len(key)] == key for i in range(len(doc) - len(key) + 1))


def test_index_query_finds_the_phrase_inside_passages_and_at_the_start(kb):
    kind, tok, index, _, _, _ = kb
    result = query_index(index, tok, PHRASE)
    assert result["count"] == len(MIDDLE) + 1  # every occurrence, whichever form it has
    assert {d["id"] for d in result["documents"]} == {f"re{i}" for i in range(len(MIDDLE) + 1)}
    counts = {f["form"]: f["count"] for f in result["forms"]}
    if kind == "byte-level":  # the first word is `regular` at a passage's start and `Ġregular` inside one
        assert counts == {AS_TYPED: 1, AFTER_A_SPACE: len(MIDDLE)}
        assert result["matched_forms"] == [AS_TYPED, AFTER_A_SPACE] and result["form"] == AFTER_A_SPACE
        assert result["forms"][1]["tokens"][0].startswith("Ġ") and not result["forms"][0]["tokens"][0].startswith("Ġ")
    else:  # `▁regular` / `Ġregular` at the start as well: one form
        assert counts == {AS_TYPED: len(MIDDLE) + 1}
        assert result["form"] == AS_TYPED and "the same tokens" in result["note"]
    # a leading space typed by the user finds the same occurrences
    assert query_index(index, tok, " " + PHRASE)["count"] == len(MIDDLE) + 1


def test_word_forms_read_the_in_passage_form_off_a_context(kb):
    kind, tok, _, _, _, _ = kb
    forms = dict(word_forms(tok, PHRASE))
    inside = tok("We use a " + PHRASE, add_special_tokens=False)["input_ids"]
    spaced = forms.get(AFTER_A_SPACE, forms[AS_TYPED])
    assert inside[-len(spaced) :] == spaced  # exactly how the phrase tokenises inside a passage
    assert (AFTER_A_SPACE in forms) == (kind == "byte-level")


def test_cli_index_query_reports_both_forms(kb, capsys):
    kind, _, _, _, _, path = kb
    assert main(["index", "query", str(path), "--text", PHRASE, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == len(MIDDLE) + 1 and result["n_documents"] == len(MIDDLE) + 1
    assert main(["index", "query", str(path), "--text", PHRASE]) == 0
    out = capsys.readouterr().out
    assert f"count={len(MIDDLE) + 1}" in out and "[re0]" in out
    if kind == "byte-level":
        assert f"matched: {AS_TYPED} and {AFTER_A_SPACE}" in out
        assert f"{AFTER_A_SPACE}" in out and "count=8" in out and "count=1" in out
        assert "differently from the same word after a space" in out  # the explanation
