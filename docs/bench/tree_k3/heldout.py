"""Fewer masks under the tree (issue 19): the 48 held-out distilled prompts (16 math, 16 code, 16 chat),
128 new tokens, shipped checkpoint, quadratic, 1 group, lookup 10, cost-aware; k (masks per group)
and the tree budget varied, against the previous default (chain k = 4, 1 group + lookup, not
cost-aware). Per prompt all runs in alternating order in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/tree_k3/heldout.py > docs/bench/tree_k3/heldout.txt
"""
import time

import torch

from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.decoding import generate
from mtp.models import encode_prompt

VARIANTS = {  # name -> (k, tree budget, cost-aware)
    "chain k4": (4, 0, False), "tree8 k4 (default)": (4, 8, True), "tree6 k3": (3, 6, True),
    "tree8 k3": (3, 8, True), "tree10 k3": (3, 10, True),
}
names = list(VARIANTS)
torch.set_num_threads(2)
model, tokenizer = load_mtp()
rows = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
base = dict(method="quadratic", groups=1, lookup=10, max_new_tokens=128, eos_token_ids=[tokenizer.eos_token_id])
generate(model, encode_prompt(tokenizer, rows[0].prompt), k=4, tree_budget=8, **base)  # warm-up
total = {name: [0.0, 0] for name in names}
for domain, part in (("math", slice(0, 16)), ("code", slice(16, 32)), ("chat", slice(32, 48))):
    seconds, tokens, passes = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    for i, row in enumerate(rows[part]):
        ids = encode_prompt(tokenizer, row.prompt)
        outputs = {}
        for name in names if i % 2 == 0 else names[::-1]:
            k, budget, cost_aware = VARIANTS[name]
            start = time.perf_counter()
            trace = generate(model, ids, k=k, tree_budget=budget, cost_aware=cost_aware, **base)
            seconds[name] += time.perf_counter() - start
            tokens[name] += len(trace.token_ids)
            passes[name] += trace.forward_passes
            outputs[name] = trace.token_ids
        assert all(output == outputs[names[0]] for output in outputs.values()), (domain, i)
    for name in names:
        total[name][0] += seconds[name]
        total[name][1] += tokens[name]
    speed = {name: tokens[name] / seconds[name] for name in names}
    print(f"{domain}: " + " | ".join(f"{name} {speed[name]:.2f} ({speed[name] / speed[names[0]]:.3f}x) "
                                     f"tau {tokens[name] / passes[name]:.2f}" for name in names), flush=True)
print("all: " + " | ".join(f"{name} {total[name][1] / total[name][0]:.2f}" for name in names), flush=True)
