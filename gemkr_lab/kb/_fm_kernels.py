"""Numba kernels of the FM-index backend: a wavelet matrix over the BWT of the reversed text.

Indexing the *reversed* text makes backward search consume a clue left to right, and the distinct BWT
symbols of a clue's row range are exactly the tokens that *follow* it (as in SEAL). Row 0 is the empty
suffix; the BWT holds the sentinel symbol 0 exactly once. A row range `[lo, hi)` is a beam's whole state.

Wavelet matrix layout: `bits[l]` packs bit `nlev-1-l` of the level-`l` sequence into uint64 words,
`ranks[l, b]` counts the ones before 256-bit block `b`, `Z[l]` counts the zeros of level `l`, and
`start_of[c]` is where symbol `c`'s run begins in the final (fully partitioned) order.
"""

import numba as nb
import numpy as np

from gemkr_lab.kb import _kernel_cache  # noqa: F401  (stamps the cached kernels by every kernel source)
from gemkr_lab.kb import _select_kernels as sel
from gemkr_lab.kb._prefetch import prefetch

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@nb.njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


@nb.njit(cache=True, inline="always")
def rank1(bits, ranks, lvl, i):
    """Number of ones in `bits[lvl][0:i)`."""
    w = i >> 6
    blk = w >> 2
    r = np.int64(ranks[lvl, blk])
    for j in range(blk << 2, w):
        r += _popcount(bits[lvl, j])
    rem = i & 63
    if rem:
        r += _popcount(bits[lvl, w] & ((np.uint64(1) << np.uint64(rem)) - np.uint64(1)))
    return r


@nb.njit(cache=True, inline="always")
def map_down(bits, ranks, Z, c, i):
    """Follow position `i` down the matrix along symbol `c`'s bits to its place in the final order."""
    nlev = bits.shape[0]
    for lvl in range(nlev):
        r1 = rank1(bits, ranks, lvl, i)
        if (c >> (nlev - 1 - lvl)) & 1:
            i = Z[lvl] + r1
        else:
            i = i - r1
    return i


@nb.njit(cache=True, inline="always")
def backward_step(bits, ranks, Z, start_of, C, lo, hi, c):
    """Range of the clue extended on the right by symbol `c` (an empty range when it does not occur).

    Both ends descend the matrix together, so an absent symbol stops as soon as its sub-range empties:
    rejecting a candidate usually costs a few levels, not all of them.
    """
    if c < 1 or c >= C.shape[0] - 1 or C[c + 1] == C[c] or lo >= hi:
        return lo, lo
    nlev = bits.shape[0]
    a, b = lo, hi
    for lvl in range(nlev):
        ra = rank1(bits, ranks, lvl, a)
        rb = rank1(bits, ranks, lvl, b)
        if (c >> (nlev - 1 - lvl)) & 1:
            a, b = Z[lvl] + ra, Z[lvl] + rb
        else:
            a, b = a - ra, b - rb
        if a == b:
            return lo, lo
    return C[c] + a - start_of[c], C[c] + b - start_of[c]


@nb.njit(cache=True, inline="always")
def lf(bits, ranks, Z, start_of, C, i):
    """`(BWT[i], LF(i))` in one top-down pass: the next token in text order and the row that reads on."""
    nlev = bits.shape[0]
    v = 0
    for lvl in range(nlev):
        r1 = rank1(bits, ranks, lvl, i)
        if (bits[lvl, i >> 6] >> np.uint64(i & 63)) & np.uint64(1):
            i = Z[lvl] + r1
            v = (v << 1) | 1
        else:
            i = i - r1
            v = v << 1
    return v, C[v] + (i - start_of[v])


