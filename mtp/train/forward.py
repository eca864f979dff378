"""One training forward: a micro-batch of sequences and anchors laid out (prefix-cache or full
interleaved layout, mtp.layouts), run through the MTP model, and its losses (mtp.losses)."""

from __future__ import annotations

import torch
from torch import nn

from .. import adapter
from ..layouts import IGNORE, interleaved_layout, mask_blocks_layout
from ..losses import LossWeights, mtp_losses
from .data import Sequence

Losses = tuple[torch.Tensor, dict[str, torch.Tensor]]  # the weighted loss and its per-term statistics


def _pad_rows(rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
    return torch.stack([torch.cat([r, r.new_full((width - len(r),), value)]) for r in rows])


def _mask_rows(model: adapter.MTPModel, hidden: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor,
               labels: torch.Tensor, same_real: torch.Tensor, real_hidden: torch.Tensor,
               seqs: list[Sequence], weights: LossWeights) -> Losses:
    """Gather the mask rows of a (B, Q) pass and compute the losses on them."""
    is_mask = input_ids < 0
    batch_index = torch.arange(len(seqs), device=hidden.device)[:, None].expand_as(input_ids)
    prev = torch.stack([torch.tensor(s.ids, device=hidden.device)[positions[b].clamp(max=len(s.ids) - 1)]
                        for b, s in enumerate(seqs)])
    target = real_hidden[batch_index, same_real.clamp(min=0)]
    return mtp_losses(model, hidden[is_mask], labels[is_mask], prev[is_mask], target[is_mask],
                      (same_real >= 0)[is_mask], -input_ids[is_mask], weights)


def prefix_cache_forward(model: adapter.MTPModel, seqs: list[Sequence], anchors: list[list[int]],
                         weights: LossWeights) -> Losses:
    """Real tokens once without grad (KV cache + hidden), then only the mask blocks with grad.

    Sequence b caches its real tokens 0..max(anchors_b): that is all its masks attend to, and masks
    further on have no same-position real token (as in the full layout), so both layouts agree.
    """
    device = model.mask_embeddings.device
    lengths = [max(a) + 1 for a in anchors]
    cached = max(lengths)
    real_ids = _pad_rows([torch.tensor(s.ids[:n]) for s, n in zip(seqs, lengths)], cached, 0).to(device)
    real_pos = torch.arange(cached, device=device).expand(len(seqs), cached)
    with torch.no_grad():
        real = model(real_ids, real_pos, use_cache=True, gate=False)
    layouts = [mask_blocks_layout(s.ids, model.k, a, n) for s, a, n in zip(seqs, anchors, lengths)]
    q = max(len(lay.input_ids) for lay in layouts)
    attention = torch.zeros(len(seqs), q, cached + q, dtype=torch.bool)
    attention[:, torch.arange(q), cached + torch.arange(q)] = True  # padding rows see themselves
    for b, (lay, n) in enumerate(zip(layouts, lengths)):
        rows = len(lay.input_ids)
        attention[b, :rows, :n] = lay.attention[:, :n]
        attention[b, :rows, cached:cached + rows] = lay.attention[:, n:]
    input_ids = _pad_rows([lay.input_ids for lay in layouts], q, -1).to(device)
    positions = _pad_rows([lay.position_ids for lay in layouts], q, 0).to(device)
    labels = _pad_rows([lay.labels for lay in layouts], q, IGNORE).to(device)
    same_real = _pad_rows([lay.same_position_real for lay in layouts], q, -1).to(device)
    out = model(input_ids, positions, attention.to(device), past_key_values=real.past_key_values, use_cache=True)
    loss, stats = _mask_rows(model, out.hidden, input_ids, positions, labels, same_real, real.hidden, seqs, weights)
    stats["real_tokens"] = torch.tensor(float(sum(lengths)))
    stats["mask_tokens"] = torch.tensor(float(sum(len(lay.input_ids) for lay in layouts)))
    return loss, stats


def full_forward(model: adapter.MTPModel, seqs: list[Sequence], anchors: list[list[int]],
                 weights: LossWeights) -> Losses:
    """The full interleaved layout (docs/design.md §3): real tokens and mask blocks in one pass with grad."""
    device = model.mask_embeddings.device
    layouts = [interleaved_layout(s.ids, model.k, s.prompt_len, a) for s, a in zip(seqs, anchors)]
    q = max(len(lay.input_ids) for lay in layouts)
    attention = torch.eye(q, dtype=torch.bool).repeat(len(seqs), 1, 1)  # padding rows see themselves
    for b, lay in enumerate(layouts):
        rows = len(lay.input_ids)
        attention[b, :rows, :rows] = lay.attention
    input_ids = _pad_rows([lay.input_ids for lay in layouts], q, -1).to(device)
    positions = _pad_rows([lay.position_ids for lay in layouts], q, 0).to(device)
    labels = _pad_rows([lay.labels for lay in layouts], q, IGNORE).to(device)
    same_real = _pad_rows([lay.same_position_real for lay in layouts], q, -1).to(device)
    out = model(input_ids, positions, attention.to(device))
    # Real hidden states in real-token order (index j = x_j), padded: the LCM targets.
    reals = [out.hidden[b, :len(lay.input_ids)][lay.input_ids.to(device) >= 0] for b, lay in enumerate(layouts)]
    width = max(len(r) for r in reals)
    real_hidden = torch.stack([torch.cat([r, r.new_zeros(width - len(r), r.shape[-1])]) for r in reals]).detach()
    loss, stats = _mask_rows(model, out.hidden, input_ids, positions, labels, same_real, real_hidden, seqs, weights)
    stats["real_tokens"] = torch.tensor(float(sum(len(r) for r in reals)))
    stats["mask_tokens"] = torch.tensor(float(sum(int((lay.input_ids < 0).sum()) for lay in layouts)))
    return loss, stats


FORWARDS = {"prefix_cache": prefix_cache_forward, "full": full_forward}


class TrainStep(nn.Module):
    """Wraps the MTP model so that one forward = one micro-batch's losses (what DDP wraps)."""

    def __init__(self, model: adapter.MTPModel, layout: str, weights: LossWeights) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.weights = weights

    def forward(self, seqs: list[Sequence], anchors: list[list[int]]) -> Losses:
        return FORWARDS[self.layout](self.model, seqs, anchors, self.weights)
