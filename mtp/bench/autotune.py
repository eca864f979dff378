"""Autotuning the decoding defaults: the cost curve (seconds of decoding's own passes and drafting on a
warm cache, per input length and pass shape) crossed with each prompt's pass sequence replayed from its
teacher-forced matches predicts tokens/s per (method, k, groups, lookup, tree budget); the fastest MTP
setting becomes the checkpoint's defaults (`python -m mtp bench --cost-curve --save-defaults`). Without
the cost curve, the fastest decoded run does (`choose_decoded_defaults`): slower to measure, but it
covers what no replay can predict (cost-aware decoding) and has no cost-curve noise."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from .. import acceptance, decoding
from ..adapter import MTPModel
from ..config import DEFAULTS_METHODS
from ..drafting import Draft, MaskChain, MaskGroup, mask_tree
from ..kv_cache import decoding_cache
from ..methods import Autoregressive, Linear, Policy, Quadratic
from ..sampling import Sampling
from .measure import sync
from .runs import Settings, run_name, runs_of, tree_configs
from .summary import leftover_of

CURVE_LENGTHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50, 64, 81, 100)
LM_HEAD_ROWS = (1, 2, 4, 8, 9, 16, 17, 25, 32, 64, 81)
# Quadratic groups the autotuner tries with draft trees (a group costs k mask tokens in every pass).
TREE_GROUPS = (1, 2, 4)


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    """fn's median time over `repeats` calls after one untimed warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_shapes(k: int) -> dict[str, tuple[int, Policy]]:
    """Name -> (chain drafts fed, policy) of the chain passes decoding makes (see decoding.verify)."""
    shapes = {"autoregressive": (0, Autoregressive()), "draftless": (0, Quadratic(1, k)), "linear": (k, Linear())}
    shapes.update({f"quadratic g={g}": (k, Quadratic(g, k)) for g in range(1, k + 2)})
    return shapes


def tree_shape(budget: int, groups: int) -> str:
    """The cost curve's name of a draft tree's pass."""
    return f"tree {budget} g={groups}"


@torch.inference_mode()
def cost_curve(model: MTPModel, k_list: tuple[int, ...], cache_tokens: int = 200, repeats: int = 7,
               lengths: tuple[int, ...] = CURVE_LENGTHS, lm_head_rows: tuple[int, ...] = LM_HEAD_ROWS,
               use_sampler: bool = True, seed: int = 0, trees: Sequence[tuple[int, int]] = ()) -> dict:
    """Seconds (median of `repeats`) of one pass on a warm cache of `cache_tokens` real tokens.

    backbone: plain causal passes of L real tokens (no logits). lm_head: vocabulary logits for R rows.
    steps: decoding.verify's passes per (k, shape), vocabulary logits of the verified rows and of the
    surviving mask group included, and draft trees of each (k, budget) in `trees` with TREE_GROUPS
    groups; drafting: the k-draft chain from one group's hidden states and logits (the sampler's
    scoring, or the argmax without it), and the masks' tree of each (k, budget).
    """
    device = model.mask_embeddings.device
    vocab = model.base.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab, (1, cache_tokens), generator=generator).to(device)
    cache = decoding_cache(model.base.config)  # the cache decoding.generate uses
    model(prefix, torch.arange(cache_tokens, device=device)[None], past_key_values=cache, use_cache=True)
    greedy = Sampling(0.0, device=device)

    def timed_pass(draft: Draft, anchors: list[int], k: int) -> float:
        """decoding.verify itself, on random drafts (so they are rejected and t_0's group survives)."""
        tokens = tokens_of(1) + draft.tokens

        def one() -> None:
            decoding.verify(model, cache, cache_tokens, tokens, draft, anchors, k, greedy)
            cache.crop(cache_tokens - cache.get_seq_length())
        return _median_seconds(one, repeats, device)

    def tokens_of(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=generator).tolist()

    def timed_backbone(n: int) -> float:
        ids, positions = torch.tensor([tokens_of(n)], device=device), torch.arange(cache_tokens, cache_tokens + n, device=device)

        def one() -> None:
            model(ids, positions[None], past_key_values=cache, use_cache=True)
            cache.crop(-n)
        return _median_seconds(one, repeats, device)

    backbone = {n: timed_backbone(n) for n in lengths}
    hidden = torch.randn(1, max(lm_head_rows), model.base.config.hidden_size, generator=generator).to(device)
    lm_head = {r: _median_seconds(lambda r=r: model.lm_logits(hidden[:, :r]), repeats, device) for r in lm_head_rows}
    steps, drafting, tree_drafting = {}, {}, {}
    for k in k_list:
        steps[k] = {}
        for name, (m, verification) in _step_shapes(k).items():
            draft = Draft.chain(tokens_of(m))
            steps[k][name] = {"input_length": 1 + m + len(verification.anchors(draft)) * k,
                              "seconds": timed_pass(draft, verification.anchors(draft), k)}
        group = MaskGroup(hidden[0, :k], model.lm_logits(hidden[0, :k]), 0)
        drafting[k] = _median_seconds(lambda group=group: MaskChain(model, use_sampler).propose([], group, greedy),
                                      repeats, device)
        tree_drafting[k] = {}
        for budget in [b for tree_k, b in trees if tree_k == k]:
            tree = mask_tree(model, group, budget, use_sampler=use_sampler)
            tree_drafting[k][str(budget)] = _median_seconds(
                lambda budget=budget, group=group: mask_tree(model, group, budget, use_sampler=use_sampler), repeats, device)
            for groups in TREE_GROUPS:
                anchors = Quadratic(groups, k).anchors(tree)
                steps[k][tree_shape(budget, groups)] = {"input_length": 1 + budget + len(anchors) * k,
                                                        "seconds": timed_pass(tree, anchors, k)}
    return {"cache_tokens": cache_tokens, "repeats": repeats, "use_sampler": use_sampler,
            "backbone_seconds": backbone, "lm_head_seconds": lm_head, "step_seconds": steps,
            "drafting_seconds": drafting, "tree_drafting_seconds": tree_drafting}


