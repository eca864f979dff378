"""Token layouts and attention masks, as pure functions (docs/design.md §3 and §5).

A layout is what one forward pass sees: input ids (mask for offset i written as -i), position ids,
labels (training), and a bool visibility matrix `attention` of shape (q, cached + q) where True
means "may attend". Position ids and the visibility matrix carry the semantics; tensor order is
free, and decoding puts all real/draft tokens before all masks so the KV cache is cut in one crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

IGNORE = -100


def mask_id(offset: int) -> int:
    """Input id of the mask token for offset `offset` (1..k)."""
    return -offset


@dataclass
class Layout:
    input_ids: torch.Tensor  # (q,) long
    position_ids: torch.Tensor  # (q,) long
    attention: torch.Tensor  # (q, cached + q) bool
    labels: torch.Tensor | None = None  # (q,) long, IGNORE where nothing is learned
    # For each position: index (in the real-token hidden states) of the real token with the same
    # position id, or -1. Masks use it for the latent-consistency target.
    same_position_real: torch.Tensor | None = None

    @property
    def is_mask(self) -> torch.Tensor:
        return self.input_ids < 0


def default_anchors(length: int, prompt_len: int) -> list[int]:
    """Real tokens that get a mask block: the last prompt token and every response token with a label."""
    return list(range(max(prompt_len - 1, 0), length - 1))


def _mask_block(ids: Sequence[int], anchor: int, k: int) -> tuple[list[int], list[int], list[int]]:
    """Ids, positions and labels of the k masks after real token `anchor`."""
    n = len(ids)
    positions = [anchor + i for i in range(1, k + 1)]
    labels = [ids[anchor + i + 1] if anchor + i + 1 < n else IGNORE for i in range(1, k + 1)]
    return [mask_id(i) for i in range(1, k + 1)], positions, labels


def interleaved_layout(ids: Sequence[int], k: int, prompt_len: int,
                       anchors: Sequence[int] | None = None) -> Layout:
    """The full training layout: real tokens x_0..x_last with a k-mask block after each anchor.

    Real tokens run up to the last anchor. Real x_j: position j, label x_{j+1}. Mask m_i after x_j:
    position j+i, label x_{j+i+1} (IGNORE past the end). Reals see earlier reals only; a mask sees
    x_0..x_j and the masks of its own block up to itself.
    """
    anchors = sorted(default_anchors(len(ids), prompt_len) if anchors is None else anchors)
    if not anchors:
        raise ValueError("a layout needs at least one anchor (a sequence of two or more tokens)")
    if anchors[0] < 0 or anchors[-1] >= len(ids) - 1:
        raise ValueError(f"anchors must lie in [0, {len(ids) - 2}], got {anchors[0]}..{anchors[-1]}")
    anchor_set = set(anchors)
    input_ids, positions, labels, same_real = [], [], [], []
    owner = []  # per position: (real index it belongs to, block offset; 0 for the real token itself)
    for j in range(anchors[-1] + 1):
        input_ids.append(ids[j])
        positions.append(j)
        labels.append(ids[j + 1] if j >= prompt_len - 1 else IGNORE)
        same_real.append(j)
        owner.append((j, 0))
        if j in anchor_set:
            block_ids, block_pos, block_labels = _mask_block(ids, j, k)
            input_ids += block_ids
            positions += block_pos
            labels += block_labels
            same_real += [p if p <= anchors[-1] else -1 for p in block_pos]
            owner += [(j, i) for i in range(1, k + 1)]
    q = len(input_ids)
    real_index = torch.tensor([o[0] for o in owner])
    offset = torch.tensor([o[1] for o in owner])
    query_real, key_real = real_index[:, None], real_index[None, :]
    query_off, key_off = offset[:, None], offset[None, :]
    sees_real = (key_off == 0) & (key_real <= query_real)
    sees_own_block = (key_off > 0) & (query_off > 0) & (key_real == query_real) & (key_off <= query_off)
    attention = sees_real | sees_own_block
    return Layout(torch.tensor(input_ids), torch.tensor(positions), attention.reshape(q, q),
                  torch.tensor(labels), torch.tensor(same_real))


def mask_blocks_layout(ids: Sequence[int], k: int, anchors: Sequence[int], cached: int) -> Layout:
    """The prefix-cache training variant: only the mask blocks, attending to cached real tokens.

    The real tokens x_0..x_{cached-1} were run once (no grad) and sit in the KV cache; the masks
    after anchor j see cache entries 0..j and their own block up to themselves.
    """
    anchors = list(anchors)
    if not anchors:
        raise ValueError("mask_blocks_layout needs at least one anchor")
    if min(anchors) < 0 or max(anchors) >= min(cached, len(ids) - 1):
        raise ValueError(f"anchors must lie in [0, {min(cached, len(ids) - 1) - 1}]")
    input_ids, positions, labels, anchor_of = [], [], [], []
    for j in anchors:
        block_ids, block_pos, block_labels = _mask_block(ids, j, k)
        input_ids += block_ids
        positions += block_pos
        labels += block_labels
        anchor_of += [j] * k
    q = len(input_ids)
    anchor_t = torch.tensor(anchor_of)
    block = torch.arange(q) // k
    sees_cache = torch.arange(cached)[None, :] <= anchor_t[:, None]
    sees_own_block = (block[:, None] == block[None, :]) & (torch.arange(q)[None, :] <= torch.arange(q)[:, None])
    positions_t = torch.tensor(positions)
    same_real = torch.where(positions_t < cached, positions_t, torch.full_like(positions_t, -1))
    return Layout(torch.tensor(input_ids), positions_t, torch.cat([sees_cache, sees_own_block], dim=1),
                  torch.tensor(labels), same_real)


def chain_parents(n: int) -> list[int]:
    """Parents of n tokens in a chain: each token's parent is the one before it (-1: none)."""
    return list(range(-1, n - 1))


