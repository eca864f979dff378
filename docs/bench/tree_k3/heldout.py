"""Fewer masks under the tree (issue 19): the 48 held-out distilled prompts (16 math, 16 code, 16 chat),
128 new tokens, shipped checkpoint, quadratic, 1 group, lookup 10, cost-aware; k (masks per group)
and the tree budget varied, against the previous default (chain k = 4, 1 group + lookup, not
cost-aware). Per prompt all runs in alternating order in one process; outputs must be identical.

    PYTHONPATH=. python docs/bench/tree_k3/heldout.py > docs/bench/tree_k3/heldout.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import report_k_budget  # noqa: E402

VARIANTS = {  # name -> (k, tree budget, cost-aware)
    "chain k4": (4, 0, False), "tree8 k4 (default)": (4, 8, True), "tree6 k3": (3, 6, True),
    "tree8 k3": (3, 8, True), "tree10 k3": (3, 10, True),
}
report_k_budget(VARIANTS)
