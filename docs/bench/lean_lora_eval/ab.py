"""A/B, same process, interleaved per prompt: the shipped default decoded with GatedLoraLinear's decoding
update as it was before (commit d54169f: adapters, weights and scaling looked up through peft's modules and
properties in every call) and as it is now (kept between calls, `_inference_updates`).

    PYTHONPATH=. python docs/bench/lean_lora_eval/ab.py 5 assets/prompts/eval/{gsm8k,humaneval,mt_bench,qa,alpaca,sum}.jsonl
"""
import sys

import torch

from mtp import adapter, decoding
from mtp.adapter import _GATE
from mtp.api import chosen_checkpoint, decoding_settings, load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt


def before(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """GatedLoraLinear.forward at d54169f, decoding's branch (the only one decoding takes)."""
    result = self.base_layer(x, *args, **kwargs)
    gate = _GATE.get()
    if gate is None or self.disable_adapters or self.merged:
        return result
    flat = x.reshape(-1, x.shape[-1])
    rows = flat[gate.start:]
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        scale = self.scaling[name]
        if lora_b.bias is None and lora_a.weight.dtype == lora_b.weight.dtype == result.dtype == x.dtype:
            out = result.view(-1, result.shape[-1])[gate.start:]
            out.addmm_(torch.mm(rows, lora_a.weight.t()), lora_b.weight.t(), alpha=scale)
    return result


if __name__ == "__main__":
    torch.set_num_threads(2)
    model, tokenizer = load_mtp()
    settings = decoding_settings(model, chosen_checkpoint(None, None))
    print(settings, flush=True)
    variants = {"before": before, "now": adapter.GatedLoraLinear.forward}
    limit, files = int(sys.argv[1]), sys.argv[2:]
    for path in files:
        seconds, tokens, identical = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0), 0
        records = read_prompts(path)[:limit]
        for i, record in enumerate(records):
            ids = encode_prompt(tokenizer, record.prompt)
            outputs = {}
            for name in variants if i % 2 else reversed(list(variants)):  # alternate which runs first
                adapter.GatedLoraLinear.forward = variants[name]
                trace = decoding.generate(model, ids, method=settings.method, k=settings.k, groups=settings.groups,
                                          lookup=settings.lookup, tree_budget=settings.tree_budget, max_new_tokens=128,
                                          eos_token_ids=[tokenizer.eos_token_id])
                seconds[name] += trace.seconds
                tokens[name] += len(trace.token_ids)
                outputs[name] = trace.token_ids
            identical += outputs["before"] == outputs["now"]
        speed = {name: tokens[name] / seconds[name] for name in variants}
        print(f"{path.split('/')[-1]}: before {speed['before']:.1f} tok/s, now {speed['now']:.1f} tok/s, "
              f"{speed['now'] / speed['before']:.3f}x, identical {identical}/{len(records)}", flush=True)
