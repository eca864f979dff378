"""Look inside one prompt: what the model predicts k tokens ahead, and the gated-LoRA lossless check.

Engine side only (no UI imports): the demo's Future heatmap and Lossless check tabs and their tests
read these results. Offsets follow docs/design.md §3: mask i after the last prompt token guesses the token
at distance i+1, i.e. greedy token number i (0-based) where greedy token 0 is the ordinary next token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from .adapter import MTPModel
from .drafting import Draft, MaskChain, MaskGroup, candidate_logits, draft_candidates, mask_tree
from .sampling import Sampling
from .trace import Step

VIEWS = ("base_probe", "mask_path", "sampler_chain")
PLACEHOLDER_TEXT = "-"
VIEW_TITLES = {
    "base_probe": "Base model, placeholders (gate off)",
    "mask_path": "Trained masks (lm_head)",
    "sampler_chain": "Sampler chain (greedy, as decoding drafts)",
}


@dataclass
class ProbeView:
    name: str
    top_ids: list[list[int]]  # (k, top_n) candidate ids, most likely first
    top_probs: list[list[float]]  # (k, top_n)
    greedy_rank: list[int]  # per offset: 1-based rank of the greedy token in the full distribution
    greedy_prob: list[float]  # per offset: its probability
    chain_ids: list[int] = field(default_factory=list)  # sampler view: the token chosen at each offset
    chain_accepted: int = 0  # sampler view: how many of chain_ids greedy decoding would accept


@dataclass
class ProbeResult:
    k: int
    top_n: int
    prompt_ids: list[int]
    placeholder_id: int
    greedy_ids: list[int]  # k+2 plain greedy tokens: [next token, offset +1, ..., offset +k, one more]
    views: dict[str, ProbeView]
    # The draft tree the masks propose after the next token, as the pass verifying it would see it
    # (accepted path: what plain greedy decoding keeps; bonus: its next token); None without a budget.
    tree: Step | None = None
    texts: dict[int, str] = field(default_factory=dict)  # token id -> display text (when a tokenizer was given)

    def text(self, token_id: int) -> str:
        return self.texts.get(token_id, f"<{token_id}>")


@dataclass
class LosslessResult:
    num_real: int  # real tokens compared
    k: int
    max_delta_same_shape: float  # masks appended vs same tensor shape with a plain token, gate closed
    max_delta_base_alone: float  # masks appended vs the base model on the real tokens alone
    max_delta_gate_on: float  # gate forced open everywhere vs the same-shape plain run
    argmax_same: bool  # masks appended: next-token argmax equals the base model's at every real position
    argmax_same_gate_on: bool  # the same with the gate forced open


def default_placeholder(tokenizer: PreTrainedTokenizerBase | None) -> int:
    """The paper's probe placeholder "-" (its Figure 1) when it is one token; else unk / pad; else id 0."""
    if tokenizer is None:
        return 0
    ids = tokenizer.encode(PLACEHOLDER_TEXT, add_special_tokens=False)
    if len(ids) == 1:
        return ids[0]
    return next((t for t in (tokenizer.unk_token_id, tokenizer.pad_token_id) if t is not None), 0)


def _check_prompt(model: MTPModel, prompt_ids: list[int], k: int) -> torch.Tensor:
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if not 1 <= k <= model.k:
        raise ValueError(f"k must be between 1 and this adapter's k={model.k}, got {k}")
    limit = getattr(model.base.config, "max_position_embeddings", None)
    if limit is not None and len(prompt_ids) + 2 * k + 1 > limit:
        raise ValueError(f"the prompt ({len(prompt_ids)} tokens) plus {k} masks does not fit the context of {limit}")
    if min(prompt_ids) < 0:
        raise ValueError("prompt ids must be real (non-negative) token ids")
    return torch.tensor([prompt_ids], device=model.mask_embeddings.device)


def _greedy(model: MTPModel, ids: torch.Tensor, steps: int) -> list[int]:
    """Plain greedy decoding (gate closed, KV cache) for `steps` tokens: the reference continuation."""
    cache = DynamicCache()
    out = model(ids, position_ids=torch.arange(ids.shape[1], device=ids.device)[None], past_key_values=cache,
                use_cache=True, logits_for=torch.tensor([ids.shape[1] - 1]))
    tokens = [int(out.logits[0, -1].argmax())]
    for _ in range(steps - 1):
        position = ids.shape[1] + len(tokens) - 1
        out = model(torch.tensor([[tokens[-1]]], device=ids.device), position_ids=torch.tensor([[position]], device=ids.device),
                    past_key_values=out.past_key_values, use_cache=True, logits_for=torch.tensor([0]))
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def _view(name: str, logits: torch.Tensor, greedy: list[int], top_n: int, chain: list[int] | None = None) -> ProbeView:
    """Top-N and the greedy token's rank per offset from (k, vocab) logits (a token the logits rule out
    ranks after every token they allow)."""
    probs = logits.float().softmax(-1)
    top = probs.topk(top_n, dim=-1)
    target = torch.tensor(greedy, device=probs.device)
    target_prob = probs.gather(1, target[:, None])[:, 0]
    rank = (probs > target_prob[:, None]).sum(-1) + 1
    chain = chain or []
    return ProbeView(name=name, top_ids=top.indices.tolist(), top_probs=top.values.tolist(),
                     greedy_rank=rank.tolist(), greedy_prob=target_prob.tolist(), chain_ids=chain,
                     chain_accepted=len(Draft.chain(chain).follow(greedy)))


