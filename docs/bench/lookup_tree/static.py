"""How much more the continuations of older occurrences could add to prompt lookup, read off fixed
outputs (no decoding): for every position of `generate`'s greedy answers to the 48 held-out prompts
(stored in docs/bench/first_probe/heldout_cost_aware/bench.json) where lookup proposes, the tokens
the most recent continuation matches, the best of it and the next distinct one (cut `cap` tokens past
where they part), with the extra tokens that branch adds, and the best of all continuations.

    PYTHONPATH=. python docs/bench/lookup_tree/static.py > docs/bench/lookup_tree/static.txt
"""
import json
import sys
from pathlib import Path

from mtp.data import read_prompts
from mtp.models import encode_prompt, load_model

sys.path.insert(0, str(Path(__file__).parent))
from branches import continuations  # noqa: E402


def matched(draft: list[int], following: list[int]) -> int:
    count = 0
    for drafted, true in zip(draft, following):
        if drafted != true:
            break
        count += 1
    return count


bench = json.load(open("docs/bench/first_probe/heldout_cost_aware/bench.json"))
tokenizer = load_model(None).tokenizer
rows = read_prompts("assets/distilled/smollm2_val_48.jsonl.gz")
for domain in ("math", "code", "chat"):
    positions, recent, best_of_all, best_of_two, extra = 0, 0, 0, {2: 0, 4: 0, 10: 0}, {2: 0, 4: 0, 10: 0}
    for row, prompt in zip(rows, bench["prompts"]):
        if prompt["domain"] != domain:
            continue
        ids, output = encode_prompt(tokenizer, row.prompt), prompt["baseline"]["token_ids"]
        for i in range(len(output)):
            found = continuations(ids + output[:i], 10, 1000)
            if not found:
                continue
            following = output[i:]
            positions += 1
            matches = [matched(branch, following) for branch in found]
            recent += matches[0]
            best_of_all += max(matches)
            shared = matched(found[1], found[0]) if len(found) > 1 else 0
            for cap in best_of_two:
                second = found[1][:shared + cap] if len(found) > 1 else []
                best_of_two[cap] += max(matches[0], matched(second, following))
                extra[cap] += max(len(second) - shared, 0)
    print(f"{domain}: {positions} positions; tokens matched: most recent {recent}, "
          + ", ".join(f"+ next cut at {cap} {best_of_two[cap]} ({extra[cap]} extra tokens fed)" for cap in best_of_two)
          + f", best of all {best_of_all}", flush=True)
