"""Where drafts come from: the masks' chain, the masks' tree, prompt lookup (docs/design.md §5, §7).

A drafter turns what the last pass left (the context so far and, if the pass fed one after the
accepted path, that mask group's hidden states and logits) into the Draft the next pass verifies.
Drafts are only proposals: whatever they hold, verification keeps the output exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Sequence

import torch

from .adapter import MTPModel
from .datastore import Datastore
from .layouts import chain_parents, tree_positions
from .sampling import Sampling


MASKS, LOOKUP, DATASTORE = "masks", "prompt lookup", "datastore"  # where drafts come from (Draft.sources)


class MaskGroup(NamedTuple):
    """A k-mask group on the accepted path: it guesses the k tokens after `bonus`."""

    hidden: torch.Tensor  # (k, d) final hidden states of the masks
    logits: torch.Tensor  # (k, V) their lm_head logits
    bonus: int  # the token the group's anchor predicted
    # Accepted tokens already verified after `bonus` (the path ran on past the group's node): its
    # first `behind` masks guessed known tokens, and only LeftoverMasks drafts from the rest.
    behind: int = 0


@dataclass
class Draft:
    """Tokens for the next pass to verify, as a tree rooted at t_0 (a chain is a tree of width 1).

    parents[i]: index of the node tokens[i] follows, -1 for t_0 (the newest verified token).
    Nodes come parents first. probs: under sampling, the proposal q each chain token was drawn from
    (None: the tokens are a deterministic proposal, verified as one-hot q). scores: the drafter's
    probability of reaching each node (trees only): which nodes get mask groups depends on it.
    sources: the drafters its tokens came from (MASKS, LOOKUP, DATASTORE), for traces and the demo.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: torch.Tensor | None = None
    scores: list[float] | None = None
    sources: tuple[str, ...] = ()

    @staticmethod
    def chain(tokens: Sequence[int], probs: torch.Tensor | None = None, source: str = MASKS) -> "Draft":
        return Draft(list(tokens), chain_parents(len(tokens)), probs, None, (source,) if tokens else ())

    @property
    def looked_up(self) -> bool:
        """It holds prompt-lookup drafts (a pass verifying them carries no mask group, methods.CostAware)."""
        return LOOKUP in self.sources

    @property
    def is_chain(self) -> bool:
        return all(parent == i - 1 for i, parent in enumerate(self.parents))

    def children(self) -> dict[int, list[int]]:
        """Node -> its children in order (-1: t_0's)."""
        children: dict[int, list[int]] = {-1: []}
        for i, parent in enumerate(self.parents):
            children.setdefault(i, [])
            children[parent].append(i)
        return children

    def depths(self) -> list[int]:
        """Depth of each node: 1 for t_0's children."""
        return [depth + 1 for depth in tree_positions(self.parents)]

    def follow(self, tokens: Sequence[int]) -> list[int]:
        """The nodes of the path that spells a prefix of `tokens` from t_0 (greedy acceptance against them)."""
        children, node, path = self.children(), -1, []
        for token in tokens:
            node = next((c for c in children[node] if self.tokens[c] == token), None)
            if node is None:
                break
            path.append(node)
        return path

    def grafted(self, tokens: Sequence[int], source: str = LOOKUP) -> "Draft":
        """This tree with the chain `tokens` added from t_0, sharing the nodes it already has (a trie:
        siblings stay distinct tokens, as tree verification needs). Its new nodes score 0: the drafter
        did not propose them, so they never come before its own nodes for mask groups (a draft without
        scores, a chain, counts as scored 0 too). Deterministic drafts only (probs None): under
        sampling, siblings are verified by recursive rejection. source: the drafter `tokens` came from."""
        if self.probs is not None:
            raise ValueError("drafts graft only onto a deterministic draft")
        scores = list(self.scores) if self.scores is not None else [0.0] * len(self.tokens)
        sources = self.sources + (source,) * (source not in self.sources)
        grown = Draft(list(self.tokens), list(self.parents), None, scores, sources)
        children, node = self.children(), -1
        for token in tokens:
            node_children = children.setdefault(node, [])
            child = next((c for c in node_children if grown.tokens[c] == token), None)
            if child is None:
                child = len(grown.tokens)
                grown.tokens.append(token)
                grown.parents.append(node)
                grown.scores.append(0.0)
                node_children.append(child)
            node = child
        return grown

    def main_leaf(self) -> int:
        """The last node of the most probable path (a chain: its last token; -1 when empty)."""
        if self.is_chain:
            return len(self.tokens) - 1
        children, node = self.children(), -1
        while children[node]:
            node = max(children[node], key=lambda c: self.scores[c])
        return node

    def group_order(self, k: int) -> list[int]:
        """Nodes (-1: t_0) in the order they get k-mask groups as the number of groups grows.

        A chain: t_0 then its drafts in order, the paper's quadratic layout. A tree: by the masks a
        group there is expected to leave the next pass. A group after node X serves the next pass
        whenever the accepted path runs through X: if it ends at E, X's group has k - (depth(E) -
        depth(X)) masks left past it (drafting.LeftoverMasks). So X's value sums, over the ends E at or
        below X, the drafter's probability that the path ends at E (E's probability of being reached
        less its children's) times those masks left (docs/design.md §7)."""
        if self.is_chain:
            return list(range(-1, len(self.tokens)))
        ends = {-1: 1.0}
        ends.update({i: score for i, score in enumerate(self.scores)})
        for i, parent in enumerate(self.parents):
            ends[parent] -= self.scores[i]
        depths = {-1: 0, **dict(enumerate(self.depths()))}
        value = dict.fromkeys(ends, 0.0)
        for end, probability in ends.items():
            node = end
            while depths[end] - depths[node] < k:  # X = each ancestor of E, E included, with masks left
                value[node] += probability * (k - (depths[end] - depths[node]))
                if node < 0:
                    break
                node = self.parents[node]
        return sorted(value, key=lambda node: (-value[node], node))


