"""mtp.attention: MTP's passes hand grouped KV heads to SDPA as they are, bit-identical; nothing else changes."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import DynamicCache

from decoding_helpers import tiny_mtp
from mtp import adapter, attention
from mtp.layouts import chain_parents, step_layout
from tests.conftest import tiny_model


@pytest.fixture
def sdpa_calls(monkeypatch) -> dict[str, int]:
    """Counts SDPA kernel calls given a mask with grouped heads, and calls of transformers' own SDPA path."""
    calls = {"grouped": 0, "transformers": 0}
    kernel, transformers_path = torch.nn.functional.scaled_dot_product_attention, attention.sdpa_attention_forward

    def counting_kernel(*args, **kwargs):
        # transformers' own path passes enable_gqa only without a mask (on CPU)
        calls["grouped"] += bool(kwargs.get("enable_gqa")) and kwargs.get("attn_mask") is not None
        return kernel(*args, **kwargs)

    def counting_transformers_path(*args, **kwargs):
        calls["transformers"] += 1
        return transformers_path(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_kernel)
    monkeypatch.setattr(attention, "sdpa_attention_forward", counting_transformers_path)
    return calls


def tree_pass_hidden(model: adapter.MTPModel, calls: dict[str, int]) -> torch.Tensor:
    """Final hidden states of a decoding pass: 3 drafts branching from t_0, a mask group, over a 20-token
    cache; `calls` count that pass alone."""
    cache = DynamicCache(config=model.base.config)
    prompt = torch.arange(3, 23)[None]
    with torch.inference_mode():
        model(prompt, past_key_values=cache, use_cache=True)
        calls.update(grouped=0, transformers=0)
        layout = step_layout([7, 8, 9, 10], 20, 4, [1], chain_parents(1) + [0, 0, 1])
        out = model(layout.input_ids[None], layout.position_ids[None], attention_mask=layout.attention[None],
                    past_key_values=cache, use_cache=True)
    return out.hidden


def test_mtp_pass_uses_grouped_heads_bit_identical_to_transformers(tiny_family, sdpa_calls, monkeypatch):
    model = tiny_mtp(tiny_family, k=4, lora_std=0.5)
    assert model.base.config._attn_implementation == attention.IMPLEMENTATION
    grouped = tree_pass_hidden(model, sdpa_calls)
    assert sdpa_calls == {"grouped": model.base.config.num_hidden_layers, "transformers": 0}
    monkeypatch.setattr(attention, "mtp_pass", contextlib.nullcontext)  # as if MTP passes were any other call
    repeated = tree_pass_hidden(model, sdpa_calls)
    assert sdpa_calls == {"grouped": 0, "transformers": model.base.config.num_hidden_layers}
    assert torch.equal(grouped, repeated)


def test_other_calls_run_transformers_sdpa(sdpa_calls):
    model = tiny_mtp("llama", k=4, lora_std=0.5)
    prompt = torch.arange(3, 15)[None]
    with torch.inference_mode():
        model.base.generate(prompt, max_new_tokens=4, do_sample=False)  # the base model's own decoding
    layers = model.base.config.num_hidden_layers
    assert sdpa_calls["transformers"] == 4 * layers  # the prompt, then 3 one-token steps
    with torch.enable_grad():
        model(prompt, attention_mask=torch.ones(1, 12, 12, dtype=torch.bool).tril())  # training: grad mode
    assert sdpa_calls["transformers"] == 5 * layers
    assert sdpa_calls["grouped"] == 0


def test_eager_models_keep_their_attention():
    base = tiny_model("llama")
    base.config._attn_implementation = "eager"
    adapter.create(base, adapter.identity_of(base, "tiny-llama"), k=4, lora_rank=4)
    assert base.config._attn_implementation == "eager"
