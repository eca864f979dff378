"""Leftover masks from the freshest group on the accepted path, and tree groups placed by the masks
they leave: before (the previous commit, 84505fa, extracted as package `mtp_old`) vs now.

Held-out distilled prompts (16 math, 16 code, 16 chat), 128 new tokens, shipped checkpoint,
quadratic k = 4, 1 group, lookup 10, cost-aware; the chain (the previous CPU default) and the
8-node tree (the CPU default), each with the code before and now; per prompt all four in
alternating order in one process; outputs must be identical.

    rm -rf /tmp/old && mkdir /tmp/old && git archive 84505fa mtp | tar -x -C /tmp/old && mv /tmp/old/mtp /tmp/old/mtp_old
    PYTHONPATH=.:/tmp/old python docs/bench/fresh_groups/ab.py
"""
import time

import mtp_old.decoding
import torch

from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.decoding import generate
from mtp.models import encode_prompt

torch.set_num_threads(2)
model, tokenizer = load_mtp()
rows = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
settings = dict(method="quadratic", k=4, groups=1, lookup=10, cost_aware=True, max_new_tokens=128,
                eos_token_ids=[tokenizer.eos_token_id])
runs = {"chain before": (mtp_old.decoding.generate, 0), "chain now": (generate, 0),
        "tree 8 before": (mtp_old.decoding.generate, 8), "tree 8 now": (generate, 8)}
names = list(runs)
generate(model, encode_prompt(tokenizer, rows[0].prompt), tree_budget=8, **settings)  # warm-up
for domain, part in (("math", slice(0, 16)), ("code", slice(16, 32)), ("chat", slice(32, 48))):
    seconds, tokens, passes = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    for i, row in enumerate(rows[part]):
        ids = encode_prompt(tokenizer, row.prompt)
        outputs = {}
        for name in names if i % 2 == 0 else names[::-1]:
            decode, budget = runs[name]
            start = time.perf_counter()
            trace = decode(model, ids, tree_budget=budget, **settings)
            seconds[name] += time.perf_counter() - start
            tokens[name] += len(trace.token_ids)
            passes[name] += trace.forward_passes
            outputs[name] = trace.token_ids
        assert all(output == outputs[names[0]] for output in outputs.values()), (domain, i)
    speed = {name: tokens[name] / seconds[name] for name in names}
    print(f"{domain} ({len(rows[part])} prompts, outputs identical): " + " | ".join(
        f"{name} {speed[name]:.2f} tok/s, tau {tokens[name] / passes[name]:.2f}" for name in names), flush=True)
    print(f"  now/before: chain {speed['chain now'] / speed['chain before']:.3f}x, tree {speed['tree 8 now'] / speed['tree 8 before']:.3f}x;"
          f" tree/chain: before {speed['tree 8 before'] / speed['chain before']:.3f}x, now {speed['tree 8 now'] / speed['chain now']:.3f}x",
          flush=True)
