"""The official step 0 (`allow_bos_eos_first_token`): clues that begin with BOS begin documents; EOS first is an
empty clue. Off (the default), neither happens even when the model wants them most."""

import dataclasses

import numpy as np
import pytest
import torch

from gemkr_lab.config import DecodingConfig
from gemkr_lab.decoding import ClueDecoder
from gemkr_lab.decoding.starts import DocumentStarts
from gemkr_lab.kb import build_index
from gemkr_lab.kb.synthetic_text import synthetic_passages
from gemkr_lab.kb.tokenize import load_tokenizer

BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def world(tokenizer_dir, tmp_path_factory):
    tok = load_tokenizer(tokenizer_dir)
    texts = [p["text"] for p in synthetic_passages(120, seed=3)]
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    docs += [docs[0][:3], docs[5][:2]]  # short documents: EOS follows within the first tokens
    root = tmp_path_factory.mktemp("kb-starts")
    indexes = {
        "sa": build_index(docs, root / "sa", eos_id=EOS, vocab_size=len(tok), progress=False),
        "fm2": build_index(docs, root / "fm", eos_id=EOS, backend="fm", shards=2, vocab_size=len(tok), progress=False),
    }
    return tok, docs, indexes


@pytest.mark.parametrize("kb", ["sa", "fm2"])
def test_document_starts_match_a_brute_force_scan(world, kb):
    _tok, docs, indexes = world
    starts = DocumentStarts(indexes[kb], width=6)
    rng = np.random.default_rng(0)
    prefixes = [[], *[docs[int(d)][:k] for d in rng.integers(0, len(docs), 30) for k in (1, 2, 4)]]
    prefixes += [[*docs[-1], EOS], [*docs[-2], EOS], [docs[7][0], 399], [docs[0][0], docs[0][1], EOS]]
    for prefix in prefixes:
        full = [[*d, EOS] for d in docs]
        expect = [i for i, d in enumerate(full) if d[: len(prefix)] == list(prefix)]
        assert starts.docs(prefix).tolist() == expect, prefix
        lo, hi = 0, starts.n_docs
        for depth, t in enumerate(prefix):
            lo, hi = starts.advance(lo, hi, depth, t)
        after = sorted({full[i][len(prefix)] for i in expect if len(full[i]) > len(prefix)})
        assert starts.allowed(lo, hi, len(prefix)).tolist() == after, prefix


class _Biased(torch.nn.Module):
    """A causal LM whose logits of some tokens are raised: it wants them (BOS, EOS) first."""

    def __init__(self, lm, bias: dict[int, float]) -> None:
        super().__init__()
        self.lm, self.bias, self.config = lm, bias, lm.config

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.lm(**kwargs)
        for token, b in self.bias.items():
            out.logits[..., token] += b
        return out


def _decode(world, kb, tiny_llama, bias=None, **knobs):
    tok, _docs, indexes = world
    cfg = DecodingConfig(num_groups=6, max_clue_tokens=5, **knobs)
    model = _Biased(tiny_llama(len(tok), seed=1, pad_id=3), bias or {BOS: 8.0, EOS: 8.0})
    prompts = torch.as_tensor(np.random.default_rng(1).integers(4, len(tok), size=(3, 6)))
    return ClueDecoder(model, indexes[kb], cfg, tokenizer=tok).decode(["a", "b", "c"], input_ids=prompts)


