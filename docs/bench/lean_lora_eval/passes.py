"""One pass's time on a warm cache (92 prompt tokens), LoRA update before / now / off, interleaved.

    PYTHONPATH=. python docs/bench/lean_lora_eval/passes.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ab import before  # noqa: E402

from mtp import adapter  # noqa: E402
from mtp.api import load_mtp  # noqa: E402
from mtp.data import read_prompts  # noqa: E402
from mtp.kv_cache import decoding_cache, keep_in_cache  # noqa: E402
from mtp.layouts import chain_parents, step_layout  # noqa: E402
from mtp.models import encode_prompt  # noqa: E402

torch.set_num_threads(2)
model, tokenizer = load_mtp()
ids = encode_prompt(tokenizer, read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")[0].prompt)
variants = {"before": before, "now": adapter.GatedLoraLinear.forward,
            "off": lambda self, x, *args, **kwargs: self.base_layer(x, *args, **kwargs)}
with torch.inference_mode():
    cache = decoding_cache(model.base.config)
    model(torch.tensor([ids]), torch.arange(len(ids))[None], past_key_values=cache, use_cache=True)

    def timed(tokens: int, masks: int, variant: str) -> float:
        adapter.GatedLoraLinear.forward = variants[variant]
        layout = step_layout(list(range(100, 100 + tokens)), len(ids), masks, [tokens - 1], chain_parents(tokens))
        start = time.perf_counter()
        model(layout.input_ids[None], layout.position_ids[None], attention_mask=layout.attention[None],
              past_key_values=cache, use_cache=True, logits_for=torch.arange(len(layout.input_ids)))
        seconds = time.perf_counter() - start
        keep_in_cache(cache, len(ids), [])
        return seconds

    shapes = [(tokens, 4, variant) for tokens in (1, 5) for variant in variants]
    times = {shape: [] for shape in shapes}
    for repeat in range(23):
        for shape in shapes:
            seconds = timed(*shape)
            if repeat >= 3:  # warm-up
                times[shape].append(seconds)
    for tokens, masks, variant in shapes:
        print(f"t_0 + {tokens - 1} drafts + {masks} masks, LoRA {variant}: "
              f"{statistics.median(times[tokens, masks, variant]) * 1000:.1f} ms")
