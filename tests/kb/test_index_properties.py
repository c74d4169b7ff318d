"""Both backends, sharded and unsharded, answer exactly as a brute-force n-gram scan."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemkr_lab.kb import build_index, open_index

from .brute import BruteForceKB

EOS = 2
CONFIGS = [("sa", 1), ("fm", 1), ("sa", 3), ("fm", 2), ("fm", "auto")]


def _queries(docs, rng, vocab, n=60):
    """Prefixes drawn from real positions (incl. ones ending at a document's end) plus random ones."""
    out = [[]]
    for _ in range(n):
        d = docs[rng.integers(len(docs))]
        if len(d) == 0:
            continue
        i = int(rng.integers(len(d)))
        j = int(rng.integers(i + 1, len(d) + 1))
        q = list(d[i:j])
        if j == len(d) and rng.random() < 0.3:
            q.append(EOS)
        out.append(q)
    for _ in range(n // 3):
        out.append([int(t) for t in rng.integers(0, vocab, size=int(rng.integers(1, 4)))])
    return out


def _check_all(index, ref, queries):
    for q in queries:
        np.testing.assert_array_equal(index.next_tokens(q), ref.next_tokens(q), err_msg=f"next_tokens({q})")
        if q:
            assert index.count(q) == ref.count(q), f"count({q})"
            np.testing.assert_array_equal(index.docs(q), ref.docs_of(q), err_msg=f"docs({q})")


def _random_corpus(rng, n_docs, vocab, max_len=12):
    docs = []
    for _ in range(n_docs):
        length = int(rng.integers(0, max_len))
        doc = rng.integers(0, vocab, size=length)
        doc[doc == EOS] = EOS + 1 if vocab > EOS + 1 else 0
        docs.append(doc.tolist())
    return docs


@pytest.mark.parametrize(("backend", "shards"), CONFIGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_corpora_match_brute_force(tmp_path, backend, shards, seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.choice([5, 20, 300]))
    docs = _random_corpus(rng, int(rng.integers(3, 40)), vocab)
    docs.append(list(docs[0]))  # a repeated document
    docs.append([vocab - 1])  # single-token document with the largest id
    docs.append([0, 0, 1])  # id 0
    index = build_index(
        docs,
        tmp_path / "kb",
        eos_id=EOS,
        backend=backend,
        shards=shards,
        vocab_size=vocab,
        max_shard_tokens=40,
        progress=False,
    )
    ref = BruteForceKB(docs, EOS)
    _check_all(index, ref, _queries(docs, rng, vocab))
    for d in range(len(docs)):
        np.testing.assert_array_equal(index.doc_tokens(d), np.array(docs[d], dtype=np.int64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=st.lists(st.lists(st.integers(0, 7).filter(lambda t: t != EOS), max_size=8), min_size=1, max_size=12),
    backend=st.sampled_from(["sa", "fm"]),
    shards=st.integers(1, 3),
    data=st.data(),
)
def test_hypothesis_corpora(tmp_path_factory, docs, backend, shards, data):
    shards = min(shards, len(docs))
    index = build_index(
        docs,
        tmp_path_factory.mktemp("kb") / "i",
        eos_id=EOS,
        backend=backend,
        shards=shards,
        vocab_size=8,
        progress=False,
    )
    ref = BruteForceKB(docs, EOS)
    queries = data.draw(st.lists(st.lists(st.integers(0, 7), max_size=4), max_size=15))
    _check_all(index, ref, [[], *queries])


def test_backends_and_shardings_agree_on_a_larger_corpus(tmp_path):
    rng = np.random.default_rng(7)
    phrases = [rng.integers(3, 500, size=int(rng.integers(2, 6))) for _ in range(50)]
    docs = []
    for _ in range(300):
        parts = [phrases[rng.integers(50)] if rng.random() < 0.5 else rng.integers(3, 500, size=3) for _ in range(8)]
        docs.append(np.concatenate(parts).tolist())
    indexes = [
        build_index(docs, tmp_path / f"{b}{s}", eos_id=EOS, backend=b, shards=s, vocab_size=500, progress=False)
        for b, s in [("sa", 1), ("fm", 1), ("sa", 4), ("fm", 5)]
    ]
    queries = _queries(docs, rng, 500, n=200)
    ref = BruteForceKB(docs, EOS)
    for q in queries[:40]:
        np.testing.assert_array_equal(indexes[0].next_tokens(q), ref.next_tokens(q))
    for other in indexes[1:]:
        for q in queries:
            np.testing.assert_array_equal(other.next_tokens(q), indexes[0].next_tokens(q))
            if q:
                assert other.count(q) == indexes[0].count(q)
                np.testing.assert_array_equal(other.docs(q), indexes[0].docs(q))


@pytest.mark.parametrize("backend", ["sa", "fm"])
def test_wide_vocabulary_uses_uint32(tmp_path, backend):
    big = 70_000
    docs = [[65_535, 65_536, 69_999], [0, 65_536, 1], [69_999]]
    index = build_index(docs, tmp_path / "kb", eos_id=EOS, backend=backend, vocab_size=big, progress=False)
    assert index.meta["symbol_dtype"] == "uint32"
    ref = BruteForceKB(docs, EOS)
    _check_all(index, ref, [[], [65_536], [65_535, 65_536], [69_999], [69_999, EOS], [65_534], [big - 1, 1]])
    reopened = open_index(tmp_path / "kb")
    np.testing.assert_array_equal(reopened.doc_tokens(0), docs[0])


def test_narrow_vocabulary_uses_uint16_and_infers_vocab(tmp_path):
    index = build_index([[3, 4], [65_534]], tmp_path / "kb", eos_id=EOS, progress=False)
    assert index.vocab_size == 65_535
    assert index.meta["symbol_dtype"] == "uint16"


@pytest.mark.parametrize("backend", ["sa", "fm"])
def test_absent_ids_and_out_of_range_tokens_give_empty_answers(tmp_path, backend):
    index = build_index([[3, 4, 5]], tmp_path / "kb", eos_id=EOS, backend=backend, vocab_size=10, progress=False)
    assert index.count([7]) == 0
    assert index.next_tokens([7]).size == 0
    assert index.docs([7]).size == 0
    assert index.count([3, 4, 5, EOS]) == 1
    assert index.next_tokens([3, 4, 5, EOS]).size == 0
    assert index.count([5, EOS, 3]) == 0  # clues never cross documents
    assert index.count([12]) == 0 and index.count([-1]) == 0
    with pytest.raises(ValueError, match="non-empty"):
        index.count([])


def test_doc_batches_and_single_documents_build_the_same_index(tmp_path, monkeypatch):
    import gemkr_lab.kb.build as build_mod
    from gemkr_lab.kb import DocBatch

    monkeypatch.setattr(build_mod, "_SLICE_TOKENS", 7)  # force several slices per batch
    rng = np.random.default_rng(11)
    docs = _random_corpus(rng, 30, 50)
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    lengths = np.array([len(d) for d in docs])
    a = build_index(docs, tmp_path / "a", eos_id=EOS, backend="fm", progress=False)
    b = build_index(
        [
            DocBatch(flat[: lengths[:10].sum()], lengths[:10]),
            *docs[10:12],
            DocBatch(flat[lengths[:12].sum() :], lengths[12:]),
        ],
        tmp_path / "b",
        eos_id=EOS,
        backend="fm",
        progress=False,
    )
    assert a.meta["corpus_fingerprint"] == b.meta["corpus_fingerprint"]
    for q in _queries(docs, rng, 50):
        np.testing.assert_array_equal(a.next_tokens(q), b.next_tokens(q))
    with pytest.raises(ValueError, match="do not add up"):
        build_index([DocBatch(flat[:5], np.array([2, 2]))], tmp_path / "c", eos_id=EOS, progress=False)


@pytest.mark.parametrize("cap", [10, 25, 60, 1000])
def test_auto_shards_are_balanced_and_within_the_cap(cap):
    from gemkr_lab.kb.build import _greedy_bounds, _shard_bounds

    lengths = np.random.default_rng(cap).integers(0, 9, size=50)
    bounds = _shard_bounds(lengths, "auto", cap)
    widths = [int((lengths[d0:d1] + 1).sum()) for d0, d1 in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == 50
    assert all(b[1] == c[0] for b, c in itertools.pairwise(bounds))
    assert all(d1 > d0 for d0, d1 in bounds)
    assert max(widths) <= cap
    sizes = np.cumsum(lengths + 1)
    assert len(bounds) == len(_greedy_bounds(sizes, cap))  # as few shards as the cap allows
    assert max(widths) <= -(-int(sizes[-1]) // len(bounds)) + 10  # balanced to within one document
