"""Datastore drafts (issue 19's code figure): held-out distilled prompts (16 math, 16 code, 16 chat),
128 new tokens, shipped checkpoint, quadratic k = 4, 1 group, lookup 10; the previous default (chain,
not cost-aware), the default (8-node tree, cost-aware) and the default with the drafts of a
datastore built from the training data (assets/distilled/smollm2_mix_14572.jsonl.gz) of at most 8 or
16 tokens a pass; per prompt all runs in alternating order in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/datastore/heldout.py > docs/bench/datastore/heldout_round1.txt
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import against_first, load_default, report  # noqa: E402

from mtp.datastore import Datastore  # noqa: E402
from mtp.decoding import generate  # noqa: E402

store = Datastore.from_distilled(["assets/distilled/smollm2_mix_14572.jsonl.gz"])
VARIANTS = {  # name -> (tree budget, cost-aware, datastore)
    "chain": (0, False, None), "default": (8, True, None),
    "default + datastore 8": (8, True, dataclasses.replace(store, max_drafts=8)),
    "default + datastore 16": (8, True, store),
}
model, tokenizer, base = load_default()


def decode(name, ids):
    budget, cost_aware, datastore = VARIANTS[name]
    return generate(model, ids, tree_budget=budget, cost_aware=cost_aware, datastore=datastore, **base)


names = list(VARIANTS)
report(names, decode, tokenizer, against_first(names, fed=True))
