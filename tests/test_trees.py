"""Draft trees (docs/design.md §7): the tree layout, the tree drafter, KV compaction, exact decoding and replay."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from decoding_helpers import greedy_reference, random_prompt, tiny_mtp

from mtp.acceptance import draft_matches, graft_key, leftover_key, lookup_matches, replay, tree_key, tree_match
from mtp.decoding import generate
from mtp.drafting import DATASTORE, MASKS, Draft, MaskChain, MaskGroup, draft_candidates, mask_tree
from mtp.layouts import ancestor_matrix, chain_parents, step_layout, tree_positions
from mtp.methods import Linear, PathEnd, Quadratic
from mtp.sampling import Sampling
from mtp.trace import Step, Trace


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


# -- layouts -------------------------------------------------------------------------------------
def test_tree_layout_by_hand():
    # t0 with children a (1) and b (2); a has child c (3). A group of k=2 masks after b.
    tokens, parents = [50, 51, 52, 53], [-1, 0, 0, 1]
    layout = step_layout(tokens, cached=3, k=2, anchors=[2], parents=parents)
    assert layout.input_ids.tolist() == [50, 51, 52, 53, -1, -2]
    assert layout.position_ids.tolist() == [3, 4, 4, 5, 5, 6]  # depth decides the position
    visible = layout.attention[:, 3:].int().tolist()
    assert layout.attention[:, :3].all()  # everything sees the cache
    assert visible == [
        [1, 0, 0, 0, 0, 0],  # t0
        [1, 1, 0, 0, 0, 0],  # a: t0, itself
        [1, 0, 1, 0, 0, 0],  # b: t0, itself (not its sibling a)
        [1, 1, 0, 1, 0, 0],  # c: t0, a, itself
        [1, 0, 1, 0, 1, 0],  # mask 1 after b: b's ancestors and b, itself
        [1, 0, 1, 0, 1, 1],  # mask 2 after b
    ]


def test_chain_parents_give_the_causal_layout():
    chain = step_layout([5, 6, 7, 8], 2, 3, [0, 2])
    assert torch.equal(chain.attention, step_layout([5, 6, 7, 8], 2, 3, [0, 2], chain_parents(4)).attention)
    assert torch.equal(chain.attention[:4, 2:6], torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert tree_positions([-1, 0, 0, 2, -1]) == [0, 1, 1, 2, 0]
    assert ancestor_matrix([-1, 0, 0, 2]).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    with pytest.raises(ValueError, match="parent must come before"):
        step_layout([1, 2], 0, 1, [], parents=[-1, 1])
    with pytest.raises(ValueError, match="need 2 parents"):
        step_layout([1, 2], 0, 1, [], parents=[-1])


# -- drafts and policies -------------------------------------------------------------------------
def test_group_order_and_policies():
    chain = Draft.chain([7, 8, 9])
    assert chain.group_order(2) == [-1, 0, 1, 2] and chain.main_leaf() == 2
    assert Quadratic(2, 2).anchors(chain) == [-1, 0] and Linear().anchors(chain) == [2]
    assert Linear().anchors(Draft()) == [-1] and Quadratic(3, 2).anchors(Draft()) == [-1]
    # Root children a (0.6) and b (0.3); a's child c (0.6 * 0.5). End probabilities: root 0.1,
    # a 0.3, b 0.3, c 0.3.
    tree = Draft([1, 2, 3], [-1, -1, 0], None, [0.6, 0.3, 0.3])
    # k = 1: a group only serves a path that ends at its node: by end probability, ties by index.
    assert tree.group_order(1) == [0, 1, 2, -1]
    # k = 2: a group also serves a path one node past it, with one mask left: a 0.3*2 + c 0.3 = 0.9,
    # root 0.1*2 + a 0.3 + b 0.3 = 0.8 (c is two past it), b 0.6, c 0.6.
    assert tree.group_order(2) == [0, -1, 1, 2]
    assert tree.main_leaf() == 2 and tree.depths() == [1, 1, 2]
    assert tree.children() == {-1: [0, 1], 0: [2], 1: [], 2: []}
    assert Quadratic(2, 2).anchors(tree) == [0, -1] and Linear().anchors(tree) == [2]
    to_b, to_c = PathEnd.of(tree, [1], 2), PathEnd.of(tree, [0, 2], 2)
    assert to_b == PathEnd((1, 2), False) and to_c == PathEnd((1, 0, 3), True)
    # The freshest group on the path: a's (1 token past its bonus c), the root's (1 past b), none.
    assert Quadratic(2, 2).group_behind(to_c) == 1 and Quadratic(2, 2).group_behind(to_b) == 1
    assert Quadratic(1, 2).group_behind(to_b) is None and Quadratic(None, 2).group_behind(to_c) == 0
    assert Linear().group_behind(to_c) == 0 and Linear().group_behind(to_b) is None
    for accepted in range(4):
        assert PathEnd.of(chain, list(range(accepted)), 2) == PathEnd.of_chain(accepted, 3)
        assert Quadratic(2, 2).group_behind(PathEnd.of_chain(accepted, 3)) == max(accepted - 1, 0)
    assert tree_match(tree, [1, 3, 5], 2) == (2, to_c)
    assert tree_match(tree, [2, 3], 2) == (1, to_b) and tree_match(tree, [4], 2) == (0, PathEnd.of(tree, [], 2))


def _group(model, seed: int) -> MaskGroup:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(model.k, model.base.config.hidden_size, generator=generator)
    return MaskGroup(hidden, model.lm_logits(hidden), bonus=3)


@torch.inference_mode()
def test_mask_tree_is_a_budgeted_tree_and_width_one_is_the_chain():
    model = tiny_mtp("llama", seed=3, k=5, lora_std=0.5)
    for seed in range(4):
        group = _group(model, seed)
        chain = MaskChain(model).propose([], group, Sampling(0.0))
        assert mask_tree(model, group, budget=model.k, width=1).tokens == chain.tokens
        for budget in (1, 7, 30):
            tree = mask_tree(model, group, budget)
            assert len(tree.tokens) == budget
            assert all(parent < i for i, parent in enumerate(tree.parents))  # parents first
            assert all(tree.scores[i] <= (1.0 if p < 0 else tree.scores[p]) + 1e-9 for i, p in enumerate(tree.parents))
            assert max(tree.depths()) <= model.k
            siblings = {}
            for i, parent in enumerate(tree.parents):
                siblings.setdefault(parent, []).append(tree.tokens[i])
            assert all(len(set(tokens)) == len(tokens) for tokens in siblings.values())  # no repeated child


def _unpruned_tree(model, group: MaskGroup, budget: int, width: int) -> tuple[list[int], list[int]]:
    """The tree mask_trees defines, grown without its pruning: every depth expands its `width` most
    probable nodes into `width` children each, then the whole tree is cut to the `budget` best."""
    candidates = draft_candidates(group.logits)
    nodes, frontier = [], [(-1, group.bonus, 1.0)]  # (parent, token, score)
    for depth in range(model.k):
        expand = sorted(frontier, key=lambda node: -node[2])[:min(width, budget)]
        children = []
        for node in expand:
            logits = model.sampler_logits(group.hidden[depth][None], torch.tensor([node[1]]), candidates[depth][None])
            probs, index = logits.float().softmax(-1)[0].topk(min(width, budget))
            children += [(nodes.index(node) if node in nodes else -1, int(candidates[depth][c]), node[2] * float(p))
                         for p, c in zip(probs, index)]
        nodes += children
        frontier = children
    depth_of = []
    for parent, _, _ in nodes:
        depth_of.append(1 if parent < 0 else depth_of[parent] + 1)
    kept = sorted(range(len(nodes)), key=lambda i: (-nodes[i][2], depth_of[i]))[:budget]
    paths = set()
    for i in kept:  # each kept node as its root-to-node token path: comparable across numbering
        path, node = [], i
        while node >= 0:
            path.insert(0, nodes[node][1])
            node = nodes[node][0]
        paths.add(tuple(path))
    return sorted(paths)


@torch.inference_mode()
def test_mask_tree_pruning_keeps_the_same_tree():
    """mask_trees expands only nodes whose children could make the cut: the tree is the unpruned one."""
    model = tiny_mtp("llama", seed=3, k=5, lora_std=0.5)
    model.base.get_output_embeddings().weight.mul_(8)  # peaked draft probabilities: deep, narrow trees, much pruned
    for seed in range(4):
        group = _group(model, seed)
        for budget, width in ((1, 8), (6, 8), (8, 3), (8, 4), (20, 4)):
            tree = mask_tree(model, group, budget, width)
            paths = []
            for i in range(len(tree.tokens)):
                path, node = [], i
                while node >= 0:
                    path.insert(0, tree.tokens[node])
                    node = tree.parents[node]
                paths.append(tuple(path))
            assert sorted(paths) == _unpruned_tree(model, group, budget, width), (seed, budget, width)


# -- exact decoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_identity_with_trees(family: str) -> None:
    model = tiny_mtp(family, seed=7, lora_std=1.0)
    small = tiny_mtp(family, seed=3, k=6, vocab=6, lora_std=0.5)  # drafts accepted often
    accepted = grafted = 0  # grafted: passes verifying lookup drafts grafted onto the masks' tree
    for mtp_model, vocab, new in ((model, 128, 24), (small, 6, 40)):
        for seed in range(2):
            prompt = random_prompt(seed, 4 + 5 * seed, vocab)
            reference = greedy_reference(mtp_model, prompt, new)
            for method, groups in (("linear", None), ("quadratic", None), ("quadratic", 1), ("quadratic", 3)):
                for k, budget, lookup in ((2, 3, 0), (4, 16, 0), (6, 64, 0), (4, 8, 5)):
                    trace = generate(mtp_model, prompt, method=method, k=k, groups=groups, max_new_tokens=new,
                                     tree_budget=budget, lookup=lookup)
                    assert trace.token_ids == reference, (family, seed, method, groups, k, budget, lookup)
                    assert trace.tree_budget == budget and sum(s.new_tokens for s in trace.steps) == new
                    assert all(len(s.drafts) <= budget + lookup for s in trace.steps)
                    accepted += trace.accepted_drafts
                    grafted += sum(s.looked_up and len(s.drafts) > lookup for s in trace.steps)
    assert accepted > 100 and grafted > 10


def test_tree_steps_round_trip_and_metrics():
    model = tiny_mtp("llama", seed=3, k=6, vocab=6, lora_std=0.5)
    trace = generate(model, random_prompt(1, 7, 6), k=4, max_new_tokens=30, tree_budget=12)
    trees = [s for s in trace.steps if s.parents]
    assert trees and any(s.path for s in trees)
    for step in trees:
        assert step.accepted == len(step.path) and len(step.rejected) == len(step.drafts) - step.accepted
        assert [step.parents[n] for n in step.path] == [-1] + step.path[:-1]  # a root-to-node path
        assert step.depth <= 4
    again = Trace.from_dict(dataclasses.asdict(trace))  # how the demo keeps a trace between events
    assert again.steps == trace.steps and again.tree_budget == 12
    assert Step.of(Draft.chain([1, 2]), [0], 5, 0.1, 4, 2).parents == []  # chains store no tree


# -- exact replay ----------------------------------------------------------------------------------
def test_tree_replay_equals_decoding() -> None:
    model = tiny_mtp("llama", seed=3, k=6, vocab=6, lora_std=0.5)
    configs = [(3, 4), (6, 16), (6, 40)]
    checked = accepted = 0
    for seed in range(3):
        prompt = random_prompt(seed, 7, 6)
        reference = greedy_reference(model, prompt, 40)
        matches = draft_matches(model, prompt + reference, len(prompt), chunk=5, trees=configs)
        for k, budget in configs:
            for method, groups in (("linear", None), ("quadratic", None), ("quadratic", 1), ("quadratic", 2)):
                trace = generate(model, prompt, method=method, k=k, groups=groups, max_new_tokens=40, tree_budget=budget)
                assert trace.token_ids == reference
                passes = replay(matches[tree_key(k, budget)], method, k, len(reference), groups,
                                leftover=matches[leftover_key(tree_key(k, budget))])
                assert len(passes) == trace.forward_passes, (seed, method, k, budget, groups)
                assert [p.accepted or 0 for p in passes[:-1]] == trace.accept_counts[:-1]
                assert [p.accepted is not None for p in passes] == [bool(step.drafts) for step in trace.steps]
                checked += 1
                accepted += sum(trace.accept_counts)
    assert checked == 36 and accepted > 100


def test_lookup_grafted_tree_replay_equals_decoding() -> None:
    """Trees with prompt-lookup drafts grafted on (graft_key entries) replay decoding's exact passes."""
    model = tiny_mtp("llama", seed=3, k=6, vocab=6, lora_std=0.5)
    configs, lookup = [(3, 4), (6, 16)], 5
    checked = grafted = 0
    for seed in range(3):
        prompt = random_prompt(seed, 7, 6)
        reference = greedy_reference(model, prompt, 40)
        matches = draft_matches(model, prompt + reference, len(prompt), chunk=5, trees=configs, lookup=lookup)
        looked_up = lookup_matches(prompt, reference, lookup)
        for k, budget in configs:
            key = graft_key(k, budget, lookup)
            for method, groups in (("linear", None), ("quadratic", None), ("quadratic", 1), ("quadratic", 2)):
                trace = generate(model, prompt, method=method, k=k, groups=groups, max_new_tokens=40,
                                 tree_budget=budget, lookup=lookup)
                assert trace.token_ids == reference
                passes = replay(matches[key], method, k, len(reference), groups, looked_up,
                                matches[leftover_key(key)], grafted=True)
                assert len(passes) == trace.forward_passes, (seed, method, k, budget, groups)
                assert [p.accepted or 0 for p in passes[:-1]] == trace.accept_counts[:-1]
                assert [p.lookup_drafts > 0 for p in passes] == [step.looked_up for step in trace.steps]
                grafted += sum(p.grafted for p in passes)
                checked += 1
    assert checked == 24 and grafted > 20


