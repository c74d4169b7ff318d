"""Numba kernels of the suffix-array backend.

The text `T` holds *symbols* (token id + 1, so that 0 stays free) with an EOS symbol after every document;
`SA` is its suffix array. A state is a row range `[lo, hi)` of suffixes sharing a prefix of `depth` symbols:
refining by a symbol is two binary searches, and the distinct followers are found by galloping.
"""

import numba as nb
import numpy as np

from gemkr_lab.kb import _kernel_cache  # noqa: F401  (stamps the cached kernels by every kernel source)
from gemkr_lab.kb import _select_kernels as sel


@nb.njit(cache=True, inline="always")
def _sym(T, SA, i, d):
    """The `d`-th symbol of the `i`-th suffix, -1 past the end of the text."""
    p = np.int64(SA[i]) + d
    if p >= T.shape[0]:
        return np.int64(-1)
    return np.int64(T[p])


@nb.njit(cache=True)
def refine(T, SA, lo, hi, d, c):
    """Sub-range of `[lo, hi)` (suffixes sharing a `d`-prefix) whose `d`-th symbol is `c`."""
    a, b = lo, hi
    while a < b:
        m = (a + b) >> 1
        if _sym(T, SA, m, d) < c:
            a = m + 1
        else:
            b = m
    first = a
    b = hi
    while a < b:
        m = (a + b) >> 1
        if _sym(T, SA, m, d) <= c:
            a = m + 1
        else:
            b = m
    return first, a


@nb.njit(cache=True)
def followers(T, SA, lo, hi, d, out_sym, out_cnt, k, mode):
    """Write the distinct `d`-th symbols of rows `[lo, hi)` and their counts at `out[k:]`; return the new k.

    `mode`: 0 only counts them (the first pass of an exactly sized allocation), 1 writes the symbols,
    2 the symbols and their occurrence counts.

    Galloping: O(distinct · log(occurrences / distinct)) probes instead of a scan of the range.
    """
    i = lo
    while i < hi:
        c = _sym(T, SA, i, d)
        bound = 1
        while i + bound < hi and _sym(T, SA, i + bound, d) <= c:
            bound *= 2
        a = i + bound // 2 + 1
        b = min(i + bound, hi)
        while a < b:
            m = (a + b) >> 1
            if _sym(T, SA, m, d) <= c:
                a = m + 1
            else:
                b = m
        if c > 0:
            if mode > 0:
                out_sym[k] = c
            if mode > 1:
                out_cnt[k] = a - i
            k += 1
        i = a
    return k


@nb.njit(cache=True)
def advance_batch(T, SA, lo, hi, depth, sym, out_lo, out_hi):
    """One refine step per state; an empty input range or a symbol < 1 gives an empty range."""
    for j in range(lo.shape[0]):
        if lo[j] >= hi[j] or sym[j] < 1:
            out_lo[j] = lo[j]
            out_hi[j] = lo[j]
        else:
            a, b = refine(T, SA, lo[j], hi[j], depth[j], sym[j])
            out_lo[j] = a
            out_hi[j] = b


@nb.njit(cache=True)
def followers_batch(T, SA, lo, hi, depth, ptr, out_sym, out_cnt):
    """CSR of the distinct followers of every state; the outputs must hold `sum(min(hi - lo, sigma))`."""
    k = 0
    ptr[0] = 0
    for j in range(lo.shape[0]):
        if lo[j] < hi[j]:
            k = followers(T, SA, lo[j], hi[j], depth[j], out_sym, out_cnt, k, 2)
        ptr[j + 1] = k


@nb.njit(cache=True)
def check_batch(T, SA, lo, hi, depth, cand, out):
    """Occurrence counts of each state's prefix extended by each candidate symbol (0: not in the KB)."""
    for j in range(cand.shape[0]):
        for m in range(cand.shape[1]):
            c = cand[j, m]
            if lo[j] >= hi[j] or c < 1:
                out[j, m] = 0
            else:
                a, b = refine(T, SA, lo[j], hi[j], depth[j], c)
                out[j, m] = b - a


