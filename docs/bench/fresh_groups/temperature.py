"""Replayed τ on held-out prompts with a temperature T on the tree's draft probabilities: the sampler's
logits over each mask's candidates are divided by T before the softmax that scores (ranks) tree nodes.
Drafting only: outputs are unchanged. Held-out distilled prompts (12 math, 12 code, 12 chat),
`generate`'s 128 greedy tokens, quadratic, shipped checkpoint, no prompt lookup.

    PYTHONPATH=. python docs/bench/fresh_groups/temperature.py 0.7,1.0,1.4,2.0
"""
import sys

import torch

import mtp.acceptance as A
from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt

torch.set_num_threads(2)
model, tok = load_mtp()
orig = model.lm_logits_at
rows = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
temps = [float(t) for t in sys.argv[1].split(",")]
configs = (((4, 8), 1), ((4, 8), 2), ((8, 64), 9))
for domain, part in (("math", slice(0, 12)), ("code", slice(16, 28)), ("chat", slice(32, 44))):
    matches, new_tokens = {T: [] for T in temps}, []
    for r in rows[part]:
        ids = encode_prompt(tok, r.prompt)
        with torch.inference_mode():
            out = model.base.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=128, pad_token_id=0)[0, len(ids):].tolist()
        new_tokens.append(len(out))
        for T in temps:
            # Ranking only: mask_trees scores nodes by softmax(lm_logits_at(...)); chains take the argmax.
            model.lm_logits_at = (lambda head, c, T=T: orig(head, c) / T)
            matches[T].append(A.draft_matches(model, ids + out, len(ids), trees=[(8, 64), (4, 8)]))
    tau = {}
    for (k, b), g in configs:
        key = A.tree_key(k, b)
        for T in temps:
            tau[(k, b, g, T)] = A.tokens_per_step([m[key] for m in matches[T]], new_tokens, "quadratic", k, g,
                                                  leftover=[m[A.leftover_key(key)] for m in matches[T]])
    print(domain, " | ".join(f"k{k} B{b} G{g} T{T}: {t:.3f}" for (k, b, g, T), t in sorted(tau.items())), flush=True)
