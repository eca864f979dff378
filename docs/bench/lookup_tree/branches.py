"""The continuations of a context's last n-gram's earlier occurrences (shared by heldout.py and static.py)."""
from typing import Sequence

from mtp.drafting import LOOKUP_NGRAMS


def continuations(context: Sequence[int], max_drafts: int, branches: int) -> list[list[int]]:
    """Up to `branches` distinct continuations of the context's last n-gram's earlier occurrences,
    most recent first (the first is drafting.lookup_drafts')."""
    for n in LOOKUP_NGRAMS:
        if len(context) <= n:
            continue
        tail, found = list(context[-n:]), []
        for start in range(len(context) - n - 1, -1, -1):
            if list(context[start:start + n]) == tail:
                following = list(context[start + n:start + n + max_drafts])
                if following and following not in found:
                    found.append(following)
                    if len(found) == branches:
                        break
        if found:
            return found
    return []