class Drafter(Protocol):
    """Anything that proposes the next pass's draft."""

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        """context: prompt + output so far; group: the mask group of the accepted path's deepest node
        that carried one, if any (group.behind > 0: the path ran on past that node)."""
        ...


# The sampler scores only the top candidates of each mask's own lm_head row: one batched lm_head
# read for all k masks instead of k serial ones. Drafts are only proposals, so exactness holds.
DRAFT_CANDIDATES = 64


def draft_candidates(mask_logits: torch.Tensor) -> torch.Tensor:
    """(n, V) lm_head logits of masks -> (n, C) token ids the sampler scores for each."""
    return mask_logits.topk(min(DRAFT_CANDIDATES, mask_logits.shape[-1]), dim=-1).indices


def candidate_logits(model: MTPModel, mask_hidden: torch.Tensor, prev_ids: torch.Tensor, candidates: torch.Tensor,
                     vocab_size: int) -> torch.Tensor:
    """(n, V) the sampler's logits over each row's candidates given the token before it, -inf elsewhere:
    the distribution the masks' drafts are drawn from (and what the demo's heatmap shows)."""
    scores = model.sampler_logits(mask_hidden, prev_ids, candidates)
    return scores.new_full((scores.shape[0], vocab_size), float("-inf")).scatter_(1, candidates, scores)


def greedy_sampler_drafts(model: MTPModel, mask_hidden: torch.Tensor, candidates: torch.Tensor,
                          prev_ids: torch.Tensor) -> torch.Tensor:
    """(n,) the sampler's greedy pick among each row's candidates, given the token before each."""
    scores = model.sampler_logits(mask_hidden, prev_ids, candidates)
    return candidates.gather(1, scores.argmax(-1, keepdim=True)).squeeze(1)


class MaskChain:
    """k drafts from one mask group: the sampler chain (draft_1 sees E(bonus), draft_i
    E(draft_{i-1})) or, without the sampler, lm_head at each mask. Sampled when T > 0."""

    def __init__(self, model: MTPModel, use_sampler: bool = True) -> None:
        self.model, self.use_sampler = model, use_sampler and model.sampler is not None

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        if group is None or group.behind:
            return Draft()
        if not self.use_sampler:
            if sampling.greedy:
                return Draft.chain(group.logits.argmax(-1).tolist())
            q = sampling.probs(group.logits)
            return Draft.chain([sampling.draw(row) for row in q], q)
        candidates = draft_candidates(group.logits)
        drafts, qs, prev = [], [], group.bonus
        prev_ids = torch.empty(1, dtype=torch.long, device=group.hidden.device)
        for i, row in enumerate(group.hidden):
            if sampling.greedy:
                prev = int(greedy_sampler_drafts(self.model, row[None], candidates[i:i + 1], prev_ids.fill_(prev))[0])
            else:
                # q is the sampler's distribution restricted to the candidates: zero elsewhere.
                restricted = candidate_logits(self.model, row[None], prev_ids.fill_(prev), candidates[i:i + 1],
                                              group.logits.shape[-1])[0]
                qs.append(sampling.probs(restricted))
                prev = sampling.draw(qs[-1])
            drafts.append(prev)
        return Draft.chain(drafts, torch.stack(qs) if qs else None)


