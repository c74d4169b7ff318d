"""Diverse group beam search and plain beam search over any causal LM, with KV caching.

transformers 5 no longer ships group beam search, so it is implemented here as the official code ran it
(HF 4.28 semantics): one forward pass per step for all beams; groups processed in order, each group's
scores lowered by `diversity_penalty` for every time an earlier group of the same query picked that token
at this step (Hamming diversity); cumulative scores include the penalties and the constraint mask; a
hypothesis ends with EOS and is scored `cumulative / (clue tokens + 1) ** length_penalty`; one pool of
`num_clues` hypotheses per query. After `max_clue_tokens` tokens only EOS may follow (a *forced* end).
Plain beam search is the same with one group.

Differences from HF, on purpose: no early stop (HF ends a query once its pool is full and `is_done`'s
heuristic says no running beam can beat it; here every beam runs to the length cap, as the spec describes
decoding); a beam slot left without any finite candidate is dead (never continued, its token not counted by
the Hamming penalty; HF keeps it at -inf with an arbitrary token and counts that token), and a group's
beams other than the first start dead (HF: -1e9). tests/decoding/test_reference_search.py checks the rest
against a naive HF 4.28 reference.

Step 0: a clue starts with neither EOS nor BOS, unless `allow_bos_eos_first_token` (the official allowed-token
function): then EOS gives an empty clue and BOS a clue that must begin a document (`DocumentStarts`).
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.decoding.constraint import IndexConstraint
from gemkr_lab.decoding.starts import DocumentStarts
from gemkr_lab.kb.index import KBIndex

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """A finished clue of one query."""

    tokens: list[int]
    """Clue token ids, EOS excluded."""
    ended_with_eos: bool
    """The model chose EOS (constrained: where the KB allowed it, i.e. the clue ends a document), not a forced
    end at the length cap or by `stop_at_count`."""
    cumulative: float
    """Sum of processed log-probs (mask and diversity penalties included), EOS's included."""
    score: float
    """Length-normalised score: the rank order of clues."""
    starts_document: bool = False
    """The clue began with BOS (`allow_bos_eos_first_token`): `tokens[0]` is BOS and the rest must begin a
    document, as the official KB's BOS + document + EOS sequences make it."""


