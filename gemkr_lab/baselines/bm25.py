"""BM25 (bm25s: sparse-matrix BM25, lower-cased word tokens, English stopwords)."""

from collections.abc import Mapping, Sequence


def bm25_search(
    ids: Sequence[str], texts: Sequence[str], queries: Mapping[str, str], k: int = 100
) -> dict[str, list[str]]:
    """Top-k passage ids per query.

    Passages scoring 0 (no query term) are not returned: their order would be arbitrary.
    """
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
    qids = list(queries)
    q_tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False)
    k = min(k, len(ids))
    docs, scores = retriever.retrieve(q_tokens, k=k, show_progress=False)
    return {qid: [ids[int(d)] for d, s in zip(docs[i], scores[i], strict=True) if s > 0] for i, qid in enumerate(qids)}