def _backbone_at(curve: dict, length: int) -> float:
    """Backbone seconds for `length` input tokens, interpolated linearly between measured lengths."""
    points = sorted((int(n), s) for n, s in curve["backbone_seconds"].items())
    for (n0, s0), (n1, s1) in zip(points, points[1:]):
        if length <= n1 or (n1, s1) == points[-1]:
            return s0 + (s1 - s0) * (length - n0) / (n1 - n0)
    return points[0][1]


def predict(results: list[dict], curve: dict, settings: Settings) -> list[dict]:
    """Predicted tokens/s per (method, k, groups, lookup, tree budget), best first: each prompt's
    exact pass sequence, replayed from its teacher-forced matches (mtp.acceptance), priced by the
    cost curve.

    A pass with drafts costs its shape's pass plus drafting (the chain, or the tree; drafts from
    leftover masks are priced as a full draft); a draftless pass (after the accepted path ended
    where no group was, and no leftover masks were left) costs the 1-token pass plus drafting.
    A pass verifying m lookup drafts costs the chain shape with the same groups, plus the backbone's
    cost of its extra input tokens; m lookup drafts grafted onto a tree cost the tree's shape plus the
    backbone's cost of m more tokens (an upper bound: some may share tree nodes). The prefill is the
    same for every method and is not priced.
    """
    chain_drafter = "sampler" if settings.use_sampler else "lm_head"
    entries = [e for e in results if "draft_matches" in e]
    tokens = sum(e["baseline"]["new_tokens"] - 1 for e in entries)
    first = next(iter(curve["step_seconds"].values()))
    candidates = [{"method": "autoregressive", "k": None, "groups": None, "lookup": 0, "tree_budget": 0,
                   "tokens_per_step": 1.0, "predicted_tokens_per_second": 1.0 / first["autoregressive"]["seconds"]}]
    lookups = [0] + ([settings.prompt_lookup_tokens] if all("lookup_matches" in e for e in entries) else [])
    for key, steps in curve["step_seconds"].items():
        k = int(key)

        def lookup_pass(method: str, groups: int | None, drafts: int) -> float:
            # The chain shape with as many groups as the lookup chain carries (at most the k+1 a
            # k-draft chain has: trees try more), plus the backbone's cost of the other tokens.
            fed = 1 if method == "linear" else min(groups or drafts + 1, drafts + 1)
            shape = steps["linear" if method == "linear" else f"quadratic g={min(fed, k + 1)}"]
            length = 1 + drafts + fed * k
            return shape["seconds"] + _backbone_at(curve, length) - _backbone_at(curve, shape["input_length"])

        shapes = [("linear", None, 0, steps["linear"])] + [
            ("quadratic", g, 0, steps[f"quadratic g={g}"]) for g in range(1, k + 2)] + [
            ("quadratic", g, budget, steps[tree_shape(budget, g)])
            for tree_k, budget in tree_configs(settings) if tree_k == k for g in TREE_GROUPS]
        for method, groups, budget, shape in shapes:
            with_drafts = shape["seconds"]
            draft_cost = (curve["tree_drafting_seconds"][key][str(budget)] if budget
                          else curve["drafting_seconds"][key])
            for lookup in lookups:
                drafter, grafted = acceptance.replayed_drafter(chain_drafter, k, budget, lookup)
                if any(drafter not in e["draft_matches"] for e in entries):
                    continue  # results measured before lookup drafts were grafted onto trees
                passes = [p for e in entries for p in acceptance.replay(
                    e["draft_matches"][drafter], method, k, e["baseline"]["new_tokens"], groups,
                    e["lookup_matches"] if lookup else None, leftover_of(e, drafter), grafted)[1:]]
                if not passes:
                    continue

                def pass_seconds(p: acceptance.Pass) -> float:
                    if p.grafted:
                        return (with_drafts + _backbone_at(curve, shape["input_length"] + p.lookup_drafts)
                                - _backbone_at(curve, shape["input_length"]))
                    if p.lookup_drafts:
                        return lookup_pass(method, groups, p.lookup_drafts)
                    return with_drafts if p.accepted is not None else steps["draftless"]["seconds"]

                seconds = sum(pass_seconds(p) + draft_cost for p in passes)
                candidates.append({"method": method, "k": k, "groups": groups, "lookup": lookup, "tree_budget": budget,
                                   "tokens_per_step": tokens / len(passes),
                                   "predicted_tokens_per_second": tokens / seconds})
    base = candidates[0]["predicted_tokens_per_second"]
    for candidate in candidates:
        candidate["predicted_speedup_vs_autoregressive"] = candidate["predicted_tokens_per_second"] / base
    return sorted(candidates, key=lambda c: -c["predicted_tokens_per_second"])


