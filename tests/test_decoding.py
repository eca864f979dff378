"""Decoding engine: greedy token identity with transformers generate, oracle drafts, exact sampling."""

from __future__ import annotations

import pytest
import torch

from decoding_helpers import (chi_square, chi_square_critical, first_marginals, greedy_reference, oracle,
                              random_prompt, tiny_mtp)
from mtp import decoding
from mtp.datastore import Datastore
from mtp.decoding import generate
from mtp.drafting import Draft, LeftoverMasks, MaskGroup
from mtp.sampling import Sampling, distribution

METHODS = ("autoregressive", "linear", "quadratic")
K_VALUES = (1, 2, 3, 4, 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("lora_std", [0.0, 1.0])
def test_greedy_identity_tiny(family: str, lora_std: float) -> None:
    """Every method and k reproduces generate(do_sample=False), with mostly wrong drafts."""
    model = tiny_mtp(family, seed=7, lora_std=lora_std)
    mismatches, steps, proposed = [], 0, 0
    for seed in range(3):
        prompt = random_prompt(seed, 4 + 5 * seed, 128)
        reference = greedy_reference(model, prompt, 24)
        assert len(reference) == 24
        for method in METHODS:
            for k in K_VALUES:
                trace = generate(model, prompt, method=method, k=k, max_new_tokens=24)
                if trace.token_ids != reference:
                    mismatches.append((seed, method, k))
                assert trace.stop_reason == "max_new_tokens"
                assert sum(step.new_tokens for step in trace.steps) == 24
                steps += trace.forward_passes
                proposed += trace.proposed_drafts
                if method == "autoregressive":
                    assert trace.forward_passes == 24 and trace.proposed_drafts == 0
    assert mismatches == []
    assert proposed > 500  # drafts were really verified (and mostly rejected)


def test_greedy_identity_groups_and_no_sampler() -> None:
    model = tiny_mtp("llama", seed=3, lora_std=0.5)
    prompt = random_prompt(11, 9, 128)
    reference = greedy_reference(model, prompt, 30)
    for k in (2, 4):
        for groups in range(1, k + 2):
            assert generate(model, prompt, k=k, groups=groups, max_new_tokens=30).token_ids == reference
    for method in ("linear", "quadratic"):
        assert generate(model, prompt, method=method, k=4, use_sampler=False, max_new_tokens=30).token_ids == reference


def test_group_logits_merged_into_the_verify_call_or_not_draft_alike(monkeypatch) -> None:
    """verify computes the mask groups' logits with the verified rows while they are few; drafting
    from them or from a separate lm_head call on the surviving group proposes the same drafts."""
    model = tiny_mtp("llama", seed=3, k=6, vocab=6, lora_std=0.5)  # small vocabulary: drafts accepted often
    prompt = random_prompt(2, 7, 6)
    runs = {}
    for max_rows in (decoding.MERGED_LOGITS_MAX_ROWS, 0):
        monkeypatch.setattr(decoding, "MERGED_LOGITS_MAX_ROWS", max_rows)
        runs[max_rows] = [generate(model, prompt, method=method, k=k, max_new_tokens=30)
                          for method in ("linear", "quadratic") for k in (2, 6)]
    merged, separate = runs.values()
    for a, b in zip(merged, separate):
        assert a.token_ids == b.token_ids and [s.drafts for s in a.steps] == [s.drafts for s in b.steps]
    assert sum(sum(t.accept_counts) for t in merged) > 10


@pytest.mark.parametrize("method", ["linear", "quadratic"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_oracle_true_drafts_accept_everything(method: str, k: int) -> None:
    """Drafts forced to the true continuation: every step after the prefill yields k+1 tokens."""
    model = tiny_mtp("qwen2", seed=1, lora_std=0.5)
    prompt = random_prompt(5, 7, 128)
    steps = 6
    total = 1 + steps * (k + 1)
    continuation = prompt + greedy_reference(model, prompt, total + k + 1)
    trace = generate(model, prompt, method=method, k=k, max_new_tokens=total, drafter=oracle(continuation, k))
    assert trace.token_ids == continuation[len(prompt):len(prompt) + total]
    assert trace.accept_counts == [0] + [k] * steps
    assert [len(s.drafts) for s in trace.steps] == [0] + [k] * steps
    assert trace.tokens_per_step == pytest.approx(total / (steps + 1))
    # τ over the verifying steps (after the prefill pass) is exactly k+1.
    assert sum(s.new_tokens for s in trace.steps[1:]) / steps == k + 1
    assert trace.draft_acceptance_rate == 1.0
    assert trace.per_offset_acceptance == [1.0] * k


@pytest.mark.parametrize("k", [2, 4])
def test_oracle_wrong_drafts(k: int) -> None:
    """Forced wrong: linear stalls at one token per pass; quadratic still proposes k drafts every pass."""
    model = tiny_mtp("llama", seed=2, lora_std=0.5)
    prompt = random_prompt(6, 8, 128)
    continuation = prompt + greedy_reference(model, prompt, 40)
    wrong = oracle(continuation, k, correct=0)
    linear = generate(model, prompt, method="linear", k=k, max_new_tokens=20, drafter=wrong)
    quadratic = generate(model, prompt, method="quadratic", k=k, max_new_tokens=20, drafter=wrong)
    for trace in (linear, quadratic):
        assert trace.token_ids == continuation[len(prompt):len(prompt) + 20]
        assert trace.tokens_per_step == 1.0 and trace.accepted_drafts == 0
    # Linear loses its mask group with every rejection: passes alternate between k drafts and none.
    assert [len(s.drafts) for s in linear.steps] == [0] + [k, 0] * 9 + [k]
    assert [len(s.drafts) for s in quadratic.steps] == [0] + [k] * 19


def test_oracle_partial_drafts_quadratic_keeps_group() -> None:
    """j right drafts then wrong ones: quadratic accepts exactly j and proposes again at once."""
    model = tiny_mtp("qwen2", seed=4, lora_std=0.5)
    prompt = random_prompt(8, 6, 128)
    k = 4
    continuation = prompt + greedy_reference(model, prompt, 80)
    for correct in range(k):
        trace = generate(model, prompt, method="quadratic", k=k, max_new_tokens=40,
                         drafter=oracle(continuation, k, correct=correct))
        assert trace.token_ids == continuation[len(prompt):len(prompt) + 40]
        assert set(trace.accept_counts[1:-1]) == {correct}
        assert all(len(s.drafts) == k for s in trace.steps[1:])
        # Cost-aware layout: no group after d_correct when groups <= correct -> next pass has no drafts.
        if correct >= 1:
            cheap = generate(model, prompt, method="quadratic", k=k, groups=correct, max_new_tokens=40,
                             drafter=oracle(continuation, k, correct=correct))
            assert cheap.token_ids == trace.token_ids
            assert [len(s.drafts) for s in cheap.steps[1:5]] == [k, 0, k, 0]


def test_leftover_masks_draft_where_no_group_survived() -> None:
    """Quadratic with fewer groups than drafts: after a partial accept the newest group's masks past
    the verified tokens draft the next pass (k - shift of them) instead of a draftless pass."""
    seen = []

    class Recorder:
        def propose(self, context, group, sampling):
            seen.append(None if group is None else (group.hidden[:, 0].tolist(), group.bonus))
            return Draft()

    drafter, greedy = LeftoverMasks(Recorder()), Sampling(0.0)
    hidden = torch.arange(4.0)[:, None].expand(4, 3)  # mask i's hidden state is all i
    drafter.propose([7, 8], MaskGroup(hidden, torch.zeros(4, 5), bonus=8), greedy)  # fed after context [7, 8]
    drafter.propose([7, 8, 1, 2], None, greedy)  # 2 tokens verified since: masks 2, 3 guess what follows 2
    drafter.propose([7, 8, 1, 2, 3, 4, 5], None, greedy)  # 5 > k: nothing left
    # A group the accepted path ran 2 tokens past (its bonus 3, then 4 and 5 verified): masks 2, 3.
    drafter.propose([7, 8, 1, 2, 3, 4, 5], MaskGroup(hidden, torch.zeros(4, 5), bonus=3, behind=2), greedy)
    assert seen == [([0.0, 1.0, 2.0, 3.0], 8), ([2.0, 3.0], 2), None, ([2.0, 3.0], 5)]

    model = tiny_mtp("qwen2", seed=4, lora_std=0.5)
    prompt = random_prompt(8, 6, 128)
    reference = greedy_reference(model, prompt, 40)
    trace = generate(model, prompt, method="quadratic", k=4, groups=1, max_new_tokens=40,
                     drafter=LeftoverMasks(oracle(prompt + reference, 4, correct=1)))
    assert trace.token_ids == reference
    # One right draft, then a wrong one: the path ends past t_0, the one node with a group, so that
    # group's masks past the one token verified beyond its bonus draft the next pass (3 drafts),
    # which again accepts one, and so on: never a draftless pass.
    assert [len(s.drafts) for s in trace.steps[1:7]] == [4, 3, 3, 3, 3, 3]


def test_eos_max_new_tokens_and_chunks() -> None:
    model = tiny_mtp("llama", seed=5, lora_std=0.5)
    prompt = random_prompt(3, 8, 128)
    reference = greedy_reference(model, prompt, 40)
    eos = reference[17]  # some token of the reference: generation stops at its first occurrence
    first = reference.index(eos)
    expected = greedy_reference(model, prompt, 40, eos=eos)
    assert expected == reference[:first + 1]
    continuation = prompt + reference
    for method in METHODS:
        chunks: list[list[int]] = []
        trace = generate(model, prompt, method=method, k=4, max_new_tokens=40, eos_token_ids=[eos],
                         on_chunk=chunks.append, drafter=oracle(continuation, 4))
        assert trace.token_ids == expected and trace.stop_reason == "eos"
        assert [t for c in chunks for t in c] == expected
        assert [len(c) for c in chunks] == [s.new_tokens for s in trace.steps]
    # max_new_tokens cuts an accepted chunk that overshoots.
    trace = generate(model, prompt, method="quadratic", k=8, max_new_tokens=5, drafter=oracle(continuation, 8))
    assert trace.token_ids == reference[:5] and trace.stop_reason == "max_new_tokens"
    assert trace.forward_passes == 2 and trace.steps[1].accepted == 8 and trace.steps[1].new_tokens == 4


class _CharTokenizer:
    """Token t decodes to one letter: enough to test stop strings without a real tokenizer."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + t % 26) for t in ids)


def test_stop_strings_cut_text_and_tokens() -> None:
    model = tiny_mtp("qwen2", seed=6, lora_std=0.5)
    prompt = random_prompt(4, 8, 128)
    reference = greedy_reference(model, prompt, 30)
    tokenizer = _CharTokenizer()
    full = tokenizer.decode(reference)
    stop = full[10:13]
    end = full.index(stop) + 3
    trace = generate(model, prompt, k=4, max_new_tokens=30, stop_strings=[stop, "never"], tokenizer=tokenizer,
                     drafter=oracle(prompt + reference, 4))
    assert trace.stop_reason == "stop_string"
    assert trace.text == full[:end] and trace.token_ids == reference[:end]
    assert sum(s.new_tokens for s in trace.steps) == end
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, prompt, stop_strings=["x"])


def test_trace_fields_and_bad_arguments() -> None:
    model = tiny_mtp("llama", seed=0, k=4)
    prompt = random_prompt(0, 5, 128)
    trace = generate(model, prompt, method="quadratic", k=3, groups=2, max_new_tokens=6)
    first, second = trace.steps[0], trace.steps[1]
    assert first.input_length == 5 + 3 and first.drafts == [] and first.bonus == trace.token_ids[0]
    assert second.input_length == 4 + 2 * 3 and len(second.drafts) == 3
    assert all(s.seconds > 0 for s in trace.steps) and trace.seconds >= sum(s.seconds for s in trace.steps)
    assert generate(model, prompt, method="autoregressive", max_new_tokens=3).k == 0
    for kwargs, message in [({"method": "cubic"}, "unknown method"), ({"k": 0}, "k must"), ({"k": 5}, "k must"),
                            ({"groups": 5, "k": 3}, "groups"), ({"method": "linear", "groups": 1}, "quadratic"),
                            ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                            ({"lookup": -1}, "lookup must"), ({"method": "autoregressive", "lookup": 4}, "drafting method"),
                            ({"temperature": float("nan")}, "finite"), ({"tree_budget": -1}, "tree_budget"),
                            ({"method": "autoregressive", "tree_budget": 8}, "drafting method")]:
        with pytest.raises(ValueError, match=message):
            generate(model, prompt, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [])


def test_distribution_matches_transformers_warpers() -> None:
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    scores = TemperatureLogitsWarper(0.7)(None, logits.clone())
    scores = TopKLogitsWarper(20)(None, scores)
    scores = TopPLogitsWarper(0.8)(None, scores)
    expected = torch.softmax(scores, dim=-1)
    assert torch.allclose(distribution(logits, 0.7, top_k=20, top_p=0.8), expected, atol=1e-6)
    kept = (expected > 0).sum(-1)
    assert int(kept.min()) >= 2 and int(kept.max()) < 20  # the filters cut and kept several


# -- sampling exactness ---------------------------------------------------------------------------
VOCAB = 16
SAMPLES = 600
TEMPERATURE = 0.5


@pytest.fixture(scope="module")
def sampling_model():
    """A tiny model with 16 tokens whose proposal (random LoRA + sampler) differs clearly from p."""
    return tiny_mtp("llama", seed=3, k=3, vocab=VOCAB, lora_std=0.5, layers=1), random_prompt(0, 6, VOCAB)


def _sample_traces(model, prompt, method: str, tokens: int = 3, **kwargs) -> list:
    """SAMPLES seeded generations of the first `tokens` tokens."""
    return [generate(model, prompt, method=method, k=3, max_new_tokens=tokens, temperature=TEMPERATURE, seed=seed,
                     **kwargs) for seed in range(SAMPLES)]


def _counts(traces: list, tokens: int = 3) -> torch.Tensor:
    """(tokens, VOCAB) how often each token came at each position."""
    counts = torch.zeros(tokens, VOCAB)
    for trace in traces:
        for position, token in enumerate(trace.token_ids):
            counts[position, token] += 1
    return counts


def _sample_counts(model, prompt, method: str, **kwargs) -> torch.Tensor:
    """Counts of the first three tokens over SAMPLES seeded generations."""
    return _counts(_sample_traces(model, prompt, method, **kwargs))


def _statistics(counts: torch.Tensor, marginals: list[torch.Tensor]) -> list[tuple[float, float]]:
    """(chi-square statistic, critical value at 1e-4) per position."""
    out = []
    for position, marginal in enumerate(marginals):
        statistic, df = chi_square(counts[position], marginal)
        out.append((statistic, chi_square_critical(df)))
    return out


@pytest.mark.parametrize("method, filters", [("linear", {}), ("quadratic", {}),
                                             ("quadratic", {"top_k": 8, "top_p": 0.9})])
def test_speculative_sampling_matches_plain_distribution(sampling_model, method: str, filters: dict) -> None:
    """Chi-square of the first three tokens against the exact plain-sampling marginals."""
    model, prompt = sampling_model
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE, **filters)
    counts = _sample_counts(model, prompt, method, **filters)
    stats = _statistics(counts, marginals)
    assert all(statistic < critical for statistic, critical in stats), stats
    if filters:
        for position in range(3):  # tokens the filters exclude everywhere never appear
            assert int(counts[position][marginals[position] == 0].sum()) == 0
        assert int((marginals[0] == 0).sum()) >= 8


def test_speculative_sampling_with_lookup_drafts_matches_plain_distribution(sampling_model) -> None:
    """Prompt-lookup drafts are a deterministic proposal: sampling stays exact with them too."""
    model, _ = sampling_model
    # Every token follows a 5 somewhere in the prompt, so the pass after the first token always
    # verifies lookup drafts (the tail [5, t_1] occurred before).
    prompt = [t for token in range(VOCAB) for t in (5, token)] + [5]
    traces = [generate(model, prompt, method="quadratic", k=3, max_new_tokens=3, temperature=TEMPERATURE,
                       seed=seed, lookup=4) for seed in range(20)]
    assert all(trace.steps[1].looked_up and trace.steps[1].drafts for trace in traces)
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE)
    stats = _statistics(_sample_counts(model, prompt, "quadratic", lookup=4), marginals)
    assert all(statistic < critical for statistic, critical in stats), stats


def _accept_every_draft(target_logits, draft, sampling):
    """A broken acceptance rule: every draft of a chain accepted, the bonus drawn after them."""
    accepted = len(draft.tokens)
    return list(range(accepted)), sampling.draw(sampling.probs(target_logits)[accepted])


def test_broken_acceptance_rule_is_detected(sampling_model, monkeypatch) -> None:
    """Accepting every draft makes tokens 2 and 3 follow the proposal q: the same test must fail."""
    model, prompt = sampling_model
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE)

    monkeypatch.setattr(decoding, "accept", _accept_every_draft)
    stats = _statistics(_sample_counts(model, prompt, "quadratic"), marginals)
    assert stats[0][0] < stats[0][1]  # the first token never comes from a draft
    assert stats[1][0] > 3 * stats[1][1] and stats[2][0] > 3 * stats[2][1], stats


TREE_BUDGET = 6  # with k=3 and a 16-token vocabulary: siblings at every depth


def test_speculative_sampling_with_draft_trees_matches_plain_distribution(sampling_model) -> None:
    """Tree drafts are deterministic; siblings are tried in turn on the residual: still exact."""
    model, prompt = sampling_model
    traces = [generate(model, prompt, k=3, max_new_tokens=3, temperature=TEMPERATURE, seed=seed,
                       tree_budget=TREE_BUDGET) for seed in range(20)]
    assert all(trace.steps[1].parents and len(trace.steps[1].drafts) == TREE_BUDGET for trace in traces)
    siblings = [p for p in traces[0].steps[1].parents if p == -1]
    assert len(siblings) >= 2  # the root has several children: the multi-draft rule is exercised
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE)
    stats = _statistics(_sample_counts(model, prompt, "quadratic", tree_budget=TREE_BUDGET), marginals)
    assert all(statistic < critical for statistic, critical in stats), stats


def test_speculative_sampling_with_lookup_grafted_onto_trees_matches_plain_distribution(sampling_model) -> None:
    """Lookup drafts grafted onto the masks' tree are one more deterministic branch: still exact."""
    model, _ = sampling_model
    prompt = [t for token in range(VOCAB) for t in (5, token)] + [5]  # as in the lookup test above
    traces = [generate(model, prompt, k=3, max_new_tokens=3, temperature=TEMPERATURE, seed=seed,
                       tree_budget=TREE_BUDGET, lookup=4) for seed in range(20)]
    # The pass after the first token verifies the tree and the lookup chain: more nodes than the tree.
    assert all(trace.steps[1].looked_up and len(trace.steps[1].drafts) > TREE_BUDGET for trace in traces)
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE)
    stats = _statistics(_sample_counts(model, prompt, "quadratic", tree_budget=TREE_BUDGET, lookup=4), marginals)
    assert all(statistic < critical for statistic, critical in stats), stats


def test_speculative_sampling_with_datastore_drafts_matches_plain_distribution(sampling_model) -> None:
    """Datastore drafts grafted onto the masks' tree are one more deterministic branch: still exact."""
    model, prompt = sampling_model
    # After the first sampled token x, the context's last 3 tokens (prompt[-2:], x) continue with 1, 2.
    store = Datastore.build([prompt[-2:] + [token, 1, 2] for token in range(VOCAB)] * 2)
    traces = [generate(model, prompt, k=3, max_new_tokens=3, temperature=TEMPERATURE, seed=seed,
                       tree_budget=TREE_BUDGET, datastore=store) for seed in range(20)]
    grafted = sum(len(trace.steps[1].drafts) > TREE_BUDGET for trace in traces)
    assert grafted >= 15  # the datastore's branch joins the tree unless the tree already holds it
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE)
    stats = _statistics(_sample_counts(model, prompt, "quadratic", tree_budget=TREE_BUDGET, datastore=store),
                        marginals)
    assert all(statistic < critical for statistic, critical in stats), stats


def test_broken_sibling_rule_is_detected(sampling_model, monkeypatch) -> None:
    """Trying each sibling against the full target instead of the residual left by the rejected
    ones over-produces the later siblings: the same test must fail."""
    model, prompt = sampling_model
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE)
    monkeypatch.setattr(decoding, "_residual", lambda p, q, token: p)
    stats = _statistics(_sample_counts(model, prompt, "quadratic", tree_budget=TREE_BUDGET), marginals)
    assert any(statistic > critical for statistic, critical in stats[1:]), stats