@nb.njit(cache=True)
def bigram_rows(T, SA, C, c0, c1, dtype_probe):
    """Distinct followers of each symbol `c0 <= c < c1` (depth-1 cache rows): CSR pointers (from 0), followers.

    Two passes (count, then fill) keep the extra memory at the rows' exact size.
    """
    ptr = np.zeros(c1 - c0 + 1, dtype=np.int64)
    none = np.empty(0, dtype=np.int64)
    k = 0
    for c in range(c0, c1):
        if c > 0 and C[c + 1] > C[c]:
            k = followers(T, SA, C[c], C[c + 1], 1, none, none, k, 0)
        ptr[c - c0 + 1] = k
    sym = np.empty(k, dtype=dtype_probe.dtype)
    for c in range(max(c0, 1), c1):
        if C[c + 1] > C[c]:
            followers(T, SA, C[c], C[c + 1], 1, sym, none, ptr[c - c0], 1)
    return ptr, sym


@nb.njit(cache=True)
def compact_even(sa_bytes, width):
    """In place: keep the byte-suffix positions that start a symbol of `width` bytes, as symbol positions.

    libdivsufsort sorts the big-endian bytes of the text; suffixes starting at a multiple of `width` are,
    in that order, the sorted symbol suffixes. Returns how many were kept (the first entries of the array).
    """
    k = 0
    for i in range(sa_bytes.shape[0]):
        p = sa_bytes[i]
        if p % width == 0:
            sa_bytes[k] = p // width
            k += 1
    return k


@nb.njit(cache=True)
def search(T, SA, lo, hi, pattern):
    """Row range of the suffixes that start with `pattern` (one call instead of one per token)."""
    for d in range(pattern.shape[0]):
        if lo >= hi or pattern[d] < 1:
            return lo, lo
        lo, hi = refine(T, SA, lo, hi, d, pattern[d])
    return lo, hi


@nb.njit(cache=True)
def symbol_counts(text, sigma):
    """Occurrences of each symbol `0..sigma` (np.bincount would first widen the text to int64)."""
    out = np.zeros(sigma + 1, dtype=np.int64)
    for i in range(text.shape[0]):
        out[text[i]] += 1
    return out


@nb.njit(cache=True)
def merge_tables(ptrs, syms, bases, mode, out_sym):
    """Union of K per-shard follower tables, symbol by symbol.

    `ptrs[k]` is shard k's CSR pointer array and `syms[bases[k]:]` its symbols. Mode 0 returns the merged
    pointer array only (the sizes); mode 1 also fills `out_sym`, sized by a mode-0 pass.
    """
    n_shards = ptrs.shape[0]
    n_sym = ptrs.shape[1] - 1
    ptr = np.zeros(n_sym + 1, dtype=np.int64)
    buf = np.empty(0, dtype=syms.dtype)
    k = 0
    for c in range(n_sym):
        total = 0
        for s in range(n_shards):
            total += ptrs[s, c + 1] - ptrs[s, c]
        if buf.shape[0] < total:
            buf = np.empty(total * 2, dtype=syms.dtype)
        m = 0
        for s in range(n_shards):
            for j in range(ptrs[s, c], ptrs[s, c + 1]):
                buf[m] = syms[bases[s] + j]
                m += 1
        part = np.sort(buf[:m])
        for j in range(m):
            if j == 0 or part[j] != part[j - 1]:
                if mode == 1:
                    out_sym[k] = part[j]
                k += 1
        ptr[c + 1] = k
    return ptr


# ---- decoding: the best-scored followers -----------------------------------------------------------


