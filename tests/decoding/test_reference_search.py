"""`beam_search` against a naive, obviously-correct reference of HF transformers 4.28 group beam search.

The reference below is written from the semantics, not from `gemkr_lab.decoding.search`: one query at a time,
every beam re-runs the whole model on prompt + clue (no KV cache, no batching), groups are processed one
after the other, and the KB constraint is a brute-force scan of the documents (not the index). HF 4.28
(`group_beam_search`, `HammingDiversityLogitsProcessor`, `BeamSearchScorer`, `BeamHypotheses`):
- per step and beam, log-softmax of the raw next-token logits; disallowed tokens get -inf (no
  renormalisation, as `PrefixConstrainedLogitsProcessor`);
- group g's scores are lowered by `diversity_penalty` x (times the token was chosen at this step by the beams
  of groups 0..g-1 of the same query);
- a beam's candidates score cumulative + processed; each group takes its best 2 x beams candidates over all
  its beams (`topk` of beams x vocab); walking them in rank order, an EOS candidate becomes a finished
  hypothesis only when its rank is below `beams` (else it is skipped), any other token continues a beam,
  until the group has `beams` beams;
- a finished hypothesis scores cumulative (EOS's log-prob included) / (len + 1) ** length_penalty, where
  len counts the clue tokens (EOS excluded) and the + 1 is HF's BOS placeholder in `input_ids` (the
  decoder's documented convention, gemkr_spec.md §4.3); all groups of a query share one pool that keeps the
  best `num_groups x beams_per_group` hypotheses; clues are returned by score.
Where the project deliberately follows its own documented rules instead of HF's, the reference follows the
project (each is a place where HF would behave differently):
- no early stop: HF ends a query once its pool is full and `BeamHypotheses.is_done`'s heuristic says no
  running beam can improve it; the project runs every beam to the length cap, where only EOS may follow (a
  forced end, `ended_with_eos=False`); constrained with `stop_at_count` (the paper's uniqueness stop, not
  in HF), a clue is also forced to end once it occurs at most `stop_at_count` times in the KB;
- a beam slot without any finite candidate left is dead (never continued, its token not counted in the
  diversity penalty; HF would keep it with a -inf score and an arbitrary token, and would count that
  token); likewise every beam but the first of a group starts dead (HF: -1e9);
- a clue never starts with EOS (the default step 0; the official allowed-token function also allowed BOS and
  EOS there, gemkr_spec.md §4.2/§7.7, and `allow_bos_eos_first_token` is not covered here): unconstrained,
  EOS is masked at step 0; constrained, step 0 allows the ids occurring in the KB;
- constrained, EOS is allowed only where the clue ends a document (the KB's documents end with EOS).
Compared: the clues, whether each ended with a generated EOS, cumulative scores and scores (to 1e-5), in
order, for diverse and plain beam search, unconstrained and constrained, on random tiny Llamas.
"""

from collections import Counter

import numpy as np
import pytest
import torch

from gemkr_lab.config import DecodingConfig
from gemkr_lab.decoding import beam_search
from gemkr_lab.kb import build_index

VOCAB = 40
EOS = 2


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """A small KB over ids 4..39 whose frequent ids make n-grams repeat (large ranges, shared prefixes)."""
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, VOCAB - 4 + 1)
    docs = [
        (4 + rng.choice(VOCAB - 4, size=int(rng.integers(2, 12)), p=weights / weights.sum())).tolist()
        for _ in range(80)
    ]
    root = tmp_path_factory.mktemp("ref-kb")
    indexes = {
        backend: build_index(docs, root / backend, eos_id=EOS, backend=backend, vocab_size=VOCAB, progress=False)
        for backend in ("sa", "fm")
    }
    return docs, indexes


class _Brute:
    """The KB's answers by scanning the documents (each followed by EOS)."""

    def __init__(self, docs):
        self.docs = [[*d, EOS] for d in docs]

    def allowed(self, clue):
        if not clue:
            return {t for d in self.docs for t in d[:-1]}
        n = len(clue)
        return {d[i + n] for d in self.docs for i in range(len(d) - n) if d[i : i + n] == clue}

    def count(self, clue):
        n = len(clue)
        return sum(d[i : i + n] == clue for d in self.docs for i in range(len(d) - n))


