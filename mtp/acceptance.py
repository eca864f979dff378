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
method's policy, whether the next pass has drafts), and the drafts from each group's leftover
masks, shifted past the tokens verified since it (quadratic drafts from those where the accepted
path ran past the newest group's node). The benchmark checks this against the runs it
decodes (up to floating-point ties between differently shaped passes).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from transformers import DynamicCache

from .adapter import MTPModel
from .drafting import LOOKUP_NGRAMS, Draft, MaskGroup, draft_candidates, greedy_sampler_drafts, lookup_drafts, mask_trees
from .layouts import mask_blocks_layout
from .methods import PathEnd, policy
from .options import DRAFTING_METHODS

DRAFTERS = ("sampler", "lm_head")


def tree_key(k: int, budget: int) -> str:
    """draft_matches' key for trees of `budget` nodes from the first k masks."""
    return f"tree k={k} B={budget}"


def graft_key(k: int, budget: int, lookup: int) -> str:
    """draft_matches' key for those trees with up to `lookup` prompt-lookup drafts grafted on where
    lookup proposes (drafting.PromptLookup with graft)."""
    return f"{tree_key(k, budget)} + lookup {lookup}"


def replayed_drafter(chain: str, k: int, budget: int, lookup: int) -> tuple[str, bool]:
    """The draft_matches key that decoding with these settings replays (`chain`: the chain drafter's
    key, for budget 0), and whether its trees carry the pass's lookup drafts (replay's `grafted`)."""
    if not budget:
        return chain, False
    return (graft_key(k, budget, lookup), True) if lookup else (tree_key(k, budget), False)


def leftover_key(drafter: str) -> str:
    """draft_matches' key for what `drafter` drafts from a group's leftover masks (drafting.LeftoverMasks)."""
    return f"{drafter} leftover"


class TreeMatch(NamedTuple):
    """A draft tree replayed against the sequence: how deep its accepted path goes, where it ends."""

    accepted: int
    end: PathEnd


def tree_match(draft: Draft, following: Sequence[int], k: int) -> TreeMatch:
    """Walk `draft` along the true tokens that follow its root (greedy acceptance); k: masks per group."""
    path = draft.follow(following)
    return TreeMatch(len(path), PathEnd.of(draft, path, k))


def _leading_matches(correct: torch.Tensor) -> list[int]:
    """(anchors, k) bool -> per anchor the number of leading True values."""
    return correct.int().cumprod(dim=1).sum(dim=1).tolist()


def _leftover_matches(correct: torch.Tensor) -> list[list[int]]:
    """(anchors, k) bool -> per anchor, for shift s = 1 .. k-1, the leading True values from mask s on."""
    # Leading True values from every start at once: a reversed cumulative count that resets at each False.
    run = torch.zeros_like(correct, dtype=torch.int)
    for s in range(correct.shape[1] - 1, -1, -1):
        run[:, s] = correct[:, s].int() * (1 + (run[:, s + 1] if s + 1 < correct.shape[1] else 0))
    return run[:, 1:].tolist()


@torch.inference_mode()
def draft_matches(model: MTPModel, ids: Sequence[int], prompt_len: int, chunk: int = 64,
                  trees: Sequence[tuple[int, int]] = (), lookup: int = 0) -> dict[str, list]:
    """Match lengths of the k-draft chains after each index a = prompt_len-1 .. len(ids)-2.

    Returns {"sampler": [...], "lm_head": [...]} (lm_head: argmax at each mask, the no-sampler
    ablation; sampler: the greedy chain, picked as the MaskChain drafter picks it), and for each
    (k, budget) in `trees` a TreeMatch per index under tree_key(k, budget) and, if lookup > 0, under
    graft_key(k, budget, lookup) those trees with the prompt-lookup drafts of their pass grafted on.
    Entry i belongs to anchor prompt_len-1+i; drafts past the sequence's end count as not matching.
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
    drafters = [*DRAFTERS, *(tree_key(k, b) for k, b in trees), *(graft_key(k, b, lookup) for k, b in trees if lookup)]
    matches: dict[str, list] = {name: [] for name in [*drafters, *map(leftover_key, drafters)]}
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
        correct = {"lm_head": logits.argmax(-1) == labels}
        if model.sampler is None:
            correct["sampler"] = correct["lm_head"]
        else:
            chosen = greedy_sampler_drafts(model, hidden.flatten(0, 1), draft_candidates(logits.flatten(0, 1)),
                                           previous.flatten()).reshape(len(part), k)
            correct["sampler"] = chosen == labels
        for drafter, right in correct.items():
            matches[drafter] += _leading_matches(right)
            matches[leftover_key(drafter)] += _leftover_matches(right)
        for tree_k, budget in trees:
            for row, anchor in enumerate(part):
                # shift 0: the group's own tree; shift s: the tree of its masks s.. after x_{a+1+s}.
                shifts = range(min(tree_k, length - 1 - anchor))
                drafts = mask_trees(model, [MaskGroup(hidden[row, s:tree_k], logits[row, s:tree_k],
                                                      int(sequence[anchor + 1 + s])) for s in shifts], budget)
                shifted = [tree_match(draft, ids[anchor + 2 + s:anchor + 2 + tree_k], tree_k)
                           for s, draft in zip(shifts, drafts)]
                matches[tree_key(tree_k, budget)].append(shifted[0])
                matches[leftover_key(tree_key(tree_k, budget))].append(shifted[1:])
                if lookup:  # the pass after x_{a+1+s} looks up in ids[:a+2+s]
                    grafted = []
                    for s, draft in zip(shifts, drafts):
                        found = lookup_drafts(ids[:anchor + 2 + s], lookup)
                        following = ids[anchor + 2 + s:anchor + 2 + s + max(tree_k, lookup)]  # its deepest path
                        grafted.append(tree_match(draft.grafted(found), following, tree_k) if found else shifted[s])
                    matches[graft_key(tree_k, budget, lookup)].append(grafted[0])
                    matches[leftover_key(graft_key(tree_k, budget, lookup))].append(grafted[1:])
    return matches


class Pass(NamedTuple):
    """One replayed forward pass."""

    accepted: int | None  # drafts accepted; None: the pass verified no drafts
    lookup_drafts: int = 0  # prompt-lookup drafts it verified (0: the masks' drafts, or none)
    grafted: bool = False  # they were grafted onto the masks' tree, verified with it


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


def _masks_match(match: int | TreeMatch, drafts: int) -> tuple[int, PathEnd]:
    """(accepted, where the path ended) of the masks' draft of at most `drafts` tokens."""
    if isinstance(match, int):  # a chain: match length at the adapter's k
        accepted = min(match, drafts)
        return accepted, PathEnd.of_chain(accepted, drafts)
    accepted, end = TreeMatch(*match)
    return accepted, PathEnd(*end)


def replay(matches: Sequence[int | TreeMatch], method: str, k: int, new_tokens: int,
           groups: int | None = None, lookup: Sequence[tuple[int, int]] | None = None,
           leftover: Sequence[Sequence[int | TreeMatch]] | None = None, grafted: bool = False) -> list[Pass]:
    """The forward passes of greedy `method` decoding that yields `new_tokens` tokens.

    matches[i]: what the masks' draft after index prompt_len-1+i accepts: a chain's match length
    (at the adapter's k ≥ this k) or a tree's TreeMatch (see draft_matches). The first pass is the
    prefill (no drafts); whether the next pass has drafts is the method's policy's call (a pass
    without drafts yields one token and puts a group after it). lookup: lookup_matches of the same
    output, for decoding with prompt-lookup drafts. leftover: draft_matches' leftover entries of the
    same drafter (leftover_key): quadratic decoding drafts from the newest group's leftover masks
    where the path ran past its node (drafting.LeftoverMasks); without them (results measured
    before leftover masks existed) this replays a draftless pass there. grafted: matches and
    leftover are a tree's graft_key entries, so where lookup proposes and the masks have a draft,
    the pass verifies both (drafting.PromptLookup with graft); elsewhere lookup drafts replace the
    masks' ones.
    """
    if method not in DRAFTING_METHODS:
        raise ValueError(f"replay covers linear and quadratic decoding, not {method!r}")
    verification = policy(method, k + 1 if groups is None else groups, k)
    passes = [Pass(None)]
    produced, newest = 1, 0  # the prefill yields x_0 and the mask group of entry 0 (after the prompt)
    while produced < new_tokens:
        shift = produced - 1 - newest  # tokens verified since the newest group's bonus
        proposed, looked_up = lookup[produced - 1] if lookup else (0, 0)
        masks = None  # the masks' draft of this pass, (its match, at most how many drafts), if it has one
        if shift == 0:  # the group after the token before x_produced survived
            masks = matches[produced - 1], k
        elif verification.drafts_from_leftover_masks and leftover is not None and shift <= min(len(leftover[newest]), k - 1):
            masks = leftover[newest][shift - 1], k - shift
        on_tree = bool(proposed and grafted and masks)  # lookup drafts grafted onto the masks' tree
        if proposed and not on_tree:  # lookup drafts (a chain) replace the masks' ones
            accepted, end = looked_up, PathEnd.of_chain(looked_up, proposed)
        elif masks:
            accepted, end = _masks_match(*masks)
        else:
            passes.append(Pass(None))
            produced += 1
            newest = produced - 1  # a draftless pass puts a group after its one token
            continue
        passes.append(Pass(accepted, proposed, on_tree))
        produced += accepted + 1
        behind = verification.group_behind(end)
        if behind is not None:
            newest = produced - 1 - behind
    return passes


def tokens_per_step(matches: Sequence[Sequence[int | TreeMatch]], new_tokens: Sequence[int], method: str, k: int,
                    groups: int | None = None, lookup: Sequence[Sequence[tuple[int, int]]] | None = None,
                    leftover: Sequence[Sequence[Sequence[int | TreeMatch]]] | None = None) -> float:
    """τ over several sequences: Σ new tokens ÷ Σ replayed passes (each sequence's prefill included)."""
    lookup = lookup if lookup is not None else [None] * len(matches)
    leftover = leftover if leftover is not None else [None] * len(matches)
    passes = sum(len(replay(m, method, k, n, groups, lu, lo))
                 for m, n, lu, lo in zip(matches, new_tokens, lookup, leftover))
    return sum(new_tokens) / passes