@nb.njit(cache=True)
def best_next(
    T,
    SA,
    nlev,
    lo,
    hi,
    depth,
    live,
    first_sym,
    root_allowed,
    bigram_ptr,
    bigram_sym,
    deep_only,
    scores,
    score_row,
    out_tok,
    out_val,
    keys,
    trees,
    keyed,
):
    """Per beam, the `out_tok.shape[1]` best-scored tokens allowed after its clue (see `_select_kernels`).

    The empty clue: the root set `root_allowed` (a dense scan); one token: its row of the bigram table
    (`first_sym[j]`'s, scanned by score blocks); deeper clues occurring at most `FEW` times: their followers,
    listed; more frequent ones: best-first over a binary partition of the symbol space, where a
    node is a symbol interval of width `2**(nlev - level)` and its rows (split by a binary search for the
    middle symbol), keyed by the best score in the interval. With `deep_only` (a shard after the first of a
    sharded KB), clues of depth 0 and 1 are left to the first shard, and each beam extends the candidates the
    earlier shards left in `out_tok` (a token found again is kept once), pruning against them from the start.
    Keys are the scores of the clue's last token's followers (`keys`, `trees`, `keyed` as in the FM kernel).
    """
    need = out_tok.shape[1]
    lb = sel.summary_levels(nlev)
    block_best = np.empty((scores.shape[1] + 63) >> 6, dtype=np.float32)
    hkey = np.empty(1024, dtype=np.float32)
    hid = np.empty(1024, dtype=np.int64)
    node_l = np.empty(1024, dtype=np.int64)
    node_v = np.empty(1024, dtype=np.int64)
    node_a = np.empty(1024, dtype=np.int64)
    node_b = np.empty(1024, dtype=np.int64)
    few = np.empty(sel.FEW, dtype=np.int64)
    for j in range(lo.shape[0]):
        found = sel.carried(out_tok, j) if deep_only else 0  # a later shard starts from the earlier shards' best
        row = score_row[j]
        if not live[j]:
            pass
        elif depth[j] == 0:
            if not deep_only:
                found = sel.dense_row(scores, row, root_allowed, -1, out_tok, out_val, j, block_best)
        elif depth[j] == 1:
            if not deep_only:
                c = first_sym[j]
                found = sel.guided_set_row(
                    scores, row, bigram_sym, bigram_ptr[c], bigram_ptr[c + 1], 1, out_tok, out_val, j, block_best
                )
        elif hi[j] - lo[j] <= sel.FEW:  # a rare clue: its few followers cost less than the score summary
            for i in range(followers(T, SA, lo[j], hi[j], depth[j], few, few, 0, 1)):
                found = sel.leaf_offer(scores, row, out_tok, out_val, j, found, few[i], deep_only)
        elif lo[j] < hi[j]:
            d = depth[j]
            tree = trees[j]
            if not keyed[j]:
                c = _sym(T, SA, lo[j], d - 1)  # the clue's last token: its followers hold the clue's
                share = sel.BIGRAM_MASK_SHARE
                sel.key_row(scores, row, bigram_sym, bigram_ptr[c], bigram_ptr[c + 1], share, keys, j, nlev, tree)
                keyed[j] = True
            sel.exclude(keys, j, tree, nlev, out_tok, found)
            size = 0
            nodes = 0
            if tree[1] > sel.NEG_INF:
                node_l[0], node_v[0], node_a[0], node_b[0] = 0, 0, lo[j], hi[j]
                size = sel.heap_push(hkey, hid, 0, tree[1], 0)
                nodes = 1
            while size > 0:
                if found == need and hkey[0] < out_val[j, need - 1]:
                    break  # no queued node holds a token that beats or ties the need-th found
                node = hid[0]
                size = sel.heap_pop(hkey, hid, size)
                lvl, v, a, b = node_l[node], node_v[node], node_a[node], node_b[node]
                mid = ((v << 1) | 1) << (nlev - lvl - 1)  # the first symbol of the upper half
                r = a
                r1 = b
                while r < r1:
                    m = (r + r1) >> 1
                    if _sym(T, SA, m, d) < mid:
                        r = m + 1
                    else:
                        r1 = m
                if nodes + 2 > node_l.shape[0]:
                    node_l, node_v = sel.grown(node_l, nodes), sel.grown(node_v, nodes)
                    node_a, node_b = sel.grown(node_a, nodes), sel.grown(node_b, nodes)
                if size + 2 > hkey.shape[0]:
                    hkey, hid = sel.grown(hkey, size), sel.grown(hid, size)
                for one in range(2):
                    if one:
                        ca, cb, cv = r, b, (v << 1) | 1
                    else:
                        ca, cb, cv = a, r, v << 1
                    if cb <= ca:
                        continue
                    if lvl + 1 == nlev:
                        found = sel.leaf_offer(scores, row, out_tok, out_val, j, found, cv, deep_only)
                        continue
                    best = sel.node_best(keys, j, tree, nlev, lb, lvl + 1, cv)
                    if best == sel.NEG_INF or (found == need and best < out_val[j, need - 1]):
                        continue
                    node_l[nodes], node_v[nodes], node_a[nodes], node_b[nodes] = lvl + 1, cv, ca, cb
                    size = sel.heap_push(hkey, hid, size, best, nodes)
                    nodes += 1
        sel.pad(out_tok, out_val, j, found)
