"""The beam-selection step of (diverse group) beam search, over each beam's best candidates, on the host.

HF 4.28's group beam search as `search.py` describes it: groups in order; a candidate's score is its
log-probability lowered by `penalty` x (times an earlier group of the same query chose that token at this
step), plus its beam's cumulative score, in float32 (as the tensors computed it); each group ranks its beams'
candidates (score descending, then beam x vocab + token ascending: the flat index) and walks its best
2 x beams. Each beam's best `k` candidates suffice (`k` = 2 x beams + the tokens earlier groups may penalise).
"""

import numba as nb
import numpy as np

from gemkr_lab.kb import _kernel_cache  # noqa: F401  (stamps the cached kernels by every kernel source)

NEG_INF = np.float32(-np.inf)


@nb.njit(cache=True)
def select_groups(
    cand_tok,
    cand_val,
    cum,
    queries,
    groups,
    beams,
    penalty,
    eos,
    vocab,
    chosen_rows,
    chosen_tok,
    new_cum,
    done_src,
    done_val,
):
    """Choose every group's beams for the next step; return how many hypotheses ended (entries of `done_*`).

    Args:
        cand_tok: int64[N, k] each beam's candidate ids (sorted, -1 padded).
        cand_val: float32[N, k] their log-probabilities (-inf padded).
        cum: float32[N] cumulative scores (-inf: a dead slot).
        queries: queries in the batch (N = queries x groups x beams, a query's beams contiguous, by group).
        groups: groups per query.
        beams: beams per group.
        penalty: float32 Hamming diversity penalty (0 for plain beam search).
        eos: the EOS id.
        vocab: the vocabulary size (ties are broken by the flat index beam x vocab + token).
        chosen_rows: int64[N] output: each slot's source beam.
        chosen_tok: int64[N] output: each slot's token (EOS for dead slots).
        new_cum: float32[N] output: each slot's new cumulative score (-inf: dead).
        done_src: int64[N] output: the beam of each hypothesis ended by EOS, in the order the groups end them.
        done_val: float32[N] output: its cumulative score, EOS included.
    """
    per_query = groups * beams
    k = cand_tok.shape[1]
    width = min(2 * beams, beams * vocab)
    top_v = np.empty(width, dtype=np.float32)
    top_f = np.empty(width, dtype=np.int64)
    n_done = 0
    for r in range(chosen_tok.shape[0]):
        chosen_tok[r] = eos
        new_cum[r] = NEG_INF
    for g in range(groups):
        for q in range(queries):
            base = q * per_query + g * beams
            size = 0
            for b in range(beams):
                r = base + b
                c = cum[r]
                if c == NEG_INF:
                    continue
                for i in range(k):
                    t = cand_tok[r, i]
                    if t < 0:
                        break
                    picked = 0
                    if g > 0 and penalty != 0:
                        for d in range(q * per_query, base):  # earlier groups of this query
                            if new_cum[d] > NEG_INF and chosen_tok[d] == t:
                                picked += 1
                    value = (cand_val[r, i] - penalty * np.float32(picked)) + c
                    if value == NEG_INF:
                        continue
                    flat = b * vocab + t
                    # keep the best `width` (value descending, flat ascending), sorted
                    if size == width and not (
                        value > top_v[size - 1] or (value == top_v[size - 1] and flat < top_f[size - 1])
                    ):
                        continue
                    j = size if size < width else width - 1
                    while j > 0 and (value > top_v[j - 1] or (value == top_v[j - 1] and flat < top_f[j - 1])):
                        top_v[j] = top_v[j - 1]
                        top_f[j] = top_f[j - 1]
                        j -= 1
                    top_v[j] = value
                    top_f[j] = flat
                    if size < width:
                        size += 1
            kept = 0
            for rank in range(size):
                if kept == beams:
                    break
                src_b = top_f[rank] // vocab
                t = top_f[rank] - src_b * vocab
                src = base + src_b
                if t == eos:
                    if rank >= beams:  # HF: an EOS below the top `beams` candidates is not kept
                        continue
                    done_src[n_done] = src
                    done_val[n_done] = top_v[rank]
                    n_done += 1
                    continue
                dst = base + kept
                chosen_rows[dst] = src
                chosen_tok[dst] = t
                new_cum[dst] = top_v[rank]
                kept += 1
            for b in range(kept, beams):  # no valid continuation left for these slots
                chosen_rows[base + b] = base
                new_cum[base + b] = NEG_INF
    return n_done
