"""How methods.CostAware's constants were chosen: a prototype of it (the same regime probing, wrapped
around the policy from outside), decoded against the default on the 48 held-out distilled prompts,
interleaved per prompt. Argument: INTERVAL,PROBE,WINDOW,FIRST_PROBE; output in choose.txt.

    PYTHONPATH=. python docs/bench/cost_aware_eval/heldout/choose.py 16,6,16,6
"""
import sys, time, collections, torch
from mtp import decoding, methods
from mtp.api import chosen_checkpoint, decoding_settings, load_mtp
from mtp.data import read_prompts
from mtp.models import encode_prompt
torch.set_num_threads(2)
model, tok = load_mtp()
S = decoding_settings(model, chosen_checkpoint(None, None))
INTERVAL, PROBE, WINDOW, FIRST = [int(x) for x in sys.argv[1].split(",")]

class CostAware:
    def __init__(self, inner):
        self.inner = inner; self.name = inner.name; self.drafts_from_leftover_masks = inner.drafts_from_leftover_masks
        self.regime = True; self.since_switch = 0; self.probing = False; self.until_probe = FIRST
        self.stats = {True: collections.deque(maxlen=WINDOW), False: collections.deque(maxlen=WINDOW)}
        self.started = None; self.step = 0; self.switched = True; self.offsteps = 0
    def anchors(self, draft):
        self.started = time.perf_counter(); self.decision = self.regime
        return self.inner.anchors(draft) if self.regime else []
    def keeps_group(self, end): return self.inner.keeps_group(end)
    def rate(self, regime):
        s = self.stats[regime]
        return sum(t for t, _ in s) / sum(x for _, x in s) if s else None
    def observe(self, new_tokens):
        seconds = time.perf_counter() - self.started
        self.step += 1
        if not self.decision: self.offsteps += 1
        if self.step > 1 and not self.switched:
            self.stats[self.decision].append((new_tokens, seconds))
        self.switched = False
        if self.probing:
            self.probe_left -= 1
            if self.probe_left == 0:
                self.probing = False; self.until_probe = INTERVAL
                on, off = self.rate(True), self.rate(False)
                best = self.regime if on is None or off is None else (on >= off)
                if best != self.regime: self.regime = best; self.switched = True
        else:
            self.until_probe -= 1
            if self.until_probe <= 0:
                self.probing = True; self.probe_left = PROBE; self.regime = not self.regime; self.switched = True

def run(ids, aware):
    holder = {}
    real_policy = methods.policy
    def make(method, groups=None):
        p = real_policy(method, groups)
        if aware and "p" not in holder: holder["p"] = p = CostAware(p)
        return p
    decoding.policy = make
    cb = (lambda chunk: holder["p"].observe(len(chunk))) if aware else None
    t = decoding.generate(model, ids, method=S.method, k=S.k, groups=S.groups, lookup=S.lookup, max_new_tokens=128,
                          eos_token_ids=[tok.eos_token_id], on_chunk=cb)
    decoding.policy = real_policy
    return t, holder.get("p")
records = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
by = collections.defaultdict(lambda: {"default": [0, 0.0], "aware": [0, 0.0], "off": 0, "steps": 0, "same": 0, "n": 0})
for i, r in enumerate(records):
    ids = encode_prompt(tok, r.prompt)
    outs = {}
    for aware in ((False, True) if i % 2 else (True, False)):
        t, p = run(ids, aware)
        key = "aware" if aware else "default"
        by[r.domain][key][0] += len(t.token_ids); by[r.domain][key][1] += t.seconds; outs[aware] = t.token_ids
        if aware: by[r.domain]["off"] += p.offsteps; by[r.domain]["steps"] += p.step
    by[r.domain]["same"] += outs[True] == outs[False]; by[r.domain]["n"] += 1
for d, v in by.items():
    a = v["aware"][0] / v["aware"][1]; b = v["default"][0] / v["default"][1]
    print(f"{sys.argv[1]} {d}: default {b:.1f} aware {a:.1f} tok/s = {a/b:.3f}x, masks off in {v['off']}/{v['steps']} steps, identical {v['same']}/{v['n']}", flush=True)