# Each depth expands this many of its most probable nodes, each into this many children, before
# the whole tree is cut to the node budget (EAGLE-2's expand-then-rerank; docs/design.md §7).
TREE_WIDTH = 8


class _GrowingTree:
    """One tree while mask_trees grows it: the nodes kept so far, parents first."""

    def __init__(self, bonus: int) -> None:
        self.bonus = bonus
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.scores: list[float] = []
        self.depths: list[int] = []
        self.frontier = [-1]  # the newest depth's nodes, most probable first; -1 is t_0 (the bonus, score 1)

    def token_of(self, node: int) -> int:
        return self.bonus if node < 0 else self.tokens[node]

    def score_of(self, node: int) -> float:
        return 1.0 if node < 0 else self.scores[node]

    def add(self, token: int, parent: int, score: float, depth: int) -> None:
        self.frontier.append(len(self.tokens))
        self.tokens.append(token)
        self.parents.append(parent)
        self.scores.append(score)
        self.depths.append(depth)

    def expandable(self, budget: int, width: int) -> list[int]:
        """The frontier nodes worth expanding: at most `width`, and only those whose children could
        still make the cut — a child scores at most its parent and loses ties to every node kept so
        far (all shallower), so a parent no better than the `budget`-th best score has none that could."""
        if len(self.scores) < budget:
            return self.frontier[:width]
        bar = sorted(self.scores, reverse=True)[budget - 1]
        return [node for node in self.frontier[:width] if self.score_of(node) > bar]

    def cut(self, budget: int) -> Draft:
        """The `budget` most probable nodes. A child never outscores its parent, and ties go to the
        shallower node: the kept set is a tree."""
        kept = sorted(range(len(self.tokens)), key=lambda i: (-self.scores[i], self.depths[i]))[:budget]
        kept.sort(key=lambda i: (self.depths[i], -self.scores[i]))
        new_index = {old: new for new, old in enumerate(kept)}
        return Draft([self.tokens[i] for i in kept], [new_index.get(self.parents[i], -1) for i in kept], None,
                     [self.scores[i] for i in kept], (MASKS,) if kept else ())


