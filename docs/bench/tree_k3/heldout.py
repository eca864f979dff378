"""Fewer masks under the tree (issue 19): the 48 held-out distilled prompts (16 math, 16 code, 16 chat),
128 new tokens, shipped checkpoint, quadratic, 1 group, lookup 10, cost-aware; k (masks per group)
and the tree budget varied, against the previous default (chain k = 4, 1 group + lookup, not
cost-aware). Per prompt all runs in alternating order in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/tree_k3/heldout.py > docs/bench/tree_k3/heldout.txt
"""
import sys
from pathlib import Path

import torch

from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.decoding import generate
from mtp.models import encode_prompt
from mtp.trace import Trace

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import HELDOUT, Tally, report  # noqa: E402

VARIANTS = {  # name -> (k, tree budget, cost-aware)
    "chain k4": (4, 0, False), "tree8 k4 (default)": (4, 8, True), "tree6 k3": (3, 6, True),
    "tree8 k3": (3, 8, True), "tree10 k3": (3, 10, True),
}
names = list(VARIANTS)
torch.set_num_threads(2)
model, tokenizer = load_mtp()
base = dict(method="quadratic", groups=1, lookup=10, max_new_tokens=128, eos_token_ids=[tokenizer.eos_token_id])
generate(model, encode_prompt(tokenizer, read_prompts(HELDOUT)[0].prompt), k=4, tree_budget=8, **base)  # warm-up


def decode(name: str, ids: list[int]) -> Trace:
    k, budget, cost_aware = VARIANTS[name]
    return generate(model, ids, k=k, tree_budget=budget, cost_aware=cost_aware, **base)


def entry(name: str, tallies: dict[str, Tally]) -> str:
    tally = tallies[name]
    return f"{name} {tally.speed:.2f} ({tally.speed / tallies[names[0]].speed:.3f}x) tau {tally.tau:.2f}"


report(names, decode, tokenizer, entry)
