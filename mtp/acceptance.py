"""τ for every method and k from one teacher-forced pass over a greedy output.

Greedy decoding is deterministic, so which drafts a step accepts depends only on where the step
starts: the mask group after sequence index a (its hidden states see tokens 0..a) is seeded with
the next token x_{a+1} and its drafts are accepted while they equal x_{a+2}, x_{a+3}, ... A draft
chain is only compared while it matches, and while it matches each draft's predecessor IS the
sequence's own token — so one batched pass with every mask group teacher-forced gives the match
length at every index, and replaying linear or quadratic decoding on those lengths gives their
exact step counts for any k ≤ the adapter's and any number of quadratic groups. Prompt-lookup
drafts depend only on the context too, so their match lengths replay the same way. A draft tree
is a deterministic function of its mask group and the bonus token too, so the same pass gives,
per index, the tree's accepted depth and where its accepted path ends (which decides, through the
method's policy, whether the next pass has drafts). The benchmark checks this against the runs it
decodes (up to floating-point ties between differently shaped passes).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from transformers import DynamicCache

from .adapter import MTPModel
from .drafting import LOOKUP_NGRAMS, Draft, MaskGroup, draft_candidates, greedy_sampler_drafts, lookup_drafts, mask_tree
from .layouts import mask_blocks_layout
from .methods import PathEnd, policy
from .options import DRAFTING_METHODS

DRAFTERS = ("sampler", "lm_head")


def tree_key(k: int, budget: int) -> str:
    """draft_matches' key for trees of `budget` nodes from the first k masks."""
    return f"tree k={k} B={budget}"


class TreeMatch(NamedTuple):
    """A draft tree replayed against the sequence: how deep its accepted path goes, where it ends."""

    accepted: int
    end: PathEnd


def tree_match(draft: Draft, following: Sequence[int]) -> TreeMatch:
    """Walk `draft` along the true tokens that follow its root (greedy acceptance)."""
    path = draft.follow(following)
    return TreeMatch(len(path), PathEnd.of(draft, path[-1] if path else -1))


def _leading_matches(correct: torch.Tensor) -> list[int]:
    """(anchors, k) bool -> per anchor the number of leading True values."""
    return correct.int().cumprod(dim=1).sum(dim=1).tolist()


@torch.inference_mode()
def draft_matches(model: MTPModel, ids: Sequence[int], prompt_len: int, chunk: int = 64,
                  trees: Sequence[tuple[int, int]] = ()) -> dict[str, list]:
    """Match lengths of the k-draft chains after each index a = prompt_len-1 .. len(ids)-2.

    Returns {"sampler": [...], "lm_head": [...]} (lm_head: argmax at each mask, the no-sampler
    ablation; sampler: the greedy chain, picked as the MaskChain drafter picks it), and for each
    (k, budget) in `trees` a TreeMatch per index under tree_key(k, budget). Entry i belongs to
    anchor prompt_len-1+i; drafts past the sequence's end count as not matching.
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
    matches: dict[str, list] = {name: [] for name in [*DRAFTERS, *(tree_key(k, b) for k, b in trees)]}
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
        for tree_k, budget in trees:
            for row, anchor in enumerate(part):
                group = MaskGroup(hidden[row, :tree_k], logits[row, :tree_k], int(sequence[anchor + 1]))
                draft = mask_tree(model, group, budget)
                matches[tree_key(tree_k, budget)].append(tree_match(draft, ids[anchor + 2:anchor + 2 + tree_k]))
    return matches


class Pass(NamedTuple):
    """One replayed forward pass."""

    accepted: int | None  # drafts accepted; None: the pass verified no drafts
    lookup_drafts: int = 0  # prompt-lookup drafts it verified (0: the masks' drafts, or none)


def lookup_matches(prompt_ids: Sequence[int], output: Sequence[int], max_drafts: int,
                   ngrams: Sequence[int] = LOOKUP_NGRAMS) -> list[tuple[int, int]]:
    """(drafts proposed, leading drafts that match) of prompt lookup after each prefix of `output`:
    entry i is the proposal for output[i+1:] from prompt + output[:i+1] (decoding.lookup_drafts)."""
    context, entries = list(prompt_ids), []
    for i, token in enumerate(output[:-1]):
        context.append(token)
        proposal, match = lookup_drafts(context, max_drafts, ngrams), 0
        while match < len(proposal) and i + 1 + match < len(output) and proposal[match] == output[i + 1 + match]:
            match += 1
        entries.append((len(proposal), match))
    return entries


def replay(matches: Sequence[int | TreeMatch], method: str, k: int, new_tokens: int,
           groups: int | None = None, lookup: Sequence[tuple[int, int]] | None = None) -> list[Pass]:
    """The forward passes of greedy `method` decoding that yields `new_tokens` tokens.

    matches[i]: what the masks' draft after index prompt_len-1+i accepts: a chain's match length
    (at the adapter's k ≥ this k) or a tree's TreeMatch (see draft_matches). The first pass is the
    prefill (no drafts); whether the next pass has drafts is the method's policy's call (a pass
    without drafts yields one token and puts a group after it). lookup: lookup_matches of the same
    output, for decoding with prompt-lookup drafts.
    """
    if method not in DRAFTING_METHODS:
        raise ValueError(f"replay covers linear and quadratic decoding, not {method!r}")
    verification = policy(method, k + 1 if groups is None else groups)
    passes = [Pass(None)]
    produced, has_drafts = 1, True  # the prefill yields x_0 and a mask group after the prompt
    while produced < new_tokens:
        proposed, looked_up = lookup[produced - 1] if lookup else (0, 0)
        if proposed:  # lookup drafts (a chain) replace the masks' ones
            accepted, end = looked_up, PathEnd.of_chain(looked_up, proposed)
        elif not has_drafts:
            passes.append(Pass(None))
            produced, has_drafts = produced + 1, True  # a draftless pass puts a group after its one token
            continue
        elif isinstance(matches[produced - 1], int):  # the chain from the group after the token before x_produced
            accepted = min(matches[produced - 1], k)
            end = PathEnd.of_chain(accepted, k)
        else:
            accepted, end = TreeMatch(*matches[produced - 1])
            end = PathEnd(*end)
        has_drafts = verification.keeps_group(end)
        passes.append(Pass(accepted, proposed))
        produced += accepted + 1
    return passes


def tokens_per_step(matches: Sequence[Sequence[int | TreeMatch]], new_tokens: Sequence[int], method: str, k: int,
                    groups: int | None = None, lookup: Sequence[Sequence[tuple[int, int]]] | None = None) -> float:
    """τ over several sequences: Σ new tokens ÷ Σ replayed passes (each sequence's prefill included)."""
    lookup = lookup if lookup is not None else [None] * len(matches)
    passes = sum(len(replay(m, method, k, n, groups, lu)) for m, n, lu in zip(matches, new_tokens, lookup))
    return sum(new_tokens) / passes
