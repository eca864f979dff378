"""Autoregressive, linear and quadratic decoding with one shared verification pass (DESIGN §5).

Every pass feeds `tokens = [t_0, d_1 .. d_m]` (t_0 the newest verified token, not yet in the KV
cache; d_i the drafts) followed by k-mask groups anchored at some of those tokens. The methods
differ only in the anchors:
- autoregressive: none (m = 0 always);
- linear: one group after the last token, valid only if every draft is accepted;
- quadratic: one group after t_0 and after each of the first g-1 drafts (g = k+1: the paper's
  layout), so the group after the last accepted token survives whatever prefix is accepted.
The first pass (prefill) feeds the whole prompt as `tokens`, with no drafts.

Drafts come from the mask group after the last accepted token; with `lookup` on, a pass whose
context ends in an n-gram seen earlier verifies the tokens that followed it instead (prompt lookup,
Saxena 2023), still with the method's mask groups after them. Any drafts keep the output exact.

Greedy (temperature 0) accepts a draft iff it equals the model's argmax, so the output is token for
token the base model's greedy output. Sampling uses speculative-sampling acceptance with the
sampler's distribution as the proposal q, so the output distribution is the base model's.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from .adapter import MTPModel
from .layouts import group_rows, step_layout
from .trace import Step, Trace

METHODS = ("autoregressive", "linear", "quadratic")

# Test hook: (step_index, context_ids, k) -> k draft tokens to propose instead of the model's, or None.
DraftOverride = Callable[[int, list[int], int], "list[int] | None"]


def distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                 top_p: float | None = None) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p (nucleus) filtering; logits (..., V)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always the top token).
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


class Sampling:
    """Temperature / top-k / top-p settings and the seeded generator; temperature 0 is greedy."""

    def __init__(self, temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
                 device: torch.device) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return distribution(logits, self.temperature, self.top_k, self.top_p)

    def draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator, device=self.generator.device))


def accept(target_logits: torch.Tensor, drafts: Sequence[int], draft_probs: torch.Tensor | None,
           sampling: Sampling) -> tuple[int, int]:
    """How many drafts to accept, and the bonus token that follows them.

    target_logits (m+1, V): the model's next-token logits after t_0, d_1 .. d_m.
    draft_probs (m, V): the proposal q each draft was sampled from (None under greedy).
    """
    if sampling.greedy:
        predicted = target_logits.argmax(-1).tolist()
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == predicted[accepted]:
            accepted += 1
        return accepted, predicted[accepted]
    p = sampling.probs(target_logits)
    for i, draft in enumerate(drafts):
        q = draft_probs[i]
        if sampling.uniform() * float(q[draft]) < float(p[i, draft]):  # u < p/q without dividing by 0
            continue
        residual = (p[i] - q).clamp_(min=0)
        # residual is 0 only where p == q, where rejection has probability 0: guard rounding.
        return i, sampling.draw(residual if float(residual.sum()) > 0 else p[i])
    return len(drafts), sampling.draw(p[len(drafts)])


# One lm_head call on r rows has a fixed cost (reading the 28M-parameter head) and a small cost per
# row: on 2 CPU cores ~6.5 ms + ~0.4 ms per row up to ~32 rows with oneDNN re-packing the weight
# every call, ~1.4 ms + ~0.1 ms per row with it packed once (docs/bench/step14793_defaults). So while
# the rows stay few, verify computes the mask groups' logits in the same call as the verified rows
# instead of a second call for the surviving group.
MERGED_LOGITS_MAX_ROWS = 32


def verify(model: MTPModel, cache: DynamicCache, cached: int, tokens: Sequence[int], drafts: Sequence[int],
           draft_probs: torch.Tensor | None, group_offsets: Sequence[int], k: int,
           sampling: Sampling) -> tuple[int, int, torch.Tensor | None, torch.Tensor | None, int]:
    """One forward pass shared by all methods: verify `drafts`, return their successor's mask states.

    tokens: new real tokens then the drafts (tokens[-m-1] = t_0); the cache holds `cached` entries.
    group_offsets: each j in 0..m puts a k-mask group after t_0 (j = 0) or after draft d_j.
    Returns (accepted, bonus, hidden states (k, d) and lm_head logits (k, V) of the group after the
    last accepted token, or None for both if no such group was fed, input length). The cache is
    cropped to the verified tokens.
    """
    n, m = len(tokens), len(drafts)
    first = n - m - 1  # index of t_0: its logits and those of the drafts are the ones verified
    anchors = [first + j for j in group_offsets]
    layout = step_layout(tokens, cached, k, anchors)
    device = model.mask_embeddings.device
    merged = (n - first) + len(anchors) * k <= MERGED_LOGITS_MAX_ROWS
    logit_rows = torch.arange(first, len(layout.input_ids) if merged else n, device=device)
    out = model(
        layout.input_ids[None].to(device), layout.position_ids[None].to(device),
        # Without masks the pass is plain causal: let the attention backend use its fast path.
        attention_mask=layout.attention[None].to(device) if anchors else None,
        past_key_values=cache, use_cache=True, logits_for=logit_rows,
    )
    logits = out.logits[0]
    accepted, bonus = accept(logits[:n - first], drafts, draft_probs, sampling)
    # Tokens precede masks in the tensor: one cut drops the rejected drafts and every mask.
    cache.crop(cached + first + 1 + accepted - cache.get_seq_length())
    if accepted not in group_offsets:
        return accepted, bonus, None, None, len(layout.input_ids)
    rows = group_rows(n, k, list(group_offsets).index(accepted))
    hidden = out.hidden[0, rows]
    group_logits = logits[rows.start - first:rows.stop - first] if merged else model.lm_logits(hidden)
    return accepted, bonus, hidden, group_logits, len(layout.input_ids)


# The sampler scores only the top candidates of each mask's own lm_head row: one batched lm_head
# read for all k masks instead of k serial ones. Drafts are only proposals, so exactness holds.
DRAFT_CANDIDATES = 64


def draft_candidates(mask_logits: torch.Tensor) -> torch.Tensor:
    """(n, V) lm_head logits of masks -> (n, C) token ids the sampler scores for each."""
    return mask_logits.topk(min(DRAFT_CANDIDATES, mask_logits.shape[-1]), dim=-1).indices


def greedy_sampler_drafts(model: MTPModel, mask_hidden: torch.Tensor, candidates: torch.Tensor,
                          prev_ids: torch.Tensor) -> torch.Tensor:
    """(n,) the sampler's greedy pick among each row's candidates, given the token before each."""
    scores = model.sampler_logits(mask_hidden, prev_ids, candidates)
    return candidates.gather(1, scores.argmax(-1, keepdim=True)).squeeze(1)


def draft(model: MTPModel, mask_hidden: torch.Tensor, mask_logits: torch.Tensor, bonus: int, sampling: Sampling,
          use_sampler: bool) -> tuple[list[int], torch.Tensor | None]:
    """k drafts from one mask group (hidden states and lm_head logits): the sampler chain (draft_1
    sees E(bonus), draft_i E(draft_{i-1})) or, without the sampler, lm_head at each mask. Returns
    drafts and, when sampling, their q."""
    if not use_sampler or model.sampler is None:
        if sampling.greedy:
            return mask_logits.argmax(-1).tolist(), None
        q = sampling.probs(mask_logits)
        return [sampling.draw(row) for row in q], q
    candidates = draft_candidates(mask_logits)
    drafts, qs, prev = [], [], bonus
    prev_ids = torch.empty(1, dtype=torch.long, device=mask_hidden.device)
    for i, row in enumerate(mask_hidden):
        if sampling.greedy:
            prev = int(greedy_sampler_drafts(model, row[None], candidates[i:i + 1], prev_ids.fill_(prev))[0])
        else:
            scores = model.sampler_logits(row[None], prev_ids.fill_(prev), candidates[i:i + 1])[0]
            # q is the sampler's distribution restricted to the candidates: zero elsewhere.
            restricted = mask_logits.new_full(mask_logits.shape[-1:], float("-inf")).index_copy_(0, candidates[i], scores)
            qs.append(sampling.probs(restricted))
            prev = sampling.draw(qs[-1])
        drafts.append(prev)
    return drafts, (torch.stack(qs) if qs else None)


# Prompt lookup: the context's last 3-gram, else 2-gram, looked up at its most recent earlier
# occurrence. A 1-gram proposes too often to pay on the held-out distilled prompts (docs/lookup).
LOOKUP_NGRAMS = (3, 2)


def lookup_drafts(context: Sequence[int], max_drafts: int, ngrams: Sequence[int] = LOOKUP_NGRAMS) -> list[int]:
    """Up to `max_drafts` tokens that followed the most recent earlier occurrence of the context's
    last n-gram (longest n first); [] when none occurred."""
    for n in ngrams:
        if len(context) <= n:
            continue
        tail = list(context[-n:])
        for start in range(len(context) - n - 1, -1, -1):
            if context[start] == tail[0] and list(context[start:start + n]) == tail:
                return list(context[start + n:start + n + max_drafts])
    return []


def _one_hot(tokens: Sequence[int], vocab: int, device: torch.device) -> torch.Tensor:
    """The proposal of forced drafts: deterministic, so acceptance stays exact under sampling."""
    q = torch.zeros(len(tokens), vocab, device=device)
    q[torch.arange(len(tokens)), torch.tensor(list(tokens), dtype=torch.long)] = 1.0
    return q


def _first_stop(tokenizer: PreTrainedTokenizerBase, token_ids: list[int], start: int,
                stop_strings: Sequence[str]) -> tuple[int, str] | None:
    """(tokens to keep, text cut right after the stop string) at the earliest stop, searching the
    prefixes longer than `start` tokens (shorter ones were checked by earlier chunks)."""
    for keep in range(start + 1, len(token_ids) + 1):
        text = tokenizer.decode(token_ids[:keep], skip_special_tokens=True)
        hits = [text.find(s) + len(s) for s in stop_strings if s in text]
        if hits:
            return keep, text[:min(hits)]
    return None


@torch.inference_mode()
def generate(
    model: MTPModel,
    prompt_ids: list[int],
    *,
    method: str = "quadratic",
    k: int | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    tokenizer: PreTrainedTokenizerBase | None = None,
    groups: int | None = None,
    use_sampler: bool = True,
    on_chunk: Callable[[list[int]], None] | None = None,
    draft_override: DraftOverride | None = None,
    lookup: int = 0,
) -> Trace:
    """Generate up to `max_new_tokens` after `prompt_ids`; returns the Trace (tokens, text, steps).

    k: masks used (1..model.k, default model.k); ignored by autoregressive (trace k = 0).
    groups: quadratic only, mask groups after the first `groups` of t_0, d_1 .. d_k (default k+1).
    Stops at an EOS (kept), at a stop string (text cut right after it, tokens up to the one that
    completes it) or at max_new_tokens; on_chunk receives each step's new tokens, after cuts.
    draft_override: test hook (step_index, context_ids, k) -> drafts to propose in place of the
    model's (context = prompt + tokens so far); forced drafts count as a deterministic proposal.
    lookup: linear / quadratic: up to this many prompt-lookup drafts replace the masks' drafts
    whenever the context's last n-gram occurred before (0: masks only). A deterministic proposal,
    so sampling stays exact too.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    k = model.k if k is None else k
    if not 1 <= k <= model.k:
        raise ValueError(f"k must be between 1 and the adapter's k={model.k}, got {k}")
    if groups is not None and method != "quadratic":
        raise ValueError("groups applies to the quadratic method only")
    groups = k + 1 if groups is None else groups
    if not 1 <= groups <= k + 1:
        raise ValueError(f"groups must be between 1 and k+1={k + 1}, got {groups}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer")
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if lookup < 0:
        raise ValueError(f"lookup must be >= 0, got {lookup}")
    if lookup and method == "autoregressive":
        raise ValueError("lookup drafts need a drafting method (linear or quadratic)")

    start = time.perf_counter()
    device = model.mask_embeddings.device
    sampling = Sampling(temperature, top_k, top_p, seed, device)
    vocab = model.base.get_output_embeddings().weight.shape[0]
    eos = set(eos_token_ids)
    stop_strings = [s for s in stop_strings if s]
    trace = Trace(method=method, k=0 if method == "autoregressive" else k, prompt_ids=list(prompt_ids),
                  temperature=temperature)
    out = trace.token_ids
    cache = DynamicCache(config=model.base.config)
    cached = 0
    tokens = list(prompt_ids)  # prefill: the whole prompt, no drafts
    drafts: list[int] = []
    draft_probs = None
    looked_up = False
    while len(out) < max_new_tokens:
        step_start = time.perf_counter()
        m = len(drafts)
        if method == "autoregressive":
            offsets: list[int] = []
        elif method == "linear":
            offsets = [m]
        else:
            offsets = list(range(min(groups, m + 1)))
        accepted, bonus, hidden, group_logits, input_length = verify(
            model, cache, cached, tokens, drafts, draft_probs, offsets, k, sampling)
        cached += len(tokens) - m + accepted
        chunk = drafts[:accepted] + [bonus]
        done = ""
        if len(out) + len(chunk) >= max_new_tokens:
            chunk, done = chunk[:max_new_tokens - len(out)], "max_new_tokens"
        hit = next((i for i, t in enumerate(chunk) if t in eos), None)
        if hit is not None:
            chunk, done = chunk[:hit + 1], "eos"
        before = len(out)
        out.extend(chunk)
        if stop_strings:
            stop = _first_stop(tokenizer, out, before, stop_strings)
            if stop is not None:
                del out[stop[0]:]
                trace.text, done = stop[1], "stop_string"
        # Next step's drafts: prompt lookup if it finds any, else the mask group after the last
        # accepted token (if it was fed).
        next_drafts, draft_probs, next_looked_up = [], None, False
        context = list(prompt_ids) + out if not done and (lookup or draft_override) else []
        if not done and lookup:
            next_drafts = lookup_drafts(context, lookup)
            next_looked_up = bool(next_drafts)
            if next_looked_up and not sampling.greedy:
                draft_probs = _one_hot(next_drafts, vocab, device)
        if not done and hidden is not None and not next_looked_up:
            next_drafts, draft_probs = draft(model, hidden, group_logits, bonus, sampling, use_sampler)
            forced = draft_override(len(trace.steps), context, k) if draft_override else None
            if forced is not None:
                next_drafts = list(forced)[:k]
                draft_probs = None if sampling.greedy else _one_hot(next_drafts, vocab, device)
        trace.steps.append(Step(drafts=list(drafts), accepted=accepted, bonus=bonus,
                                seconds=time.perf_counter() - step_start, input_length=input_length,
                                new_tokens=len(out) - before, looked_up=looked_up))
        if on_chunk is not None and len(out) > before:
            on_chunk(out[before:])
        if done:
            trace.stop_reason = done
            break
        drafts, looked_up = next_drafts, next_looked_up
        tokens = [bonus] + drafts
    else:
        trace.stop_reason = "max_new_tokens"
    if tokenizer is not None and trace.stop_reason != "stop_string":
        trace.text = tokenizer.decode(out, skip_special_tokens=True)
    trace.seconds = time.perf_counter() - start
    return trace
