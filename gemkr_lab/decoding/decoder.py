"""`ClueDecoder`: prompts in, per-query records (clues, scores, counts, documents) and TREC runs out."""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.decoding.clues import QueryRecord, map_clues
from gemkr_lab.decoding.constraint import IndexConstraint
from gemkr_lab.decoding.search import beam_search
from gemkr_lab.decoding.starts import DocumentStarts
from gemkr_lab.io import write_jsonl
from gemkr_lab.kb.index import KBIndex
from gemkr_lab.metrics.trec import write_run


class ClueDecoder:
    """Decode knowledge clues with any causal LM over a KB index and map them to documents.

    Args:
        model: a transformers causal LM (a peft-wrapped one too), fed `inputs_embeds` or `input_ids`.
        index: the KB index the clues must occur in (and are looked up in).
        config: decoding knobs; defaults reproduce the official code.
        tokenizer: optional, to record each clue's text.
    """

    def __init__(self, model: torch.nn.Module, index: KBIndex, config: DecodingConfig, tokenizer: Any = None):
        self.model = model
        self.index = index
        self.config = config
        self.tokenizer = tokenizer
        self._constraint: IndexConstraint | None = None
        self._starts: DocumentStarts | None = None  # built by the search when clues may begin with BOS
        bos = getattr(tokenizer, "bos_token_id", None)
        self._bos_id = bos if bos is not None else getattr(getattr(model, "config", None), "bos_token_id", None)

    def _constraint_for(self, vocab: int) -> IndexConstraint:
        if self._constraint is None or self._constraint.vocab_size != vocab:
            cfg = self.config
            self._constraint = IndexConstraint(self.index, vocab, cfg.check_top_m, cfg.enumerate_below)
        return self._constraint

    def decode(
        self,
        qids: Sequence[str],
        *,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> list[QueryRecord]:
        """Decode one left-padded batch of prompts; one record per query id."""
        started = time.perf_counter()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        constraint = self._constraint_for(vocab) if self.config.constrained else None
        index_before = constraint.seconds if constraint else 0.0
        result = beam_search(
            self.model,
            self.config,
            self.index.eos_id,
            inputs_embeds=inputs_embeds,
            input_ids=input_ids,
            attention_mask=attention_mask,
            index=self.index,
            constraint=constraint,
            bos_id=self._bos_id,
            starts=self._starts,
        )
        self._starts = result.starts
        decode = (lambda ids: self.tokenizer.decode(ids)) if self.tokenizer is not None else None
        records = []
        elapsed = time.perf_counter() - started
        per_query = {
            "decode_ms": 1000 * elapsed / len(qids),
            "model_ms": 1000 * result.model_seconds / len(qids),
            "index_ms": 1000 * ((constraint.seconds - index_before) if constraint else 0.0) / len(qids),
        }
        for qid, hyps in zip(qids, result.hypotheses, strict=True):
            clues, ranked = map_clues(hyps, self.index, self.config, decode, starts=result.starts)
            ids = [self.index.corpus_id(d) for d in ranked]
            records.append(QueryRecord(str(qid), clues, ranked, ids, dict(per_query)))
        return records


def write_records(path: str | Path, records: Sequence[QueryRecord]) -> None:
    """Per-query records as JSONL, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, (r.to_json() for r in records))


def write_records_run(path: str | Path, records: Sequence[QueryRecord], tag: str = "gemkr") -> None:
    """The ranked corpus ids of every record as a TREC run (for `gemkr-lab score`)."""
    write_run(path, {r.qid: r.ranked_ids for r in records}, tag=tag)
