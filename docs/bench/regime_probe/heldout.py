"""How CostAware measures the two regimes (issue 19's code figure): held-out distilled prompts (16 math,
16 code, 16 chat), 128 new tokens, shipped checkpoint, quadratic k = 4, 1 group, lookup 10; the
previous default (the chain, not cost-aware) and the 8-node tree with CostAware variants, per prompt
all runs in alternating order in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/regime_probe/heldout.py 1 > docs/bench/regime_probe/heldout_round1.txt

Variants: `skip lookup` leaves passes verifying prompt-lookup drafts out of both regimes' windows (they
carry no group in either regime, so they say nothing about which regime pays, only add noise);
`off probe N` probes the masks-off regime for N passes instead of PROBE (its passes are one-token
passes whose cost varies little, so fewer may do), probes of the masks-on regime keep PROBE.
"""
import sys
from pathlib import Path

from mtp.decoding import generate
from mtp.drafting import Draft
from mtp.methods import CostAware
from mtp.trace import Trace

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import against_first, generate_cost_aware_as, load_default, report  # noqa: E402


def variant(skip_lookup: bool, off_probe: int | None) -> type[CostAware]:
    class Variant(CostAware):
        def anchors(self, draft: Draft) -> list[int]:
            self.verifying_lookup = draft.looked_up
            return super().anchors(draft)

        def observe(self, new_tokens: int, seconds: float) -> None:
            if skip_lookup and getattr(self, "verifying_lookup", False) and not self.unmeasured:
                # Not measured, but it still counts toward probes and intervals.
                self.unmeasured = True
            super().observe(new_tokens, seconds)

        def _set(self, masks_on: bool) -> None:
            super()._set(masks_on)
            if off_probe is not None and self.probe_left == self.PROBE and not self.masks_on:
                self.probe_left = off_probe
    return Variant


ROUNDS = {
    "1": {"chain": None, "now": variant(False, None), "skip lookup": variant(True, None),
          "off probe 3": variant(False, 3), "skip lookup, off probe 3": variant(True, 3)},
}
variants = ROUNDS[sys.argv[1]]
names = list(variants)
model, tokenizer, base = load_default()


def decode(name: str, ids: list[int]) -> Trace:
    cost_aware = variants[name]
    if cost_aware is not None:
        return generate_cost_aware_as(cost_aware, model, ids, tree_budget=8, **base)
    return generate(model, ids, **base)


report(names, decode, tokenizer, against_first(names, name_first=True))