@nb.njit(cache=True)
def range_symbols(bits, ranks, Z, lo, hi, out_sym, out_cnt, k, mode):
    """Distinct BWT symbols of rows `[lo, hi)` in ascending order (the sentinel 0 dropped), from `out[k:]`.

    `mode` as in the suffix-array kernel: 0 counts, 1 writes symbols, 2 symbols and counts.
    An iterative DFS over the matrix visits O(k log(sigma / k)) nodes.
    """
    nlev = bits.shape[0]
    sa = np.empty(2 * nlev + 2, dtype=np.int64)
    sb = np.empty(2 * nlev + 2, dtype=np.int64)
    sl = np.empty(2 * nlev + 2, dtype=np.int64)
    sv = np.empty(2 * nlev + 2, dtype=np.int64)
    top = 0
    sa[0] = lo
    sb[0] = hi
    sl[0] = 0
    sv[0] = 0
    top = 1
    while top > 0:
        top -= 1
        a = sa[top]
        b = sb[top]
        lvl = sl[top]
        v = sv[top]
        if lvl == nlev:
            if v > 0:
                if mode > 0:
                    out_sym[k] = v
                if mode > 1:
                    out_cnt[k] = b - a
                k += 1
            continue
        ra = rank1(bits, ranks, lvl, a)
        rb = rank1(bits, ranks, lvl, b)
        # push the one-child first so that the zero-child pops first: ascending output
        if rb > ra:
            sa[top] = Z[lvl] + ra
            sb[top] = Z[lvl] + rb
            sl[top] = lvl + 1
            sv[top] = (v << 1) | 1
            top += 1
        if (b - rb) > (a - ra):
            sa[top] = a - ra
            sb[top] = b - rb
            sl[top] = lvl + 1
            sv[top] = v << 1
            top += 1
    return k


@nb.njit(cache=True)
def few_symbols(bits, ranks, Z, lo, hi, out):
    """Distinct BWT symbols of a short row range `[lo, hi)` (at most `out.shape[0]` rows), unordered.

    `range_symbols` a level at a time: the lines of every node of a level are fetched before any is read, so
    the nodes' cache misses overlap. Returns how many were written (the sentinel 0 dropped).
    """
    nlev = bits.shape[0]
    cap = out.shape[0]
    fa = np.empty(cap, dtype=np.int64)
    fb = np.empty(cap, dtype=np.int64)
    fv = np.empty(cap, dtype=np.int64)
    na = np.empty(cap, dtype=np.int64)
    nb_ = np.empty(cap, dtype=np.int64)
    nv = np.empty(cap, dtype=np.int64)
    fa[0], fb[0], fv[0] = lo, hi, 0
    k = 1
    for lvl in range(nlev):
        for i in range(k):
            prefetch(ranks, lvl, fa[i] >> 8)
            prefetch(bits, lvl, fa[i] >> 6)
            prefetch(ranks, lvl, fb[i] >> 8)
            prefetch(bits, lvl, fb[i] >> 6)
        m = 0
        for i in range(k):
            a, b, v = fa[i], fb[i], fv[i]
            ra = rank1(bits, ranks, lvl, a)
            rb = rank1(bits, ranks, lvl, b)
            if (a - ra) < (b - rb):  # a node's children hold its rows: never more nodes than rows
                na[m], nb_[m], nv[m] = a - ra, b - rb, v << 1
                m += 1
            if ra < rb:
                na[m], nb_[m], nv[m] = Z[lvl] + ra, Z[lvl] + rb, (v << 1) | 1
                m += 1
        fa, na = na, fa
        fb, nb_ = nb_, fb
        fv, nv = nv, fv
        k = m
    n = 0
    for i in range(k):
        if fv[i] > 0:
            out[n] = fv[i]
            n += 1
    return n


