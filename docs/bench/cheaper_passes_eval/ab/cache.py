"""A/B, same process, interleaved per prompt: the shipped default decoded with transformers'
DynamicLayer cache (concatenates every pass) and with mtp.kv_cache's GrowingLayer (in place).

    PYTHONPATH=. python docs/bench/cheaper_passes_eval/ab/cache.py 5 assets/prompts/eval/{gsm8k,humaneval,mt_bench,qa,alpaca,sum}.jsonl
"""
import sys

import torch
from transformers import DynamicCache

from mtp import decoding, kv_cache
from mtp.api import chosen_checkpoint, decoding_settings, load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt

torch.set_num_threads(2)
model, tokenizer = load_mtp()
settings = decoding_settings(model, chosen_checkpoint(None, None))
print(settings, flush=True)
limit, files = int(sys.argv[1]), sys.argv[2:]
caches = {"DynamicLayer": lambda config: DynamicCache(config=config), "GrowingLayer": kv_cache.decoding_cache}
for path in files:
    seconds, tokens, identical = dict.fromkeys(caches, 0.0), dict.fromkeys(caches, 0), 0
    for i, record in enumerate(read_prompts(path)[:limit]):
        ids = encode_prompt(tokenizer, record.prompt)
        outputs = {}
        for name in caches if i % 2 else reversed(list(caches)):  # alternate which runs first
            decoding.decoding_cache = caches[name]
            trace = decoding.generate(model, ids, method=settings.method, k=settings.k, groups=settings.groups,
                                      lookup=settings.lookup, tree_budget=settings.tree_budget, max_new_tokens=128,
                                      eos_token_ids=[tokenizer.eos_token_id])
            seconds[name] += trace.seconds
            tokens[name] += len(trace.token_ids)
            outputs[name] = trace.token_ids
        identical += outputs["DynamicLayer"] == outputs["GrowingLayer"]
    speed = {name: tokens[name] / seconds[name] for name in caches}
    print(f"{path.split('/')[-1]}: DynamicLayer {speed['DynamicLayer']:.1f} tok/s, GrowingLayer "
          f"{speed['GrowingLayer']:.1f} tok/s, {speed['GrowingLayer'] / speed['DynamicLayer']:.3f}x, "
          f"identical {identical}/{min(limit, len(read_prompts(path)))}", flush=True)
