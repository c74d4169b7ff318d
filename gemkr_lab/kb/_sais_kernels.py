"""Numba kernels of an induced-sorting suffix sort (SA-IS) for integer texts, in the suffix array's own space.

The SA-IS algorithm of Nong, Zhang and Chan, laid out as in Yuta Mori's sais-lite: the reduced problem (the
names of the LMS substrings) and its suffix array live in the output array itself, and the bucket arrays
take the array's free space when there is some. So a text of `n` symbols sorts in its own `n` int32 entries
plus O(alphabet) words: 4 B/token beside the text, half of what a byte-level sort of 16-bit symbols needs.

A suffix that is a prefix of another sorts first (a virtual sentinel smaller than every symbol ends the
text), the order of `libdivsufsort` and of the index. `suffix_array.sais` drives the levels; these kernels
are its stages. Entries are int32; a negative entry `~p` marks position `p` for the next pass.
"""

import numba as nb
import numpy as np

from gemkr_lab.kb import _kernel_cache  # noqa: F401  (stamps the cached kernels by every kernel source)


@nb.njit(cache=True)
def counts(T, C):
    """`C[c]`: occurrences of symbol `c` in `T`."""
    C[:] = 0
    for i in range(T.shape[0]):
        C[np.int64(T[i])] += 1


@nb.njit(cache=True)
def bucket_bounds(C, B, end):
    """`B[c]`: where bucket `c` ends (`end`) or starts."""
    total = np.int64(0)
    for c in range(C.shape[0]):
        total += C[c]
        B[c] = total if end else total - C[c]


@nb.njit(cache=True)
def seed_lms(T, SA, B):
    """Clear `SA[:n]`; put every LMS position but the leftmost at its bucket's end, as position - 1.

    `B` holds the bucket ends. Returns `(m, last, slot)`: the number of LMS positions, the leftmost one
    minus 1 and the slot kept for it.
    """
    n = T.shape[0]
    for i in range(n):
        SA[i] = 0
    slot = np.int64(-1)
    j = np.int64(n)
    m = 0
    i = np.int64(n - 1)
    c0 = np.int64(T[n - 1])
    c1 = c0
    while True:  # the trailing run of L-type positions
        c1 = c0
        i -= 1
        if i < 0:
            break
        c0 = np.int64(T[i])
        if c0 < c1:
            break
    while i >= 0:
        while True:  # an S-type run
            c1 = c0
            i -= 1
            if i < 0:
                break
            c0 = np.int64(T[i])
            if c0 > c1:
                break
        if i >= 0:  # position i + 1 is LMS
            if slot >= 0:
                SA[slot] = j
            B[c1] -= 1
            slot = np.int64(B[c1])
            j = i
            m += 1
            while True:  # an L-type run
                c1 = c0
                i -= 1
                if i < 0:
                    break
                c0 = np.int64(T[i])
                if c0 < c1:
                    break
    return m, j, slot


@nb.njit(cache=True)
def sort_lms_substrings(T, SA, C, B, shared):
    """Induce the order of the LMS substrings from the seeds: afterwards only LMS entries (as `~p`) remain.

    `shared`: `C` and `B` are one array, so the counts are recomputed before each pass.
    """
    n = T.shape[0]
    if shared:
        counts(T, C)
    bucket_bounds(C, B, False)
    j = np.int64(n - 1)
    c1 = np.int64(T[j])
    bb = np.int64(B[c1])
    j -= 1
    SA[bb] = ~j if np.int64(T[j]) < c1 else j
    bb += 1
    for i in range(n):
        j = np.int64(SA[i])
        if j > 0:
            c0 = np.int64(T[j])
            if c0 != c1:
                B[c1] = bb
                c1 = c0
                bb = np.int64(B[c1])
            j -= 1
            SA[bb] = ~j if np.int64(T[j]) < c1 else j
            bb += 1
            SA[i] = 0
        elif j < 0:
            SA[i] = ~j
    if shared:
        counts(T, C)
    bucket_bounds(C, B, True)
    c1 = np.int64(0)
    bb = np.int64(B[c1])
    for i in range(n - 1, -1, -1):
        j = np.int64(SA[i])
        if j > 0:
            c0 = np.int64(T[j])
            if c0 != c1:
                B[c1] = bb
                c1 = c0
                bb = np.int64(B[c1])
            j -= 1
            bb -= 1
            SA[bb] = ~(j + 1) if np.int64(T[j]) > c1 else j
            SA[i] = 0


