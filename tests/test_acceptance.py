"""τ replayed from teacher-forced drafts equals real greedy decoding, pass for pass."""

from __future__ import annotations

import pytest
from decoding_helpers import greedy_reference, random_prompt, tiny_mtp

from mtp.acceptance import draft_matches, replay
from mtp.decoding import generate


def test_replay_by_hand():
    # No draft ever matches: one token per pass (the prefill included).
    assert replay([0] * 10, "quadratic", 4, 6) == [None] + [0] * 5  # the prefill verifies no drafts
    assert replay([0] * 10, "linear", 4, 6) == [None, 0, None, 0, None, 0]  # a rejection leaves no drafts
    # Every draft matches: k accepted + 1 bonus per pass after the prefill.
    assert replay([9] * 20, "quadratic", 4, 11) == [None, 4, 4]
    assert replay([9] * 20, "linear", 4, 11) == [None, 4, 4]
    # Accepting past the last quadratic group leaves no drafts: the next pass yields one token.
    assert replay([9] * 20, "quadratic", 4, 11, groups=2) == [None, 4, None, 4]
    # Linear keeps drafts only when all k are accepted; a partial accept costs a draftless pass.
    # The pass that starts after `produced` tokens reads matches[produced - 1].
    matches = [2, 0, 0, 3, 3, 0, 0, 0, 0, 0]
    assert replay(matches, "linear", 4, 10) == [None, 2, None, 3, None]  # reads 0, -, 4, -
    assert replay(matches, "quadratic", 4, 10) == [None, 2, 3, 0, 0]  # reads 0, 3, 7, 8
    # k caps the accepted count; matches beyond the adapter's k cannot occur but are capped too.
    assert replay([3] * 10, "quadratic", 1, 5) == [None, 1, 1]
    with pytest.raises(ValueError, match="replay covers linear and quadratic"):
        replay([0], "autoregressive", 1, 2)


def _acceptance_model():
    # A tiny vocabulary and random LoRA: random drafts are accepted often enough to test replay.
    return tiny_mtp("llama", seed=3, k=6, vocab=6, lora_std=0.5)


@pytest.mark.parametrize("use_sampler", [True, False])
def test_replay_equals_decoding(use_sampler: bool) -> None:
    model = _acceptance_model()
    accepted_total = 0
    for seed in range(3):
        prompt = random_prompt(seed, 7, 6)
        reference = greedy_reference(model, prompt, 40)
        matches = draft_matches(model, prompt + reference, len(prompt), chunk=5)
        assert len(matches["sampler"]) == len(matches["lm_head"]) == len(reference)
        assert all(0 <= m <= model.k for m in matches["sampler"] + matches["lm_head"])
        drafter = matches["sampler" if use_sampler else "lm_head"]
        for method, k, groups in [("linear", 1, None), ("linear", 4, None), ("quadratic", 1, None),
                                  ("quadratic", 3, None), ("quadratic", 6, None), ("quadratic", 6, 2)]:
            trace = generate(model, prompt, method=method, k=k, groups=groups, max_new_tokens=40,
                             use_sampler=use_sampler)
            assert trace.token_ids == reference
            replayed = replay(drafter, method, k, len(reference), groups)
            assert len(replayed) == trace.forward_passes, (seed, method, k, groups)
            # Only the last pass may differ: decoding counts drafts accepted past the token budget.
            assert [a or 0 for a in replayed[:-1]] == trace.accept_counts[:-1]
            assert [a is not None for a in replayed] == [bool(step.drafts) for step in trace.steps]
            accepted_total += sum(trace.accept_counts)
    assert accepted_total > 20  # the comparison is not all zeros


def test_draft_matches_bad_input() -> None:
    model = _acceptance_model()
    with pytest.raises(ValueError, match="at least one generated token"):
        draft_matches(model, [1, 2, 3], 3)
    with pytest.raises(ValueError, match="at least one generated token"):
        draft_matches(model, [1, 2, 3], 0)


def test_chunking_does_not_change_matches() -> None:
    model = _acceptance_model()
    prompt = random_prompt(5, 6, 6)
    ids = prompt + greedy_reference(model, prompt, 25)
    whole = draft_matches(model, ids, len(prompt), chunk=64)
    assert draft_matches(model, ids, len(prompt), chunk=3) == whole
