"""Verification policies: which nodes of a draft get a k-mask group in the pass that verifies it.

That one choice is all that separates the methods (docs/design.md §5): the next pass has fresh
drafts from the masks only if the accepted path ends at a node that carried a group. Decoding asks
`anchors`; replaying a pass sequence from match lengths (mtp.acceptance) asks `keeps_group`,
which says the same thing from where the accepted path ended. Quadratic, whose point is drafts for
every next pass, also drafts from the newest group's leftover masks where no group survived
(`drafts_from_leftover_masks`, drafting.LeftoverMasks); linear and autoregressive do as the paper does.
"""

from __future__ import annotations

from typing import NamedTuple

from .drafting import Draft


class PathEnd(NamedTuple):
    """Where an accepted path ended in its draft, as a policy needs to know it."""

    rank: int  # position of the end node (-1: t_0) in draft.group_order()
    main_leaf: bool  # the end node is draft.main_leaf()

    @staticmethod
    def of(draft: Draft, end: int) -> "PathEnd":
        return PathEnd(draft.group_order().index(end), end == draft.main_leaf())

    @staticmethod
    def of_chain(accepted: int, length: int) -> "PathEnd":
        """PathEnd.of(a chain of `length` drafts, its node accepted-1), without building the chain."""
        return PathEnd(accepted, accepted == length)


class Autoregressive:
    """One token per pass, no masks."""

    name = "autoregressive"
    drafts_from_leftover_masks = False

    def anchors(self, draft: Draft) -> list[int]:
        return []

    def keeps_group(self, end: PathEnd) -> bool:
        return False


class Linear:
    """One group, after the last draft (a tree: after its most probable path): it survives only
    when the whole draft is accepted."""

    name = "linear"
    drafts_from_leftover_masks = False

    def anchors(self, draft: Draft) -> list[int]:
        return [draft.main_leaf()]

    def keeps_group(self, end: PathEnd) -> bool:
        return end.main_leaf


class Quadratic:
    """Groups after the first `groups` nodes of draft.group_order() (t_0 and each chain draft in
    the paper's layout, groups = k+1), so some group survives most rejections."""

    name = "quadratic"
    drafts_from_leftover_masks = True

    def __init__(self, groups: int | None = None) -> None:
        self.groups = groups  # None: every node

    def anchors(self, draft: Draft) -> list[int]:
        return draft.group_order()[:self.groups]

    def keeps_group(self, end: PathEnd) -> bool:
        return self.groups is None or end.rank < self.groups


Policy = Autoregressive | Linear | Quadratic


def policy(method: str, groups: int | None = None) -> Policy:
    """The policy of a method name (groups: quadratic only; None = a group after every node)."""
    if method == "quadratic":
        return Quadratic(groups)
    return Linear() if method == "linear" else Autoregressive()