def _reference(model, prompt, cfg, cap, brute=None, seen=None):
    """Naive HF 4.28 group beam search for one prompt (list of ids) with the project's documented rules.

    `seen`, a Counter, tallies the edge cases met (to check that the comparisons exercise them)."""
    seen = Counter() if seen is None else seen
    groups, beams = cfg.groups, cfg.beams
    penalty = cfg.diversity_penalty if cfg.search == "diverse" else 0.0

    def logprobs(clue):
        ids = torch.as_tensor([prompt + clue])
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1).tolist()

    # a beam: (clue tokens, cumulative score, forced to end); None = a dead slot
    state = [[([], 0.0, False)] + [None] * (beams - 1) for _ in range(groups)]
    pool = []  # (score, clue, ended_with_eos, cumulative)
    for step in range(cap + 1):
        chosen_now = []  # tokens continued by earlier groups' live beams at this step
        new_state = []
        for g in range(groups):
            candidates = []
            for b, beam in enumerate(state[g]):
                if beam is None:
                    continue
                clue, cum, forced = beam
                lp = logprobs(clue)
                if step == 0 and brute is None and max(range(len(lp)), key=lp.__getitem__) == EOS:
                    seen["eos best at step 0"] += 1
                for tok in range(len(lp)):
                    if step == cap or forced:
                        ok = tok == EOS
                    elif brute is not None:
                        ok = tok in brute.allowed(clue)
                    else:
                        ok = not (step == 0 and tok == EOS)
                    if ok:
                        value = cum + lp[tok] - penalty * chosen_now.count(tok)
                        candidates.append((value, b, tok))
            candidates.sort(key=lambda c: -c[0])  # stable: ties keep (beam, token) order, as topk's flat index
            kept = []
            for rank, (value, b, tok) in enumerate(candidates[: 2 * beams]):
                if len(kept) == beams:
                    break
                clue, _, forced = state[g][b]
                if tok == EOS:
                    seen["eos skipped (rank >= beams)" if rank >= beams else "eos pooled"] += 1
                    if rank < beams:
                        ended = not (step == cap or forced)
                        seen["generated eos" if ended else "forced eos"] += 1
                        pool.append((value / (len(clue) + 1) ** cfg.length_penalty, clue, ended, value))
                        pool.sort(key=lambda h: -h[0])
                        del pool[groups * beams :]
                    continue
                kept.append(([*clue, tok], value))
            seen["penalised candidate"] += sum(penalty > 0 and t in chosen_now for _, _, t in candidates)
            if step < cap and any(beam is not None for beam in state[g]):
                seen["dead slot"] += beams - len(kept)
            chosen_now += [clue[-1] for clue, _ in kept]
            new_state.append(kept)
        if step == cap or not any(new_state):
            break
        state = []
        for kept in new_state:
            beams_g = []
            for clue, value in kept:
                stop = cfg.stop_at_count is not None and brute.count(clue) <= cfg.stop_at_count
                seen["forced by stop_at_count"] += stop
                beams_g.append((clue, value, stop))
            state.append(beams_g + [None] * (beams - len(beams_g)))
    return pool


def _compare(model, prompts, cfg, cap, index=None, brute=None, seen=None, **options):
    """The project's search on a batch of prompts equals the reference on each prompt alone."""
    res = beam_search(model, cfg, EOS, input_ids=torch.as_tensor(prompts), index=index, **options)
    for prompt, hyps in zip(prompts, res.hypotheses, strict=True):
        ref = _reference(model, prompt, cfg, cap, brute, seen)
        assert [(h.tokens, h.ended_with_eos) for h in hyps] == [(r[1], r[2]) for r in ref]
        for h, (score, _, _, cum) in zip(hyps, ref, strict=True):
            assert h.score == pytest.approx(score, abs=1e-5)
            assert h.cumulative == pytest.approx(cum, abs=1e-5)


def _model(tiny_llama, seed, eos_bias=0.0, vocab=VOCAB):
    """A random tiny Llama in float64; `eos_bias` is added to EOS's logit (EOS often best, even at step 0)."""
    model = tiny_llama(vocab, seed=seed).double()
    if eos_bias:

        def hook(module, args, out):
            out.logits[..., EOS] += eos_bias
            return out

        model.register_forward_hook(hook)
    return model


def _prompts(seed, n=2, length=5, vocab=VOCAB):
    return np.random.default_rng(seed).integers(4, vocab, size=(n, length)).tolist()


SLOW = pytest.mark.slow  # 1-4 s each: the inner loop keeps one case of each comparison, `make test` runs them all
SEARCHES = [
    pytest.param({"search": "diverse", "num_groups": 4}, id="diverse-4x1"),
    pytest.param(
        {"search": "diverse", "num_groups": 3, "beams_per_group": 2, "diversity_penalty": 0.8}, id="div-3x2", marks=SLOW
    ),
    pytest.param({"search": "diverse", "num_groups": 5, "diversity_penalty": 5.0}, id="diverse-strong", marks=SLOW),
    pytest.param({"search": "beam", "num_groups": 5}, id="beam-5", marks=SLOW),
]


@SLOW  # 24 searches per case (about 4 s of CPU): the constrained comparisons below stay in the inner loop
@pytest.mark.parametrize("knobs", SEARCHES)
def test_unconstrained_search_equals_the_reference(knobs, tiny_llama):
    cfg = DecodingConfig(constrained=False, max_clue_tokens=5, **knobs)
    seen = Counter()
    for seed in (0, 1, 2):
        for eos_bias in (0.0, 4.0):
            model = _model(tiny_llama, seed, eos_bias)
            for on_host in (True, False):
                _compare(model, _prompts(seed), cfg, 5, seen=seen, scores_on_host=on_host)
    assert seen["generated eos"] and seen["forced eos"], seen
    assert seen["eos best at step 0"], seen  # where the step-0 rule (no empty clue) decides
    assert bool(seen["penalised candidate"]) == (knobs["search"] == "diverse"), seen


