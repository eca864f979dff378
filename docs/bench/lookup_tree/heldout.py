"""Several prompt-lookup continuations as branches of the draft tree (issue 19): where the context's
last n-gram occurred more than once before, the continuations of its earlier occurrences differ;
the default drafts only the most recent one. Here the next most recent distinct continuations join
the tree too, each cut `cap` tokens past where it leaves the branches before it. 48 held-out
distilled prompts, 128 new tokens, shipped checkpoint, the default (quadratic k = 4, 1 group,
tree 8, lookup 10, cost-aware) and the previous default (chain, not cost-aware); per prompt all runs
in alternating order in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/lookup_tree/heldout.py 1 > docs/bench/lookup_tree/heldout_round1.txt
    PYTHONPATH=. python docs/bench/lookup_tree/heldout.py 2 > docs/bench/lookup_tree/heldout_round2.txt
"""
import sys
from pathlib import Path

from mtp.decoding import generate
from mtp.drafting import Draft, Drafter, LeftoverMasks, MaskGroup, MaskTree, PromptLookup
from mtp.sampling import Sampling
from mtp.trace import Trace

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from branches import continuations  # noqa: E402
from side_by_side import Tally, load_default, report  # noqa: E402


class BranchedLookup(PromptLookup):
    def __init__(self, max_drafts: int, fallback: Drafter, branches: int, cap: int) -> None:
        super().__init__(max_drafts, fallback, graft=True)
        self.branches, self.cap = branches, cap

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        found = continuations(context, self.max_drafts, self.branches)
        if not found:
            return self.fallback.propose(context, group, sampling)
        tree = self.fallback.propose(context, group, sampling) if group is not None else Draft()
        tree = tree if tree.tokens else Draft(scores=[])
        tree = tree.grafted(found[0])
        for branch in found[1:]:
            shared = len(tree.follow(branch))  # tokens it shares with the tree so far
            tree = tree.grafted(branch[:shared + self.cap])
        return tree


def branched(branches: int, cap: int):
    return lambda: LeftoverMasks(BranchedLookup(10, MaskTree(model, 8), branches, cap))


ROUNDS = {  # name -> (tree budget, cost-aware, drafter factory or None: the default's)
    "1": {"chain": (0, False, None), "default": (8, True, None), "2 branches cap 2": (8, True, branched(2, 2)),
          "2 branches cap 4": (8, True, branched(2, 4)), "3 branches cap 4": (8, True, branched(3, 4))},
    "2": {"chain": (0, False, None), "default": (8, True, None), "2 branches cap 4": (8, True, branched(2, 4)),
          "3 branches cap 4": (8, True, branched(3, 4))},
}
VARIANTS = ROUNDS[sys.argv[1]]
names = list(VARIANTS)
model, tokenizer, base = load_default()


def decode(name: str, ids: list[int]) -> Trace:
    budget, cost_aware, drafter = VARIANTS[name]
    return generate(model, ids, tree_budget=budget, cost_aware=cost_aware, drafter=drafter() if drafter else None,
                    **base)


def entry(name: str, tallies: dict[str, Tally]) -> str:
    tally = tallies[name]
    return (f"{name} {tally.speed:.2f} ({tally.speed / tallies[names[0]].speed:.3f}x, "
            f"{tally.speed / tallies['default'].speed:.3f}x default) tau {tally.tau:.2f} fed {tally.fed_per_pass:.1f}")


report(names, decode, tokenizer, entry)