@nb.njit(cache=True)
def advance_batch(bits, ranks, Z, start_of, C, lo, hi, sym, out_lo, out_hi):
    """One backward-search step per state (as `backward_step`), all states a level at a time.

    The states' steps are independent: fetching every state's lines of a level before reading any lets their
    cache misses overlap instead of waiting on them one by one.
    """
    n = lo.shape[0]
    nlev = bits.shape[0]
    a = np.empty(n, dtype=np.int64)
    b = np.empty(n, dtype=np.int64)
    live = np.empty(n, dtype=np.int64)  # states still descending
    k = 0
    for j in range(n):
        c = sym[j]
        out_lo[j] = lo[j]
        out_hi[j] = lo[j]
        if 1 <= c < C.shape[0] - 1 and C[c + 1] > C[c] and lo[j] < hi[j]:
            a[j], b[j] = lo[j], hi[j]
            live[k] = j
            k += 1
    for lvl in range(nlev):
        for i in range(k):
            j = live[i]
            prefetch(ranks, lvl, a[j] >> 8)
            prefetch(bits, lvl, a[j] >> 6)
            prefetch(ranks, lvl, b[j] >> 8)
            prefetch(bits, lvl, b[j] >> 6)
        kept = 0
        for i in range(k):
            j = live[i]
            ra = rank1(bits, ranks, lvl, a[j])
            rb = rank1(bits, ranks, lvl, b[j])
            if (sym[j] >> (nlev - 1 - lvl)) & 1:
                a[j], b[j] = Z[lvl] + ra, Z[lvl] + rb
            else:
                a[j], b[j] = a[j] - ra, b[j] - rb
            if a[j] < b[j]:
                live[kept] = j
                kept += 1
        k = kept
    for i in range(k):
        j = live[i]
        c = sym[j]
        out_lo[j] = C[c] + a[j] - start_of[c]
        out_hi[j] = C[c] + b[j] - start_of[c]


PREFETCH_AHEAD = 8
"""How many nodes ahead a level-at-a-time walk fetches the lines of the node it will read."""


@nb.njit(cache=True)
def followers_batch(bits, ranks, Z, lo, hi, ptr, out_sym, out_cnt):
    """CSR of the distinct followers of every state, ascending, with their counts.

    `range_symbols` a level at a time: expanding a level's nodes in order (zero child first) keeps them in
    symbol order, and each node's lines are fetched `PREFETCH_AHEAD` nodes before it is read, so the cache
    misses of a level's nodes overlap.
    """
    nlev = bits.shape[0]
    cap = 1
    for j in range(lo.shape[0]):
        cap = max(cap, min(hi[j] - lo[j], 1 << nlev))
    fa = np.empty(cap, dtype=np.int64)
    fb = np.empty(cap, dtype=np.int64)
    fv = np.empty(cap, dtype=np.int64)
    na = np.empty(cap, dtype=np.int64)
    nb_ = np.empty(cap, dtype=np.int64)
    nv = np.empty(cap, dtype=np.int64)
    k = 0
    ptr[0] = 0
    for j in range(lo.shape[0]):
        if lo[j] < hi[j]:
            fa[0], fb[0], fv[0] = lo[j], hi[j], 0
            size = 1
            for lvl in range(nlev):
                for i in range(min(PREFETCH_AHEAD, size)):
                    prefetch(ranks, lvl, fa[i] >> 8)
                    prefetch(bits, lvl, fa[i] >> 6)
                    prefetch(ranks, lvl, fb[i] >> 8)
                    prefetch(bits, lvl, fb[i] >> 6)
                m = 0
                for i in range(size):
                    if i + PREFETCH_AHEAD < size:
                        ahead = i + PREFETCH_AHEAD
                        prefetch(ranks, lvl, fa[ahead] >> 8)
                        prefetch(bits, lvl, fa[ahead] >> 6)
                        prefetch(ranks, lvl, fb[ahead] >> 8)
                        prefetch(bits, lvl, fb[ahead] >> 6)
                    a, b, v = fa[i], fb[i], fv[i]
                    ra = rank1(bits, ranks, lvl, a)
                    rb = rank1(bits, ranks, lvl, b)
                    if (a - ra) < (b - rb):  # a node's children hold its rows: never more nodes than rows
                        na[m], nb_[m], nv[m] = a - ra, b - rb, v << 1
                        m += 1
                    if ra < rb:
                        na[m], nb_[m], nv[m] = Z[lvl] + ra, Z[lvl] + rb, (v << 1) | 1
                        m += 1
                fa, na = na, fa
                fb, nb_ = nb_, fb
                fv, nv = nv, fv
                size = m
            for i in range(size):
                if fv[i] > 0:  # the sentinel 0 dropped
                    out_sym[k] = fv[i]
                    out_cnt[k] = fb[i] - fa[i]
                    k += 1
        ptr[j + 1] = k


