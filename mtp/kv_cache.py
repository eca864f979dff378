"""The KV cache decoding uses, and keeping only the accepted path in it (docs/design.md §5).

transformers' DynamicLayer appends a pass's keys and values by concatenation, which copies the
whole cache on every pass: 46 KB per cached token on SmolLM2-135M, so ~1 % of a pass at a few
hundred tokens on 2 CPU cores, growing with the context (docs/bench/cheaper_passes_eval).
GrowingLayer writes each pass's entries into spare room at the end of a preallocated buffer
instead, and hands attention views of it; dropping entries (a rejected draft, the masks) only
shortens the view. Sliding-window layers keep transformers' class.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedConfig
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that grows in place: `keys` / `values` are views of the first
    `length` entries of buffers with room for `SPARE` more entries (reallocated when full)."""

    SPARE = 256  # entries of room added whenever a buffer is (re)allocated: ~46 KB per entry on SmolLM2-135M

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        if not self._holds_views(length, key_states) or length + new > self.key_buffer.shape[-2]:
            self._reallocate(length, length + new + self.SPARE, key_states, value_states)
        self.key_buffer[..., length:length + new, :].copy_(key_states)
        self.value_buffer[..., length:length + new, :].copy_(value_states)
        self.keys = self.key_buffer[..., :length + new, :]
        self.values = self.value_buffer[..., :length + new, :]
        return self.keys, self.values

    def _holds_views(self, length: int, key_states: torch.Tensor) -> bool:
        """Whether keys / values are still views of the buffers' first entries (crop keeps them so;
        anything that assigns new tensors, such as a beam reorder, does not)."""
        if self.key_buffer is None or self.key_buffer.shape[:2] != key_states.shape[:2]:
            return False
        if length == 0:
            return True
        return all(view.data_ptr() == buffer.data_ptr() and view.stride() == buffer.stride()
                   for view, buffer in ((self.keys, self.key_buffer), (self.values, self.value_buffer)))

    def _reallocate(self, length: int, capacity: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        keys, values = self.keys, self.values
        batch, heads, _, key_dim = key_states.shape
        self.key_buffer = key_states.new_empty(batch, heads, capacity, key_dim)
        self.value_buffer = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
        if length:
            self.key_buffer[..., :length, :].copy_(keys)
            self.value_buffer[..., :length, :].copy_(values)


def decoding_cache(config: PreTrainedConfig) -> DynamicCache:
    """A DynamicCache for `config` whose full-attention layers grow in place (GrowingLayer)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def keep_in_cache(cache: DynamicCache, start: int, keep: Sequence[int]) -> None:
    """Keep cache entries [0, start) and then only the entries at `keep` (ascending) after them.

    Positions are absolute. A sliding-window layer holds only its newest entries (MTPModel.forward
    makes it keep a pass's entries until this call), so its positions are shifted by the entries it
    no longer holds; afterwards it again keeps only the window-1 newest, all a later pass can see.
    """
    drop = cache.get_seq_length() - start
    if list(keep) == list(range(start, start + len(keep))):  # a prefix (every chain): one crop
        cache.crop(len(keep) - drop)  # a sliding layer's crop also evicts what fell out of its window
        return
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        evicted = layer.get_seq_length() - layer.keys.shape[-2]  # 0 for full-attention layers
        index = torch.tensor(list(keep), device=layer.keys.device) - evicted
        kept_keys, kept_values = layer.keys.index_select(-2, index), layer.values.index_select(-2, index)
        if isinstance(layer, GrowingLayer):  # the kept entries move down in place
            layer.crop(-drop)
            layer.update(kept_keys, kept_values)
            continue
        layer.keys = torch.cat([layer.keys[..., :start - evicted, :], kept_keys], dim=-2)
        layer.values = torch.cat([layer.values[..., :start - evicted, :], kept_values], dim=-2)
        if getattr(layer, "is_sliding", False):
            layer.cumulative_length = start + len(keep)
            layer.crop(0)