@nb.njit(cache=True)
def name_lms_substrings(T, SA, m):
    """Compact the sorted LMS positions into `SA[:m]` and name their substrings (names at `SA[m + p // 2]`).

    Returns the number of distinct names (1-based names; equal substrings share one).
    """
    n = T.shape[0]
    i = 0
    while True:
        p = np.int64(SA[i])
        if p >= 0:
            break
        SA[i] = ~p
        i += 1
    if i < m:
        j = i
        i += 1
        while True:
            p = np.int64(SA[i])
            if p < 0:
                SA[j] = ~p
                j += 1
                SA[i] = 0
                if j == m:
                    break
            i += 1
    # the length of every LMS substring (to the next LMS position, inclusive)
    i = np.int64(n - 1)
    j = np.int64(n - 1)
    c0 = np.int64(T[n - 1])
    c1 = c0
    while True:
        c1 = c0
        i -= 1
        if i < 0:
            break
        c0 = np.int64(T[i])
        if c0 < c1:
            break
    while i >= 0:
        while True:
            c1 = c0
            i -= 1
            if i < 0:
                break
            c0 = np.int64(T[i])
            if c0 > c1:
                break
        if i >= 0:
            SA[m + ((i + 1) >> 1)] = j - i
            j = i + 1
            while True:
                c1 = c0
                i -= 1
                if i < 0:
                    break
                c0 = np.int64(T[i])
                if c0 < c1:
                    break
    name = 0
    q = np.int64(n)
    qlen = np.int64(0)
    for i in range(m):
        p = np.int64(SA[i])
        plen = np.int64(SA[m + (p >> 1)])
        diff = True
        if plen == qlen and q + plen < n:
            k = 0
            while k < plen and T[p + k] == T[q + k]:
                k += 1
            if k == plen:
                diff = False
        if diff:
            name += 1
            q = p
            qlen = plen
        SA[m + (p >> 1)] = name
    return name


@nb.njit(cache=True)
def gather_names(SA, m, n, RA):
    """The reduced text: the names of the LMS substrings in text order, 0-based, into `RA` (`m` entries)."""
    j = m - 1
    for i in range(m + (n >> 1) - 1, m - 1, -1):
        if SA[i] != 0:
            RA[j] = SA[i] - 1
            j -= 1


@nb.njit(cache=True)
def lms_positions(T, RA):
    """`RA[r]`: the text position of the `r`-th LMS position, left to right."""
    n = T.shape[0]
    j = RA.shape[0] - 1
    i = np.int64(n - 1)
    c0 = np.int64(T[n - 1])
    c1 = c0
    while True:
        c1 = c0
        i -= 1
        if i < 0:
            break
        c0 = np.int64(T[i])
        if c0 < c1:
            break
    while i >= 0:
        while True:
            c1 = c0
            i -= 1
            if i < 0:
                break
            c0 = np.int64(T[i])
            if c0 > c1:
                break
        if i >= 0:
            RA[j] = i + 1
            j -= 1
            while True:
                c1 = c0
                i -= 1
                if i < 0:
                    break
                c0 = np.int64(T[i])
                if c0 < c1:
                    break


@nb.njit(cache=True)
def map_reduced(SA, RA, m):
    """`SA[i] = RA[SA[i]]` for the first `m` entries: reduced suffixes back to text positions."""
    for i in range(m):
        SA[i] = RA[SA[i]]


@nb.njit(cache=True)
def place_lms(T, SA, B, m):
    """Move the `m` sorted LMS positions of `SA[:m]` to the ends of their buckets; clear the rest.

    `B` holds the bucket ends.
    """
    n = T.shape[0]
    i = m - 1
    j = np.int64(n)
    p = np.int64(SA[m - 1])
    c1 = np.int64(T[p])
    while True:
        c0 = c1
        q = np.int64(B[c0])
        while q < j:
            j -= 1
            SA[j] = 0
        while True:
            j -= 1
            SA[j] = p
            i -= 1
            if i < 0:
                break
            p = np.int64(SA[i])
            c1 = np.int64(T[p])
            if c1 != c0:
                break
        if i < 0:
            break
    while j > 0:
        j -= 1
        SA[j] = 0


@nb.njit(cache=True)
def induce(T, SA, C, B, shared):
    """Induce the whole suffix array from the LMS positions at their buckets' ends."""
    n = T.shape[0]
    if shared:
        counts(T, C)
    bucket_bounds(C, B, False)
    j = np.int64(n - 1)
    c1 = np.int64(T[j])
    bb = np.int64(B[c1])
    SA[bb] = ~j if (j > 0 and np.int64(T[j - 1]) < c1) else j
    bb += 1
    for i in range(n):
        j = np.int64(SA[i])
        SA[i] = ~j
        if j > 0:
            j -= 1
            c0 = np.int64(T[j])
            if c0 != c1:
                B[c1] = bb
                c1 = c0
                bb = np.int64(B[c1])
            SA[bb] = ~j if (j > 0 and np.int64(T[j - 1]) < c1) else j
            bb += 1
    if shared:
        counts(T, C)
    bucket_bounds(C, B, True)
    c1 = np.int64(0)
    bb = np.int64(B[c1])
    for i in range(n - 1, -1, -1):
        j = np.int64(SA[i])
        if j > 0:
            j -= 1
            c0 = np.int64(T[j])
            if c0 != c1:
                B[c1] = bb
                c1 = c0
                bb = np.int64(B[c1])
            bb -= 1
            SA[bb] = ~j if (j == 0 or np.int64(T[j - 1]) > c1) else j
        else:
            SA[i] = ~j
