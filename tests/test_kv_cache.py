"""The decoding KV cache: GrowingLayer holds what transformers' DynamicLayer would, without copying
the cache on every pass; keep_in_cache keeps only the accepted path in either."""

from __future__ import annotations

import pytest
import torch
from decoding_helpers import greedy_reference, random_prompt, tiny_mtp
from transformers import DynamicCache, MistralConfig
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from mtp.decoding import generate
from mtp.kv_cache import GrowingLayer, decoding_cache, keep_in_cache


def entries(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, 8, generator=generator), torch.randn(1, 2, n, 8, generator=generator)


@torch.inference_mode()
def test_growing_layer_holds_what_dynamic_layer_holds_and_writes_in_place(monkeypatch) -> None:
    monkeypatch.setattr(GrowingLayer, "SPARE", 16)
    growing, reference = GrowingLayer(), DynamicLayer()
    buffers = set()
    for step, (new, crop) in enumerate([(10, 0), (5, -3), (1, 0), (9, -9), (4, -1), (30, -2), (2, 0)]):
        keys, values = entries(new, step)
        returned = growing.update(keys, values)
        expected = reference.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(returned, expected))
        buffers.add(growing.key_buffer.data_ptr())
        growing.crop(crop)
        reference.crop(crop)
        assert growing.get_seq_length() == reference.get_seq_length()
        assert torch.equal(growing.keys, reference.keys) and torch.equal(growing.values, reference.values)
    # 10 entries + 16 spare; refilled only when 43 entries no longer fit: two buffers, not one per pass.
    assert len(buffers) == 2


@torch.inference_mode()
def test_growing_layer_adopts_tensors_assigned_from_outside() -> None:
    growing = GrowingLayer()
    growing.update(*entries(6, 0))
    growing.keys, growing.values = growing.keys.clone(), growing.values.clone()  # e.g. a beam reorder
    before = growing.keys.clone()
    keys, values = entries(2, 1)
    growing.update(keys, values)
    assert torch.equal(growing.keys, torch.cat([before, keys], dim=-2))
    assert growing.keys.data_ptr() == growing.key_buffer.data_ptr()


@pytest.mark.parametrize("make_cache", [lambda config: DynamicCache(config=config), decoding_cache],
                         ids=["transformers", "growing"])
def test_keep_in_cache_gathers_the_path(make_cache) -> None:
    model = tiny_mtp("qwen2", seed=1)
    cache = make_cache(model.base.config)
    with torch.inference_mode():
        model(torch.arange(10)[None] + 2, torch.arange(10)[None], past_key_values=cache, use_cache=True)
        keys = cache.layers[0].keys.clone()
        keep_in_cache(cache, 4, [5, 7, 8])
        assert cache.get_seq_length() == 7
        assert torch.equal(cache.layers[0].keys, keys[..., [0, 1, 2, 3, 5, 7, 8], :])
        keep_in_cache(cache, 4, [4, 5])  # a prefix: a crop
        assert torch.equal(cache.layers[0].keys, keys[..., [0, 1, 2, 3, 5, 7], :])


def test_decoding_cache_grows_full_attention_layers_only() -> None:
    config = MistralConfig(num_hidden_layers=3, layer_types=["full_attention", "sliding_attention", "full_attention"],
                           sliding_window=8, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    kinds = [type(layer) for layer in decoding_cache(config).layers]
    assert kinds == [GrowingLayer, DynamicSlidingWindowLayer, GrowingLayer]


def test_decoding_with_the_growing_cache_matches_transformers_cache(monkeypatch) -> None:
    """Long enough to refill the buffers several times (SPARE lowered), trees gathering non-prefix paths."""
    monkeypatch.setattr(GrowingLayer, "SPARE", 5)
    model = tiny_mtp("llama", seed=3, k=6, vocab=6, lora_std=0.5)  # drafts accepted often
    prompt = random_prompt(2, 9, 6)
    reference = greedy_reference(model, prompt, 60)
    for options in ({"method": "quadratic", "k": 4, "tree_budget": 8}, {"method": "linear", "k": 6},
                    {"method": "quadratic", "k": 3, "groups": 2, "lookup": 5}):
        trace = generate(model, prompt, max_new_tokens=60, **options)
        assert trace.token_ids == reference, options
