"""The batched decoding interface agrees with the one-off queries, and its caches with enumeration."""

import numpy as np
import pytest

from gemkr_lab.kb import build_index

from .brute import BruteForceKB

EOS = 2


@pytest.fixture(scope="module", params=[("sa", 1), ("fm", 1), ("sa", 3), ("fm", 4)], ids=lambda p: f"{p[0]}x{p[1]}")
def kb(request, tmp_path_factory):
    backend, shards = request.param
    rng = np.random.default_rng(3)
    phrases = [rng.integers(3, 60, size=int(rng.integers(2, 5))).tolist() for _ in range(15)]
    docs = []
    for _ in range(120):
        doc = []
        while len(doc) < 14:
            doc += phrases[rng.integers(15)] if rng.random() < 0.6 else [int(rng.integers(3, 60))]
        docs.append(doc)
    index = build_index(
        docs,
        tmp_path_factory.mktemp("kb") / "i",
        eos_id=EOS,
        backend=backend,
        shards=shards,
        vocab_size=64,
        progress=False,
    )
    return index, docs


def _walk(index, docs, rng, beams=8, steps=6):
    """Advance `beams` states along real document continuations, yielding (states, prefixes) per step."""
    paths = []
    for _ in range(beams):
        d = docs[rng.integers(len(docs))]
        i = int(rng.integers(0, len(d) - steps + 1))
        paths.append(d[i : i + steps])
    paths = np.array(paths)
    states = index.root_states(beams)
    for s in range(steps):
        yield states, [list(p[:s]) for p in paths]
        states = index.advance(states, paths[:, s])


def test_allowed_next_matches_next_tokens_at_every_depth(kb):
    index, docs = kb
    rng = np.random.default_rng(0)
    for _ in range(5):
        for states, prefixes in _walk(index, docs, rng):
            ptr, tok = index.allowed_next(states)
            ptr2, tok2, cnt2 = index.allowed_next(states, with_counts=True)
            for j, prefix in enumerate(prefixes):
                expected = index.next_tokens(prefix)
                np.testing.assert_array_equal(tok[ptr[j] : ptr[j + 1]], expected)
                np.testing.assert_array_equal(tok2[ptr2[j] : ptr2[j + 1]], expected)
                for t, c in zip(expected, cnt2[ptr2[j] : ptr2[j + 1]], strict=True):
                    assert c == index.count([*prefix, int(t)])
                if prefix:  # the empty clue's "count" is the root range's size, a backend detail
                    assert states.counts[j] == index.count(prefix)


def test_check_counts_candidates_and_rejects_what_cannot_follow(kb):
    index, docs = kb
    ref = BruteForceKB(docs, EOS)
    rng = np.random.default_rng(1)
    for states, prefixes in _walk(index, docs, rng):
        cand = rng.integers(-1, 66, size=(len(prefixes), 20))
        cand[:, 0] = EOS
        counts = index.check(states, cand)
        for j, prefix in enumerate(prefixes):
            for m, c in enumerate(cand[j]):
                if c < 0 or c >= 64 or (not prefix and c == EOS):
                    assert counts[j, m] == 0
                else:
                    assert counts[j, m] == ref.count([*prefix, int(c)]), (prefix, c)


def test_eos_closes_a_beam_and_padding_empties_it(kb):
    index, docs = kb
    states = index.root_states(3)
    doc = docs[0]
    for t in doc[-3:]:
        states = index.advance(states, [t, t, t])
    assert (states.counts >= 1).all()
    states = index.advance(states, [EOS, -1, EOS])
    assert states.closed.tolist() == [True, False, True]
    assert states.counts[0] == index.count([*doc[-3:], EOS]) >= 1
    assert states.counts[1] == 0
    ptr, _ = index.allowed_next(states)
    assert ptr.tolist() == [0, 0, 0, 0]
    assert (index.check(states, np.full((3, 2), 5)) == 0).all()
    after = index.advance(states, [5, 5, 5])
    assert (after.counts == 0).all()


def test_take_reorders_beams(kb):
    index, docs = kb
    states = index.advance(index.root_states(3), [docs[0][0], docs[1][0], docs[2][0]])
    swapped = states.take([2, 0, 0])
    assert swapped.counts.tolist() == [states.counts[2], states.counts[0], states.counts[0]]
    assert swapped.lo.shape == states.lo.shape


def _best_by_enumeration(index, prefix, scores, k):
    """The k best-scored tokens of `next_tokens(prefix)`: score descending, id ascending, -1/-inf padded."""
    allowed = index.next_tokens(prefix)
    allowed = allowed[allowed < scores.shape[0]]
    values = scores[allowed]
    allowed, values = allowed[values > -np.inf], values[values > -np.inf]
    order = np.lexsort((allowed, -values))[:k]
    tok, val = np.full(k, -1), np.full(k, -np.inf, dtype=np.float32)
    tok[: order.size], val[: order.size] = allowed[order], values[order]
    return tok, val


