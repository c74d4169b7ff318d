"""Constrained clue decoding with a tiny random Llama and a locally trained tokenizer."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from gemkr_lab.config import DecodingConfig
from gemkr_lab.decoding import ClueDecoder, beam_search, write_records, write_records_run
from gemkr_lab.kb import build_index
from gemkr_lab.kb.synthetic_text import synthetic_passages
from gemkr_lab.kb.tokenize import load_tokenizer
from gemkr_lab.metrics import read_run


@pytest.fixture(scope="module")
def world(tokenizer_dir, tmp_path_factory):
    tok = load_tokenizer(tokenizer_dir)
    texts = [p["text"] for p in synthetic_passages(150, seed=1)]
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    root = tmp_path_factory.mktemp("kb")
    indexes = {
        "sa": build_index(docs, root / "sa", eos_id=tok.eos_token_id, vocab_size=len(tok), progress=False),
        "fm2": build_index(
            docs, root / "fm", eos_id=tok.eos_token_id, backend="fm", shards=2, vocab_size=len(tok), progress=False
        ),
    }
    return tok, docs, indexes


def _prompts(rng, n, vocab, length=6):
    return torch.as_tensor(rng.integers(4, vocab, size=(n, length)))


def _key(clue, index, cfg):
    """The clue as looked up: with its EOS (documents' ends only) when constrained or asked to."""
    at_end = clue.ended_with_eos and (cfg.constrained or cfg.unconstrained_eos_at_document_end)
    return [*clue.tokens, index.eos_id] if at_end else clue.tokens


@pytest.mark.parametrize("kb", ["sa", "fm2"])
@pytest.mark.parametrize("search", ["diverse", "beam"])
def test_every_constrained_clue_occurs_in_the_kb(world, kb, search, tiny_llama):
    tok, docs, indexes = world
    index = indexes[kb]
    rng = np.random.default_rng(0)
    cfg = DecodingConfig(search=search, num_groups=5, max_clue_tokens=6)
    for seed in range(4):
        decoder = ClueDecoder(tiny_llama(len(tok), seed=seed), index, cfg, tokenizer=tok)
        records = decoder.decode(["a", "b", "c"], input_ids=_prompts(rng, 3, len(tok)))
        for rec in records:
            assert len(rec.clues) == cfg.num_clues
            for clue in rec.clues:
                assert 1 <= len(clue.tokens) <= cfg.max_clue_tokens
                assert clue.count == index.count(_key(clue, index, cfg)) > 0
                assert clue.docs and all(_contains(docs[d], clue.tokens, at_end=clue.ended_with_eos) for d in clue.docs)
            assert rec.ranked_docs == list(dict.fromkeys(rec.ranked_docs))


def _contains(doc, seq, at_end=False):
    n = len(seq)
    if at_end:
        return doc[len(doc) - n :] == seq
    return any(doc[i : i + n] == seq for i in range(len(doc) - n + 1))


def test_unique_policy_never_keeps_an_ambiguous_clue(world, tiny_llama):
    tok, _, indexes = world
    index = indexes["sa"]
    rng = np.random.default_rng(1)
    cfg = DecodingConfig(num_groups=8, max_clue_tokens=4, clue_to_docs="unique")
    seen_ambiguous = 0
    for seed in range(4):
        records = ClueDecoder(tiny_llama(len(tok), seed=seed), index, cfg).decode(
            ["q1", "q2"], input_ids=_prompts(rng, 2, len(tok))
        )
        for clue in (c for r in records for c in r.clues):
            if clue.n_docs_containing > 1:
                seen_ambiguous += 1
                assert clue.docs == []
            else:
                assert len(clue.docs) == 1
    assert seen_ambiguous > 0  # short clues over a repetitive KB: the policy had something to drop


def test_diverse_groups_give_distinct_clues(world, tiny_llama):
    tok, _, indexes = world
    rng = np.random.default_rng(2)
    for seed in range(3):
        model = tiny_llama(len(tok), seed=seed)
        prompts = _prompts(rng, 2, len(tok))
        res = beam_search(
            model, DecodingConfig(max_clue_tokens=5), tok.eos_token_id, input_ids=prompts, index=indexes["sa"]
        )
        for hyps in res.hypotheses:
            assert len({tuple(h.tokens) for h in hyps}) == len(hyps) == 10
        strong = DecodingConfig(max_clue_tokens=5, diversity_penalty=100.0)
        res = beam_search(model, strong, tok.eos_token_id, input_ids=prompts, index=indexes["sa"])
        for hyps in res.hypotheses:  # a huge penalty forces ten different first tokens
            assert len({h.tokens[0] for h in hyps}) == 10


def test_embeds_and_ids_give_the_same_clues_and_batches_equal_singles(world, tiny_llama):
    tok, _, indexes = world
    model = tiny_llama(len(tok), seed=5)
    decoder = ClueDecoder(model, indexes["fm2"], DecodingConfig(num_groups=4, max_clue_tokens=5))
    rng = np.random.default_rng(3)
    a, b = _prompts(rng, 1, len(tok), 7), _prompts(rng, 1, len(tok), 4)
    by_ids = decoder.decode(["a"], input_ids=a)[0]
    by_embeds = decoder.decode(["a"], inputs_embeds=model.get_input_embeddings()(a))[0]
    assert [c.tokens for c in by_ids.clues] == [c.tokens for c in by_embeds.clues]
    single_b = decoder.decode(["b"], input_ids=b)[0]
    padded = torch.cat([torch.full((1, 3), 3), b], dim=1)  # left padding
    mask = torch.cat([torch.zeros((1, 3), dtype=torch.long), torch.ones((1, 4), dtype=torch.long)], dim=1)
    both = decoder.decode(
        ["a", "b"], input_ids=torch.cat([a, padded]), attention_mask=torch.cat([torch.ones_like(a), mask])
    )
    assert [c.tokens for c in both[0].clues] == [c.tokens for c in by_ids.clues]
    assert [c.tokens for c in both[1].clues] == [c.tokens for c in single_b.clues]
    for x, y in zip(both[1].clues, single_b.clues, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-4)


def _exhaustive(model, prompt, index, cfg):
    """Score every clue the KB allows, as the search defines scores: the exact top-k reference."""
    eos = index.eos_id
    out = []

    def logprobs(seq):
        ids = torch.cat([prompt, torch.as_tensor([seq], dtype=torch.long)], dim=1) if seq else prompt
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)

    def walk(seq, cum):
        lp = logprobs(seq)
        if len(seq) == cfg.max_clue_tokens:
            total = cum + float(lp[eos])
            out.append((total / (len(seq) + 1) ** cfg.length_penalty, tuple(seq)))
            return
        for t in index.next_tokens(seq).tolist():
            if t == eos:
                total = cum + float(lp[eos])
                out.append((total / (len(seq) + 1) ** cfg.length_penalty, tuple(seq)))
            else:
                walk([*seq, t], cum + float(lp[t]))

    walk([], 0.0)
    return sorted(out, reverse=True)


