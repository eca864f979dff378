"""τ replayed from teacher-forced drafts equals real greedy decoding, pass for pass."""

from __future__ import annotations

import pytest
from decoding_helpers import greedy_reference, random_prompt, tiny_mtp

from mtp.acceptance import Pass, draft_matches, leftover_key, lookup_matches, replay
from mtp.decoding import generate
from mtp.drafting import lookup_drafts


def accepted(passes: list[Pass]) -> list[int | None]:
    return [p.accepted for p in passes]


def test_replay_by_hand():
    # No draft ever matches: one token per pass (the prefill included).
    assert accepted(replay([0] * 10, "quadratic", 4, 6)) == [None] + [0] * 5  # the prefill verifies no drafts
    assert accepted(replay([0] * 10, "linear", 4, 6)) == [None, 0, None, 0, None, 0]  # a rejection leaves no drafts
    # Every draft matches: k accepted + 1 bonus per pass after the prefill.
    assert accepted(replay([9] * 20, "quadratic", 4, 11)) == [None, 4, 4]
    assert accepted(replay([9] * 20, "linear", 4, 11)) == [None, 4, 4]
    # Accepting past the last quadratic group leaves no drafts: the next pass yields one token.
    assert accepted(replay([9] * 20, "quadratic", 4, 11, groups=2)) == [None, 4, None, 4]
    # Linear keeps drafts only when all k are accepted; a partial accept costs a draftless pass.
    # The pass that starts after `produced` tokens reads matches[produced - 1].
    matches = [2, 0, 0, 3, 3, 0, 0, 0, 0, 0]
    assert accepted(replay(matches, "linear", 4, 10)) == [None, 2, None, 3, None]  # reads 0, -, 4, -
    assert accepted(replay(matches, "quadratic", 4, 10)) == [None, 2, 3, 0, 0]  # reads 0, 3, 7, 8
    # k caps the accepted count; matches beyond the adapter's k cannot occur but are capped too.
    assert accepted(replay([3] * 10, "quadratic", 1, 5)) == [None, 1, 1]
    with pytest.raises(ValueError, match="replay covers linear and quadratic"):
        replay([0], "autoregressive", 1, 2)


def test_leftover_masks_replay_by_hand():
    # Quadratic k=4, one group (after t_0): accepting 2 drafts leaves no group at the path's end, but
    # the path ran 2 tokens past the bonus of t_0's group (its first draft): that group's masks 3..
    # still guess what follows, so the next pass drafts k - 2 = 2 tokens from them (leftover[i][s-1]:
    # the chain from mask s of group i). Without leftover entries such a pass is draftless.
    matches, leftover = [2] * 12, [[1, 1, 1]] * 12
    assert accepted(replay(matches, "quadratic", 4, 10, groups=1)) == [None, 2, None, 2, None, 2]
    # Accepting 1 leftover draft runs 1 past the bonus of that pass's own t_0 group: 3 masks left.
    assert accepted(replay(matches, "quadratic", 4, 10, groups=1, leftover=leftover)) == [None, 2, 1, 1, 1]
    # Leftover entries past k - shift are capped like any chain; linear never drafts from leftovers.
    assert accepted(replay(matches, "quadratic", 4, 10, groups=1, leftover=[[3, 3, 3]] * 12)) == [None, 2, 2, 2]
    # Past all k masks of the freshest group on the path, a pass is draftless.
    assert accepted(replay([4] * 12, "quadratic", 4, 11, groups=1, leftover=leftover)) == [None, 4, None, 4]
    assert replay(matches, "linear", 4, 10, leftover=leftover) == replay(matches, "linear", 4, 10)