@nb.njit(cache=True)
def check_batch(bits, ranks, Z, start_of, C, lo, hi, cand, out):
    """Occurrence counts of each state's clue extended by each candidate symbol (0: not in the KB).

    Every (state, candidate) step at once, a level at a time (`advance_batch`).
    """
    n, m = cand.shape
    flat_lo = np.empty(n * m, dtype=np.int64)
    flat_hi = np.empty(n * m, dtype=np.int64)
    for j in range(n):
        flat_lo[j * m : (j + 1) * m] = lo[j]
        flat_hi[j * m : (j + 1) * m] = hi[j]
    new_lo = np.empty(n * m, dtype=np.int64)
    new_hi = np.empty(n * m, dtype=np.int64)
    advance_batch(bits, ranks, Z, start_of, C, flat_lo, flat_hi, cand.ravel(), new_lo, new_hi)
    for j in range(n):
        for i in range(m):
            out[j, i] = new_hi[j * m + i] - new_lo[j * m + i]


@nb.njit(cache=True)
def bigram_table(bits, ranks, Z, C, dtype_probe):
    """Distinct followers of every single symbol, as CSR over symbols (the depth-1 cache)."""
    sigma = C.shape[0] - 2
    ptr = np.zeros(sigma + 2, dtype=np.int64)
    none = np.empty(0, dtype=np.int64)
    k = 0
    for c in range(0, sigma + 1):
        if c > 0 and C[c + 1] > C[c]:
            k = range_symbols(bits, ranks, Z, C[c], C[c + 1], none, none, k, 0)
        ptr[c + 1] = k
    sym = np.empty(k, dtype=dtype_probe.dtype)
    for c in range(1, sigma + 1):
        if C[c + 1] > C[c]:
            range_symbols(bits, ranks, Z, C[c], C[c + 1], sym, none, ptr[c], 1)
    return ptr, sym


@nb.njit(cache=True)
def locate_docs(bits, ranks, Z, start_of, C, eos_doc, eos, lo, hi, limit):
    """Documents of the occurrences in rows `[lo, lo + limit)`, unsorted, one entry per occurrence.

    Instead of sampled suffix-array values, each occurrence walks forward in text order (LF steps) to the
    EOS that ends its document; the EOS rows form one block `[C[eos], C[eos + 1])` and `eos_doc` maps that
    block to documents. This costs the distance to the document's end and no space beyond 4 B/document.
    The walks are independent: they step together, a level at a time, each walk's lines fetched
    `PREFETCH_AHEAD` walks before it is read, so that their cache misses overlap.
    """
    end = min(hi, lo + limit)
    n = max(end - lo, 0)
    out = np.full(n, -1, dtype=np.int64)
    e0 = C[eos]
    e1 = C[eos + 1]
    nlev = bits.shape[0]
    walk = np.empty(n, dtype=np.int64)  # the occurrence each active walk belongs to
    row = np.empty(n, dtype=np.int64)
    sym = np.empty(n, dtype=np.int64)
    k = 0
    for j in range(n):
        if e0 <= lo + j < e1:
            out[j] = eos_doc[lo + j - e0]
        else:
            walk[k] = j
            row[k] = lo + j
            k += 1
    while k > 0:
        for i in range(k):
            sym[i] = 0
        for lvl in range(nlev):  # one LF step of every active walk (`lf`), a level at a time
            for i in range(min(PREFETCH_AHEAD, k)):
                prefetch(ranks, lvl, row[i] >> 8)
                prefetch(bits, lvl, row[i] >> 6)
            for i in range(k):
                if i + PREFETCH_AHEAD < k:
                    prefetch(ranks, lvl, row[i + PREFETCH_AHEAD] >> 8)
                    prefetch(bits, lvl, row[i + PREFETCH_AHEAD] >> 6)
                r = row[i]
                r1 = rank1(bits, ranks, lvl, r)
                if (bits[lvl, r >> 6] >> np.uint64(r & 63)) & np.uint64(1):
                    row[i] = Z[lvl] + r1
                    sym[i] = (sym[i] << 1) | 1
                else:
                    row[i] = r - r1
                    sym[i] = sym[i] << 1
        kept = 0
        for i in range(k):
            c = sym[i]
            if c == 0:  # the sentinel: past the last document; cannot happen for a valid row
                continue
            r = C[c] + row[i] - start_of[c]
            if e0 <= r < e1:
                out[walk[i]] = eos_doc[r - e0]
            else:
                walk[kept] = walk[i]
                row[kept] = r
                kept += 1
        k = kept
    return out


