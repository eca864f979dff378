"""Shared fixtures: tiny random models built from configs (no download) and the embedded SmolLM2."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (tiny models run fastest so, and do not spin against a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def tiny_model(family: str, seed: int = 0):
    """A tiny random causal LM of the given family ("llama" or "qwen2")."""
    torch.manual_seed(seed)
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family](**TINY)
    config._attn_implementation = "sdpa"
    model_class = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[family]
    return model_class(config).eval()


def randomize_lora(model, std: float = 0.5, seed: int = 1) -> None:
    """Give LoRA B non-zero values (peft initialises it to zero) so the adapter really changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


@pytest.fixture(params=["llama", "qwen2"])
def tiny_family(request) -> str:
    return request.param


@pytest.fixture
def smollm2():
    """A fresh embedded SmolLM2-135M-Instruct (fast after the first load: the fp32 copy is cached)."""
    from mtp.models import load_model
    return load_model()