def test_lookup_drafts_and_their_replay_by_hand():
    # The most recent earlier occurrence of the last 3-gram, else 2-gram; a 1-gram proposes nothing.
    assert lookup_drafts([1, 2, 3, 9, 1, 2, 3, 8, 7, 1, 2, 3], 2) == [8, 7]
    assert lookup_drafts([5, 2, 3, 9, 1, 2, 3], 10) == [9, 1, 2, 3]
    assert lookup_drafts([1, 2, 3, 4, 5, 3], 10) == [] and lookup_drafts([4, 4], 10) == []
    # lookup_matches(prompt, output) entry i: the proposal from prompt + output[:i+1] against output[i+1:].
    assert lookup_matches([1, 2, 3, 4, 1, 2], [3, 4, 6], 3) == [(3, 1), (3, 0)]  # proposals [4 1 2], [1 2 3]
    # A pass with lookup drafts records them; the masks' drafts are used when lookup finds nothing.
    lookup = [(0, 0), (0, 0), (3, 2)] + [(0, 0)] * 6  # the pass after 3 tokens gets 3 lookup drafts
    assert replay([1] * 9, "quadratic", 2, 9, lookup=lookup) == [Pass(None), Pass(1), Pass(2, 3), Pass(1), Pass(1)]
    # Accepting past the last quadratic group (2 ≥ groups=2) leaves no mask drafts: a draftless pass.
    assert accepted(replay([1] * 9, "quadratic", 2, 9, groups=2, lookup=lookup)) == [None, 1, 2, None, 1]
    # Linear keeps the group after the last lookup draft only when all of them are accepted.
    partial = [(4, 2)] + [(0, 0)] * 7
    assert accepted(replay([1] * 9, "linear", 1, 9, lookup=partial)) == [None, 2, None, 1, 1]


def _acceptance_model():
    # A tiny vocabulary and random LoRA: random drafts are accepted often enough to test replay.
    return tiny_mtp("llama", seed=3, k=6, vocab=6, lora_std=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("use_sampler", [True, False])
def test_replay_equals_decoding(use_sampler: bool) -> None:
    model = _acceptance_model()
    accepted_total = lookup_passes = 0
    for seed in range(3):
        prompt = random_prompt(seed, 7, 6)
        reference = greedy_reference(model, prompt, 40)
        matches = draft_matches(model, prompt + reference, len(prompt), chunk=5)
        assert len(matches["sampler"]) == len(matches["lm_head"]) == len(reference)
        assert all(0 <= m <= model.k for m in matches["sampler"] + matches["lm_head"])
        drafter = matches["sampler" if use_sampler else "lm_head"]
        leftover = matches[leftover_key("sampler" if use_sampler else "lm_head")]
        assert len(leftover) == len(reference) and all(len(shifts) <= model.k - 1 for shifts in leftover)
        looked_up = lookup_matches(prompt, reference, 5)
        for method, k, groups, lookup in [
                ("linear", 1, None, 0), ("linear", 4, None, 0), ("quadratic", 1, None, 0), ("quadratic", 3, None, 0),
                ("quadratic", 6, None, 0), ("quadratic", 6, 2, 0), ("quadratic", 6, 1, 0), ("linear", 3, None, 5), ("quadratic", 3, 2, 5)]:
            trace = generate(model, prompt, method=method, k=k, groups=groups, max_new_tokens=40,
                             use_sampler=use_sampler, lookup=lookup)
            assert trace.token_ids == reference
            replayed = replay(drafter, method, k, len(reference), groups, looked_up if lookup else None, leftover)
            assert len(replayed) == trace.forward_passes, (seed, method, k, groups)
            # Only the last pass may differ: decoding counts drafts accepted past the token budget.
            assert [p.accepted or 0 for p in replayed[:-1]] == trace.accept_counts[:-1]
            assert [p.accepted is not None for p in replayed] == [bool(step.drafts) for step in trace.steps]
            assert [p.lookup_drafts for p in replayed] == [len(s.drafts) if s.looked_up else 0 for s in trace.steps]
            accepted_total += sum(trace.accept_counts)
            lookup_passes += sum(step.looked_up for step in trace.steps)
    assert accepted_total > 20 and lookup_passes > 10  # the comparison is not all zeros


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