# the candidates read where the log-probs lie (host) or picked by top-k on the model's device (device)
ROUTES = [pytest.param(True, id="host"), pytest.param(False, id="device")]


@pytest.mark.parametrize("on_host", ROUTES)
@pytest.mark.parametrize("knobs", SEARCHES)
def test_constrained_search_equals_the_reference(knobs, on_host, kb, tiny_llama):
    docs, indexes = kb
    cfg = DecodingConfig(max_clue_tokens=5, **knobs)
    seen = Counter()
    for seed in (0, 1, 2):
        model, prompts = _model(tiny_llama, seed), _prompts(seed + 10)
        _compare(model, prompts, cfg, 5, indexes["sa"], _Brute(docs), seen, scores_on_host=on_host)
    # short documents: clues reach documents' ends, where EOS is allowed (and sometimes the only continuation)
    assert seen["generated eos"] and seen["forced eos"] and seen["dead slot"], seen
    assert bool(seen["penalised candidate"]) == (knobs["search"] == "diverse"), seen


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"stop_at_count": 1}, id="stop-when-unique"),
        pytest.param({"stop_at_count": 3, "length_penalty": 0.0}, id="stop-at-3-no-norm", marks=SLOW),
    ],
)
@pytest.mark.parametrize("backend", ["sa", pytest.param("fm", marks=SLOW)])
def test_constrained_variants_equal_the_reference(extra, backend, kb, tiny_llama):
    docs, indexes = kb
    brute = _Brute(docs)
    seen = Counter()
    for seed in (3, 4):
        for eos_bias in (0.0, 3.0):
            model = _model(tiny_llama, seed, eos_bias)
            for knobs in ({"search": "diverse", "num_groups": 4}, {"search": "beam", "num_groups": 4}):
                cfg = DecodingConfig(max_clue_tokens=6, **knobs, **extra)
                _compare(model, _prompts(seed + 20, n=3), cfg, 6, indexes[backend], brute, seen)
    assert seen["generated eos"] and seen["dead slot"], seen
    assert bool(seen["forced by stop_at_count"]) == ("stop_at_count" in extra), seen


@SLOW
def test_checking_the_models_best_tokens_is_exact(tmp_path, tiny_llama, monkeypatch):
    """On the device route, large ranges are constrained by checking the model's best M tokens (falling back to
    enumeration when fewer than the search needs are valid): a dense KB over a small vocabulary takes both
    routes; the host route (best-first in the index) gives the same clues."""
    vocab = 16
    rng = np.random.default_rng(3)
    docs = [(4 + rng.integers(0, vocab - 4, size=int(rng.integers(3, 20)))).tolist() for _ in range(150)]
    index = build_index(docs, tmp_path / "dense", eos_id=EOS, vocab_size=vocab, progress=False)
    routes = Counter()
    check = index.check

    def counted(states, candidates):
        valid = (check(states, candidates) > 0).sum(axis=1)
        routes["checked"] += int((valid >= 4).sum())  # 4 = what both searches below need
        routes["fell back"] += int((valid < 4).sum())
        return check(states, candidates)

    monkeypatch.setattr(index, "check", counted)
    brute = _Brute(docs)
    for seed in (3, 4):
        model = _model(tiny_llama, seed, vocab=vocab)
        for knobs in ({"search": "diverse", "num_groups": 3}, {"search": "beam", "num_groups": 2}):
            cfg = DecodingConfig(max_clue_tokens=6, check_top_m=8, enumerate_below=4, **knobs)
            for on_host in (False, True):
                _compare(model, _prompts(seed, n=3, vocab=vocab), cfg, 6, index, brute, scores_on_host=on_host)
    assert routes["checked"] and routes["fell back"], routes


def test_the_comparison_can_fail(kb, tiny_llama):
    """The reference is sensitive to what is compared: without the Hamming penalty it gives other clues."""
    docs, indexes = kb
    model = _model(tiny_llama, 0)
    prompt = _prompts(0)[0]
    cfg = DecodingConfig(num_groups=4, max_clue_tokens=5)
    ours = beam_search(model, cfg, EOS, input_ids=torch.as_tensor([prompt]), index=indexes["sa"]).hypotheses[0]
    same = _reference(model, prompt, cfg, 5, _Brute(docs))
    other = _reference(
        model, prompt, DecodingConfig(num_groups=4, max_clue_tokens=5, diversity_penalty=0.0), 5, _Brute(docs)
    )
    assert [h.tokens for h in ours] == [c for _, c, _, _ in same] != [c for _, c, _, _ in other]
