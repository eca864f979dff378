"""A/B on the 48 held-out prompts: the shipped default, CostAware as it was at commit 39e384c ("ca"), and a
prototype subclass with probe backoff + no group on lookup passes ("ca2", what CostAware became in c9d258d).
Run at 39e384c (at c9d258d "ca" is already "ca2"):

    PYTHONPATH=. python docs/bench/cost_aware_defaults/heldout/backoff.py > backoff.txt
    PYTHONPATH=. python docs/bench/cost_aware_defaults/heldout/backoff.py code > backoff_code_rerun.txt
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
class Backoff(Real):
    def __init__(self, inner):
        super().__init__(inner); self.interval = self.INTERVAL
    def anchors(self, draft):
        anchors = super().anchors(draft)
        return [] if draft.looked_up else anchors
    def observe(self, new_tokens, seconds):
        if not self.unmeasured:
            self.measured[self.fed_masks].append((new_tokens, seconds))
        self.unmeasured = False
        if self.probe_left:
            self.probe_left -= 1
            if not self.probe_left:
                on, off = self.tokens_per_second(True), self.tokens_per_second(False)
                before = self.masks_on
                self._set(self.masks_on if on is None or off is None else on >= off)
                # the probe ran the other regime: masks_on before _set is the probed one
                kept = self.masks_on != before  # switched back to the pre-probe regime
                self.interval = min(self.interval * 2, 64) if kept else self.INTERVAL
                self.until_probe = self.interval
            return
        self.until_probe -= 1
        if self.until_probe <= 0:
            self.probe_left = self.PROBE
            self._set(not self.masks_on)
variants = {"default": None, "ca": Real, "ca2": Backoff}
records = [r for r in read_prompts("assets/distilled/smollm2_val_48.jsonl.gz") if r.domain in sys.argv[1:] or len(sys.argv) == 1]
domains = {}
for i, record in enumerate(records):
    ids = encode_prompt(tokenizer, record.prompt)
    outs = {}
    order = list(variants)
    order = order[i % 3:] + order[:i % 3]
    for name in order:
        if variants[name] is not None:
            decoding.CostAware = variants[name]
        tr = decoding.generate(model, ids, method=settings.method, k=settings.k, groups=settings.groups,
                               cost_aware=variants[name] is not None,
                               lookup=settings.lookup, max_new_tokens=128, eos_token_ids=[tokenizer.eos_token_id])
        d = domains.setdefault(record.domain, {n: [0.0, 0, 0] for n in variants})
        d[name][0] += tr.seconds; d[name][1] += len(tr.token_ids); d[name][2] += len(tr.steps)
        outs[name] = tr.token_ids
    assert len(set(map(tuple, outs.values()))) == 1
for dom, d in domains.items():
    s = {n: d[n][1] / d[n][0] for n in variants}
    print(dom, {n: f"{s[n]:.1f} tok/s tau {d[n][1]/d[n][2]:.2f}" for n in variants},
          f"ca {s['ca']/s['default']:.3f}x ca2 {s['ca2']/s['default']:.3f}x", flush=True)
