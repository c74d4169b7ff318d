"""Inference: the model's prompt embeddings go to the constrained clue decoder, batch by batch."""

from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.decoding import ClueDecoder, QueryRecord
from gemkr_lab.kb.index import KBIndex
from gemkr_lab.model.gemkr import Batch, GeMKR


@torch.no_grad()
def decode_batches(
    model: GeMKR,
    batches: Iterable[Batch],
    index: KBIndex,
    config: DecodingConfig,
    tokenizer: Any = None,
    progress: bool | None = None,
) -> list[QueryRecord]:
    """Clues, scores, counts and ranked documents for every query of `batches`."""
    model.eval()
    decoder = ClueDecoder(model.llm, index, config, tokenizer=tokenizer)
    records: list[QueryRecord] = []
    for batch in tqdm(batches, desc="decode", disable=None if progress is None else not progress):
        embeds, mask = model.prompt_embeds(batch)
        records += decoder.decode(batch.qids, inputs_embeds=embeds, attention_mask=mask)
    return records
