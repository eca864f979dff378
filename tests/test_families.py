"""More model families in the greedy identity tests: Gemma 3 (sliding-window and full layers mixed),
Mistral (every layer sliding) and Phi-3 (fused projections), tiny and random, built from configs.

The window is tiny (6) so prompts and outputs run past it: the sliding layers' masks, their cache
eviction and the KV gathering of draft trees are checked beyond the window, not only inside it.
"""

from __future__ import annotations

import pytest
import torch
from decoding_helpers import greedy_reference, random_prompt
from transformers import (DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM,
                          Phi3Config, Phi3ForCausalLM)

from mtp import adapter
from mtp.adapter import MTPModel, identity_of
from mtp.decoding import generate
from mtp.kv_cache import decoding_cache, keep_in_cache

from tests.conftest import TINY, randomize_lora

WINDOW = 6
FAMILIES = ("gemma3", "mistral", "phi3")
# Phi-3 fuses q/k/v and gate/up into one projection each.
PHI3_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


def tiny_family_mtp(family: str, seed: int = 0, k: int = 6, vocab: int = 128, lora_std: float = 1.0) -> MTPModel:
    """A tiny random base model of `family` with an MTP adapter whose LoRA really changes the masks."""
    torch.manual_seed(seed)
    shape = {**TINY, "vocab_size": vocab, "bos_token_id": None, "eos_token_id": None, "pad_token_id": 0}
    if family == "gemma3":
        layers = ["sliding_attention", "full_attention", "sliding_attention"]
        base = Gemma3ForCausalLM(Gemma3TextConfig(**{**shape, "num_hidden_layers": 3}, head_dim=16,
                                                  sliding_window=WINDOW, layer_types=layers))
    elif family == "mistral":
        base = MistralForCausalLM(MistralConfig(**shape, sliding_window=WINDOW))
    else:
        base = Phi3ForCausalLM(Phi3Config(**shape))
    base.config._attn_implementation = "sdpa"
    targets = {"lora_targets": PHI3_TARGETS} if family == "phi3" else {}
    model = adapter.create(base.eval(), identity_of(base, f"tiny-{family}"), k=k, lora_rank=4, **targets).eval()
    randomize_lora(model, std=lora_std, seed=seed + 1)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_identity_chains(family: str) -> None:
    """Every method at several k reproduces generate(do_sample=False), prompts shorter and longer than the window."""
    model = tiny_family_mtp(family, seed=7)
    proposed = 0
    for seed, length in ((0, 4), (1, 13)):
        prompt = random_prompt(seed, length, 128)
        reference = greedy_reference(model, prompt, 20)
        for method in ("autoregressive", "linear", "quadratic"):
            for k in (1, 3, 6):
                trace = generate(model, prompt, method=method, k=k, max_new_tokens=20)
                assert trace.token_ids == reference, (family, seed, method, k)
                proposed += trace.proposed_drafts
    assert proposed > 200  # drafts were really verified (and mostly rejected)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_identity_trees_with_accepted_drafts(family: str) -> None:
    """Draft trees gather the accepted path's KV; a 6-token vocabulary makes drafts accepted often,
    so paths are kept well past the window."""
    model = tiny_family_mtp(family, seed=3, vocab=6, lora_std=0.5)
    accepted = 0
    for seed, length in ((0, 3), (1, 9)):
        prompt = random_prompt(seed, length, 6)
        reference = greedy_reference(model, prompt, 30)
        for method, groups in (("linear", None), ("quadratic", None), ("quadratic", 1)):
            for k, budget in ((2, 3), (4, 12), (6, 40)):
                trace = generate(model, prompt, method=method, k=k, groups=groups, max_new_tokens=30,
                                 tree_budget=budget)
                assert trace.token_ids == reference, (family, seed, method, groups, k, budget)
                accepted += trace.accepted_drafts
        for method in ("linear", "quadratic"):  # chains too: kept by a crop, not a gather
            assert generate(model, prompt, method=method, k=4, max_new_tokens=30).token_ids == reference
    assert accepted > 50


@torch.inference_mode()
def test_keep_in_cache_beyond_the_window_keeps_what_plain_decoding_would() -> None:
    """After a pass of 12 tokens and 3 masks on a cache past the window, keeping a non-prefix path
    leaves every layer as if only the kept tokens had been fed: full layers all of them, sliding
    layers the newest window-1."""
    model = tiny_family_mtp("gemma3", seed=1)
    ids = random_prompt(5, 20, 128)
    cache = decoding_cache(model.base.config)  # full-attention layers grow in place, sliding ones stay transformers'
    model(torch.tensor([ids[:10]]), torch.arange(10)[None], past_key_values=cache, use_cache=True)
    fed = torch.tensor([ids[10:20] + [-1, -2, -3]])
    model(fed, torch.tensor([list(range(10, 20)) + [20, 21, 22]]), past_key_values=cache, use_cache=True)
    keep_in_cache(cache, 12, [13, 16, 19])
    kept = ids[:12] + [ids[13], ids[16], ids[19]]
    plain = DynamicCache(config=model.base.config)
    positions = torch.tensor([list(range(12)) + [13, 16, 19]])
    model.base.model(torch.tensor([kept]), position_ids=positions, past_key_values=plain, use_cache=True)
    # The kept entries were computed with their own positions and visibility, so they equal a
    # plain pass only where those coincide: the first layer's keys depend on the tokens and positions alone.
    for ours, reference in zip(cache.layers[:1], plain.layers[:1]):
        assert ours.get_seq_length() == reference.get_seq_length() == 15
        assert ours.keys.shape == reference.keys.shape == (1, 2, WINDOW - 1, 16)
        assert torch.allclose(ours.keys, reference.keys, atol=1e-6)
    assert cache.layers[1].keys.shape[-2] == 15  # the full-attention layer keeps everything