def test_grafted_draft_is_a_trie_over_the_tree_and_the_chain() -> None:
    #        t_0 -> 7 (0.6) -> 8 (0.3)
    #            -> 9 (0.2)
    tree = Draft([7, 9, 8], [-1, -1, 0], None, [0.6, 0.2, 0.3], (MASKS,))
    grown = tree.grafted([7, 8, 4, 5])  # shares 7 -> 8, then two new nodes under 8
    assert grown.tokens == [7, 9, 8, 4, 5] and grown.parents == [-1, -1, 0, 2, 3]
    assert grown.scores == [0.6, 0.2, 0.3, 0.0, 0.0] and grown.looked_up
    assert grown.follow([7, 8, 4, 5, 1]) == [0, 2, 3, 4] and grown.follow([9, 3]) == [1]
    assert grown.group_order(4)[:4] == tree.group_order(4)  # the drafter's own nodes come first
    assert tree.grafted([5]).parents == [-1, -1, 0, -1] and tree.tokens == [7, 9, 8]  # the tree is not changed
    assert grown.sources == ("masks", "prompt lookup") and tree.grafted([7]).sources == ("masks", "prompt lookup")
    chain = Draft.chain([1, 2]).grafted([1, 3], DATASTORE)  # a chain has no scores: its nodes count as 0
    assert chain.tokens == [1, 2, 3] and chain.parents == [-1, 0, 0] and chain.scores == [0.0] * 3
    assert chain.sources == ("masks", "datastore") and not chain.looked_up and chain.group_order(2)[:3] == [-1, 0, 1]
    with pytest.raises(ValueError, match="deterministic draft"):
        Draft.chain([1, 2], torch.tensor([[0.5, 0.5], [0.5, 0.5]])).grafted([1])
