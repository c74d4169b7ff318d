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