@nb.njit(cache=True)
def extract_doc(bits, ranks, Z, start_of, C, eos, row, out):
    """Read a document's symbols forward from the row that precedes it; returns how many were written."""
    k = 0
    while True:
        c, nxt = lf(bits, ranks, Z, start_of, C, row)
        if c == eos or c == 0:
            return k
        if k >= out.shape[0]:
            return -1
        out[k] = c
        k += 1
        row = nxt


# ---- construction ----------------------------------------------------------------------------------


@nb.njit(cache=True)
def bwt_in_place(R, buf):
    """The BWT of `R`, written over its suffix array.

    `out[0] = R[n-1]` (the empty suffix's row), `out[1 + j] = R[SA[j] - 1]` or the sentinel 0.
    `buf[:n]` (int32) holds the suffix array `SA`; `out` is the first `n + 1` symbols of `buf`'s bytes, viewed
    as `R`'s dtype (`buf` has at least `n + 1` entries). Symbol `j + 1` ends within entry `j + 1`, so that entry
    is read before it is written.
    """
    n = R.shape[0]
    out = buf.view(R.dtype)
    ahead = buf[0]
    for j in range(n):
        p = ahead
        if j + 1 < n:
            ahead = buf[j + 1]
        out[j + 1] = R[p - 1] if p > 0 else 0
    out[0] = R[n - 1]


@nb.njit(cache=True)
def eos_positions_to_docs(n, doc_starts, eos):
    """In place: the reversed-text position of each EOS row's suffix becomes the document that EOS ends.

    Document d's EOS is at text position `doc_starts[d + 1] - 1`; the reversed text (`n` symbols) puts it at
    `n - 1 - pos`.
    """
    n_docs = doc_starts.shape[0] - 1
    for i in range(eos.shape[0]):
        t = n - 1 - np.int64(eos[i])
        lo = 0
        hi = n_docs
        while lo < hi:
            m = (lo + hi) >> 1
            if doc_starts[m + 1] - 1 < t:
                lo = m + 1
            else:
                hi = m
        eos[i] = lo


@nb.njit(cache=True)
def wavelet_level(cur, nxt, lvl_bit, words, ranks_row):
    """Pack bit `lvl_bit` of `cur` into `words`, fill the block ranks, stably partition into `nxt`.

    Returns the number of zeros of the level.
    """
    n = cur.shape[0]
    for w in range(words.shape[0]):
        words[w] = 0
    zeros = 0
    for i in range(n):
        if (cur[i] >> lvl_bit) & 1:
            words[i >> 6] |= np.uint64(1) << np.uint64(i & 63)
        else:
            zeros += 1
    ones_seen = 0
    for blk in range(ranks_row.shape[0]):
        ranks_row[blk] = ones_seen
        for w in range(blk * 4, min(blk * 4 + 4, words.shape[0])):
            ones_seen += _popcount(words[w])
    zi = 0
    oi = zeros
    for i in range(n):
        if (cur[i] >> lvl_bit) & 1:
            nxt[oi] = cur[i]
            oi += 1
        else:
            nxt[zi] = cur[i]
            zi += 1
    return zeros


