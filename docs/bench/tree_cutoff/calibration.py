"""How often a tree node is accepted against its score (issue 19): the 48 held-out distilled prompts
(16 math, 16 code, 16 chat), 128 new tokens, shipped checkpoint, quadratic k = 4, 1 group, lookup 10
grafted onto a 32-node tree, not cost-aware. `record` decodes and writes, per pass verifying a masks'
tree, each node the masks proposed (score = the drafter's path probability) and whether it was on the
accepted path; `report` prints acceptance by score rank and score bin, and the mask nodes accepted and
fed per pass for node budgets and score cut-offs read off the same passes (a child never outscores
its parent, so a cut-off keeps a tree and a prefix of each accepted path).

    PYTHONPATH=. python docs/bench/tree_cutoff/calibration.py record /tmp/calibration.jsonl
    python docs/bench/tree_cutoff/calibration.py report /tmp/calibration.jsonl > docs/bench/tree_cutoff/calibration.txt
"""
import collections
import json
import sys

DOMAINS = (("math", range(0, 16)), ("code", range(16, 32)), ("chat", range(32, 48)))
BINS = (1, .5, .3, .2, .1, .05, .03, .02, .01, .005, 0)
POLICIES = ((4, 0), (8, 0), (12, 0), (16, 0), (32, 0), (8, .05), (16, .05), (16, .03), (16, .02), (32, .05),
            (32, .04), (32, .03), (32, .02), (32, .01))


def record(path: str) -> None:
    import torch

    from mtp import decoding
    from mtp.api import load_mtp
    from mtp.data import read_prompts
    from mtp.methods import policy
    from mtp.models import encode_prompt
    sys.path.insert(0, "docs/bench")
    from side_by_side import HELDOUT

    torch.set_num_threads(2)
    model, tokenizer = load_mtp()
    with open(path, "w") as out:
        for i, row in enumerate(read_prompts(HELDOUT)):
            drafter = decoding.default_drafter(model, policy("quadratic", 1, 4), lookup=10, tree_budget=32)
            drafts = []

            class Recorded:
                def propose(self, context, group, sampling):
                    drafts.append(drafter.propose(context, group, sampling))
                    return drafts[-1]
            trace = decoding.generate(model, encode_prompt(tokenizer, row.prompt), method="quadratic", k=4, groups=1,
                                      lookup=10, tree_budget=32, max_new_tokens=128, drafter=Recorded())
            for draft, step in zip(drafts, trace.steps[1:]):
                if draft.scores is None:
                    continue
                on_path = set(step.accepted_path)  # grafted lookup nodes score 0: not the masks'
                nodes = [(score, int(j in on_path)) for j, score in enumerate(draft.scores) if score > 0]
                out.write(json.dumps({"prompt": i, "looked_up": draft.looked_up, "nodes": nodes}) + "\n")


def report(path: str) -> None:
    passes = [json.loads(line) for line in open(path)]
    for domain, prompts in (*DOMAINS, ("all", range(48))):
        chosen = [p for p in passes if p["prompt"] in prompts]
        by_rank, by_bin = collections.defaultdict(lambda: [0, 0]), collections.defaultdict(lambda: [0, 0, 0.0])
        for p in chosen:
            for rank, (score, accepted) in enumerate(sorted(p["nodes"], key=lambda n: -n[0])):
                by_rank[rank][0] += accepted
                by_rank[rank][1] += 1
                low = next(b for b in BINS if score >= b)
                by_bin[low][0] += accepted
                by_bin[low][1] += 1
                by_bin[low][2] += score
        print(f"== {domain}: {len(chosen)} passes verifying a masks' tree")
        print("  accepted share by score rank: " + " ".join(
            f"{rank + 1}:{a / n:.2f}" for rank, (a, n) in sorted(by_rank.items()) if rank < 24))
        print("  score bin: accepted share / mean score / nodes")
        for low in BINS:
            a, n, s = by_bin[low]
            if n:
                print(f"    >= {low:<6} {a / n:.3f} {s / n:.3f} {n}")
        for budget, cut_off in POLICIES:
            accepted = fed = 0
            for p in chosen:
                kept = [n for n in sorted(p["nodes"], key=lambda n: -n[0])[:budget] if n[0] >= cut_off]
                accepted += sum(a for _, a in kept)
                fed += len(kept)
            print(f"  budget {budget:2d} cut-off {cut_off:<5} mask nodes accepted per pass "
                  f"{accepted / len(chosen):.3f}, fed {fed / len(chosen):.2f}")


if __name__ == "__main__":
    {"record": record, "report": report}[sys.argv[1]](sys.argv[2])
