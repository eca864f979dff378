"""Replayed τ (no lookup) before / after: groups that serve only paths ending at their node, ordered
by end probability (84505fa, extracted as package `mtp_old`) vs the freshest group on the path
serving, ordered by the masks it leaves (now). Held-out distilled prompts (12 math, 12 code,
12 chat), `generate`'s 128 greedy tokens, quadratic, trees k = 8 / 64 nodes and k = 4 / 8 nodes.

    rm -rf /tmp/old && mkdir /tmp/old && git archive 84505fa mtp | tar -x -C /tmp/old && mv /tmp/old/mtp /tmp/old/mtp_old
    PYTHONPATH=.:/tmp/old python docs/bench/fresh_groups/replay.py
"""
import torch
import mtp_old.acceptance as OA
import mtp.acceptance as NA
from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt
torch.set_num_threads(2)
model, tok = load_mtp()
rows = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
configs = (((8, 64), 1), ((8, 64), 9), ((8, 64), 18), ((4, 8), 1), ((4, 8), 2))
for domain, part in (("math", slice(0, 12)), ("code", slice(16, 28)), ("chat", slice(32, 44))):
    matches, new_tokens = {"before": [], "now": []}, []
    for r in rows[part]:
        ids = encode_prompt(tok, r.prompt)
        with torch.inference_mode():
            out = model.base.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=128, pad_token_id=0)[0, len(ids):].tolist()
        new_tokens.append(len(out))
        for name, A in (("before", OA), ("now", NA)):
            matches[name].append(A.draft_matches(model, ids + out, len(ids), trees=[(8, 64), (4, 8)]))
    tau = {}
    for name, A in (("before", OA), ("now", NA)):
        for (k, b), g in configs:
            key = A.tree_key(k, b)
            tau[(name, k, b, g)] = A.tokens_per_step([m[key] for m in matches[name]], new_tokens, "quadratic", k, g,
                                                     leftover=[m[A.leftover_key(key)] for m in matches[name]])
    print(domain, " | ".join(f"{n} k{k} B{b} G{g}: {t:.2f}" for (n, k, b, g), t in sorted(tau.items(), key=lambda x: (x[0][1:], x[0][0]))), flush=True)