@nb.njit(cache=True)
def symbol_starts(bits, ranks, Z, sigma):
    """`start_of[c]`: where the run of symbol `c` begins in the final order (index 0 mapped down)."""
    out = np.empty(sigma + 1, dtype=np.int64)
    for c in range(sigma + 1):
        out[c] = map_down(bits, ranks, Z, c, 0)
    return out


@nb.njit(cache=True)
def search(bits, ranks, Z, start_of, C, lo, hi, pattern):
    """Row range of the clue `pattern` (consumed left to right) in one call."""
    for d in range(pattern.shape[0]):
        lo, hi = backward_step(bits, ranks, Z, start_of, C, lo, hi, pattern[d])
    return lo, hi


# ---- decoding: the best-scored followers -----------------------------------------------------------


PREFETCH_BATCH = 8
"""Queued nodes a best-first search takes at once: their rows' cache lines are fetched together."""


@nb.njit(cache=True)
def best_next(
    bits,
    ranks,
    Z,
    C,
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
    listed; more frequent ones: best-first over the wavelet matrix, where a node is a level, a
    symbol prefix and its row range, keyed by the best score under the prefix (among the clue's last
    token's followers, `sel.BIGRAM_MASK_SHARE`). With `deep_only` (a shard after the first of a sharded KB),
    clues of depth 0 and 1 are left to the first shard, and each beam extends the candidates the earlier
    shards left in `out_tok` (a token found again is kept once), pruning against them from the start.

    `keys[j]` / `trees[j]` hold beam j's search keys and their summary once `keyed[j]` is set, kept across the
    shards of one call: made once per beam, and a later shard drops the tokens already found from them.
    """
    nlev = bits.shape[0]
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
    batch = np.empty(PREFETCH_BATCH, dtype=np.int64)
    batch_key = np.empty(PREFETCH_BATCH, dtype=np.float32)
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
            for i in range(few_symbols(bits, ranks, Z, lo[j], hi[j], few)):
                found = sel.leaf_offer(scores, row, out_tok, out_val, j, found, few[i], deep_only)
        elif lo[j] < hi[j]:
            tree = trees[j]
            if not keyed[j]:
                # the clue's followers follow its last token: key by that token's bigram row
                c = np.searchsorted(C, lo[j], side="right") - 1
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
                # take up to PREFETCH_BATCH of the best queued nodes and fetch their rows' lines at once
                m = 0
                while size > 0 and m < PREFETCH_BATCH:
                    if found == need and hkey[0] < out_val[j, need - 1]:
                        break  # no queued node holds a token that beats or ties the need-th found
                    node = hid[0]
                    batch_key[m] = hkey[0]
                    batch[m] = node
                    size = sel.heap_pop(hkey, hid, size)
                    lvl, a, b = node_l[node], node_a[node], node_b[node]
                    prefetch(ranks, lvl, a >> 8)
                    prefetch(bits, lvl, a >> 6)
                    prefetch(ranks, lvl, b >> 8)
                    prefetch(bits, lvl, b >> 6)
                    m += 1
                if m == 0:
                    break
                if nodes + 2 * m > node_l.shape[0]:
                    node_l, node_v = sel.grown(node_l, nodes), sel.grown(node_v, nodes)
                    node_a, node_b = sel.grown(node_a, nodes), sel.grown(node_b, nodes)
                if size + 2 * m > hkey.shape[0]:
                    hkey, hid = sel.grown(hkey, size), sel.grown(hid, size)
                for i in range(m):
                    if found == need and batch_key[i] < out_val[j, need - 1]:
                        continue  # pruned by what the batch's earlier nodes found
                    node = batch[i]
                    lvl, v, a, b = node_l[node], node_v[node], node_a[node], node_b[node]
                    ra = rank1(bits, ranks, lvl, a)
                    rb = rank1(bits, ranks, lvl, b)
                    for one in range(2):
                        if one:
                            ca, cb, cv = Z[lvl] + ra, Z[lvl] + rb, (v << 1) | 1
                        else:
                            ca, cb, cv = a - ra, b - rb, v << 1
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
