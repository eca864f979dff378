"""The three MTP training losses (docs/design.md §4), computed over the mask positions of a batch.

Inputs are flat over mask rows (any layout: the full interleaved one or the prefix-cache one):
- hidden (N, d): final post-norm hidden state of each mask;
- labels (N,): the token each mask must predict (IGNORE where none);
- prev_ids (N,): the token just before each mask's label, teacher-forced from the data
  (mask at position p predicts x_{p+1}; the token chosen before it is x_p);
- target (N, d) + has_target (N,): the detached final hidden state of the real token at the same
  position id, for the latent-consistency loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layouts import IGNORE


@dataclass
class LossWeights:
    base: float = 1.0
    sampler: float = 1.0
    lcm: float = 1.0


def mtp_losses(model, hidden: torch.Tensor, labels: torch.Tensor, prev_ids: torch.Tensor,
               target: torch.Tensor, has_target: torch.Tensor, offsets: torch.Tensor,
               weights: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total loss and detached per-term stats (losses, top-1 accuracy per mask offset).

    offsets (N,): the mask offset i (1..k) of each row, for per-offset accuracy.
    """
    supervised = labels != IGNORE
    if not bool(supervised.any()):
        raise ValueError("no supervised mask position in this batch")
    z, y = hidden[supervised], labels[supervised]
    base_logits = model.lm_logits(z).float()
    loss_base = F.cross_entropy(base_logits, y)
    total = weights.base * loss_base
    stats = {"loss_base": loss_base.detach()}
    if weights.sampler:
        sampler_logits = model.sampler_logits(z, prev_ids[supervised]).float()
        loss_sampler = F.cross_entropy(sampler_logits, y)
        total = total + weights.sampler * loss_sampler
        stats["loss_sampler"] = loss_sampler.detach()
        stats["correct_sampler"] = (sampler_logits.argmax(-1) == y).detach()
    lcm_rows = supervised & has_target
    if weights.lcm and bool(lcm_rows.any()):
        loss_lcm = F.mse_loss(hidden[lcm_rows].float(), target[lcm_rows].detach().float())
        total = total + weights.lcm * loss_lcm
        stats["loss_lcm"] = loss_lcm.detach()
    stats["loss"] = total.detach()
    stats["correct_base"] = (base_logits.argmax(-1) == y).detach()
    stats["offsets"] = offsets[supervised]
    return total, stats
