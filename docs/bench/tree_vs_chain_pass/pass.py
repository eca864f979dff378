"""Does a draft tree cost a pass more than a chain of as many tokens? `decoding.verify` on a 300-token
cached context (shipped checkpoint, 2 threads), t_0 + 8 drafts + one 4-mask group after t_0 (13 rows),
3 drafts accepted in both: a chain (accepted prefix: the cache is cropped) and a tree (accepted nodes
0, 2, 4: the cache gathers them); median of 30 verify calls, three rounds alternating, and the median
of verify's keep_in_cache calls of each kind; then how often the default's accepted tree paths need
the gather, over the 16 held-out code prompts.

    PYTHONPATH=. python docs/bench/tree_vs_chain_pass/pass.py > docs/bench/tree_vs_chain_pass/pass.txt
"""
import sys
import time
from pathlib import Path

import torch

import mtp.decoding
from mtp.data import read_prompts
from mtp.decoding import generate, verify
from mtp.drafting import Draft
from mtp.kv_cache import decoding_cache, keep_in_cache
from mtp.models import encode_prompt
from mtp.sampling import Sampling

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import DOMAINS, HELDOUT, load_default  # noqa: E402

model, tokenizer, base = load_default()
cache_seconds: dict[str, list[float]] = {"crop": [], "gather": []}


def timed_keep_in_cache(cache, start: int, keep: list[int]) -> None:
    begin = time.perf_counter()
    keep_in_cache(cache, start, keep)
    kind = "crop" if list(keep) == list(range(start, start + len(keep))) else "gather"
    cache_seconds[kind].append(time.perf_counter() - begin)


greedy = Sampling(0.0, None, None, None, torch.device("cpu"))
context = tokenizer('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n' * 30)["input_ids"][:300]

with torch.inference_mode():
    cache = decoding_cache(model.base.config)
    out = model(torch.tensor([context]), torch.arange(300)[None], past_key_values=cache, use_cache=True,
                logits_for=torch.tensor([299]))
    t0 = int(out.logits[0, -1].argmax())
    # The model's own next three tokens after t_0, so both drafts get exactly three accepted.
    follow = generate(model, context + [t0], method="autoregressive", max_new_tokens=3).token_ids
    wrong = [(token + 7) % 49000 for token in follow] + [11, 12, 13, 14, 15]
    chain = Draft.chain(follow + wrong[3:8])
    tree = Draft([follow[0], wrong[0], follow[1], wrong[1], follow[2], wrong[2], wrong[3], wrong[4]],
                 [-1, -1, 0, 0, 2, 2, 4, 1], None, [0.6, 0.3, 0.5, 0.1, 0.4, 0.05, 0.2, 0.02])

    def median_ms(draft: Draft, calls: int = 30) -> tuple[float, list[int]]:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            verified = verify(model, cache, 300, [t0] + draft.tokens, draft, [-1], 4, greedy)
            times.append(time.perf_counter() - start)
            keep_in_cache(cache, 300, [])
        return sorted(times)[calls // 2] * 1e3, verified.path

    mtp.decoding.keep_in_cache = timed_keep_in_cache  # verify's calls only
    for round_ in range(3):
        for name, draft in (("chain", chain), ("tree", tree)):
            ms, path = median_ms(draft)
            print(f"round {round_ + 1}: {name} of 8 + a 4-mask group: {ms:.1f} ms, accepted nodes {path}", flush=True)
    mtp.decoding.keep_in_cache = keep_in_cache
for kind, seconds in cache_seconds.items():
    print(f"verify's keep_in_cache, {kind}: median {sorted(seconds)[len(seconds) // 2] * 1e3:.2f} ms of {len(seconds)} calls")

passes = gathered = 0
for row in read_prompts(HELDOUT)[dict(DOMAINS)["code"]]:
    trace = generate(model, encode_prompt(tokenizer, row.prompt), tree_budget=8, cost_aware=True, **base)
    for step in trace.steps:
        if step.parents:
            passes += 1
            gathered += step.path != list(range(len(step.path)))
print(f"default on the 16 held-out code prompts: {passes} tree passes, {gathered} of them gather their accepted path")
