"""A/B, same process, interleaved per prompt: the shipped default decoded with the sibling projections
(q/k/v, gate/up) run as one oneDNN matmul each (mtp.models.Siblings) and as separate matmuls.

    PYTHONPATH=. python docs/bench/cheaper_passes_eval/ab/siblings.py 5 assets/prompts/eval/{gsm8k,humaneval,mt_bench,qa,alpaca,sum}.jsonl
"""
import sys

import torch

from mtp import decoding, models
from mtp.api import chosen_checkpoint, decoding_settings, load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt

torch.set_num_threads(2)
model, tokenizer = load_mtp()
settings = decoding_settings(model, chosen_checkpoint(None, None))
print(settings, flush=True)
grouped = {module: module.__dict__["_siblings"] for module in model.base.modules() if "_siblings" in module.__dict__}


def use_siblings(on: bool) -> None:
    for module, siblings in grouped.items():
        if on:
            module.__dict__["_siblings"] = siblings
        else:
            module.__dict__.pop("_siblings", None)


limit, files = int(sys.argv[1]), sys.argv[2:]
variants = {"separate": False, "siblings": True}
for path in files:
    seconds, tokens, identical = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0), 0
    records = read_prompts(path)[:limit]
    for i, record in enumerate(records):
        ids = encode_prompt(tokenizer, record.prompt)
        outputs = {}
        for name in variants if i % 2 else reversed(list(variants)):  # alternate which runs first
            use_siblings(variants[name])
            trace = decoding.generate(model, ids, method=settings.method, k=settings.k, groups=settings.groups,
                                      lookup=settings.lookup, tree_budget=settings.tree_budget, max_new_tokens=128,
                                      eos_token_ids=[tokenizer.eos_token_id])
            seconds[name] += trace.seconds
            tokens[name] += len(trace.token_ids)
            outputs[name] = trace.token_ids
        identical += outputs["separate"] == outputs["siblings"]
    speed = {name: tokens[name] / seconds[name] for name in variants}
    print(f"{path.split('/')[-1]}: separate {speed['separate']:.1f} tok/s, siblings {speed['siblings']:.1f} tok/s, "
          f"{speed['siblings'] / speed['separate']:.3f}x, identical {identical}/{len(records)}", flush=True)