@dataclass
class SearchResult:
    """Per query, its hypotheses sorted by score (best first); and where the time went."""

    hypotheses: list[list[Hypothesis]]
    starts: DocumentStarts | None = None
    """The documents' first tokens used for clues that began with BOS (to look them up and to reuse)."""
    model_seconds: float = 0.0
    index_seconds: float = 0.0
    steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _cache_of(output):
    """The KV cache of a forward pass (transformers 5 names it `cache`, earlier `past_key_values`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class _Pool:
    """The best `capacity` hypotheses of one query (HF's BeamHypotheses)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[Hypothesis] = []

    def add(self, hyp: Hypothesis) -> None:
        self.items.append(hyp)
        if len(self.items) > self.capacity:
            self.items.remove(min(self.items, key=lambda h: h.score))


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    config: DecodingConfig,
    eos_id: int,
    *,
    inputs_embeds: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    index: KBIndex | None = None,
    constraint: IndexConstraint | None = None,
    bos_id: int | None = None,
    starts: DocumentStarts | None = None,
) -> SearchResult:
    """Decode `config.num_clues` clues for each prompt of a left-padded batch.

    Args:
        model: a causal LM taking `inputs_embeds`/`input_ids`, `attention_mask`, `position_ids`, `cache`
            and `use_cache`, returning `.logits` and `.cache` (transformers 5 conventions).
        config: the decoding knobs.
        eos_id: the tokenizer's EOS id.
        inputs_embeds: [Q, T, H] prompt embeddings (as GeMKR feeds visual tokens), or
        input_ids: [Q, T] prompt token ids.
        attention_mask: [Q, T], 0 on left padding (default: all ones).
        index: the KB index, when `config.constrained`.
        constraint: a prepared mask builder (built from `index` if not given).
        bos_id: the tokenizer's BOS id (needed by `allow_bos_eos_first_token`).
        starts: the documents' first tokens (built from `index` when `allow_bos_eos_first_token` needs them).
    """
    prompt = inputs_embeds if inputs_embeds is not None else input_ids
    if prompt is None:
        raise ValueError("give inputs_embeds or input_ids")
    if config.constrained and index is None:
        raise ValueError("constrained decoding needs the KB index")
    official_start = config.allow_bos_eos_first_token  # step 0 as the official code: BOS and EOS allowed
    if official_start and bos_id is None:
        raise ValueError("allow_bos_eos_first_token needs the BOS id (bos_id)")
    if official_start and starts is None and index is not None:
        starts = DocumentStarts(index, config.clue_cap + 1)
    device = prompt.device
    q = prompt.shape[0]
    groups, beams = config.groups, config.beams
    per_query = groups * beams
    n = q * per_query
    if attention_mask is None:
        attention_mask = torch.ones(prompt.shape[:2], dtype=torch.long, device=device)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs = {"inputs_embeds": prompt} if inputs_embeds is not None else {"input_ids": prompt}
    t0 = time.perf_counter()
    out = model(**kwargs, attention_mask=attention_mask, position_ids=positions, use_cache=True)
    cache = _cache_of(out)
    cache.batch_repeat_interleave(per_query)
    logits = out.logits[:, -1, :].float().cpu().repeat_interleave(per_query, dim=0)
    model_seconds = time.perf_counter() - t0
    vocab = logits.shape[-1]
    mask_len = attention_mask.repeat_interleave(per_query, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(per_query, dim=0) + 1

    if config.constrained and constraint is None:
        constraint = IndexConstraint(index, vocab, config.check_top_m, config.enumerate_below)
    states = index.root_states(n) if config.constrained else None
    # every beam but the first of each group starts dead so that a group's first step picks distinct tokens
    cum = torch.full((n,), NEG_INF)
    cum.view(q, groups, beams)[:, :, 0] = 0.0
    tokens = torch.zeros((n, 0), dtype=torch.long)
    forced = np.zeros(n, dtype=bool)
    anchored = np.zeros(n, dtype=bool)  # clues that began with BOS: they follow `starts`, not the index
    start_lo, start_hi = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    pools = [_Pool(per_query) for _ in range(q)]
    needed = 2 * beams + (groups - 1) * beams if config.search == "diverse" else 2 * beams

    for step in range(config.clue_cap + 1):
        logprobs = torch.log_softmax(logits, dim=-1)
        at_cap = step == config.clue_cap
        end_now = np.full(n, at_cap) | forced
        if config.constrained:
            live = np.flatnonzero(~end_now & (cum.numpy() > NEG_INF))  # dead slots need no mask
            add = constraint.mask(states, logprobs, live[~anchored[live]], needed)
            for r in live[anchored[live]]:
                add[r, torch.as_tensor(starts.allowed(start_lo[r], start_hi[r], step - 1))] = 0.0
        else:
            add = torch.zeros_like(logprobs)
        if step == 0 and official_start:
            add[:, [bos_id, eos_id]] = 0.0
        if end_now.any():  # forced end: only EOS (not advanced in the index: it need not end a document)
            rows = torch.as_tensor(np.flatnonzero(end_now))
            add[rows] = NEG_INF
            add[rows, eos_id] = 0.0
        processed = logprobs + add
        if not config.constrained and step == 0 and not official_start:
            processed[:, eos_id] = NEG_INF  # a clue never starts with EOS
        chosen_rows = torch.empty(n, dtype=torch.long)
        chosen_tok = torch.full((n,), eos_id, dtype=torch.long)
        new_cum = torch.full((n,), NEG_INF)
        for g in range(groups):
            picked = torch.zeros((q, vocab))  # tokens chosen by earlier groups at this step, per query
            if g and config.search == "diverse" and config.diversity_penalty:
                prev = chosen_tok.view(q, groups, beams)[:, :g].reshape(q, -1)
                ok = new_cum.view(q, groups, beams)[:, :g].reshape(q, -1) > NEG_INF
                picked.scatter_add_(1, prev, ok.float())
            rows = torch.arange(q)[:, None] * per_query + g * beams + torch.arange(beams)[None, :]  # [q, B]
            scores = processed[rows] - config.diversity_penalty * picked[:, None, :]
            scores = scores + cum[rows][..., None]
            flat = scores.reshape(q, beams * vocab)
            top_v, top_i = torch.topk(flat, min(2 * beams, flat.shape[1]), dim=-1)
            for qi in range(q):
                kept = 0
                for rank in range(top_v.shape[1]):
                    value = float(top_v[qi, rank])
                    if value == NEG_INF or kept == beams:
                        break
                    src_b, tok = divmod(int(top_i[qi, rank]), vocab)
                    src = int(rows[qi, src_b])
                    if tok == eos_id:
                        if rank >= beams:  # HF: an EOS below the top `beams` candidates is not kept
                            continue
                        clue = tokens[src].tolist()
                        score = value / (len(clue) + 1) ** config.length_penalty
                        pools[qi].add(Hypothesis(clue, not end_now[src], value, score, bool(anchored[src])))
                        continue
                    dst = int(rows[qi, kept])
                    chosen_rows[dst] = src
                    chosen_tok[dst] = tok
                    new_cum[dst] = value
                    kept += 1
                for b in range(kept, beams):  # no valid continuation left for these slots
                    dst = int(rows[qi, b])
                    chosen_rows[dst] = int(rows[qi, 0])
                    new_cum[dst] = NEG_INF
        if at_cap or bool((new_cum == NEG_INF).all()):
            break
        cum = new_cum
        tokens = torch.cat([tokens[chosen_rows], chosen_tok[:, None]], dim=1)
        if official_start:
            src, tok = chosen_rows.numpy(), chosen_tok.numpy()
            anchored, start_lo, start_hi = anchored[src], start_lo[src], start_hi[src]
            if step == 0:
                anchored = tok == bos_id
                start_hi[anchored] = starts.n_docs if starts is not None else 0
            elif starts is not None:
                for r in np.flatnonzero(anchored):
                    start_lo[r], start_hi[r] = starts.advance(start_lo[r], start_hi[r], step - 1, int(tok[r]))
        if config.constrained:
            states = constraint.index.advance(states.take(chosen_rows.numpy()), chosen_tok.numpy())
            if config.stop_at_count is not None:
                counts = np.where(anchored, start_hi - start_lo, states.counts)
                forced = (counts <= config.stop_at_count) & (cum.numpy() > NEG_INF)
        t0 = time.perf_counter()
        cache.reorder_cache(chosen_rows.to(device))
        mask_len = torch.cat([mask_len, torch.ones((n, 1), dtype=mask_len.dtype, device=device)], dim=1)
        out = model(
            input_ids=chosen_tok[:, None].to(device),
            attention_mask=mask_len,
            position_ids=next_pos,
            cache=cache,
            use_cache=True,
        )
        cache = _cache_of(out)
        logits = out.logits[:, -1, :].float().cpu()
        next_pos = next_pos + 1
        model_seconds += time.perf_counter() - t0

    hyps = [sorted(p.items, key=lambda h: -h.score) for p in pools]
    return SearchResult(
        hyps,
        starts=starts,
        model_seconds=model_seconds,
        index_seconds=constraint.seconds if constraint else 0.0,
        steps=step + 1,
    )
