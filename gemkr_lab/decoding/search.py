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

Per step, the model's log-probabilities stay on its device; `constraint.step_candidates` hands the search each
beam's best `needed` allowed tokens (the only ones a group can pick), and the groups choose among those on the
host (`_groups.select_groups`), in float32 as the tensors did.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.decoding._groups import select_groups
from gemkr_lab.decoding.constraint import IndexConstraint, StepRows, step_candidates
from gemkr_lab.decoding.starts import DocumentStarts
from gemkr_lab.kb.index import KBIndex


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
    scores_on_host: bool | None = None,
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
        constraint: the index's part of each step (built from `index` if not given).
        bos_id: the tokenizer's BOS id (needed by `allow_bos_eos_first_token`).
        starts: the documents' first tokens (built from `index` when `allow_bos_eos_first_token` needs them).
        scores_on_host: pick each beam's candidates from log-probabilities read on the host (default: when the
            model runs on the CPU); False keeps log-softmax, mask and top-k on the model's device and copies
            only candidate ids and values to the host (`constraint.step_candidates`).
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
    logits = out.logits[:, -1, :].float().repeat_interleave(per_query, dim=0)  # stays on the model's device
    model_seconds = time.perf_counter() - t0
    vocab = logits.shape[-1]
    mask_len = attention_mask.repeat_interleave(per_query, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(per_query, dim=0) + 1

    if config.constrained and constraint is None:
        constraint = IndexConstraint(index, vocab, config.check_top_m, config.enumerate_below)
    states = index.root_states(n) if config.constrained else None
    # every beam but the first of each group starts dead so that a group's first step picks distinct tokens
    cum = np.full(n, -np.inf, dtype=np.float32)
    cum.reshape(q, groups, beams)[:, :, 0] = 0.0
    tokens = np.zeros((n, 0), dtype=np.int64)
    forced = np.zeros(n, dtype=bool)
    anchored = np.zeros(n, dtype=bool)  # clues that began with BOS: they follow `starts`, not the index
    start_lo, start_hi = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    pools = [_Pool(per_query) for _ in range(q)]
    # each beam's best `needed` allowed tokens hold every candidate a group can pick: its best 2 x beams, plus
    # the tokens earlier groups may have penalised
    needed = 2 * beams + (groups - 1) * beams if config.search == "diverse" else 2 * beams
    penalty = np.float32(config.diversity_penalty if config.search == "diverse" else 0.0)
    eos_only = np.array([eos_id], dtype=np.int64)
    chosen_rows, chosen_tok = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    new_cum, done_src, done_val = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64), np.empty(n, np.float32)

    for step in range(config.clue_cap + 1):
        logprobs = torch.log_softmax(logits, dim=-1)
        at_cap = step == config.clue_cap
        end_now = np.full(n, at_cap) | forced
        alive = cum > -np.inf  # dead slots need no candidates
        live = np.flatnonzero(~end_now & alive)
        # forced end: only EOS (not advanced in the index: it need not end a document)
        listed = {int(r): eos_only for r in np.flatnonzero(end_now & alive)}
        official_first = step == 0 and official_start
        if config.constrained:
            for r in live[anchored[live]]:
                listed[int(r)] = starts.allowed(start_lo[r], start_hi[r], step - 1)
            also = (bos_id, eos_id) if official_first else ()
            rows = StepRows(indexed=live[~anchored[live]], listed=listed, also=also)
        else:  # a clue never starts with EOS (unless the official step 0 allows it)
            rows = StepRows(listed=listed, free=live, banned=eos_id if step == 0 and not official_start else -1)
        cand_tok, cand_val = step_candidates(logprobs, needed, rows, states, constraint, on_host=scores_on_host)
        n_done = select_groups(
            cand_tok, cand_val, cum, q, groups, beams, penalty, eos_id, vocab,
            chosen_rows, chosen_tok, new_cum, done_src, done_val,
        )  # fmt: skip
        for src, value in zip(done_src[:n_done].tolist(), done_val[:n_done].tolist(), strict=True):
            clue = tokens[src].tolist()
            score = value / (len(clue) + 1) ** config.length_penalty
            pools[src // per_query].add(Hypothesis(clue, not end_now[src], value, score, bool(anchored[src])))
        if at_cap or bool((new_cum == -np.inf).all()):
            break
        cum = new_cum.copy()
        src, tok = chosen_rows.copy(), chosen_tok.copy()
        tokens = np.concatenate([tokens[src], tok[:, None]], axis=1)
        if official_start:
            anchored, start_lo, start_hi = anchored[src], start_lo[src], start_hi[src]
            if step == 0:
                anchored = tok == bos_id
                start_hi[anchored] = starts.n_docs if starts is not None else 0
            elif starts is not None:
                for r in np.flatnonzero(anchored):
                    start_lo[r], start_hi[r] = starts.advance(start_lo[r], start_hi[r], step - 1, int(tok[r]))
        if config.constrained:
            states = constraint.index.advance(states.take(src), tok)
            if config.stop_at_count is not None:
                counts = np.where(anchored, start_hi - start_lo, states.counts)
                forced = (counts <= config.stop_at_count) & (cum > -np.inf)
        t0 = time.perf_counter()
        cache.reorder_cache(torch.as_tensor(src, device=device))
        mask_len = torch.cat([mask_len, torch.ones((n, 1), dtype=mask_len.dtype, device=device)], dim=1)
        out = model(
            input_ids=torch.as_tensor(tok[:, None], device=device),
            attention_mask=mask_len,
            position_ids=next_pos,
            cache=cache,
            use_cache=True,
        )
        cache = _cache_of(out)
        logits = out.logits[:, -1, :].float()
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