def test_plain_beam_search_with_enough_beams_is_exact(tmp_path, tiny_llama):
    docs = [[5, 6, 7], [6, 8], [9, 5, 6], [7]]
    index = build_index(docs, tmp_path / "kb", eos_id=2, vocab_size=12, progress=False)
    model = tiny_llama(12, seed=3)
    prompt = torch.as_tensor([[4, 10, 11]])
    cfg = DecodingConfig(search="beam", num_groups=40, max_clue_tokens=3)
    res = beam_search(model, cfg, 2, input_ids=prompt, index=index)
    reference = _exhaustive(model, prompt, index, cfg)
    got = [(h.score, tuple(h.tokens)) for h in res.hypotheses[0]]
    assert [s for _, s in got] == [s for _, s in reference[: len(got)]]
    for (a, _), (b, _) in zip(got, reference, strict=False):
        assert a == pytest.approx(b, abs=1e-4)


def test_greedy_follows_the_best_valid_token(world, tiny_llama):
    tok, _, indexes = world
    index = indexes["sa"]
    model = tiny_llama(len(tok), seed=9)
    prompt = torch.as_tensor([[5, 6, 7, 8]])
    cfg = DecodingConfig(search="beam", num_groups=1, max_clue_tokens=4, length_penalty=0.0)
    hyp = beam_search(model, cfg, tok.eos_token_id, input_ids=prompt, index=index).hypotheses[0][0]
    seq: list[int] = []
    for _ in range(4):
        ids = torch.cat([prompt, torch.as_tensor([seq], dtype=torch.long)], dim=1)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, -1], -1)
        allowed = index.next_tokens(seq)
        best = int(allowed[torch.argmax(lp[torch.as_tensor(allowed)])])
        if best == tok.eos_token_id:
            break
        seq.append(best)
    assert hyp.tokens == seq


def test_stop_at_count_ends_clues_once_rare_enough(world, tiny_llama):
    tok, _, indexes = world
    index = indexes["sa"]
    cfg = DecodingConfig(num_groups=6, max_clue_tokens=9, stop_at_count=1)
    records = ClueDecoder(tiny_llama(len(tok), seed=4), index, cfg).decode(
        ["q"], input_ids=torch.as_tensor([[9, 8, 7, 6]])
    )
    for clue in records[0].clues:
        if not clue.ended_with_eos and len(clue.tokens) < cfg.max_clue_tokens:
            assert index.count(clue.tokens) <= 1
            assert index.count(clue.tokens[:-1]) > 1 or len(clue.tokens) == 1


