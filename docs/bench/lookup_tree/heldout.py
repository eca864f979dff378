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
import time
from pathlib import Path

import torch

from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.decoding import generate
from mtp.drafting import Draft, Drafter, LeftoverMasks, MaskGroup, MaskTree, PromptLookup
from mtp.models import encode_prompt
from mtp.sampling import Sampling

sys.path.insert(0, str(Path(__file__).parent))
from branches import continuations  # noqa: E402


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
torch.set_num_threads(2)
model, tokenizer = load_mtp()
rows = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
base = dict(method="quadratic", k=4, groups=1, lookup=10, max_new_tokens=128, eos_token_ids=[tokenizer.eos_token_id])
generate(model, encode_prompt(tokenizer, rows[0].prompt), tree_budget=8, **base)  # warm-up
total = {name: [0.0, 0] for name in names}
for domain, part in (("math", slice(0, 16)), ("code", slice(16, 32)), ("chat", slice(32, 48))):
    seconds, tokens, passes, fed = (dict.fromkeys(names, 0.0), dict.fromkeys(names, 0), dict.fromkeys(names, 0),
                                    dict.fromkeys(names, 0))
    for i, row in enumerate(rows[part]):
        ids = encode_prompt(tokenizer, row.prompt)
        outputs = {}
        for name in names if i % 2 == 0 else names[::-1]:
            budget, cost_aware, drafter = VARIANTS[name]
            start = time.perf_counter()
            trace = generate(model, ids, tree_budget=budget, cost_aware=cost_aware,
                             drafter=drafter() if drafter else None, **base)
            seconds[name] += time.perf_counter() - start
            tokens[name] += len(trace.token_ids)
            passes[name] += trace.forward_passes
            fed[name] += sum(step.input_length for step in trace.steps[1:])
            outputs[name] = trace.token_ids
        assert all(output == outputs[names[0]] for output in outputs.values()), (domain, i)
    for name in names:
        total[name][0] += seconds[name]
        total[name][1] += tokens[name]
    speed = {name: tokens[name] / seconds[name] for name in names}
    print(f"{domain}: " + " | ".join(
        f"{name} {speed[name]:.2f} ({speed[name] / speed[names[0]]:.3f}x, {speed[name] / speed['default']:.3f}x default) "
        f"tau {tokens[name] / passes[name]:.2f} fed {fed[name] / (passes[name] - 1):.1f}" for name in names), flush=True)
print("all: " + " | ".join(f"{name} {total[name][1] / total[name][0]:.2f}" for name in names), flush=True)