@pytest.mark.parametrize("kb", ["sa", "fm2"])
def test_official_step_0_allows_bos_and_eos_first(world, kb, tiny_llama):
    _tok, docs, _ = world
    wants_bos = _decode(world, kb, tiny_llama, bias={BOS: 8.0}, allow_bos_eos_first_token=True)
    wants_eos = _decode(world, kb, tiny_llama, bias={EOS: 8.0}, allow_bos_eos_first_token=True)
    anchored = [c for r in wants_bos for c in r.clues if c.tokens and c.tokens[0] == BOS]
    empty = [c for r in wants_eos for c in r.clues if not c.tokens]
    assert anchored and empty  # the model's favourites, now allowed
    for c in anchored:  # a clue that begins with BOS begins every document it retrieves
        assert 1 <= len(c.tokens) <= 5  # BOS counts towards the cap, as in the official code
        rest = c.tokens[1:]
        assert c.docs and all(docs[d][: len(rest)] == rest for d in c.docs)
        if c.ended_with_eos:
            assert all(docs[d] == rest for d in c.docs)
    for c in empty:  # an empty clue ended by EOS matches every document's end: the first document
        assert c.ended_with_eos and c.count == len(docs) and c.docs == [0]


def test_without_the_switch_no_clue_starts_with_bos_or_eos(world, tiny_llama):
    clues = [c for r in _decode(world, "sa", tiny_llama) for c in r.clues]
    assert clues and all(c.tokens and c.tokens[0] not in (BOS, EOS) for c in clues)


def test_without_the_switch_free_clues_are_never_empty_and_bos_is_a_plain_token(world, tiny_llama):
    clues = [c for r in _decode(world, "sa", tiny_llama, constrained=False) for c in r.clues]
    assert clues and all(c.tokens for c in clues)
    assert all(c.count == 0 and not c.docs for c in clues if c.tokens[0] == BOS)  # no document contains BOS


def test_unconstrained_official_step_0_empty_clues_retrieve_nothing(world, tiny_llama):
    _tok, docs, _ = world
    clues = []
    for bias in ({BOS: 8.0}, {EOS: 8.0}):
        records = _decode(world, "sa", tiny_llama, bias=bias, constrained=False, allow_bos_eos_first_token=True)
        clues += [c for r in records for c in r.clues]
    assert any(not c.tokens for c in clues) and any(c.tokens and c.tokens[0] == BOS for c in clues)
    for c in clues:
        if not c.tokens:
            assert c.docs == [] and c.count == 0
        elif c.tokens[0] == BOS:  # looked up among documents' beginnings
            assert all(docs[d][: len(c.tokens) - 1] == c.tokens[1:] for d in c.docs)


def test_the_switch_needs_the_bos_id(world):
    from gemkr_lab.decoding import beam_search

    _tok, _docs, indexes = world
    cfg = dataclasses.replace(DecodingConfig(), allow_bos_eos_first_token=True)
    with pytest.raises(ValueError, match="BOS id"):
        beam_search(torch.nn.Identity(), cfg, EOS, input_ids=torch.ones(1, 2, dtype=torch.long), index=indexes["sa"])


@pytest.mark.parametrize("constrained", [True, False])
def test_the_official_step_0_picks_the_same_clues_on_the_device_route(world, constrained, tiny_llama):
    """BOS / EOS added at step 0, clues anchored at documents' starts and forced ends by count: the candidates
    picked on the model's device are those read on the host."""
    from gemkr_lab.decoding import beam_search

    tok, _docs, indexes = world
    cfg = DecodingConfig(
        num_groups=6, max_clue_tokens=5, allow_bos_eos_first_token=True, constrained=constrained, stop_at_count=2
    )
    model = _Biased(tiny_llama(len(tok), seed=1, pad_id=3), {BOS: 8.0, EOS: 8.0})
    prompts = torch.as_tensor(np.random.default_rng(2).integers(4, len(tok), size=(3, 6)))
    results = [
        beam_search(model, cfg, EOS, input_ids=prompts, index=indexes["fm2"], bos_id=BOS, scores_on_host=on_host)
        for on_host in (True, False)
    ]
    host, device = (
        [[(h.tokens, h.ended_with_eos, h.cumulative, h.starts_document) for h in hs] for hs in r.hypotheses]
        for r in results
    )
    assert host == device
    assert any(h[3] for hs in host for h in hs)  # clues that began with BOS
    assert any(not h[0] for hs in host for h in hs) or not constrained  # empty clues (EOS first)
