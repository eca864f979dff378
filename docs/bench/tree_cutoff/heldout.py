"""A score cut-off under a larger tree budget (issue 19): the 48 held-out distilled prompts (16 math,
16 code, 16 chat), 128 new tokens, shipped checkpoint, quadratic k = 4, 1 group, lookup 10,
cost-aware; the masks' tree keeps only nodes whose path probability is at least the cut-off, up to
the budget; against the previous default (chain k = 4, 1 group + lookup, not cost-aware) and the
default (tree 8, no cut-off). Per prompt all runs in alternating order in one process; outputs must
be identical.

    PYTHONPATH=. python docs/bench/tree_cutoff/heldout.py > docs/bench/tree_cutoff/heldout_round2.txt

Round 1 (heldout_round1.txt) ran with the cut made while the tree grew (a `min_score` argument to
mtp.drafting.mask_trees, not kept): the same trees, fewer nodes grown (see NOTES.md).
"""
import sys
from pathlib import Path

from mtp.adapter import MTPModel
from mtp.decoding import generate
from mtp.drafting import Draft, LeftoverMasks, MaskGroup, MaskTree, PromptLookup
from mtp.trace import Trace

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import against_first, load_default, report  # noqa: E402

VARIANTS = {  # name -> (tree budget, cut-off, cost-aware)
    "chain": (0, 0.0, False), "tree8 (default)": (8, 0.0, True), "tree16 >=0.05": (16, 0.05, True),
    "tree32 >=0.04": (32, 0.04, True),
}


class CutTree(MaskTree):
    """The masks' tree of `budget` nodes less those scoring below `cut_off`. A child never outscores
    its parent, so what is left is a tree: the budget's most probable nodes among those above it."""

    def __init__(self, model: MTPModel, budget: int, cut_off: float) -> None:
        super().__init__(model, budget)
        self.cut_off = cut_off

    def propose(self, context: list[int], group: MaskGroup | None, sampling) -> Draft:
        tree = super().propose(context, group, sampling)
        if not tree.tokens:
            return tree
        kept = [i for i, score in enumerate(tree.scores) if score >= self.cut_off]
        index = {old: new for new, old in enumerate(kept)}
        return Draft([tree.tokens[i] for i in kept], [index.get(tree.parents[i], -1) for i in kept], None,
                     [tree.scores[i] for i in kept])


names = list(VARIANTS)
model, tokenizer, base = load_default()


def decode(name: str, ids: list[int]) -> Trace:
    budget, cut_off, cost_aware = VARIANTS[name]
    drafter = LeftoverMasks(PromptLookup(10, CutTree(model, budget, cut_off), graft=True)) if budget else None
    return generate(model, ids, tree_budget=budget, cost_aware=cost_aware, drafter=drafter, **base)


report(names, decode, tokenizer, against_first(names, fed=True))
