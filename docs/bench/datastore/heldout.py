"""Datastore drafts (issue 19's code figure): held-out distilled prompts (16 math, 16 code, 16 chat),
128 new tokens, shipped checkpoint, quadratic k = 4, 1 group, lookup 10, the datastore built from the
training data (assets/distilled/smollm2_mix_14572.jsonl.gz); per prompt all runs in alternating order
in one process; outputs must be identical. Ratios are against the first variant, the previous default
(the chain, not cost-aware).

Round 1: the default (8-node tree, cost-aware), and with datastore drafts of at most 8 or 16 a pass.
Round 2: with 8 datastore drafts, the cost-aware chain against the default's tree.

    PYTHONPATH=. python docs/bench/datastore/heldout.py 1 > docs/bench/datastore/heldout_round1.txt
    PYTHONPATH=. python docs/bench/datastore/heldout.py 2 > docs/bench/datastore/heldout_round2.txt
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import against_first, load_default, report  # noqa: E402

from mtp.datastore import Datastore  # noqa: E402
from mtp.decoding import generate  # noqa: E402

store = Datastore.from_distilled(["assets/distilled/smollm2_mix_14572.jsonl.gz"])
ROUNDS = {  # name -> (tree budget, cost-aware, datastore)
    "1": {"chain": (0, False, None), "default": (8, True, None),
          "default + datastore 8": (8, True, dataclasses.replace(store, max_drafts=8)),
          "default + datastore 16": (8, True, dataclasses.replace(store, max_drafts=16))},
    "2": {"chain": (0, False, None), "default": (8, True, None),
          "chain cost-aware + datastore": (0, True, store), "default + datastore": (8, True, store)},
}
VARIANTS = ROUNDS[sys.argv[1]]
model, tokenizer, base = load_default()


def decode(name, ids):
    budget, cost_aware, datastore = VARIANTS[name]
    return generate(model, ids, tree_budget=budget, cost_aware=cost_aware, datastore=datastore, **base)


names = list(VARIANTS)
report(names, decode, tokenizer, against_first(names, fed=True))
