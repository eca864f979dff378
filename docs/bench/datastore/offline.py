"""Datastore drafts looked at offline (design §9): on the 48 held-out distilled prompts (never the eval
sets), at every position of each greedy output, the 8-node tree's accepted length (k = 4, shipped
checkpoint, replayed by mtp.acceptance) against the tree with the datastore's chain grafted on (the
longer of the two accepted paths), where prompt lookup finds nothing and where it finds something
(there: against the longer of the tree and lookup's chain). Per variant of the table (context
lengths, drafts a pass): tokens gained a position, datastore rows fed a position, and per domain the
prompts' gains (to see whether one prompt carries them). Datastore: assets/distilled/smollm2_mix_14572.jsonl.gz.

    PYTHONPATH=. python docs/bench/datastore/offline.py > docs/bench/datastore/offline.txt
"""
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import HELDOUT  # noqa: E402

from mtp import datastore  # noqa: E402
from mtp.acceptance import draft_matches, tree_key  # noqa: E402
from mtp.api import load_mtp  # noqa: E402
from mtp.data import read_distilled  # noqa: E402
from mtp.drafting import Draft, lookup_drafts  # noqa: E402

DATA = "assets/distilled/smollm2_mix_14572.jsonl.gz"
VARIANTS = [((6, 5, 4, 3), 8), ((6, 5, 4, 3, 2), 8), ((6, 5, 4, 3), 4), ((6, 5, 4, 3), 16), ((4, 3), 8)]

torch.set_num_threads(2)
model, _ = load_mtp()
samples = [sample for _, sample in read_distilled(HELDOUT)]
trees = []  # (domain, ids, prompt length, the tree's accepted length after each anchor)
for sample in samples:
    ids = sample["prompt_ids"] + sample["response_ids"][:128]
    matches = draft_matches(model, ids, len(sample["prompt_ids"]), trees=[(4, 8)])[tree_key(4, 8)]
    trees.append((sample["domain"], ids, len(sample["prompt_ids"]), [m.accepted for m in matches]))
sequences = datastore.distilled_sequences([DATA])


def matched(draft: list[int], following: list[int]) -> int:
    """Drafts greedy verification accepts against the true continuation."""
    return len(Draft.chain(draft).follow(following))


for ngrams, max_drafts in VARIANTS:
    datastore.NGRAMS = ngrams  # the table and its lookups read the module's context lengths
    store = dataclasses.replace(datastore.Datastore.build(sequences), max_drafts=max_drafts)
    print(f"contexts {ngrams}, at most {max_drafts} drafts ({len(store.keys)} contexts)")
    for domain in ("math", "code", "chat"):
        total = defaultdict(float)
        per_prompt = []
        for tree_domain, ids, prompt_length, accepted in trees:
            if tree_domain != domain:
                continue
            gained = positions = 0
            for i, tree in enumerate(accepted):
                context, following = ids[:prompt_length + 1 + i], ids[prompt_length + 1 + i:]
                found = lookup_drafts(context, 10)
                where = "lookup" if found else "no lookup"
                before = max(tree, matched(found, following))
                drafts = store.drafts(context)
                gain = max(before, matched(drafts, following)) - before
                total[where, "gain"] += gain
                total[where, "rows"] += len(drafts)
                total[where, "positions"] += 1
                gained, positions = gained + gain, positions + 1
            per_prompt.append(gained / positions)
        line = " | ".join(f"{where}: {total[where, 'gain'] / total[where, 'positions']:+.3f} tokens, "
                          f"{total[where, 'rows'] / total[where, 'positions']:.2f} rows"
                          for where in ("no lookup", "lookup"))
        prompts = ", ".join(f"{g:.2f}" for g in sorted(per_prompt, reverse=True))
        print(f"  {domain}: {line}; per prompt: {prompts}", flush=True)
