"""Verification policies: which nodes of a draft get a k-mask group in the pass that verifies it.

That one choice is all that separates the methods (docs/design.md §5): the next pass has fresh
drafts from the masks only if the accepted path ends at a node that carried a group, and drafts
from a group's leftover masks if the path ran through such a node and on past it. Decoding asks
`anchors`; replaying a pass sequence from match lengths (mtp.acceptance) asks `group_behind`,
which says the same thing from the accepted path. Quadratic, whose point is drafts for every next
pass, also drafts from the newest group's leftover masks (`drafts_from_leftover_masks`,
drafting.LeftoverMasks); linear and autoregressive do as the paper does.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .drafting import Draft


class PathEnd(NamedTuple):
    """The accepted path in its draft, as a policy needs to know it."""

    ranks: tuple[int, ...]  # position in draft.group_order(k) of t_0 and of each accepted node, root first
    main_leaf: bool  # the path ends at draft.main_leaf()

    @staticmethod
    def of(draft: Draft, path: list[int], k: int) -> "PathEnd":
        rank = {node: r for r, node in enumerate(draft.group_order(k))}
        return PathEnd(tuple(rank[node] for node in [-1, *path]), (path[-1] if path else -1) == draft.main_leaf())

    @staticmethod
    def of_chain(accepted: int, length: int) -> "PathEnd":
        """PathEnd.of(a chain of `length` drafts, its first `accepted`), without building the chain."""
        return PathEnd(tuple(range(accepted + 1)), accepted == length)


class Autoregressive:
    """One token per pass, no masks."""

    name = "autoregressive"
    drafts_from_leftover_masks = False

    def anchors(self, draft: Draft) -> list[int]:
        return []

    def group_behind(self, end: PathEnd) -> int | None:
        """Accepted tokens past the bonus of the group of the deepest accepted node (t_0 included)
        that carried one (0: the path ended there; its masks guess from the next token on), or None
        when no node of the path carried a group."""
        return None


class Linear:
    """One group, after the last draft (a tree: after its most probable path): it survives only
    when the whole draft is accepted."""

    name = "linear"
    drafts_from_leftover_masks = False

    def anchors(self, draft: Draft) -> list[int]:
        return [draft.main_leaf()]

    def group_behind(self, end: PathEnd) -> int | None:
        return 0 if end.main_leaf else None  # a leaf: no path runs on past it


class Quadratic:
    """Groups of k masks after the first `groups` nodes of draft.group_order(k) (t_0 and each chain
    draft in the paper's layout, groups = k+1), so some group survives most rejections."""

    name = "quadratic"
    drafts_from_leftover_masks = True

    def __init__(self, groups: int | None, k: int) -> None:
        self.groups, self.k = groups, k  # groups None: every node

    def anchors(self, draft: Draft) -> list[int]:
        return draft.group_order(self.k)[:self.groups]

    def group_behind(self, end: PathEnd) -> int | None:
        anchored = [depth for depth, rank in enumerate(end.ranks) if self.groups is None or rank < self.groups]
        return len(end.ranks) - 1 - anchored[-1] if anchored else None


Policy = Autoregressive | Linear | Quadratic


class CostAware:
    """A policy's mask groups only while they pay on this machine (docs/design.md §8).

    A mask group adds rows and the gated LoRA to every pass; where its drafts are rarely accepted a
    pass without it (t_0 and any prompt-lookup or leftover-mask drafts, as transformers' prompt
    lookup feeds) produces more tokens per second, and how much more depends on the CPU: on an Intel
    Xeon a one-row pass cost 35 ms and one with a 4-mask group 60 ms (docs/bench/cheaper_passes_eval).
    So two regimes: "on" (the wrapped policy's groups) and "off" (none). After FIRST_PROBE passes the
    other regime runs for PROBE passes; then decoding keeps whichever produced more tokens per second
    over its last WINDOW measured passes, and probes again after INTERVAL passes — twice as long after
    each probe that kept the regime (up to MAX_INTERVAL), INTERVAL again after one that switched.
    A regime's first pass is not measured: its tokens came from the previous regime's drafts. In
    both regimes a pass verifying prompt-lookup drafts carries no group: the text is being copied,
    so the next pass most often drafts by lookup again and the group's drafts would go unused.
    Drafts are proposals only: the output never depends on the choice.
    """

    # Passes; chosen on held-out prompts (§8). FIRST_PROBE re-chosen with the draft tree: a 128-token
    # answer takes ~50 passes, and a probe after 6 cost code where masks win (12: +2-3 % code tokens/s).
    INTERVAL, PROBE, WINDOW, FIRST_PROBE, MAX_INTERVAL = 16, 6, 16, 12, 64

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.masks_on = True
        self.fed_masks = True  # the regime of the pass being verified
        self.measured: dict[bool, deque[tuple[int, float]]] = {True: deque(maxlen=self.WINDOW),
                                                              False: deque(maxlen=self.WINDOW)}
        self.interval = self.INTERVAL
        self.until_probe, self.probe_left = self.FIRST_PROBE, 0
        self.unmeasured = True  # the prefill pass, then each regime's first pass

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def drafts_from_leftover_masks(self) -> bool:
        return self.inner.drafts_from_leftover_masks

    def anchors(self, draft: Draft) -> list[int]:
        self.fed_masks = self.masks_on
        return self.inner.anchors(draft) if self.masks_on and not draft.looked_up else []

    def group_behind(self, end: PathEnd) -> int | None:
        return self.inner.group_behind(end)

    def tokens_per_second(self, masks_on: bool) -> float | None:
        measured = self.measured[masks_on]
        seconds = sum(s for _, s in measured)
        return sum(n for n, _ in measured) / seconds if seconds > 0 else None

    def observe(self, new_tokens: int, seconds: float) -> None:
        """What the pass `anchors` was last asked for produced, and its wall time with drafting."""
        if not self.unmeasured:
            self.measured[self.fed_masks].append((new_tokens, seconds))
        self.unmeasured = False
        if self.probe_left:
            self.probe_left -= 1
            if not self.probe_left:
                probed = self.masks_on
                on, off = self.tokens_per_second(True), self.tokens_per_second(False)
                self._set(probed if on is None or off is None else on >= off)
                self.interval = self.INTERVAL if self.masks_on == probed else min(2 * self.interval, self.MAX_INTERVAL)
                self.until_probe = self.interval
            return
        self.until_probe -= 1
        if self.until_probe <= 0:
            self.probe_left = self.PROBE
            self._set(not self.masks_on)

    def _set(self, masks_on: bool) -> None:
        if masks_on != self.masks_on:
            self.masks_on, self.unmeasured = masks_on, True


def policy(method: str, groups: int | None, k: int) -> Policy:
    """The policy of a method name (groups of k masks: quadratic only; groups None = a group after every node)."""
    if method == "quadratic":
        return Quadratic(groups, k)
    return Linear() if method == "linear" else Autoregressive()