@torch.no_grad()
def future_probe(model: MTPModel, prompt_ids: list[int], k: int, top_n: int = 5, *,
                 tokenizer: PreTrainedTokenizerBase | None = None, placeholder_id: int | None = None,
                 tree_budget: int = 0) -> ProbeResult:
    """Top-N guesses for offsets +1..+k in three views, and where plain greedy's token ranks in each.

    - base_probe: the paper's probe. The prompt plus k copies of a neutral placeholder token ("-" by
      default), plain causal attention, gate closed: the untouched base model guessing the future.
    - mask_path: the prompt plus the k learned masks (gate open at the masks), lm_head at the masks.
    - sampler_chain: the sampler over the same mask states, chained greedily from the next token by the
      decoder's own drafter (MaskChain): its probabilities are over the candidates decoding scores.
    With tree_budget > 0, also the draft tree of that many nodes the decoder would verify (mask_tree).
    """
    ids = _check_prompt(model, prompt_ids, k)
    vocab_size = model.base.config.vocab_size
    if not 1 <= top_n <= vocab_size:
        raise ValueError(f"top_n must be between 1 and the vocabulary size, got {top_n}")
    if tree_budget < 0:
        raise ValueError(f"tree_budget must be 0 (no tree) or more, got {tree_budget}")
    if placeholder_id is None:
        placeholder_id = default_placeholder(tokenizer)
    n = ids.shape[1]
    device = ids.device
    greedy = _greedy(model, ids, k + 2)
    positions = torch.arange(n + k, device=device)[None]
    future_rows = torch.arange(n, n + k, device=device)

    placeholders = torch.full((1, k), placeholder_id, device=device)
    base = model(torch.cat([ids, placeholders], 1), position_ids=positions, logits_for=future_rows, gate=False)

    masks = -torch.arange(1, k + 1, device=device)[None]
    masked = model(torch.cat([ids, masks], 1), position_ids=positions, logits_for=future_rows)

    # The masks after the prompt guess the tokens after the next one, as the group after a pass's bonus does.
    group = MaskGroup(masked.hidden[0, n:], masked.logits[0], greedy[0])
    chain = MaskChain(model).propose(list(prompt_ids), group, Sampling(0.0)).tokens
    # Mask i is conditioned on the token chosen at offset i-1 (the next token first).
    sampler_logits = group.logits if model.sampler is None else candidate_logits(
        model, group.hidden, torch.tensor([greedy[0], *chain[:-1]], device=device), draft_candidates(group.logits),
        vocab_size)

    futures = greedy[1:k + 1]
    views = {
        "base_probe": _view("base_probe", base.logits[0], futures, top_n),
        "mask_path": _view("mask_path", masked.logits[0], futures, top_n),
        "sampler_chain": _view("sampler_chain", sampler_logits, futures, top_n, chain),
    }
    tree = None
    if tree_budget:
        draft = mask_tree(model, group, tree_budget)
        path = draft.follow(greedy[1:])
        tree = Step.of(draft, path, greedy[len(path) + 1], 0.0, n + len(draft.tokens), len(path) + 1)
    result = ProbeResult(k=k, top_n=top_n, prompt_ids=list(prompt_ids), placeholder_id=placeholder_id,
                         greedy_ids=greedy, views=views, tree=tree)
    if tokenizer is not None:
        shown = set(greedy) | set(chain) | {t for v in views.values() for row in v.top_ids for t in row}
        shown |= set(tree.drafts) if tree else set()
        result.texts = {t: tokenizer.decode([t]) for t in shown}
    return result


@torch.no_grad()
def lossless_check(model: MTPModel, prompt_ids: list[int], k: int, *, placeholder_id: int = 0) -> LosslessResult:
    """Max |Δ logit| at the real tokens when k masks are appended, against the plain base model.

    Two references, because CPU GEMM/attention kernels round differently when the number of rows
    changes: the same tensor shape with the masks replaced by an ordinary token and the gate closed
    (isolates the gated LoRA: exactly 0), and the real tokens alone (float noise, ~1e-6). Forcing
    the gate open everywhere lets the LoRA touch the real tokens too: the Δ is then large.
    """
    ids = _check_prompt(model, prompt_ids, k)
    n = ids.shape[1]
    device = ids.device
    real_rows = torch.arange(n, device=device)
    positions = torch.arange(n + k, device=device)[None]
    masks = -torch.arange(1, k + 1, device=device)[None]
    with_masks = torch.cat([ids, masks], 1)

    alone = model(ids, position_ids=positions[:, :n], logits_for=real_rows).logits
    plain_same_shape = model(torch.cat([ids, torch.full((1, k), placeholder_id, device=device)], 1),
                             position_ids=positions, logits_for=real_rows, gate=False).logits
    gated = model(with_masks, position_ids=positions, logits_for=real_rows).logits
    forced = model(with_masks, position_ids=positions, logits_for=real_rows, gate=True).logits

    def max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).abs().max())

    return LosslessResult(
        num_real=n, k=k,
        max_delta_same_shape=max_delta(gated, plain_same_shape),
        max_delta_base_alone=max_delta(gated, alone),
        max_delta_gate_on=max_delta(forced, plain_same_shape),
        argmax_same=bool((gated.argmax(-1) == alone.argmax(-1)).all()),
        argmax_same_gate_on=bool((forced.argmax(-1) == alone.argmax(-1)).all()),
    )
