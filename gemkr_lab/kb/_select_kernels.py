"""Numba helpers that pick, per beam, the best-scored tokens among those the KB allows.

Shared by both backends (whose `best_next` kernels walk their own structure). A beam's candidates are always
sorted by score (descending), ties by token id (ascending), padded with token -1 and score -inf; tokens
scored -inf are never returned. `need` (the outputs' width) is how many a caller asks for. Scores are float32
rows indexed by token id (= symbol - 1); ids at or beyond a row's length score -inf.

The best-first search walks a beam's row range down a binary partition of the symbol space (a wavelet
matrix's levels, or binary searches in the suffix array), always expanding the queued node whose symbols hold
the highest score (a max-tree over the scores, `summarize`). It stops once `need` tokens are found and no
queued node can beat or tie the last, so it touches only the part of the range that can matter: a few paths
when the best-scored tokens are allowed (a trained model), at most the enumeration's nodes when they are not
(a flat or random distribution), and never the followers of a short clue one by one.

Numba's on-disk cache keys a compiled function by its own file only: after editing this module, delete the
cached `_fm_kernels.*` / `_sa_kernels.*` entries in `__pycache__`, or their kernels keep the old code.
"""

import numba as nb
import numpy as np

from gemkr_lab.kb import _kernel_cache  # noqa: F401  (stamps the cached kernels by every kernel source)

NEG_INF = np.float32(-np.inf)

FEW = 32
"""Clues occurring at most this many times list their followers instead of searching best-first."""

BIGRAM_MASK_SHARE = 2
"""A frequent clue's best-first search scores only its last token's followers (its bigram row) when that row
holds at most 1 / BIGRAM_MASK_SHARE of the vocabulary: a tighter key, fewer nodes when the model's best tokens
cannot follow (every follower of a clue follows its last token)."""

BLOCK_BITS = 6
"""Symbols per summarised block: `2**BLOCK_BITS`; below the block level a node's best score is scanned."""


@nb.njit(cache=True, inline="always")
def _better(v1, t1, v2, t2):
    """(v1, t1) ranks before (v2, t2): higher score, then lower token id."""
    return v1 > v2 or (v1 == v2 and t1 < t2)


@nb.njit(cache=True, inline="always")
def offer(out_tok, out_val, j, size, t, v):
    """Insert candidate (t, v) into beam j's sorted candidates (`size` so far); return the new size."""
    need = out_tok.shape[1]
    if size == need and not _better(v, t, out_val[j, size - 1], out_tok[j, size - 1]):
        return size
    i = size if size < need else need - 1
    while i > 0 and _better(v, t, out_val[j, i - 1], out_tok[j, i - 1]):
        out_tok[j, i] = out_tok[j, i - 1]
        out_val[j, i] = out_val[j, i - 1]
        i -= 1
    out_tok[j, i] = t
    out_val[j, i] = v
    return size + 1 if size < need else size


@nb.njit(cache=True, inline="always")
def pad(out_tok, out_val, j, size):
    """Fill beam j's unused candidate slots with -1 / -inf."""
    for i in range(size, out_tok.shape[1]):
        out_tok[j, i] = -1
        out_val[j, i] = NEG_INF


@nb.njit(cache=True, inline="always")
def best_in(scores, row, t0, t1):
    """Highest score of `scores[row, t0:t1]` (-inf if empty); four running maxima keep the loop pipelined."""
    m0 = NEG_INF
    m1 = NEG_INF
    m2 = NEG_INF
    m3 = NEG_INF
    t = t0
    while t + 4 <= t1:
        a0 = scores[row, t]
        a1 = scores[row, t + 1]
        a2 = scores[row, t + 2]
        a3 = scores[row, t + 3]
        m0 = a0 if a0 > m0 else m0
        m1 = a1 if a1 > m1 else m1
        m2 = a2 if a2 > m2 else m2
        m3 = a3 if a3 > m3 else m3
        t += 4
    while t < t1:
        a0 = scores[row, t]
        m0 = a0 if a0 > m0 else m0
        t += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@nb.njit(cache=True)
