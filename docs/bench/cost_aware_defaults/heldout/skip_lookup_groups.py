"""A/B on the 48 held-out prompts: the shipped default vs the same with no mask group on passes that verify
prompt-lookup drafts (a prototype policy wrapper). Run at commit 39e384c, nothing else running:

    PYTHONPATH=. python docs/bench/cost_aware_defaults/heldout/skip_lookup_groups.py 1 > skip_lookup_groups.txt
"""
import sys, torch
from mtp import decoding, methods
from mtp.api import chosen_checkpoint, decoding_settings, load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt
torch.set_num_threads(2)
model, tokenizer = load_mtp()
settings = decoding_settings(model, chosen_checkpoint(None, None))
real_policy = methods.policy
MIN = int(sys.argv[1]) if len(sys.argv) > 1 else 1
class SkipOnLookup:
    def __init__(self, inner): self.inner = inner
    name = property(lambda self: self.inner.name)
    drafts_from_leftover_masks = property(lambda self: self.inner.drafts_from_leftover_masks)
    def anchors(self, draft):
        return [] if draft.looked_up and len(draft.tokens) >= MIN else self.inner.anchors(draft)
    def keeps_group(self, end): return self.inner.keeps_group(end)
variants = {"default": real_policy, "skip": lambda m, g=None: SkipOnLookup(real_policy(m, g))}
records = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
domains = {}
for i, record in enumerate(records):
    ids = encode_prompt(tokenizer, record.prompt)
    outs = {}
    for name in variants if i % 2 else reversed(list(variants)):
        decoding.policy = variants[name]
        tr = decoding.generate(model, ids, method=settings.method, k=settings.k, groups=settings.groups,
                               lookup=settings.lookup, max_new_tokens=128, eos_token_ids=[tokenizer.eos_token_id])
        d = domains.setdefault(record.domain, {n: [0.0, 0, 0] for n in variants})
        d[name][0] += tr.seconds; d[name][1] += len(tr.token_ids); d[name][2] += len(tr.steps)
        outs[name] = tr.token_ids
    assert outs["default"] == outs["skip"]
for dom, d in domains.items():
    s = {n: d[n][1] / d[n][0] for n in variants}
    print(dom, {n: f"{s[n]:.1f} tok/s tau {d[n][1]/d[n][2]:.2f}" for n in variants}, f"{s['skip']/s['default']:.3f}x", flush=True)