def test_best_next_equals_the_best_of_the_enumerated_followers(kb):
    """Best-first search in the index (and the root set, bigram table, short lists) = enumerate, then rank."""
    index, docs = kb
    rng = np.random.default_rng(4)
    for trial in range(12):
        for states, prefixes in _walk(index, docs, rng):
            width = int(rng.choice([50, 64, 70]))  # a model vocabulary narrower or wider than the KB's
            scores = rng.standard_normal((len(prefixes) + 2, width)).astype(np.float32)
            if trial % 3 == 0:
                scores = np.round(scores, 1)  # ties, broken by id
            scores[rng.random(scores.shape) < 0.1] = -np.inf  # never returned
            rows = rng.permutation(len(prefixes) + 2)[: len(prefixes)]
            k = int(rng.integers(1, 15))
            tok, val = index.best_next(states, scores, k, rows=rows)
            for j, prefix in enumerate(prefixes):
                want_tok, want_val = _best_by_enumeration(index, prefix, scores[rows[j]], k)
                np.testing.assert_array_equal(tok[j], want_tok)
                np.testing.assert_array_equal(val[j], want_val)


@pytest.mark.parametrize("shards", [1, 3])
def test_best_next_searches_frequent_clues_without_enumerating(tmp_path, shards):
    """A dense KB over a small vocabulary: clues occurring far more often than the short-list cut-off (32),
    searched best-first, under flat, peaked and adversarial scores; sharded, each later shard's search starts
    from (and prunes against) the earlier shards' candidates."""
    rng = np.random.default_rng(5)
    docs = [(3 + rng.integers(0, 20, size=60) ** 2 // 20).tolist() for _ in range(200)]
    for backend in ("sa", "fm"):
        index = build_index(
            docs, tmp_path / backend, eos_id=EOS, backend=backend, shards=shards, vocab_size=45, progress=False
        )
        frequent = 0
        for _ in range(40):
            d = docs[rng.integers(len(docs))]
            i = int(rng.integers(0, len(d) - 4))
            prefix = d[i : i + int(rng.integers(2, 4))]
            states = index.root_states(1)
            for t in prefix:
                states = index.advance(states, [t])
            frequent += int(states.counts[0] > 32)
            for kind in ("flat", "peaked", "worst"):
                scores = rng.standard_normal((1, 45)).astype(np.float32)
                if kind == "peaked":
                    scores[0, index.next_tokens(prefix)[:3]] += 5
                elif kind == "worst":  # every allowed token below every other one
                    allowed = index.next_tokens(prefix)
                    scores[0, allowed] -= 20
                tok, val = index.best_next(states, scores, 6)
                want_tok, want_val = _best_by_enumeration(index, prefix, scores[0], 6)
                np.testing.assert_array_equal(tok[0], want_tok)
                np.testing.assert_array_equal(val[0], want_val)
        assert frequent > 10


def test_later_shards_find_the_tokens_only_they_hold(tmp_path):
    """Shards of different text: a frequent clue's followers differ from shard to shard, so a later shard must
    find tokens the earlier ones do not hold, while it leaves out (from its search keys) those already found."""
    rng = np.random.default_rng(6)
    docs = []
    for group in range(3):  # build_index cuts 3 shards at the group boundaries (equal sizes)
        own = np.arange(10 + 14 * group, 24 + 14 * group)
        for _ in range(40):
            doc = []
            while len(doc) < 30:
                doc += [4, 5, 6, int(rng.choice(own))] if rng.random() < 0.7 else [int(rng.choice(own))]
            docs.append(doc[:30])
    for backend in ("sa", "fm"):
        index = build_index(
            docs, tmp_path / backend, eos_id=EOS, backend=backend, shards=3, vocab_size=60, progress=False
        )
        assert [s.n_docs for s in index.shards] == [40, 40, 40]
        for prefix in ([5, 6], [4, 5, 6]):
            states = index.root_states(1)
            for t in prefix:
                states = index.advance(states, [t])
            assert (states.hi - states.lo).min() > 32  # searched best-first in every shard
            for trial in range(60):
                scores = rng.standard_normal((1, 60)).astype(np.float32)
                if trial % 2:  # the later shards' tokens score best
                    scores[0, 24:52] += 2
                k = int(rng.integers(1, 12))
                tok, val = index.best_next(states, scores, k)
                want_tok, want_val = _best_by_enumeration(index, prefix, scores[0], k)
                np.testing.assert_array_equal(tok[0], want_tok)
                np.testing.assert_array_equal(val[0], want_val)
