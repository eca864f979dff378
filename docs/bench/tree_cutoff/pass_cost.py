"""What a pass costs per token fed (issue 19): one pass of n real tokens with the tree layout's explicit
attention mask, with and without a 4-mask group after its last token, after a 300-token cache; shipped
checkpoint, 2 threads, oneDNN kernel; the 64 shapes interleaved round-robin, median of 15 rounds.

    PYTHONPATH=. python docs/bench/tree_cutoff/pass_cost.py 15 > docs/bench/tree_cutoff/pass_cost.txt
"""
import sys
import time

import torch

from mtp.api import load_mtp
from mtp.kv_cache import decoding_cache, keep_in_cache
from mtp.layouts import step_layout

torch.set_num_threads(2)
model, _ = load_mtp()
context = list(range(1000, 1300))
cache = decoding_cache(model.base.config)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
shapes = [(n, group) for n in range(1, 33) for group in (0, 1)]
times = {shape: [] for shape in shapes}
with torch.inference_mode():
    model(torch.tensor([context]), torch.arange(len(context))[None], past_key_values=cache, use_cache=True)
    for _ in range(rounds):
        for n, group in shapes:
            layout = step_layout(list(range(2000, 2000 + n)), len(context), 4, [n - 1] if group else [])
            start = time.perf_counter()
            model(layout.input_ids[None], layout.position_ids[None], attention_mask=layout.attention[None],
                  past_key_values=cache, use_cache=True, logits_for=torch.arange(len(layout.input_ids)))
            times[(n, group)].append(time.perf_counter() - start)
            keep_in_cache(cache, len(context), [])
for n, group in shapes:
    t = sorted(times[(n, group)])
    print(f"{n + 4 * group:3d} rows  n={n:2d} group={group}  median {t[len(t) // 2] * 1e3:6.1f} ms  min {t[0] * 1e3:6.1f}")
