"""MTP decoding with transformers' SDPA path (repeat_kv) vs grouped heads (mtp.attention), interleaved per
prompt in one process: the shipped default (quadratic k=4, 1 group, lookup 10), 128 new tokens.

    PYTHONPATH=. .venv/bin/python docs/bench/grouped_attention_eval/ab/decode.py \
        assets/prompts/eval/sum.jsonl,assets/prompts/eval/gsm8k.jsonl,... 5
"""
import collections
import contextlib
import sys

import torch

import mtp.attention as attention
from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.decoding import generate
from mtp.models import encode_prompt

torch.set_num_threads(2)
model, tok = load_mtp()
real = attention.mtp_pass
files = sys.argv[1].split(",")
limit = int(sys.argv[2])
stats = collections.defaultdict(collections.Counter)
for f in files:
    for row in read_prompts(f)[:limit]:
        ids = encode_prompt(tok, row.prompt)
        outs = {}
        for name, ctx in (("repeat_kv", contextlib.nullcontext), ("grouped", real)):
            attention.mtp_pass = ctx
            t = generate(model, ids, method="quadratic", k=4, groups=1, lookup=10, max_new_tokens=128)
            s = stats[(f.split("/")[-1], name)]
            s["tok"] += len(t.token_ids)
            s["sec"] += t.seconds
            s["ctx"] += len(ids)
            outs[name] = t.token_ids
        assert outs["repeat_kv"] == outs["grouped"]
for f in files:
    f = f.split("/")[-1]
    a, b = stats[(f, "repeat_kv")], stats[(f, "grouped")]
    print(f"{f}: prompt tokens {a['ctx']/limit:.0f}, tokens/s repeat_kv {a['tok']/a['sec']:.1f}, grouped {b['tok']/b['sec']:.1f}"
          f" ({b['tok']/b['sec']/(a['tok']/a['sec']):.3f}x); outputs identical", flush=True)