def choose_defaults(report: dict) -> dict | None:
    """The defaults.json record: the fastest MTP setting of report["predictions"], with its provenance.

    `mtp generate` runs MTP decoding, so its default is the fastest MTP setting even where
    autoregressive would win; the speedup field says which.
    """
    best = next((c for c in report["predictions"] if c["method"] in DEFAULTS_METHODS), None)
    if best is None:
        return None
    return {
        "method": best["method"], "k": best["k"], "groups": best["groups"], "lookup": best["lookup"],
        "tree_budget": best["tree_budget"], "cost_aware": False,
        "predicted_tokens_per_second": best["predicted_tokens_per_second"],
        "predicted_speedup_vs_autoregressive": best["predicted_speedup_vs_autoregressive"],
        "tokens_per_step": best["tokens_per_step"], **_provenance(report),
        "basis": "cost curve (warm cache) x each prompt's pass sequence replayed from teacher-forced drafts",
    }


def _provenance(report: dict) -> dict:
    """Where and how a defaults record was measured."""
    machine, model = report["machine"], report["model"]
    return {"device": machine["device"], "machine": machine.get("gpu", machine["cpu"]),
            "torch_threads": machine["torch_threads"], "cpu_linear": machine["cpu_linear"], "model": model["name"],
            "checkpoint": model["checkpoint"], "use_sampler": report["settings"]["use_sampler"],
            "prompts": len(report["prompts"]), "created": report["created"], "command": report["command"]}


def choose_decoded_defaults(report: dict, settings: Settings) -> dict | None:
    """The defaults.json record: the decoded linear/quadratic run with the most tokens/s over all
    prompts (greedy runs identical to `generate` on every prompt only), with its provenance."""
    overall = report["summary"]["all"]
    runs = [(run, overall["runs"][run_name(run)]) for run in runs_of(settings) if run.method in DEFAULTS_METHODS]
    runs = [(run, stats) for run, stats in runs if not stats["mismatches"] and stats["new_tokens"]]
    if not runs:
        return None
    run, stats = max(runs, key=lambda pair: pair[1]["tokens_per_second"])
    return {
        "method": run.method, "k": run.k, "groups": run.groups,
        "lookup": settings.prompt_lookup_tokens if run.lookup else 0, "tree_budget": run.tree_budget,
        "cost_aware": run.cost_aware, "tokens_per_step": stats["tokens_per_step"],
        "tokens_per_second": stats["tokens_per_second"], "speedup_vs_generate": stats["speedup_vs_generate"],
        **_provenance(report), "basis": "the fastest decoded run, all prompts, side by side with generate",
        **({"datastore": list(settings.datastore_files)} if run.datastore else {}),
    }
