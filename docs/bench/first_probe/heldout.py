"""CostAware's constants re-checked with the tree default (issue 19): held-out distilled prompts
(16 math, 16 code, 16 chat), 128 new tokens, shipped checkpoint, quadratic k = 4, 1 group, lookup 10;
the previous default (the chain, not cost-aware) and the 8-node tree with CostAware variants, per
prompt all runs in alternating order in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/first_probe/heldout.py lookup   # lookup passes (heldout_lookup.txt)
    PYTHONPATH=. python docs/bench/first_probe/heldout.py 1        # round 1 (heldout_round1.txt)
    PYTHONPATH=. python docs/bench/first_probe/heldout.py 2        # round 2 (heldout_round2.txt)

A variant is a CostAware subclass with other constants (margin: the masks' measured tokens/s
multiplied by it before the regimes are compared, a bias toward masks; groups_on_grafted: a pass
verifying lookup drafts grafted onto the masks' tree carries the policy's group, only a pure lookup
chain goes without), and optionally another drafter; `generate` builds its CostAware from
mtp.decoding's name, so side_by_side.generate_cost_aware_as swaps that name for each run. Ratios are to the first run.
"""
import dataclasses
import sys
from pathlib import Path

from mtp.decoding import generate
from mtp.drafting import Draft, Drafter, LeftoverMasks, MaskGroup, MaskTree, PromptLookup, lookup_drafts
from mtp.methods import CostAware
from mtp.sampling import Sampling
from mtp.trace import Trace

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import against_first, generate_cost_aware_as, load_default, report  # noqa: E402


def variant(interval: int, probe: int, window: int, first_probe: int, margin: float = 1.0,
            groups_on_grafted: bool = False) -> type[CostAware]:
    class Variant(CostAware):
        INTERVAL, PROBE, WINDOW, FIRST_PROBE = interval, probe, window, first_probe

        def tokens_per_second(self, masks_on: bool) -> float | None:
            value = super().tokens_per_second(masks_on)
            return value * margin if value is not None and masks_on else value

        def anchors(self, draft: Draft) -> list[int]:
            if groups_on_grafted and not draft.is_chain:  # CostAware then treats a grafted tree as the masks' own
                draft = dataclasses.replace(draft, looked_up=False)
            return super().anchors(draft)
    return Variant


class SmallerTreeWithLookup(PromptLookup):
    """Where lookup drafts exist, graft them onto `under_lookup`'s tree instead of the fallback's."""

    def __init__(self, max_drafts: int, fallback: Drafter, under_lookup: Drafter) -> None:
        super().__init__(max_drafts, fallback, graft=True)
        self.under_lookup = under_lookup

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        found = lookup_drafts(context, self.max_drafts)
        if found and group is not None:
            masks = self.under_lookup.propose(context, group, sampling)
            if masks.tokens:
                return masks.grafted(found)
        return super().propose(context, group, sampling)


def smaller_tree_with_lookup() -> Drafter:
    return LeftoverMasks(SmallerTreeWithLookup(10, MaskTree(model, 8), MaskTree(model, 4)))


ROUNDS = {  # name -> (CostAware variant or None: not cost-aware, tree budget, drafter factory or None: the default's)
    "lookup": {"now": (variant(16, 6, 16, 6), 8, None),
               "groups on grafted": (variant(16, 6, 16, 6, groups_on_grafted=True), 8, None),
               "tree 4 with lookup": (variant(16, 6, 16, 6), 8, smaller_tree_with_lookup)},
    "1": {"chain": (None, 0, None), "tree no-CA": (None, 8, None), "CA 16,6,16,6": (variant(16, 6, 16, 6), 8, None),
          "CA first 12": (variant(16, 6, 16, 12), 8, None), "CA probe 4": (variant(16, 4, 16, 6), 8, None),
          "CA margin 1.1": (variant(16, 6, 16, 6, 1.1), 8, None)},
    "2": {"chain": (None, 0, None), "CA first 6": (variant(16, 6, 16, 6), 8, None),
          "CA first 12": (variant(16, 6, 16, 12), 8, None), "CA first 16": (variant(16, 6, 16, 16), 8, None),
          "CA first 24": (variant(16, 6, 16, 24), 8, None)},
}
variants = ROUNDS[sys.argv[1]]
names = list(variants)
model, tokenizer, base = load_default()


def decode(name: str, ids: list[int]) -> Trace:
    cost_aware, budget, drafter = variants[name]
    options = dict(base, tree_budget=budget, drafter=drafter() if drafter else None)
    if cost_aware is not None:
        return generate_cost_aware_as(cost_aware, model, ids, **options)
    return generate(model, ids, **options)


report(names, decode, tokenizer, against_first(names, name_first=True))
