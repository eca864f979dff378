"""A/B on the 48 held-out prompts: CostAware as it was at commit 39e384c vs the same with no mask group on
passes that verify prompt-lookup drafts (a prototype subclass). Run at 39e384c, nothing else running:

    PYTHONPATH=. python docs/bench/cost_aware_defaults/heldout/cost_aware_skip.py > cost_aware_skip.txt
"""
import sys, torch
from mtp import decoding, methods
from mtp.api import chosen_checkpoint, decoding_settings, load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt
torch.set_num_threads(2)
model, tokenizer = load_mtp()
settings = decoding_settings(model, chosen_checkpoint(None, None))
Real = methods.CostAware
class Skip(Real):
    def anchors(self, draft):
        anchors = super().anchors(draft)
        return [] if draft.looked_up else anchors
variants = {"ca": Real, "ca_skip": Skip}
records = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
domains = {}
for i, record in enumerate(records):
    ids = encode_prompt(tokenizer, record.prompt)
    outs = {}
    for name in variants if i % 2 else reversed(list(variants)):
        decoding.CostAware = variants[name]
        tr = decoding.generate(model, ids, method=settings.method, k=settings.k, groups=settings.groups, cost_aware=True,
                               lookup=settings.lookup, max_new_tokens=128, eos_token_ids=[tokenizer.eos_token_id])
        d = domains.setdefault(record.domain, {n: [0.0, 0, 0] for n in variants})
        d[name][0] += tr.seconds; d[name][1] += len(tr.token_ids); d[name][2] += len(tr.steps)
        outs[name] = tr.token_ids
    assert len(set(map(tuple, outs.values()))) == 1
for dom, d in domains.items():
    s = {n: d[n][1] / d[n][0] for n in variants}
    print(dom, {n: f"{s[n]:.1f} tok/s tau {d[n][1]/d[n][2]:.2f}" for n in variants}, f"{s['ca_skip']/s['ca']:.3f}x", flush=True)
