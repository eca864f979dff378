"""Prompt lookup with the CPU default's draft tree: replacing the tree (before) vs grafted onto it (now).

Held-out distilled prompts (16 math, 16 code, 16 chat), 128 new tokens, shipped checkpoint, the CPU
default (quadratic k = 4, 1 group, tree 8, lookup 10, cost-aware); per prompt both drafters, in
alternating order, in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/lookup_graft/ab.py
"""
import time

import torch

from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.decoding import generate
from mtp.drafting import LeftoverMasks, MaskTree, PromptLookup
from mtp.models import encode_prompt

torch.set_num_threads(2)
model, tokenizer = load_mtp()
rows = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
settings = dict(method="quadratic", k=4, groups=1, lookup=10, tree_budget=8, cost_aware=True, max_new_tokens=128,
                eos_token_ids=[tokenizer.eos_token_id])


def drafter(graft: bool) -> LeftoverMasks:
    return LeftoverMasks(PromptLookup(10, MaskTree(model, 8), graft=graft))


generate(model, encode_prompt(tokenizer, rows[0].prompt), **settings)  # warm-up
for domain, part in (("math", slice(0, 16)), ("code", slice(16, 32)), ("chat", slice(32, 48))):
    seconds, tokens, passes = {False: 0.0, True: 0.0}, {False: 0, True: 0}, {False: 0, True: 0}
    for i, row in enumerate(rows[part]):
        ids = encode_prompt(tokenizer, row.prompt)
        outputs = {}
        for graft in ((False, True) if i % 2 == 0 else (True, False)):
            start = time.perf_counter()
            trace = generate(model, ids, drafter=drafter(graft), **settings)
            seconds[graft] += time.perf_counter() - start
            tokens[graft] += len(trace.token_ids)
            passes[graft] += trace.forward_passes
            outputs[graft] = trace.token_ids
        assert outputs[False] == outputs[True], (domain, i)
    speed = {g: tokens[g] / seconds[g] for g in (False, True)}
    print(f"{domain}: tokens/s replacing {speed[False]:.2f}, grafted {speed[True]:.2f} "
          f"({speed[True] / speed[False]:.3f}x); tau {tokens[False] / passes[False]:.2f} -> "
          f"{tokens[True] / passes[True]:.2f}; {len(rows[part])} prompts, outputs identical", flush=True)
