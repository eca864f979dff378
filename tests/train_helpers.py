"""Fixtures for the training tests: tiny random models, tiny distilled data sets, a tiny model dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mtp import adapter
from mtp.models import LoadedModel, _dequantized_embedded_dir

from tests.conftest import TINY, tiny_model


def tiny_loaded(family: str = "llama", seed: int = 0) -> LoadedModel:
    """A tiny random base model as load_model would return it (training needs no tokenizer)."""
    base = tiny_model(family, seed)
    return LoadedModel(model=base, tokenizer=None, identity=adapter.identity_of(base, f"tiny-{family}"))


def write_data(path: Path, num: int = 4, prompt_len: int = 4, response_len: int = 20, seed: int = 0,
               vocab: int = 128) -> Path:
    """A distilled-format JSONL of random sequences (fixed per seed: memorisable)."""
    generator = torch.Generator().manual_seed(seed)
    with open(path, "w") as handle:
        for index in range(num):
            handle.write(json.dumps({
                "key": f"k{index}", "domain": "test",
                "prompt_ids": torch.randint(0, vocab, (prompt_len,), generator=generator).tolist(),
                "response_ids": torch.randint(0, vocab, (response_len,), generator=generator).tolist(),
            }) + "\n")
    return path


def tiny_model_dir(path: Path, vocab_size: int = 128) -> Path:
    """A tiny Llama saved as a local model directory, with SmolLM2's tokenizer (load_model wants one;
    vocab_size=49152 makes the tokenizer's ids valid for generation)."""
    torch.manual_seed(0)
    config = LlamaConfig(**{**TINY, "vocab_size": vocab_size}, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    source = _dequantized_embedded_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, path / name)
    return path
