"""methods.CostAware: mask groups only while they produce more tokens per second, and the output
of decoding with it is still exactly the base model's."""

from __future__ import annotations

import pytest
from decoding_helpers import greedy_reference, random_prompt, tiny_mtp

from mtp.decoding import generate
from mtp.drafting import LOOKUP, Draft
from mtp.methods import CostAware, PathEnd, Quadratic

CHAIN = Draft.chain([5, 6, 7])


def run(policy: CostAware, passes: int, tokens_per_second: dict[bool, float]) -> list[bool]:
    """Feed `passes` passes of 2 tokens each, timed so each regime yields the given rate; the regime of each."""
    regimes = []
    for _ in range(passes):
        anchors = policy.anchors(CHAIN)
        regimes.append(bool(anchors))
        policy.observe(2, 2 / tokens_per_second[bool(anchors)])
    return regimes


def expected_regimes(passes: int, masks_faster: bool) -> list[bool]:
    """On until the first probe; then the faster regime, the other probed for PROBE passes after
    INTERVAL passes, the interval doubling (up to MAX_INTERVAL) after each probe that kept the regime."""
    regimes = [True] * CostAware.FIRST_PROBE + [False] * CostAware.PROBE
    interval = 2 * CostAware.INTERVAL if masks_faster else CostAware.INTERVAL  # off won the first probe: a switch
    while len(regimes) < passes:
        regimes += [masks_faster] * interval + [not masks_faster] * CostAware.PROBE
        interval = min(2 * interval, CostAware.MAX_INTERVAL)
    return regimes[:passes]


@pytest.mark.parametrize("masks_faster", [True, False])
def test_keeps_whichever_regime_produces_more_tokens_per_second(masks_faster: bool) -> None:
    rates = {True: 30.0, False: 20.0} if masks_faster else {True: 20.0, False: 30.0}
    assert run(CostAware(Quadratic(1, 3)), 200, rates) == expected_regimes(200, masks_faster)


def test_a_switch_brings_probes_back_to_the_short_interval() -> None:
    policy = CostAware(Quadratic(1, 3))
    run(policy, CostAware.FIRST_PROBE + CostAware.PROBE, {True: 30.0, False: 20.0})
    assert policy.masks_on and policy.interval == 2 * CostAware.INTERVAL
    # The text changes: masks stop paying. The next probe switches off, and probes come sooner again.
    regimes = run(policy, 2 * CostAware.INTERVAL + CostAware.PROBE + CostAware.INTERVAL + 1, {True: 10.0, False: 20.0})
    assert regimes[-CostAware.INTERVAL - 1:] == [False] * CostAware.INTERVAL + [True]
    assert policy.interval == CostAware.INTERVAL


def test_passes_verifying_lookup_drafts_carry_no_group() -> None:
    policy = CostAware(Quadratic(2, 3))
    looked_up = Draft.chain([5, 6, 7], source=LOOKUP)
    assert policy.anchors(looked_up) == [] and policy.fed_masks  # counted as the "on" regime's pass
    assert policy.anchors(CHAIN) == [-1, 0]


def test_a_regimes_first_pass_is_not_measured() -> None:
    """The pass after a switch carries drafts the other regime made: its tokens are not credited."""
    policy = CostAware(Quadratic(1, 3))
    run(policy, CostAware.FIRST_PROBE, {True: 30.0, False: 30.0})  # the prefill pass is not measured either
    assert len(policy.measured[True]) == CostAware.FIRST_PROBE - 1 and not policy.measured[False]
    run(policy, CostAware.PROBE, {True: 30.0, False: 30.0})
    assert len(policy.measured[False]) == CostAware.PROBE - 1
    assert policy.tokens_per_second(False) == pytest.approx(30.0)


def test_groups_follow_the_wrapped_policy_while_on() -> None:
    policy = CostAware(Quadratic(2, 3))
    assert policy.anchors(CHAIN) == Quadratic(2, 3).anchors(CHAIN) == [-1, 0]
    for accepted in range(4):
        end = PathEnd.of_chain(accepted, 3)
        assert policy.group_behind(end) == Quadratic(2, 3).group_behind(end) == max(accepted - 1, 0)
    policy.masks_on = False
    assert policy.anchors(CHAIN) == []


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_output_is_the_base_models_whatever_the_regimes(family: str, monkeypatch) -> None:
    monkeypatch.setattr(CostAware, "FIRST_PROBE", 2)
    monkeypatch.setattr(CostAware, "INTERVAL", 3)
    monkeypatch.setattr(CostAware, "PROBE", 2)
    model = tiny_mtp(family, seed=3, k=6, vocab=6, lora_std=0.5)  # drafts accepted often
    prompt = random_prompt(4, 9, 6)
    reference = greedy_reference(model, prompt, 50)
    for options in ({"method": "quadratic", "k": 4, "groups": 1, "lookup": 5}, {"method": "linear", "k": 6},
                    {"method": "quadratic", "k": 4, "tree_budget": 8}):
        trace = generate(model, prompt, max_new_tokens=50, cost_aware=True, **options)
        assert trace.token_ids == reference, options
        # Both regimes ran: passes with mask groups and passes without.
        fed = [step.input_length - 1 - len(step.drafts) for step in trace.steps[1:]]
        assert any(fed) and not all(fed), options
