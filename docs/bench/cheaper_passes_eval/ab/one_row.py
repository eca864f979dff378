"""A/B, same process, interleaved per prompt: transformers' greedy `generate` (1-token passes) with
the one-row linear kernel forced to oneDNN and to torch's (MKL), and a 1-token pass timed alone.

    PYTHONPATH=. python docs/bench/cheaper_passes_eval/ab/one_row.py 3 assets/prompts/eval/gsm8k.jsonl assets/prompts/eval/mt_bench.jsonl assets/prompts/eval/sum.jsonl
"""
import sys
import time

import torch

from mtp import models
from mtp.data import read_prompts
from mtp.models import encode_prompt, load_model

torch.set_num_threads(2)
print("this CPU's choice: oneDNN" if models.one_row_uses_onednn() else "this CPU's choice: torch (MKL)", flush=True)
loaded = load_model()
model, tokenizer = loaded.model, loaded.tokenizer
limit, files = int(sys.argv[1]), sys.argv[2:]
kernels = {"oneDNN": True, "torch": False}
for path in files:
    seconds, tokens, identical = dict.fromkeys(kernels, 0.0), dict.fromkeys(kernels, 0), 0
    for i, record in enumerate(read_prompts(path)[:limit]):
        ids = torch.tensor([encode_prompt(tokenizer, record.prompt)])
        outputs = {}
        for name in kernels if i % 2 else reversed(list(kernels)):
            models.one_row_uses_onednn = lambda onednn=kernels[name]: onednn
            start = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=128)
            seconds[name] += time.perf_counter() - start
            outputs[name] = out[0, ids.shape[1]:].tolist()
            tokens[name] += len(outputs[name])
        identical += outputs["oneDNN"] == outputs["torch"]
    speed = {name: tokens[name] / seconds[name] for name in kernels}
    print(f"{path.split('/')[-1]}: generate with oneDNN {speed['oneDNN']:.1f} tok/s, with torch {speed['torch']:.1f} "
          f"tok/s, {speed['torch'] / speed['oneDNN']:.3f}x, identical {identical}/{limit}", flush=True)
