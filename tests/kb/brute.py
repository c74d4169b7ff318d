"""A brute-force n-gram reference for the index's answers: obviously right, hopelessly slow."""

import numpy as np


class BruteForceKB:
    def __init__(self, docs, eos_id):
        self.docs = [list(map(int, d)) for d in docs]
        self.eos = eos_id

    def _occurrences(self, seq):
        """(doc, start) of every occurrence of `seq` (EOS only as its last token: at a document's end)."""
        seq = list(map(int, seq))
        if self.eos in seq[:-1]:
            return []
        at_end = bool(seq) and seq[-1] == self.eos
        body = seq[:-1] if at_end else seq
        n = len(body)
        hits = []
        for d, doc in enumerate(self.docs):
            starts = [len(doc) - n] if at_end else range(len(doc) - n + 1)
            for i in starts:
                if i >= 0 and doc[i : i + n] == body:
                    hits.append((d, i))
        return hits

    def next_tokens(self, prefix):
        prefix = list(map(int, prefix))
        if not prefix:
            return np.array(sorted({t for doc in self.docs for t in doc}), dtype=np.int64)
        if prefix[-1] == self.eos:
            return np.empty(0, dtype=np.int64)
        out = set()
        for d, i in self._occurrences(prefix):
            j = i + len(prefix)
            out.add(self.docs[d][j] if j < len(self.docs[d]) else self.eos)
        return np.array(sorted(out), dtype=np.int64)

    def count(self, seq):
        return len(self._occurrences(seq))

    def docs_of(self, seq):
        return np.array(sorted({d for d, _ in self._occurrences(seq)}), dtype=np.int64)
