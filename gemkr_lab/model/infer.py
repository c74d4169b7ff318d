"""Inference: the model's prompt embeddings go to the constrained clue decoder, batch by batch.

With `DecodingConfig.llm_in_8bit` the LLM is quantised to 8 bits on the GPU first, as the official evaluation.
"""

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.decoding import ClueDecoder, QueryRecord
from gemkr_lab.kb.index import KBIndex
from gemkr_lab.model.gemkr import Batch, GeMKR, prepare_8bit_evaluation


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
    if config.llm_in_8bit:
        model = prepare_8bit_evaluation(model)
    model.eval()
    device = next(model.parameters()).device
    decoder = ClueDecoder(model.llm, index, config, tokenizer=tokenizer)
    records: list[QueryRecord] = []
    for batch in tqdm(batches, desc="decode", disable=None if progress is None else not progress):
        if batch.images.device != device:  # the model's device (the GPU when decoding in 8 bits)
            batch = dataclasses.replace(batch, images=batch.images.to(device), objects=batch.objects.to(device))
        embeds, mask = model.prompt_embeds(batch)
        records += decoder.decode(batch.qids, inputs_embeds=embeds, attention_mask=mask)
    return records