def set_row(scores, row, tok, start, end, shift, out_tok, out_val, j):
    """Beam j's best tokens of the set `tok[start:end] - shift`, under scores row `row`; returns how many."""
    need = out_tok.shape[1]
    width = scores.shape[1]
    size = 0
    for i in range(start, end):
        t = np.int64(tok[i]) - shift
        if t < 0 or t >= width:
            continue
        v = scores[row, t]
        if v == NEG_INF or (size == need and v < out_val[j, need - 1]):
            continue
        size = offer(out_tok, out_val, j, size, t, v)
    return size


@nb.njit(cache=True)
def block_bests(scores, row, block_best):
    """Best score of each 64-id block of a scores row, into `block_best` (`ceil(width / 64)` entries)."""
    width = scores.shape[1]
    for blk in range((width + 63) >> 6):
        block_best[blk] = best_in(scores, row, blk << 6, min((blk + 1) << 6, width))


@nb.njit(cache=True, inline="always")
def _sift_down(heap, size, i, key):
    """Restore the max-heap `heap[:size]` (of indices into `key`) below position i."""
    x = heap[i]
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and key[heap[c + 1]] > key[heap[c]]:
            c += 1
        if key[heap[c]] <= key[x]:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = x


@nb.njit(cache=True)
def guided_set_row(scores, row, tok, start, end, shift, out_tok, out_val, j, block_best):
    """`set_row` for a large set sorted by id, guided by the scores.

    Blocks of 64 ids are visited by best score, descending, until no block left can hold a better candidate,
    so only a few of the set's ids are looked at.
    """
    need = out_tok.shape[1]
    width = scores.shape[1]
    n_blocks = (width + 63) >> 6
    if end - start <= 8 * n_blocks:  # a small set: reading it costs less than summarising the scores
        return set_row(scores, row, tok, start, end, shift, out_tok, out_val, j)
    block_bests(scores, row, block_best)
    heap = np.empty(n_blocks, dtype=np.int64)  # blocks, a max-heap by best score
    queued = 0
    for blk in range(n_blocks):
        if block_best[blk] > NEG_INF:
            heap[queued] = blk
            queued += 1
    for i in range(queued // 2 - 1, -1, -1):
        _sift_down(heap, queued, i, block_best)
    size = 0
    while queued > 0:
        blk = heap[0]
        m = block_best[blk]
        if size == need and m < out_val[j, need - 1]:
            break  # blocks come by best score: none left can hold a better candidate
        queued -= 1
        heap[0] = heap[queued]
        _sift_down(heap, queued, 0, block_best)
        t0 = blk << 6
        t1 = min(t0 + 64, width)
        a = start
        b = end
        while a < b:  # the set's first id in the block
            mid = (a + b) >> 1
            if np.int64(tok[mid]) - shift < t0:
                a = mid + 1
            else:
                b = mid
        while a < end:
            t = np.int64(tok[a]) - shift
            if t >= t1:
                break
            v = scores[row, t]
            if v > NEG_INF:
                size = offer(out_tok, out_val, j, size, t, v)
            a += 1
    return size


@nb.njit(cache=True, inline="always")
def _admits(allowed, banned, t):
    if t == banned:
        return False
    if allowed.shape[0] == 0:
        return True
    return t < allowed.shape[0] and allowed[t]


@nb.njit(cache=True)
def dense_row(scores, row, allowed, banned, out_tok, out_val, j, block_best):
    """Beam j's best tokens of a whole scores row among `allowed`, `banned` left out; returns how many.

    `allowed` is a bool per id (empty: all ids); `banned` an id or -1. Maxima of 64-token blocks first:
    unless tokens left out hold them, the `need`-th best block maximum bounds the `need`-th best score from
    below, so only the blocks reaching it are scanned token by token (else every block is). `block_best` is
    scratch of `ceil(width / 64)` entries.
    """
    need = out_tok.shape[1]
    width = scores.shape[1]
    n_blocks = (width + 63) >> 6
    # the need best block maxima, kept in row j of the outputs for now
    size = 0
    for blk in range(n_blocks):
        m = best_in(scores, row, blk << 6, min((blk + 1) << 6, width))
        block_best[blk] = m
        if m > NEG_INF:
            size = offer(out_tok, out_val, j, size, blk, m)
    bound = out_val[j, need - 1] if size == need else NEG_INF
    for _attempt in range(2):
        size = 0
        for blk in range(n_blocks):
            if block_best[blk] == NEG_INF or block_best[blk] < bound:
                continue
            for t in range(blk << 6, min((blk + 1) << 6, width)):
                v = scores[row, t]
                if v == NEG_INF or (size == need and v < out_val[j, need - 1]) or not _admits(allowed, banned, t):
                    continue
                size = offer(out_tok, out_val, j, size, t, v)
        if size == need and out_val[j, need - 1] >= bound:
            break  # every block left out is below the need-th token found: exact
        bound = NEG_INF  # tokens left out held block maxima: scan every block
    return size


@nb.njit(cache=True)
def top_of_rows(scores, score_row, allowed, banned, out_tok, out_val):
    """`dense_row` for every beam j (scores row `score_row[j]`, `banned[j]`), padded."""
    block_best = np.empty((scores.shape[1] + 63) >> 6, dtype=np.float32)
    for j in range(score_row.shape[0]):
        size = dense_row(scores, score_row[j], allowed, banned[j], out_tok, out_val, j, block_best)
        pad(out_tok, out_val, j, size)


@nb.njit(cache=True)
def summary_levels(nlev):
    """The deepest level stored in a score summary (its nodes are the blocks)."""
    return max(nlev - BLOCK_BITS, 0)


@nb.njit(cache=True)
def summarize(scores, row, nlev, tree):
    """Max-tree over the symbol space `0 .. 2**nlev - 1`, scored by `scores[row, symbol - 1]`, down to blocks.

    Symbol 0 and ids past the row score -inf. Node (level l, prefix v) covers symbols
    `[v << (nlev - l), (v + 1) << (nlev - l))`; for l <= `summary_levels(nlev)` its best score is
    `tree[(1 << l) + v]`, deeper nodes are scanned (`node_best`). One pass over the row.
    """
    width = scores.shape[1]
    lb = summary_levels(nlev)
    w = 1 << (nlev - lb)
    first = 1 << lb
    for blk in range(first):
        tree[first + blk] = best_in(scores, row, max(blk * w - 1, 0), min(blk * w + w - 1, width))
    for i in range(first - 1, 0, -1):
        a = tree[2 * i]
        b = tree[2 * i + 1]
        tree[i] = a if a >= b else b


@nb.njit(cache=True)
def key_row(scores, row, bigram_sym, start, end, mask_share, keys, j, nlev, tree):
    """Beam j's search keys `keys[j]` and their summary `tree` (as `summarize` makes it), in one pass.

    The keys are its scores row, masked to the tokens `bigram_sym[start:end] - 1` (the followers of the clue's
    last token) when they are at most `1 / mask_share` of the row (a tighter key, fewer nodes), else copied (so
    that `exclude` may drop tokens from it). Masked, the summary's blocks come from the set alone.
    """
    width = scores.shape[1]
    lb = summary_levels(nlev)
    shift = nlev - lb
    first = 1 << lb
    if end - start <= width // mask_share:
        keys[j, :] = NEG_INF
        for blk in range(first):
            tree[first + blk] = NEG_INF
        for i in range(start, end):
            t = np.int64(bigram_sym[i]) - 1
            if 0 <= t < width:
                v = scores[row, t]
                keys[j, t] = v
                node = first + ((t + 1) >> shift)  # token t is symbol t + 1
                if v > tree[node]:
                    tree[node] = v
        for i in range(first - 1, 0, -1):
            a = tree[2 * i]
            b = tree[2 * i + 1]
            tree[i] = a if a >= b else b
    else:
        keys[j, :] = scores[row, :]
        summarize(keys, j, nlev, tree)


@nb.njit(cache=True)
def exclude(keys, j, tree, nlev, out_tok, found):
    """Drop beam j's first `found` candidates from its keys `keys[j]` and their summary `tree`.

    A later shard of a sharded KB then searches only for tokens the earlier shards did not find: the paths to
    the tokens it would merely find again (the best ones, when the shards hold alike text) are never walked.
    """
    width = keys.shape[1]
    lb = summary_levels(nlev)
    w = 1 << (nlev - lb)
    first = 1 << lb
    for i in range(found):
        t = out_tok[j, i]
        if t < 0 or t >= width or keys[j, t] == NEG_INF:
            continue
        keys[j, t] = NEG_INF
        blk = (t + 1) >> (nlev - lb)  # token t is symbol t + 1
        node = first + blk
        tree[node] = best_in(keys, j, max(blk * w - 1, 0), min(blk * w + w - 1, width))
        node >>= 1
        while node >= 1:
            a = tree[2 * node]
            b = tree[2 * node + 1]
            tree[node] = a if a >= b else b
            node >>= 1


@nb.njit(cache=True, inline="always")
def node_best(scores, row, tree, nlev, lb, lvl, v):
    """Best score among the symbols of node (lvl, v) (see `summarize`)."""
    if lvl <= lb:
        return tree[(1 << lvl) + v]
    shift = nlev - lvl
    return best_in(scores, row, max((v << shift) - 1, 0), min(((v + 1) << shift) - 1, scores.shape[1]))


@nb.njit(cache=True, inline="always")
def leaf_offer(scores, row, out_tok, out_val, j, found, sym, merging):
    """Offer symbol `sym` (token `sym - 1`) with its score as a candidate of beam j; return the new count.

    `merging`: beam j may already hold the token (an earlier shard's follower too); it is then kept once.
    """
    if 1 <= sym <= scores.shape[1]:
        x = scores[row, sym - 1]
        if x > NEG_INF:
            if merging:
                for i in range(found):
                    if out_tok[j, i] == sym - 1:
                        return found
            return offer(out_tok, out_val, j, found, sym - 1, x)
    return found


@nb.njit(cache=True, inline="always")
def carried(out_tok, j):
    """How many candidates beam j holds already (those of the earlier shards of a sharded KB)."""
    n = 0
    while n < out_tok.shape[1] and out_tok[j, n] >= 0:
        n += 1
    return n


@nb.njit(cache=True, inline="always")
def heap_push(hkey, hid, size, key, node):
    """Push `node` with `key` on the max-heap `(hkey, hid)` of `size` entries; return the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if hkey[parent] >= key:
            break
        hkey[i] = hkey[parent]
        hid[i] = hid[parent]
        i = parent
    hkey[i] = key
    hid[i] = node
    return size + 1


@nb.njit(cache=True, inline="always")
def heap_pop(hkey, hid, size):
    """Remove the root of the max-heap (the caller has read it); return the new size."""
    size -= 1
    key = hkey[size]
    node = hid[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and hkey[c + 1] > hkey[c]:
            c += 1
        if hkey[c] <= key:
            break
        hkey[i] = hkey[c]
        hid[i] = hid[c]
        i = c
    if size > 0:
        hkey[i] = key
        hid[i] = node
    return size


@nb.njit(cache=True)
def grown(a, size):
    """`a` with twice the room, its first `size` entries kept."""
    out = np.empty(2 * a.shape[0], dtype=a.dtype)
    out[:size] = a[:size]
    return out


@nb.njit(cache=True)
def fill_allowed(ptr, tok, shift, rows, out):
    """`out[rows[j], tok - shift] = True` for every token of CSR set j (ids outside the row width skipped)."""
    width = out.shape[1]
    for j in range(ptr.shape[0] - 1):
        r = rows[j]
        for i in range(ptr[j], ptr[j + 1]):
            t = np.int64(tok[i]) - shift
            if 0 <= t < width:
                out[r, t] = True
