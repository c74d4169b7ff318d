"""From clues to a ranked document list, and the per-query record kept for error analysis.

Policies (`DecodingConfig.clue_to_docs`):
- `first`: each clue retrieves one document, the first that contains it in corpus order. The official code
  takes the document of the first suffix-array row, an arbitrary choice among several; corpus order makes
  the answer independent of the index backend. Ambiguous 9-token clues are rare.
- `unique`: a clue found in more than one document retrieves nothing (the paper's description).
- `all`: every containing document; clues by score, ties by fewer occurrences first.
The ranked list is deduplicated in clue-score order. A clue that began with BOS (`allow_bos_eos_first_token`)
retrieves the documents that begin with the rest of it.
"""

from dataclasses import asdict, dataclass, field

from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.decoding.search import Hypothesis
from gemkr_lab.decoding.starts import DocumentStarts
from gemkr_lab.kb.index import KBIndex


@dataclass
class ClueRecord:
    """One decoded clue and what it retrieved."""

    tokens: list[int]
    text: str
    score: float
    ended_with_eos: bool
    count: int
    """Occurrences in the KB of the clue as matched (only at documents' ends when it ended with EOS and was
    decoded constrained or with `unconstrained_eos_at_document_end`; anywhere otherwise)."""
    docs: list[int]
    """Positional ids of the documents it retrieved under the policy."""
    n_docs_containing: int
    """Distinct documents found containing it (up to the locate limit)."""


@dataclass
class QueryRecord:
    """Everything decoded for one query: clues in score order and the ranked documents."""

    qid: str
    clues: list[ClueRecord]
    ranked_docs: list[int]
    ranked_ids: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-ready dict (one line of a records file)."""
        return asdict(self)


def map_clues(
    hypotheses: list[Hypothesis],
    index: KBIndex,
    config: DecodingConfig,
    decode=None,
    starts: DocumentStarts | None = None,
) -> tuple[list[ClueRecord], list[int]]:
    """Look each clue up and rank documents by the policy; returns the clue records and the ranked list.

    `starts` (the search's) looks up the clues that began with BOS.
    """
    records = []
    for h in hypotheses:
        key = list(h.tokens[1:] if h.starts_document else h.tokens)
        # a generated EOS restricts the match to documents' ends: always when constrained (the KB allowed EOS
        # only there, and the official code keeps it); unconstrained only on request, since a free clue's EOS
        # just ends the clue (models learn mid-document spans followed by EOS)
        if h.ended_with_eos and (config.constrained or config.unconstrained_eos_at_document_end):
            key.append(index.eos_id)
        if h.starts_document:
            if starts is None:
                raise ValueError("a clue that began with BOS needs the documents' starts (SearchResult.starts)")
            begin = starts.docs(key)  # each document begins once: occurrences are documents
            count, found = len(begin), begin[: config.docs_per_clue_limit].tolist()
        else:
            count = index.count(key) if key else 0  # 0 for ids outside the KB's vocabulary too
            found = index.docs(key, limit=config.docs_per_clue_limit).tolist() if count else []
        if config.clue_to_docs == "first":
            docs = found[:1]
        elif config.clue_to_docs == "unique":
            certain = count <= config.docs_per_clue_limit
            docs = found if certain and len(found) == 1 else []
        else:
            docs = found
        text = decode(h.tokens) if decode is not None else ""
        records.append(ClueRecord(h.tokens, text, h.score, h.ended_with_eos, count, docs, len(found)))
    order = sorted(range(len(records)), key=lambda i: (-records[i].score, records[i].count))
    ranked = list(dict.fromkeys(d for i in order for d in records[i].docs))
    return records, ranked
