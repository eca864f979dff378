"""Decoding: one loop over a drafter, a verification policy and stop criteria (docs/design.md §5).

Every pass feeds `tokens = [t_0, drafts..]` (t_0 the newest verified token, not yet in the KV
cache; the drafts a tree rooted at t_0, a chain being the tree of width 1) followed by k-mask
groups after the nodes the method's policy picks (mtp.methods). One shared `verify` accepts the
longest drafted path the model agrees with, keeps only that path in the KV cache and returns the
mask group of the path's deepest node that carried one, if any; the drafter (mtp.drafting) turns
that group (its masks past the tokens accepted beyond its node), or the context, into the next
draft. The first pass (prefill) feeds the whole prompt as `tokens`, with no drafts.

Greedy (temperature 0) accepts a draft iff it equals the model's argmax, so the output is token for
token the base model's greedy output. Sampling accepts by speculative sampling against the drafts'
proposal (a drawn chain's q; deterministic drafts count as one-hot q, siblings tried in turn on
the residual), so the output distribution is the base model's.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Sequence

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from .adapter import MTPModel
from .datastore import Datastore
from .drafting import DatastoreDrafts, Draft, Drafter, LeftoverMasks, MaskChain, MaskGroup, MaskTree, PromptLookup
from .kv_cache import decoding_cache, keep_in_cache
from .layouts import chain_parents, group_rows, step_layout
from .methods import CostAware, Policy, policy
from .options import OptionError, check_decoding
from .sampling import Sampling
from .trace import Step, Trace


def _residual(p: torch.Tensor, q: torch.Tensor | None, token: int) -> torch.Tensor:
    """The target left after rejecting `token` proposed from q (None: deterministic, one-hot q)."""
    if q is None:
        residual = p.clone()
        residual[token] = 0.0
    else:
        residual = (p - q).clamp_(min=0)
    total = float(residual.sum())
    # 0 only where rejection had probability 0: guard rounding.
    return residual / total if total > 0 else p


def accept(target_logits: torch.Tensor, draft: Draft, sampling: Sampling) -> tuple[list[int], int]:
    """The accepted path (node indices, root first) and the bonus token that follows it.

    target_logits (1 + len(draft.tokens), V): the model's next-token logits after t_0 and after
    each node. Greedy follows the child equal to the argmax. Sampling tries a node's children in
    order, each accepted with probability min(1, p/q), p becoming the residual after each rejection
    (SpecInfer's multi-draft rule); when all are rejected the bonus is drawn from what is left.
    """
    children = draft.children()
    path, node = [], -1
    if sampling.greedy:
        predicted = target_logits.argmax(-1).tolist()
        while True:
            following = next((c for c in children[node] if draft.tokens[c] == predicted[node + 1]), None)
            if following is None:
                return path, predicted[node + 1]
            path.append(following)
            node = following
    probs = sampling.probs(target_logits)
    while True:
        p = probs[node + 1]
        for child in children[node]:
            token = draft.tokens[child]
            q = None if draft.probs is None else draft.probs[child]
            if sampling.uniform() * (1.0 if q is None else float(q[token])) < float(p[token]):  # u < p/q
                path.append(child)
                node = child
                break
            p = _residual(p, q, token)
        else:
            return path, sampling.draw(p)


class Verified(NamedTuple):
    """What one verifying pass decided."""

    path: list[int]  # accepted draft nodes, root first
    bonus: int  # the model's own token after them
    group: MaskGroup | None  # the group of the deepest accepted node (t_0 included) that carried one
    input_length: int  # tokens fed: real + draft + mask


# One lm_head call on r rows has a fixed cost (reading the 28M-parameter head) and a small cost per
# row: on 2 CPU cores ~6.5 ms + ~0.4 ms per row up to ~32 rows with oneDNN re-packing the weight
# every call, ~1.4 ms + ~0.1 ms per row with it packed once (docs/bench/step14793_defaults). So while
# the rows stay few, verify computes the mask groups' logits in the same call as the verified rows
# instead of a second call for the surviving group.
MERGED_LOGITS_MAX_ROWS = 32


def verify(model: MTPModel, cache: DynamicCache, cached: int, tokens: Sequence[int], draft: Draft,
           anchors: Sequence[int], k: int, sampling: Sampling) -> Verified:
    """One forward pass shared by all methods: verify `draft`, return the mask group of the deepest
    node of its accepted path that `anchors` gave one (behind > 0 where the path ran on past it).

    tokens: new real tokens, then the draft's tokens (tokens[-len(draft.tokens)-1] = t_0); the cache
    holds `cached` entries. anchors: draft nodes (-1: t_0) that get a k-mask group. The cache keeps
    the real tokens and the accepted path only.
    """
    n, m = len(tokens), len(draft.tokens)
    first = n - m - 1  # index of t_0: its logits and those of the drafts are the ones verified
    parents = chain_parents(first + 1) + [first + 1 + p if p >= 0 else first for p in draft.parents]
    layout = step_layout(tokens, cached, k, [first + 1 + a for a in anchors], parents)
    device = model.mask_embeddings.device
    merged = (n - first) + len(anchors) * k <= MERGED_LOGITS_MAX_ROWS
    logit_rows = torch.arange(first, len(layout.input_ids) if merged else n, device=device)
    plain_causal = not anchors and draft.is_chain  # let the attention backend use its fast path
    out = model(
        layout.input_ids[None].to(device), layout.position_ids[None].to(device),
        attention_mask=None if plain_causal else layout.attention[None].to(device),
        past_key_values=cache, use_cache=True, logits_for=logit_rows,
    )
    logits = out.logits[0]
    path, bonus = accept(logits[:n - first], draft, sampling)
    # Tokens precede masks in the tensor: keeping the path drops the rejected nodes and every mask.
    keep_in_cache(cache, cached + first + 1, [cached + first + 1 + node for node in path])
    on_path = [-1, *path]
    anchored = [depth for depth, node in enumerate(on_path) if node in anchors]
    if not anchored:
        return Verified(path, bonus, None, len(layout.input_ids))
    depth = anchored[-1]  # the deepest accepted node with a group: its masks are the freshest
    rows = group_rows(n, k, list(anchors).index(on_path[depth]))
    hidden = out.hidden[0, rows]
    group_logits = logits[rows.start - first:rows.stop - first] if merged else model.lm_logits(hidden)
    behind = len(path) - depth  # accepted tokens after its bonus (the path's next node, or the pass's bonus)
    group_bonus = draft.tokens[path[depth]] if behind else bonus
    return Verified(path, bonus, MaskGroup(hidden, group_logits, group_bonus, behind), len(layout.input_ids))


class StopCriteria:
    """When to stop: max_new_tokens, an EOS token (kept) or a stop string (text cut right after it)."""

    def __init__(self, max_new_tokens: int, eos_token_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
                 tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.max_new_tokens, self.eos = max_new_tokens, set(eos_token_ids)
        self.stop_strings, self.tokenizer = [s for s in stop_strings if s], tokenizer
        if self.stop_strings and tokenizer is None:
            raise OptionError("stop_strings need a tokenizer")

    def extend(self, trace: Trace, chunk: list[int]) -> str:
        """Append a step's tokens to the trace, cut at the first stop; the stop reason or ""."""
        out, reason = trace.token_ids, ""
        if len(out) + len(chunk) >= self.max_new_tokens:
            chunk, reason = chunk[:self.max_new_tokens - len(out)], "max_new_tokens"
        hit = next((i for i, t in enumerate(chunk) if t in self.eos), None)
        if hit is not None:
            chunk, reason = chunk[:hit + 1], "eos"
        before = len(out)
        out.extend(chunk)
        # Search the prefixes longer than `before` tokens (shorter ones were checked by earlier chunks).
        for keep in range(before + 1, len(out) + 1) if self.stop_strings else ():
            text = self.tokenizer.decode(out[:keep], skip_special_tokens=True)
            hits = [text.find(s) + len(s) for s in self.stop_strings if s in text]
            if hits:
                del out[keep:]
                trace.text = text[:min(hits)]
                return "stop_string"
        return reason


def default_drafter(model: MTPModel, verification: Policy | CostAware, *, use_sampler: bool = True, lookup: int = 0,
                    tree_budget: int = 0, datastore: Datastore | None = None) -> Drafter | None:
    """The drafter a verification policy uses: none (autoregressive), the masks' chain or tree, prompt
    lookup first (replacing a chain, grafted onto a tree), the datastore's drafts as one more branch,
    and, where the policy drafts from them (quadratic), the leftover masks of the freshest group on or
    before the accepted path."""
    if verification.name == "autoregressive":
        return None
    masks = MaskTree(model, tree_budget, use_sampler=use_sampler) if tree_budget else MaskChain(model, use_sampler)
    drafter = PromptLookup(lookup, masks, graft=bool(tree_budget)) if lookup else masks
    if datastore is not None:
        drafter = DatastoreDrafts(datastore, drafter)
    return LeftoverMasks(drafter) if verification.drafts_from_leftover_masks else drafter


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
    lookup: int = 0,
    tree_budget: int = 0,
    drafter: Drafter | None = None,
    streamer: BaseStreamer | None = None,
    cost_aware: bool = False,
    datastore: Datastore | None = None,
) -> Trace:
    """Generate up to `max_new_tokens` after `prompt_ids`; returns the Trace (tokens, text, steps).

    k: masks used (1..model.k, default model.k); ignored by autoregressive (trace k = 0).
    groups: quadratic only, mask groups after the first `groups` nodes of each draft's group order
    (a chain: t_0, d_1 .. d_k; default k+1). lookup: up to this many prompt-lookup drafts replace
    the masks' chain (join the masks' tree as one more branch) whenever the context's last n-gram
    occurred before (0: masks only).
    tree_budget: draft a tree of at most this many nodes from the masks (0: a chain of k).
    drafter: propose drafts your own way (tests do) instead of the one these options pick.
    Stops at an EOS (kept), at a stop string (text cut right after it, tokens up to the one that
    completes it) or at max_new_tokens; on_chunk receives each step's new tokens, after cuts.
    streamer: a transformers streamer (TextIteratorStreamer...), fed as `generate` feeds it: the prompt
    first (skip_prompt=True skips it), then each step's new tokens, then end().
    cost_aware: feed the method's mask groups only while they produce more tokens per second than
    passes without them, as measured during this generation (methods.CostAware); same output.
    datastore: its drafts (what the model wrote after the same few tokens in its self-distilled
    data, mtp.datastore) join the others as one more branch; linear and quadratic only.
    """
    k = model.k if k is None else k
    check_decoding(method=method, k=k, max_k=model.k, groups=groups, lookup=lookup, tree_budget=tree_budget,
                   temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                   cost_aware=cost_aware)
    if not prompt_ids:
        raise OptionError("the prompt is empty")
    if datastore is not None and method == "autoregressive":
        raise OptionError("datastore drafts need a drafting method (linear or quadratic), not autoregressive")
    start = time.perf_counter()
    sampling = Sampling(temperature, top_k, top_p, seed, model.mask_embeddings.device)
    stop = StopCriteria(max_new_tokens, eos_token_ids, stop_strings, tokenizer)
    verification = policy(method, k + 1 if groups is None else groups, k)
    adaptive = None
    if cost_aware and method != "autoregressive":
        verification = adaptive = CostAware(verification)
    if drafter is None:
        drafter = default_drafter(model, verification, use_sampler=use_sampler, lookup=lookup, tree_budget=tree_budget,
                                  datastore=datastore)
    trace = Trace(method=method, k=0 if method == "autoregressive" else k, prompt_ids=list(prompt_ids),
                  temperature=temperature, tree_budget=tree_budget)
    cache, cached = decoding_cache(model.base.config), 0
    tokens, draft = list(prompt_ids), Draft()  # prefill: the whole prompt, no drafts
    reason = "max_new_tokens" if max_new_tokens == 0 else ""
    if streamer is not None:
        streamer.put(torch.tensor(prompt_ids))
    while not reason:
        step_start = time.perf_counter()
        verified = verify(model, cache, cached, tokens, draft, verification.anchors(draft), k, sampling)
        cached += len(tokens) - len(draft.tokens) + len(verified.path)
        before = len(trace.token_ids)
        reason = stop.extend(trace, [draft.tokens[node] for node in verified.path] + [verified.bonus])
        next_draft = Draft() if reason or drafter is None else drafter.propose(
            trace.prompt_ids + trace.token_ids, verified.group, sampling)
        trace.steps.append(Step.of(draft, verified.path, verified.bonus, time.perf_counter() - step_start,
                                   verified.input_length, len(trace.token_ids) - before))
        if adaptive is not None:
            adaptive.observe(trace.steps[-1].new_tokens, trace.steps[-1].seconds)
        new_tokens = trace.token_ids[before:]
        if new_tokens and on_chunk is not None:
            on_chunk(new_tokens)
        if new_tokens and streamer is not None:
            streamer.put(torch.tensor(new_tokens))
        tokens, draft = [verified.bonus] + next_draft.tokens, next_draft
    trace.stop_reason = reason
    if streamer is not None:
        streamer.end()
    if tokenizer is not None and reason != "stop_string":
        trace.text = tokenizer.decode(trace.token_ids, skip_special_tokens=True)
    trace.seconds = time.perf_counter() - start
    return trace
