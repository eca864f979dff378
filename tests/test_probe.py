"""Future probe and lossless check on tiny random models (real numbers, both families)."""

from __future__ import annotations

import pytest
import torch

from mtp import adapter
from mtp.adapter import identity_of
from mtp.decoding import generate
from mtp.drafting import DRAFT_CANDIDATES
from mtp.probe import future_probe, lossless_check
from tests.conftest import randomize_lora, tiny_model

PROMPT = [5, 17, 33, 2, 91, 64, 8, 120, 45, 3, 77, 19]


def mtp_model(family: str, k: int = 4, random_lora: bool = True):
    base = tiny_model(family)
    model = adapter.create(base, identity_of(base, "tiny"), k=k, lora_rank=4).eval()
    if random_lora:
        randomize_lora(model)
    with torch.no_grad():  # a sampler that really differs from plain lm_head
        model.sampler.out.weight.normal_(0, 0.5)
    return model


def reference_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_future_probe_views(tiny_family):
    k, top_n = 4, 6
    model = mtp_model(tiny_family, k)
    result = future_probe(model, PROMPT, k, top_n, placeholder_id=9)
    assert result.greedy_ids == reference_greedy(model, PROMPT, k + 2)
    n = len(PROMPT)
    with torch.no_grad():
        plain = model.base(torch.tensor([PROMPT + [9] * k])).logits[0, n:].softmax(-1)  # HF's own forward, gate closed
        masked = model(torch.tensor([PROMPT + [-i for i in range(1, k + 1)]]), gate=None)
        mask_probs = model.lm_logits(masked.hidden[0, n:]).softmax(-1)
    expected = {"base_probe": plain, "mask_path": mask_probs}
    for name, probs in expected.items():
        view = result.views[name]
        top = probs.topk(top_n, -1)
        assert view.top_ids == top.indices.tolist()
        torch.testing.assert_close(torch.tensor(view.top_probs), top.values, rtol=1e-5, atol=1e-6)
    for name, view in result.views.items():
        assert len(view.top_ids) == k and all(len(row) == top_n for row in view.top_ids)
        for i, target in enumerate(result.greedy_ids[1:k + 1]):
            assert 1 <= view.greedy_rank[i] <= 128
            if target in view.top_ids[i]:
                assert view.greedy_rank[i] == view.top_ids[i].index(target) + 1
                assert view.greedy_prob[i] == pytest.approx(view.top_probs[i][view.greedy_rank[i] - 1])
            else:
                assert view.greedy_rank[i] > top_n and view.greedy_prob[i] <= view.top_probs[i][-1]
    # The mask path and the base probe really are different computations on a random adapter.
    assert result.views["mask_path"].top_probs != result.views["base_probe"].top_probs
    # Sampler chain: what decoding drafts after the next token — each offset conditioned on the previous
    # choice, the first on the next token, scored over the top DRAFT_CANDIDATES of the mask's lm_head.
    view = result.views["sampler_chain"]
    chain = view.chain_ids
    assert chain == [row[0] for row in view.top_ids]
    with torch.no_grad():
        prev = torch.tensor([result.greedy_ids[0]] + chain[:-1])
        candidates = model.lm_logits(masked.hidden[0, n:]).topk(DRAFT_CANDIDATES, -1).indices
        scores = model.sampler_logits(masked.hidden[0, n:], prev, candidates).softmax(-1)
        chained = torch.zeros(k, model.base.config.vocab_size).scatter_(1, candidates, scores)
    assert view.top_ids == chained.topk(top_n, -1).indices.tolist()
    assert all(t in row for t, row in zip(chain, candidates.tolist()))
    futures = result.greedy_ids[1:k + 1]
    assert view.chain_accepted == next((i for i in range(k) if chain[i] != futures[i]), k)


def test_future_probe_tree_is_the_decoders_first_tree(tiny_family):
    """The probe's tree is the one quadratic decoding with that budget verifies after the prefill, and its
    accepted path is what greedy decoding keeps."""
    k, budget = 4, 12
    model = mtp_model(tiny_family, k)
    result = future_probe(model, PROMPT, k, 3, tree_budget=budget)
    assert result.tree is not None and len(result.tree.drafts) == budget and result.tree.parents
    trace = generate(model, PROMPT, method="quadratic", k=k, max_new_tokens=2 * k + 2, tree_budget=budget)
    first_tree = trace.steps[1]  # step 0 is the prefill (no drafts)
    assert (first_tree.drafts, first_tree.parents) == (result.tree.drafts, result.tree.parents)
    assert first_tree.accepted_path == result.tree.accepted_path and first_tree.bonus == result.tree.bonus
    assert future_probe(model, PROMPT, k, 3).tree is None
    with pytest.raises(ValueError, match="tree_budget"):
        future_probe(model, PROMPT, k, 3, tree_budget=-1)


def test_future_probe_token_texts_and_placeholder_default():
    class Tok:
        unk_token_id, pad_token_id = None, 11
        vocab = {"-": [42], "a-": [7, 42]}

        def decode(self, ids):
            return f"t{ids[0]}"

        def encode(self, text, add_special_tokens=True):
            return self.vocab.get(text, [1, 2])

    model = mtp_model("llama", 3)
    result = future_probe(model, PROMPT, 2, 3, tokenizer=Tok())
    assert result.placeholder_id == 42 and result.k == 2  # the paper's "-"
    assert all(result.text(t) == f"t{t}" for t in result.greedy_ids)
    Tok.vocab = {}  # "-" is not a single token here: fall back to pad
    assert future_probe(model, PROMPT, 2, 3, tokenizer=Tok()).placeholder_id == 11


def test_lossless_check_numbers(tiny_family):
    model = mtp_model(tiny_family, 4)
    result = lossless_check(model, PROMPT, 4)
    assert result.num_real == len(PROMPT)
    assert result.max_delta_same_shape == 0.0  # gated LoRA never touches real tokens: bit-identical
    assert result.max_delta_base_alone < 1e-5  # only float noise from a different GEMM shape
    assert result.argmax_same
    assert result.max_delta_gate_on > 0.05  # forcing the gate open changes the real tokens' logits
    fresh = lossless_check(mtp_model(tiny_family, 4, random_lora=False), PROMPT, 4)
    assert fresh.max_delta_gate_on == 0.0  # LoRA B starts at zero: nothing to see until trained


@pytest.mark.parametrize("prompt, k, message", [([], 2, "empty"), (PROMPT, 0, "k must be"), (PROMPT, 9, "k must be"),
                                                ([3, -1], 2, "non-negative"), ([1] * 509, 2, "context")])
def test_bad_input(prompt, k, message):
    model = mtp_model("llama", 4, random_lora=False)
    for call in (lambda: future_probe(model, prompt, k, 3), lambda: lossless_check(model, prompt, k)):
        with pytest.raises(ValueError, match=message):
            call()
