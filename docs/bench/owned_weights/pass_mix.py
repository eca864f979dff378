"""Where decoding time goes by kind of pass: the 16 held-out distilled code prompts, 128 new tokens,
shipped checkpoint, 2 threads; the default (k = 4, 1 group, tree 8 + lookup 10, cost-aware) and the
previous default (chain + lookup 10, not cost-aware), one after the other. `mapped`: the base
weights left in the memory-mapped file (as before own_cpu_tensors); `owned`: as load_model keeps them.
Model and options from side_by_side.load_default, which also decodes one warm-up prompt first (the
committed output was printed before the script used it, without that warm-up).

    PYTHONPATH=. python docs/bench/owned_weights/pass_mix.py owned > docs/bench/owned_weights/pass_mix_owned.txt
"""
import collections
import sys

import mtp.models as models

if sys.argv[1] == "mapped":
    models.own_cpu_tensors = lambda model: None
from mtp.data import read_prompts  # noqa: E402
from mtp.decoding import generate  # noqa: E402
from mtp.models import encode_prompt  # noqa: E402

sys.path.insert(0, "docs/bench")
from side_by_side import HELDOUT, load_default  # noqa: E402

model, tokenizer, base = load_default()
for name, options in (("default", dict(tree_budget=8, cost_aware=True)), ("previous default", {})):
    kinds = collections.defaultdict(lambda: [0, 0, 0.0, 0])  # passes, new tokens, seconds, tokens fed
    for row in read_prompts(HELDOUT)[16:32]:
        trace = generate(model, encode_prompt(tokenizer, row.prompt), **base, **options)
        for step in trace.steps[1:]:  # after the prefill
            group = step.input_length > 1 + len(step.drafts)
            kind = "lookup" if step.looked_up else "tree" if step.parents else "chain" if step.drafts else "no drafts"
            tally = kinds[(kind, group)]
            for i, value in enumerate((1, step.new_tokens, step.seconds, step.input_length)):
                tally[i] += value
    passes, tokens, seconds = (sum(t[i] for t in kinds.values()) for i in range(3))
    print(f"== {name}: {passes} passes, {tokens} tokens, {seconds:.1f} s, {tokens / seconds:.2f} tokens/s")
    for (kind, group), (n, new, s, fed) in sorted(kinds.items()):
        print(f"  {kind:9s} {'+ group' if group else 'no group'}: {n:4d} passes ({n / passes:.0%}), "
              f"{new / n:.2f} tokens, {s / n * 1e3:.1f} ms, {fed / n:.1f} fed a pass; {s / seconds:.0%} of the time")
