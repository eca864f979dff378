"""SDPA for MTP's own passes: grouped KV heads handed to the kernel as they are (docs/design.md §5).

Every MTP pass but a plain chain without masks carries an explicit attention mask (masks, trees,
the quadratic layout). With a mask, transformers' SDPA path copies each key/value head once per
query head it serves (`repeat_kv`) before calling the kernel, because on CUDA a mask with grouped
heads would fall back to the slow math kernel. torch's CPU flash kernel takes the mask and grouped
heads as they are, with bit-identical output: on 2 cores one SmolLM2 layer's attention for a 9-token
pass over a 734-entry cache took 0.46 ms instead of 0.73 ms, and the shipped default decoded 1.09x
faster on 685-token summarisation prompts (docs/bench/grouped_attention_eval/ab). So on CPU, in
inference, MTP's passes skip the copy; everything else — the base model's own `generate`, prompt
lookup, training, other devices — runs transformers' SDPA unchanged.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "mtp_sdpa"

# Set while an MTP pass runs in this thread / asyncio task (MTPModel.forward).
_IN_MTP_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar("mtp_pass", default=False)


def sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except in an MTP pass on CPU with a mask and grouped KV heads."""
    grouped_on_cpu = (
        _IN_MTP_PASS.get() and isinstance(attention_mask, torch.Tensor) and query.device.type == "cpu"
        and query.shape[2] > 1 and getattr(module, "num_key_value_groups", 1) > 1 and not torch.is_grad_enabled()
        and all(kwargs.get(name) is None for name in ("position_bias", "softcap", "cache"))
    )
    if not grouped_on_cpu:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, sdpa_forward)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)  # the masks transformers builds stay SDPA's


def use_for(model: PreTrainedModel) -> None:
    """Route an SDPA model's attention through sdpa_forward; eager or flash models stay as they are."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(IMPLEMENTATION)


@contextmanager
def mtp_pass() -> Iterator[None]:
    """Mark the forward calls inside as an MTP pass (sdpa_forward may then skip the KV copy)."""
    token = _IN_MTP_PASS.set(True)
    try:
        yield
    finally:
        _IN_MTP_PASS.reset(token)