def tree_positions(parents: Sequence[int]) -> list[int]:
    """Depth of each token in a forest given by parent indices (-1: a root at depth 0)."""
    depths: list[int] = []
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise ValueError(f"token {i}'s parent must come before it (or be -1), got {parent}")
        depths.append(0 if parent < 0 else depths[parent] + 1)
    return depths


def ancestor_matrix(parents: Sequence[int]) -> torch.Tensor:
    """(n, n) bool: [i, j] is True when token j is token i or one of its ancestors."""
    n = len(parents)
    seen = torch.eye(n, dtype=torch.bool)
    for i, parent in enumerate(parents):
        if parent >= 0:
            seen[i] |= seen[parent]
    return seen


def step_layout(tokens: Sequence[int], cached: int, k: int, anchors: Sequence[int],
                parents: Sequence[int] | None = None) -> Layout:
    """One decoding pass: new real/draft tokens, then a k-mask group per anchor (docs/design.md §5).

    parents[i] is the index of the token tokens[i] follows (-1: the cache's last token); None is a
    chain, each token after the one before it. tokens[i] sits at position cached + its depth and
    sees the cache and its own ancestors: a chain is causal, a tree (docs/design.md §7) verifies
    every root-to-node path at once. The mask group of anchor a (an index into tokens) sits at
    positions pos(a)+1 .. pos(a)+k and sees what tokens[a] sees, tokens[a] and its own earlier
    masks: it guesses the k tokens that follow the token predicted at tokens[a].
    - autoregressive: anchors = []
    - linear: anchors = [the last draft] (a tree: the last node of its most probable path)
    - quadratic: anchors = [t_0, each draft]; cost-aware: only some of them.
    """
    n = len(tokens)
    if n == 0:
        raise ValueError("a decoding step needs at least one token")
    if any(a < 0 or a >= n for a in anchors):
        raise ValueError(f"anchors must index the step's tokens (0..{n - 1})")
    parents = chain_parents(n) if parents is None else list(parents)
    if len(parents) != n:
        raise ValueError(f"{n} tokens need {n} parents, got {len(parents)}")
    depths = tree_positions(parents)
    q = n + len(anchors) * k
    input_ids = list(tokens) + [mask_id(i) for _ in anchors for i in range(1, k + 1)]
    positions = [cached + d for d in depths] + [cached + depths[a] + i for a in anchors for i in range(1, k + 1)]
    seen = ancestor_matrix(parents)
    attention = torch.zeros(q, cached + q, dtype=torch.bool)
    attention[:, :cached] = True
    attention[:n, cached:cached + n] = seen
    causal_k = torch.tril(torch.ones(k, k, dtype=torch.bool))
    for group, a in enumerate(anchors):
        rows = slice(n + group * k, n + (group + 1) * k)
        attention[rows, cached:cached + n] = seen[a]
        attention[rows, cached + n + group * k: cached + n + (group + 1) * k] = causal_k
    return Layout(torch.tensor(input_ids), torch.tensor(positions), attention)


def group_rows(num_tokens: int, k: int, group: int) -> slice:
    """Rows of mask group number `group` in a step layout over `num_tokens` tokens."""
    start = num_tokens + group * k
    return slice(start, start + k)