def _leftover_runs(traces: list) -> int:
    """Runs whose third pass drafted from leftover masks: fewer than k=3 drafts, not a draftless pass."""
    return sum(len(trace.steps) > 2 and 0 < len(trace.steps[2].drafts) < 3 for trace in traces)


def test_speculative_sampling_through_leftover_masks_matches_plain_distribution(sampling_model) -> None:
    """Quadratic with one group (after t_0): a pass that accepts 1 or 2 drafts leaves no group
    after its path, so the next pass drafts from that group's leftover masks (drafting.LeftoverMasks);
    the 4th token comes from such a pass in many runs. Its marginal must still be plain sampling's."""
    model, prompt = sampling_model
    traces = _sample_traces(model, prompt, "quadratic", tokens=4, groups=1)
    assert _leftover_runs(traces) >= SAMPLES // 5, _leftover_runs(traces)
    marginals = first_marginals(model, prompt, VOCAB, TEMPERATURE, count=4)
    stats = _statistics(_counts(traces, tokens=4), marginals)
    assert all(statistic < critical for statistic, critical in stats), stats


def test_broken_rule_on_leftover_passes_is_detected(sampling_model, monkeypatch) -> None:
    """The same test with every leftover-mask draft accepted (the real rule elsewhere) must fail at
    the 4th token: it has the power to see a wrong rule on those passes alone."""
    model, prompt = sampling_model
    exact = decoding.accept

    def accept_leftover_drafts(target_logits, draft, sampling):
        return (_accept_every_draft if 0 < len(draft.tokens) < 3 else exact)(target_logits, draft, sampling)

    monkeypatch.setattr(decoding, "accept", accept_leftover_drafts)
    traces = _sample_traces(model, prompt, "quadratic", tokens=4, groups=1)
    stats = _statistics(_counts(traces, tokens=4), first_marginals(model, prompt, VOCAB, TEMPERATURE, count=4))
    assert stats[0][0] < stats[0][1] and stats[1][0] < stats[1][1]  # tokens 1 and 2 never come from leftovers
    assert stats[3][0] > stats[3][1], stats