def mask_trees(model: MTPModel, groups: Sequence[MaskGroup], budget: int, width: int = TREE_WIDTH,
               use_sampler: bool = True) -> list[Draft]:
    """Each group's `budget` most probable nodes of the masks' draft tree (deterministic, parents first).

    Depth i's candidates are mask i's lm_head top-C, scored by the sampler given the parent's
    token; a node's score is the product of its path's draft probabilities. Width 1 and budget k
    is the greedy sampler chain. Several groups (of any sizes) share one sampler call per depth.
    A node's descendants score no more than it, so each depth keeps only its `budget` most probable
    new nodes and expands only nodes whose children could make the cut (_GrowingTree.expandable):
    the same tree for fewer sampler rows."""
    candidates = [draft_candidates(group.logits) for group in groups]
    sampler = use_sampler and model.sampler is not None
    trees = [_GrowingTree(group.bonus) for group in groups]
    expand = min(width, budget)
    for depth in range(max((len(group.hidden) for group in groups), default=0)):
        active = []
        for i, (tree, group) in enumerate(zip(trees, groups)):
            parents = tree.expandable(budget, expand) if depth < len(group.hidden) else []
            tree.frontier = []  # refilled with this depth's nodes
            if parents:
                active.append((i, parents))
        if not active:
            break
        if sampler:
            hidden = torch.cat([groups[i].hidden[depth].expand(len(parents), -1) for i, parents in active])
            prev = torch.tensor([trees[i].token_of(node) for i, parents in active for node in parents],
                                device=hidden.device)
            heads = model.sampler_head(hidden, prev).split([len(parents) for _, parents in active])
            logits = [model.lm_logits_at(head, candidates[i][depth]) for (i, _), head in zip(active, heads)]
        else:  # lm_head at the mask: the same for every parent
            logits = [groups[i].logits[depth, candidates[i][depth]].expand(len(parents), -1) for i, parents in active]
        for (i, parents), row_logits in zip(active, logits):
            tree = trees[i]
            top_probs, top_index = torch.softmax(row_logits.float(), dim=-1).topk(min(expand, row_logits.shape[1]),
                                                                                 dim=-1)
            parent_scores = torch.tensor([tree.score_of(node) for node in parents], dtype=torch.float64)
            scores = (parent_scores[:, None] * top_probs.double()).flatten()
            best_scores, best = scores.topk(min(budget, len(scores)))  # most probable first
            columns = top_index.flatten()[best]
            tokens = candidates[i][depth][columns].tolist()
            for token, index, score in zip(tokens, best.tolist(), best_scores.tolist()):
                tree.add(token, parents[index // top_index.shape[1]], score, depth + 1)
    return [tree.cut(budget) for tree in trees]


def mask_tree(model: MTPModel, group: MaskGroup, budget: int, width: int = TREE_WIDTH,
              use_sampler: bool = True) -> Draft:
    """The masks' draft tree of one group (mask_trees)."""
    return mask_trees(model, [group], budget, width, use_sampler)[0]


class MaskTree:
    """Drafts a tree of at most `budget` nodes from the mask group (trees are deterministic
    proposals: under sampling, siblings are verified by recursive rejection)."""

    def __init__(self, model: MTPModel, budget: int, width: int = TREE_WIDTH, use_sampler: bool = True) -> None:
        self.model, self.budget, self.width, self.use_sampler = model, budget, width, use_sampler

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        if group is None or group.behind:
            return Draft()
        return mask_tree(self.model, group, self.budget, self.width, self.use_sampler)


class LeftoverMasks:
    """Where the accepted path ended past the newest group's node (a node without a group, or deeper
    than the group's), that group's masks past the tokens verified since still guess what comes
    next: `drafter` drafts from those (k - shift of them) instead of the pass going draftless
    (docs/design.md §5)."""

    def __init__(self, drafter: Drafter) -> None:
        self.drafter = drafter
        self.newest: tuple[MaskGroup, int] | None = None  # the newest group, and the context length at its bonus

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        if group is not None:
            self.newest = (group, len(context) - group.behind)
        if (group is None or group.behind) and self.newest is not None:
            newest, fed_at = self.newest
            shift = len(context) - fed_at  # tokens verified since its bonus; its mask `shift` guesses the next
            group = None
            if shift < len(newest.hidden):
                group = MaskGroup(newest.hidden[shift:], newest.logits[shift:], context[-1])
        return self.drafter.propose(context, group, sampling)


class DatastoreDrafts:
    """Datastore drafts (mtp.datastore: what the model wrote after the same few tokens before) join
    whatever `drafter` proposes as one more branch, or are the draft where it has none. A sampled
    chain (probs set) is verified as it is: a deterministic branch cannot join it."""

    def __init__(self, datastore: Datastore, drafter: Drafter) -> None:
        self.datastore, self.drafter = datastore, drafter

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        draft = self.drafter.propose(context, group, sampling)
        if draft.probs is not None:
            return draft
        found = self.datastore.drafts(context)
        if not found:
            return draft
        if not draft.tokens:
            return Draft.chain(found, source=DATASTORE)
        return draft.grafted(found, DATASTORE)


# Prompt lookup: the context's last 3-gram, else 2-gram, looked up at its most recent earlier
# occurrence. A 1-gram proposes too often to pay on the held-out distilled prompts (docs/lookup).
LOOKUP_NGRAMS = (3, 2)


def lookup_drafts(context: Sequence[int], max_drafts: int, ngrams: Sequence[int] = LOOKUP_NGRAMS) -> list[int]:
    """Up to `max_drafts` tokens that followed the most recent earlier occurrence of the context's
    last n-gram (longest n first); [] when none occurred."""
    for n in ngrams:
        if len(context) <= n:
            continue
        tail = list(context[-n:])
        for start in range(len(context) - n - 1, -1, -1):
            if context[start] == tail[0] and list(context[start:start + n]) == tail:
                return list(context[start + n:start + n + max_drafts])
    return []


class PromptLookup:
    """Prompt lookup (Saxena 2023) where the context's last n-gram occurred before, else `fallback`.

    graft: where both propose, the lookup chain joins the fallback's draft tree as one more branch
    instead of replacing it (a chain holds one guess, a tree several): the pass accepts whichever
    is right for longer. On held-out prompts with the CPU default this made tokens/s 1.033x math,
    1.010x code, 1.012x chat (docs/bench/lookup_graft)."""

    def __init__(self, max_drafts: int, fallback: Drafter, graft: bool = False) -> None:
        self.max_drafts, self.fallback, self.graft = max_drafts, fallback, graft

    def propose(self, context: list[int], group: MaskGroup | None, sampling: Sampling) -> Draft:
        found = lookup_drafts(context, self.max_drafts)
        if not found:
            return self.fallback.propose(context, group, sampling)
        if self.graft and group is not None:
            masks = self.fallback.propose(context, group, sampling)
            if masks.tokens:
                return masks.grafted(found)
        return Draft.chain(found, source=LOOKUP)