def test_unconstrained_clues_absent_from_the_kb_retrieve_nothing(world, tmp_path, tiny_llama):
    tok, docs, indexes = world
    index = indexes["sa"]
    cfg = DecodingConfig(constrained=False, num_groups=6, max_clue_tokens=5)
    records = ClueDecoder(tiny_llama(len(tok), seed=2), index, cfg, tokenizer=tok).decode(
        ["q1", "q2"], input_ids=_prompts(np.random.default_rng(4), 2, len(tok))
    )
    absent = [c for r in records for c in r.clues if c.count == 0]
    assert absent, "a random model generating freely should produce clues the KB does not contain"
    assert all(c.docs == [] for c in absent)
    for clue in (c for r in records for c in r.clues):  # free clues are looked up anywhere, EOS or not
        assert clue.count == index.count(clue.tokens)
        assert all(_contains(docs[d], clue.tokens) for d in clue.docs)
    write_records(tmp_path / "records.jsonl", records)
    write_records_run(tmp_path / "run.txt", records)
    run = read_run(tmp_path / "run.txt")
    assert all(run.get(r.qid, []) == r.ranked_ids for r in records)
    assert (tmp_path / "records.jsonl").read_text().count("\n") == 2


def test_unconstrained_clues_ended_by_eos_match_mid_document_unless_asked_for_ends(tmp_path, tiny_llama):
    """Free clues end with EOS as models learn (a mid-document span, then EOS): they are looked up anywhere;
    `unconstrained_eos_at_document_end` restores the document-end rule, which then finds only documents' ends."""
    model = tiny_llama(12, seed=0)
    prompts = torch.as_tensor([[4, 10, 11], [9, 8, 5], [6, 6, 7]])
    # no length normalisation, so that short EOS-ended clues stay among the best 8 (beside forced ends)
    free = DecodingConfig(constrained=False, search="beam", num_groups=8, max_clue_tokens=4, length_penalty=0.0)
    hyps = [h for hs in beam_search(model, free, 2, input_ids=prompts).hypotheses for h in hs]
    ended = [h.tokens for h in hyps if h.ended_with_eos]
    assert 0 < len(ended) < len(hyps), "some clues ended with a generated EOS, some at the cap"
    # every EOS-ended clue occurs in the KB, only in the middle of a document (never at its end)
    docs = [[11, *clue, 3] for clue in ended] + [[3, 5, 7, 9, 3], [4, 4, 6, 3]]
    index = build_index(docs, tmp_path / "kb", eos_id=2, vocab_size=12, progress=False)
    decoded = ClueDecoder(model, index, free).decode(["a", "b", "c"], input_ids=prompts)
    ends = ClueDecoder(model, index, dataclasses.replace(free, unconstrained_eos_at_document_end=True)).decode(
        ["a", "b", "c"], input_ids=prompts
    )
    n_ended = 0
    for rec, rec_ends in zip(decoded, ends, strict=True):
        for clue, clue_ends in zip(rec.clues, rec_ends.clues, strict=True):
            assert clue.tokens == clue_ends.tokens
            assert clue.count == index.count(clue.tokens)
            assert all(_contains(docs[d], clue.tokens) for d in clue.docs)
            # the document-end rule finds only documents that end with the clue
            assert all(_contains(docs[d], clue.tokens, at_end=True) for d in clue_ends.docs)
            if clue.ended_with_eos:
                n_ended += 1
                assert clue.docs, "a free clue occurring mid-document retrieves a document containing it"
                assert clue_ends.count == 0 and clue_ends.docs == []  # not at any document's end
            else:
                assert (clue_ends.count, clue_ends.docs) == (clue.count, clue.docs)
    assert n_ended == len(ended)


def test_clue_to_document_policies(world):
    tok, docs, indexes = world
    index = indexes["sa"]
    from gemkr_lab.decoding import Hypothesis, map_clues

    common = tok(" lives near the", add_special_tokens=False)["input_ids"]
    hyps = [Hypothesis(common, False, -1.0, -0.5), Hypothesis(docs[3][:9], False, -2.0, -0.7)]
    first, ranked_first = map_clues(hyps, index, DecodingConfig(clue_to_docs="first"))
    assert first[0].docs == [min(index.docs(common))]
    assert ranked_first[0] == first[0].docs[0]
    everything, ranked_all = map_clues(hyps, index, DecodingConfig(clue_to_docs="all"))
    assert everything[0].docs == index.docs(common).tolist() and len(everything[0].docs) > 1
    assert ranked_all[: len(everything[0].docs)] == everything[0].docs
    unique, _ = map_clues(hyps, index, DecodingConfig(clue_to_docs="unique"))
    assert unique[0].docs == [] and unique[1].docs == index.docs(docs[3][:9]).tolist()
    assert math.isclose(unique[1].score, -0.7)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="search"):
        DecodingConfig(search="sample")
    with pytest.raises(ValueError, match="clue_to_docs"):
        DecodingConfig(clue_to_docs="best")
    with pytest.raises(ValueError, match="max_clue_tokens"):
        DecodingConfig(max_clue_tokens=0)
    assert DecodingConfig(search="beam", num_groups=10).num_clues == 10
    assert list(itertools.islice(iter([DecodingConfig().num_clues]), 1)) == [10]