def test_sampling_is_seeded_and_top_k_respected(sampling_model) -> None:
    model, prompt = sampling_model
    runs = [generate(model, prompt, k=3, max_new_tokens=12, temperature=0.8, seed=s).token_ids for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    # top_k=1 is greedy whatever the temperature.
    greedy = greedy_reference(model, prompt, 12)
    assert generate(model, prompt, k=3, max_new_tokens=12, temperature=1.5, top_k=1, seed=3).token_ids == greedy


# -- the embedded SmolLM2 ---------------------------------------------------------------------------
SMOL_PROMPTS = ["What is 17 times 23? Explain step by step.",
                "Write a Python function that reverses a string.",
                "Give three tips for staying focused while studying."]


@pytest.mark.slow
def test_greedy_identity_smollm2() -> None:
    """Real model, real prompts: the shipped checkpoint if present, else a fresh adapter (+ oracle drafts
    so that accepted drafts and their KV cache are exercised on the real model either way)."""
    from mtp import adapter
    from mtp.api import default_checkpoint
    from mtp.models import encode_prompt, load_model

    loaded = load_model()  # a private copy: the adapter is injected into the model in place
    shipped = default_checkpoint()
    model = (adapter.load(shipped, loaded.model, loaded.identity) if shipped
             else adapter.create(loaded.model, loaded.identity, k=8)).eval()
    new = 20
    for text in SMOL_PROMPTS:
        prompt = encode_prompt(loaded.tokenizer, text)
        reference = greedy_reference(model, prompt, new + 8)
        runs = [("autoregressive", None, None, None), ("linear", 4, None, None), ("quadratic", 8, None, None),
                ("quadratic", 3, 2, None), ("quadratic", 4, None, oracle(prompt + reference, 4, correct=2,
                                                                          vocab=loaded.identity.vocab_size))]
        for method, k, groups, override in runs:
            trace = generate(model, prompt, method=method, k=k, groups=groups, max_new_tokens=new,
                             tokenizer=loaded.tokenizer, drafter=override)
            assert trace.token_ids == reference[:new], (text, method, k)
            assert trace.text == loaded.tokenizer.decode(reference[:new], skip_special_tokens=True)
            if override is not None:
                # 2 drafts + bonus per pass after the prefill: 1 + 3 + 3 + ... tokens.
                assert set(trace.accept_counts[1:]) == {2} and trace.forward_passes == 1 + -(-(new - 1) // 3)
