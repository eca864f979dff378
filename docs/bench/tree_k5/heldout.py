"""More masks under the tree (issue 19's code figure): held-out distilled prompts (16 math, 16 code,
16 chat), 128 new tokens, shipped checkpoint (k = 8 trained), quadratic, 1 group, lookup 10; the
previous default (chain, k = 4, not cost-aware) and 8- or 10-node trees from groups of 4, 5 or 6
masks, cost-aware like the default; per prompt all runs in alternating order in one process;
outputs must be identical.

    PYTHONPATH=. python docs/bench/tree_k5/heldout.py > docs/bench/tree_k5/heldout_round1.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from side_by_side import report_k_budget  # noqa: E402

VARIANTS = {  # name -> (k, tree budget, cost-aware)
    "chain k=4": (4, 0, False), "tree 8, k=4 (default)": (4, 8, True), "tree 8, k=5": (5, 8, True),
    "tree 8, k=6": (6, 8, True), "tree 10, k=5": (5, 10, True),
}
report_k_budget(VARIANTS, fed=True)