@pytest.mark.parametrize("kb", ["sa", "fm2"])
@pytest.mark.parametrize("constrained", [True, False])
def test_the_device_route_picks_the_host_routes_clues(world, kb, constrained, tiny_llama):
    """Top-k on the model's device (candidates copied to the host) = candidates read on the host, bit for bit."""
    tok, _, indexes = world
    cfg = DecodingConfig(num_groups=5, max_clue_tokens=6, constrained=constrained)
    rng = np.random.default_rng(6)
    for seed in range(2):
        model = tiny_llama(len(tok), seed=seed)
        prompts = _prompts(rng, 3, len(tok))
        results = [
            beam_search(model, cfg, tok.eos_token_id, input_ids=prompts, index=indexes[kb], scores_on_host=on_host)
            for on_host in (True, False)
        ]
        host, device = (
            [[(h.tokens, h.ended_with_eos, h.cumulative) for h in hs] for hs in r.hypotheses] for r in results
        )
        assert host == device


class _HostCopies(torch.overrides.TorchFunctionMode):
    """Records the shape of every tensor whose data is read on the host (copied off a device)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("cpu", "numpy", "tolist", "item", "__array__"):
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("constrained", [True, False])
def test_the_device_route_never_copies_a_vocabulary_row_to_the_host(world, constrained, tiny_llama, monkeypatch):
    """Log-softmax, mask and top-k stay on the model's device: per step one small candidate tensor (two when a
    frequent clue's checked candidates are too few) comes back, never a [beams, vocab] row."""
    from gemkr_lab.decoding import constraint as constraint_module

    tok, _, indexes = world
    vocab = len(tok)
    transfers = []
    to_host = constraint_module._to_host

    def counted(*tensors):
        transfers.append([tuple(t.shape) for t in tensors])
        return to_host(*tensors)

    monkeypatch.setattr(constraint_module, "_to_host", counted)
    cfg = DecodingConfig(num_groups=5, max_clue_tokens=6, constrained=constrained)
    model = tiny_llama(vocab, seed=1)
    with _HostCopies() as copies:
        res = beam_search(
            model, cfg, tok.eos_token_id, input_ids=_prompts(np.random.default_rng(7), 3, vocab),
            index=indexes["fm2"], scores_on_host=False,
        )  # fmt: skip
    assert all(vocab not in shape for shape in copies.shapes), copies.shapes
    assert res.steps <= len(transfers) <= 2 * res.steps
    assert all(shape[0][1] < vocab for shape in (t for t in transfers)), transfers


class _MetaCache:
    def batch_repeat_interleave(self, n):
        pass

    def reorder_cache(self, rows):
        pass


class _MetaLM(torch.nn.Module):
    """A causal LM whose logits live on the meta device (no data: any copy to the host fails)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        x = input_ids if input_ids is not None else inputs_embeds
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(*x.shape[:2], self.vocab, device="meta"), cache=_MetaCache())


@pytest.mark.parametrize("constrained", [True, False])
def test_a_step_runs_on_the_meta_device_until_the_candidate_ids_are_needed(world, constrained, monkeypatch):
    """Logits on the meta device: log-softmax, the index's mask and top-k all run there, and the first copy to
    the host is the candidates' (beams x M, M < vocab)."""
    from gemkr_lab.decoding import constraint as constraint_module

    tok, _, indexes = world

    class Reached(Exception):
        pass

    def stop(*tensors):
        raise Reached([(t.device.type, tuple(t.shape)) for t in tensors])

    monkeypatch.setattr(constraint_module, "_to_host", stop)
    cfg = DecodingConfig(num_groups=5, max_clue_tokens=6, constrained=constrained)
    prompt = torch.zeros((2, 4), dtype=torch.long, device="meta")
    with pytest.raises(Reached) as reached:
        beam_search(_MetaLM(len(tok)), cfg, tok.eos_token_id, input_ids=prompt, index=indexes["sa"])
    (values, ids) = reached.value.args[0]
    assert values[0] == ids[0] == "meta"
    assert values[1] == ids[1] and values[1][0] == 2 * 5 and values[1][1] < len(tok)
