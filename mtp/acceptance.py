"""τ for every method and k from one teacher-forced pass over a greedy output.

Greedy decoding is deterministic, so which drafts a step accepts depends only on where the step
starts: the mask group after sequence index a (its hidden states see tokens 0..a) is seeded with
the next token x_{a+1} and its drafts are accepted while they equal x_{a+2}, x_{a+3}, ... A draft
chain is only compared while it matches, and while it matches each draft's predecessor IS the
sequence's own token — so one batched pass with every mask group teacher-forced gives the match
length at every index, and replaying linear or quadratic decoding on those lengths gives their
exact step counts for any k ≤ the adapter's and any number of quadratic groups. The benchmark
checks this against the runs it decodes (up to floating-point ties between differently shaped
passes).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache

from .adapter import MTPModel
from .decoding import draft_candidates, greedy_sampler_drafts
from .layouts import mask_blocks_layout

DRAFTERS = ("sampler", "lm_head")
METHODS = ("linear", "quadratic")


def _leading_matches(correct: torch.Tensor) -> list[int]:
    """(anchors, k) bool -> per anchor the number of leading True values."""
    return correct.int().cumprod(dim=1).sum(dim=1).tolist()


@torch.inference_mode()
def draft_matches(model: MTPModel, ids: Sequence[int], prompt_len: int, chunk: int = 64) -> dict[str, list[int]]:
    """Match lengths of the k-draft chains after each index a = prompt_len-1 .. len(ids)-2.

    Returns {"sampler": [...], "lm_head": [...]} (lm_head: argmax at each mask, the no-sampler
    ablation; sampler: the greedy chain, picked as decoding.draft picks it). Entry i belongs to anchor prompt_len-1+i; drafts past the sequence's end
    count as not matching.
    """
    if not 1 <= prompt_len < len(ids):
        raise ValueError("draft_matches needs a prompt and at least one generated token")
    device = model.mask_embeddings.device
    k, length = model.k, len(ids)
    sequence = torch.tensor(list(ids), device=device)
    cache = DynamicCache(config=model.base.config)
    model(sequence[None], torch.arange(length, device=device)[None], use_cache=True, past_key_values=cache,
          gate=False)
    anchors = list(range(prompt_len - 1, length - 1))
    matches: dict[str, list[int]] = {name: [] for name in DRAFTERS}
    for start in range(0, len(anchors), chunk):
        part = anchors[start:start + chunk]
        layout = mask_blocks_layout(ids, k, part, length)
        out = model(layout.input_ids[None].to(device), layout.position_ids[None].to(device),
                    attention_mask=layout.attention[None].to(device), past_key_values=cache, use_cache=True)
        cache.crop(length - cache.get_seq_length())  # drop this chunk's masks before the next one
        hidden = out.hidden[0].reshape(len(part), k, -1)
        labels = layout.labels.to(device).reshape(len(part), k)  # x_{a+1+i}, IGNORE past the end
        previous = sequence[layout.position_ids.to(device).clamp(max=length - 1)].reshape(len(part), k)
        logits = model.lm_logits(hidden)
        matches["lm_head"] += _leading_matches(logits.argmax(-1) == labels)
        if model.sampler is None:
            matches["sampler"] += matches["lm_head"][-len(part):]
            continue
        chosen = greedy_sampler_drafts(model, hidden.flatten(0, 1), draft_candidates(logits.flatten(0, 1)),
                                       previous.flatten()).reshape(len(part), k)
        matches["sampler"] += _leading_matches(chosen == labels)
    return matches


def replay(matches: Sequence[int], method: str, k: int, new_tokens: int,
           groups: int | None = None) -> list[int | None]:
    """Accepted drafts per forward pass of greedy `method` decoding that yields `new_tokens` tokens;
    None for a pass that verified no drafts.

    matches[i]: match length of the chain after index prompt_len-1+i (see draft_matches), at the
    adapter's k ≥ this k. The first pass is the prefill (no drafts); a pass without drafts
    (linear after a rejection, quadratic after accepting past its last group) yields one token.
    """
    if method not in METHODS:
        raise ValueError(f"replay covers linear and quadratic decoding, not {method!r}")
    groups = k + 1 if groups is None else groups
    accepted_per_pass: list[int | None] = [None]
    produced, has_drafts = 1, True  # the prefill yields x_0 and a mask group after the prompt
    while produced < new_tokens:
        # The drafts on hand came from the group after the token before x_produced.
        if has_drafts:
            accepted = min(matches[produced - 1], k)
            has_drafts = accepted < groups if method == "quadratic" else accepted == k
        else:
            accepted, has_drafts = None, True  # a draftless pass puts a group after its one token
        accepted_per_pass.append(accepted)
        produced += (accepted or 0) + 1
    return accepted_per_pass


def tokens_per_step(matches: Sequence[Sequence[int]], new_tokens: Sequence[int], method: str, k: int,
                    groups: int | None = None) -> float:
    """τ over several sequences: Σ new tokens ÷ Σ replayed passes (each sequence's prefill included)."""
    passes = sum(len(replay(m, method, k, n, groups)) for m, n in zip(matches, new_tokens))
    return sum(new_tokens) / passes
