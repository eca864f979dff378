"""One layer's attention for a masked pass, SmolLM2-135M's shapes (9 query heads, 3 KV heads, head dim 64):
transformers' path (repeat_kv, then SDPA) vs SDPA given the grouped heads (enable_gqa), microseconds per call.

    PYTHONPATH=. .venv/bin/python docs/bench/grouped_attention_eval/ab/kernel.py
"""
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)


def bench(f, reps=300):
    for _ in range(20):
        f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return 1e6 * (time.perf_counter() - t) / reps


for kv_len in (150, 734):
    for q_len in (9, 13):
        q = torch.randn(1, 9, q_len, 64)
        k = torch.randn(1, 3, kv_len, 64)
        v = torch.randn(1, 3, kv_len, 64)
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
        mask = torch.zeros(1, 1, q_len, kv_len).masked_fill_(~allowed, torch.finfo(torch.float32).min)

        def repeated():
            kk = k[:, :, None].expand(1, 3, 3, kv_len, 64).reshape(1, 9, kv_len, 64)
            vv = v[:, :, None].expand(1, 3, 3, kv_len, 64).reshape(1, 9, kv_len, 64)
            return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)

        def grouped():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        print(f"cache {kv_len}, pass {q_len} tokens: repeat_kv {bench(repeated):.0f} us, grouped {bench(grouped):.0f} us,"
              f" identical {torch.equal(repeated(), grouped())}")
