"""Benchmark: τ, tokens/s and wall-clock speedup of MTP decoding against transformers' own generate.

Per prompt, interleaved so every method shares the same noise: the baseline
`model.base.generate(do_sample=False)` (greedy, KV cache), transformers' prompt-lookup decoding,
then each (method, k[, lookup]) of the engine, in a per-prompt shuffled order. Greedy outputs are checked
token for token against the baseline. The cost curve times single forward passes on a warm cache;
crossed with the measured acceptance it picks the fastest MTP (method, k, groups) for this device.

Aggregates are ratios of sums over a domain's prompts: τ = Σ new tokens ÷ Σ forward passes,
tokens/s = Σ new tokens ÷ Σ seconds, speedup = tokens/s ÷ baseline tokens/s.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import plotly.graph_objects as go
import torch
import transformers
from plotly.subplots import make_subplots
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedTokenizerBase

from . import acceptance, decoding
from .adapter import MTPModel
from .atomic import write_text as write_atomic
from .config import DEFAULTS_METHODS
from .drafting import Draft, MaskChain, MaskGroup, mask_tree
from .methods import Autoregressive, Linear, Policy, Quadratic
from .options import DRAFTING_METHODS, eos_token_ids
from .sampling import Sampling
from .data import PromptRecord
from .models import cpu_linear_of, encode_prompt

METHODS = ("autoregressive", "linear", "quadratic", "prompt_lookup")
BASELINE = "generate"
RESULTS_FILE = "bench.json"
DEFAULTS_FILE = "defaults.json"
PARTIAL_FILE = "partial.jsonl"  # finished prompts of a run in progress, for --resume
# DESIGN §6: the paper's τ (Tulu3-8B, quadratic + sampler + LCM) at k = 1, 2, 4, 8.
PAPER_K = (1, 2, 4, 8)
PAPER_TAU = {"GSM8K (math)": (1.84, 2.58, 3.75, 5.22), "HumanEval (code)": (1.86, 2.63, 3.87, 5.35),
             "AlpacaEval (chat)": (1.61, 1.97, 2.31, 2.52), "MMLU (knowledge)": (1.54, 1.87, 2.18, 2.38),
             "average of 13": (1.67, 2.14, 2.69, 3.17)}
# Our eval domains -> the closest benchmark of the paper's Table 1.
PAPER_ROW = {"math": "GSM8K (math)", "code": "HumanEval (code)", "instructions": "AlpacaEval (chat)",
             "knowledge": "MMLU (knowledge)", "all": "average of 13"}
CURVE_LENGTHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50, 64, 81, 100)
LM_HEAD_ROWS = (1, 2, 4, 8, 9, 16, 17, 25, 32, 64, 81)
LOOKUP_RUNS = {"off": (False,), "on": (True,), "both": (False, True)}  # Settings.lookup -> Run.lookup values


@dataclass
class Settings:
    methods: tuple[str, ...] = METHODS
    k_list: tuple[int, ...] = (1, 2, 4, 8)
    max_new_tokens: int = 128
    groups: int | None = None  # quadratic mask groups (None: k+1, the paper's layout)
    use_sampler: bool = True
    prompt_lookup_tokens: int = 10  # drafts per pass of prompt lookup: transformers' and the engine's
    lookup: str = "off"  # linear/quadratic runs with prompt-lookup drafts: off, on, or both (each run twice)
    chat_template: bool = True
    # τ of linear/quadratic at k = 1..tau_table_k (0: no table), with and without the sampler,
    # replayed from one teacher-forced pass over each greedy output (mtp.acceptance).
    tau_table_k: int = 0
    tree_budget: int = 0  # decoded linear/quadratic runs draft trees of this many nodes (0: chains)
    # Draft-tree budgets replayed too: τ table rows at each k of k_list, and autotuning candidates.
    tau_trees: tuple[int, ...] = ()


class Run(NamedTuple):
    """One measured way of decoding."""

    method: str
    k: int | None = None  # None where it does not apply
    lookup: bool = False  # linear/quadratic with prompt-lookup drafts (decoding's lookup option)
    tree_budget: int = 0  # linear/quadratic drafting trees of this many nodes (0: chains)


def runs_of(settings: Settings) -> list[Run]:
    """The runs measured per prompt."""
    runs = []
    for method in settings.methods:
        if method in ("autoregressive", "prompt_lookup"):
            runs.append(Run(method))
        else:
            runs.extend(Run(method, k, lookup, settings.tree_budget)
                        for k in settings.k_list for lookup in LOOKUP_RUNS[settings.lookup])
    return runs


def run_of(result: dict) -> Run:
    """The Run a measured result belongs to (results written before lookup existed have none)."""
    return Run(result["method"], result["k"], result.get("lookup", False), result.get("tree_budget", 0))


def run_name(run: Run) -> str:
    return (run.method + ("" if run.k is None else f" k={run.k}") + (f" tree {run.tree_budget}" if run.tree_budget else "")
            + (" + lookup" if run.lookup else ""))


def tree_configs(settings: Settings) -> list[tuple[int, int]]:
    """(k, budget) of every draft tree replayed from the teacher-forced pass."""
    return [(k, budget) for budget in settings.tau_trees for k in settings.k_list]


def limit_per_domain(records: list[PromptRecord], limit: int) -> list[PromptRecord]:
    """The first `limit` prompts of each domain, in file order."""
    seen: dict[str, int] = {}
    kept = []
    for record in records:
        seen[record.domain] = seen.get(record.domain, 0) + 1
        if seen[record.domain] <= limit:
            kept.append(record)
    return kept


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- one measured call ----------------------------------------------------------------------------
@torch.inference_mode()
def run_generate(model: MTPModel, prompt_ids: list[int], settings: Settings, eos: list[int], pad: int,
                 prompt_lookup: bool = False) -> dict:
    """transformers' own greedy generate (KV cache), optionally with prompt lookup; forward passes counted."""
    base = model.base
    device = model.mask_embeddings.device
    passes = [0]
    handle = base.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    input_ids = torch.tensor([prompt_ids], device=device)
    extra = {"prompt_lookup_num_tokens": settings.prompt_lookup_tokens} if prompt_lookup else {}
    try:
        _sync(device)
        start = time.perf_counter()
        output = base.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, temperature=None,
            top_p=None, top_k=None, max_new_tokens=settings.max_new_tokens, eos_token_id=eos,
            pad_token_id=pad, **extra)
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    token_ids = output[0, len(prompt_ids):].tolist()
    return {"token_ids": token_ids, "new_tokens": len(token_ids), "steps": passes[0], "seconds": seconds}


def run_mtp(model: MTPModel, prompt_ids: list[int], run: Run, settings: Settings, eos: list[int]) -> dict:
    """One engine generation, timed from outside like the baseline; the trace's metrics kept."""
    device = model.mask_embeddings.device
    _sync(device)
    start = time.perf_counter()
    trace = decoding.generate(
        model, prompt_ids, method=run.method, k=run.k, max_new_tokens=settings.max_new_tokens, eos_token_ids=eos,
        use_sampler=settings.use_sampler, lookup=settings.prompt_lookup_tokens if run.lookup else 0,
        groups=_groups(settings, run.method, run.k), tree_budget=run.tree_budget)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "token_ids": trace.token_ids, "new_tokens": trace.new_tokens, "steps": trace.forward_passes,
        "seconds": seconds, "accept_counts": trace.accept_counts,
        "proposed_counts": [step.depth for step in trace.steps],  # how far ahead each pass's drafts reach
        "looked_up": [step.looked_up for step in trace.steps],
        "input_lengths": [step.input_length for step in trace.steps],
        "step_seconds": [round(step.seconds, 6) for step in trace.steps],
    }


def _measure(model: MTPModel, prompt_ids: list[int], run: Run, settings: Settings, eos: list[int], pad: int) -> dict:
    if run.method == BASELINE:
        return run_generate(model, prompt_ids, settings, eos, pad)
    if run.method == "prompt_lookup":
        return run_generate(model, prompt_ids, settings, eos, pad, prompt_lookup=True)
    return run_mtp(model, prompt_ids, run, settings, eos)


def _groups(settings: Settings, method: str, k: int) -> int | None:
    """The quadratic groups a run uses (None: k+1, the paper's layout)."""
    return min(settings.groups, k + 1) if method == "quadratic" and settings.groups else None


def first_mismatch(tokens: list[int], reference: list[int]) -> int | None:
    """Index of the first differing token (or of the shorter end); None when identical."""
    for index, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return index
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


# -- the benchmark --------------------------------------------------------------------------------
def _prompt_key(record: PromptRecord) -> str:
    return f"{record.source}:{record.key}"


class PartialMismatch(ValueError):
    """A partial results file written by a run with another model or settings."""


def read_partial(path: Path, header: dict) -> list[dict]:
    """Entries an interrupted run wrote under the same header; a torn last line is dropped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        same = bool(lines) and json.loads(lines[0]) == header
    except json.JSONDecodeError:
        same = False
    if not same:
        raise PartialMismatch(f"{path} was written by a run with another model or settings: "
                         "rerun with the same options, or delete it to start afresh")
    entries = []
    for line in lines[1:]:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def measure_prompt(model: MTPModel, record: PromptRecord, prompt_ids: list[int], runs: list[Run],
                   settings: Settings, eos: list[int], pad: int, bar: tqdm) -> dict:
    """All runs on one prompt, in the given order; each greedy output checked against the baseline's."""
    measured = {}
    for run in runs:
        bar.set_postfix_str(f"{record.domain} {run_name(run)}")
        measured[run] = _measure(model, prompt_ids, run, settings, eos, pad)
        bar.update()
    baseline = measured.pop(Run(BASELINE))
    entry = {"key": _prompt_key(record), "domain": record.domain, "source": record.source,
             "prompt_tokens": len(prompt_ids), "baseline": baseline, "runs": []}
    for name in runs_of(settings):
        run = measured[name]
        run.update(method=name.method, k=name.k, lookup=name.lookup, tree_budget=name.tree_budget,
                   mismatch_at=first_mismatch(run["token_ids"], baseline["token_ids"]))
        if run["mismatch_at"] is None:
            del run["token_ids"]  # the baseline's tokens; kept only where they differ
        entry["runs"].append(run)
    if settings.tau_table_k and baseline["token_ids"]:
        bar.set_postfix_str(f"{record.domain} teacher-forced drafts")
        entry["draft_matches"] = acceptance.draft_matches(model, prompt_ids + baseline["token_ids"], len(prompt_ids),
                                                          trees=tree_configs(settings))
        entry["lookup_matches"] = acceptance.lookup_matches(prompt_ids, baseline["token_ids"],
                                                            settings.prompt_lookup_tokens)
    return entry


def bench_prompts(model: MTPModel, tokenizer: PreTrainedTokenizerBase, records: list[PromptRecord],
                  settings: Settings, progress: bool = True, seed: int = 0, partial: Path | None = None,
                  header: dict | None = None, done: list[dict] = ()) -> list[dict]:
    """Every run on every prompt, interleaved per prompt; one raw result dict per prompt.

    partial: a JSONL file that gets `header`, then each prompt's entry as soon as it is measured, so
    an interrupted run loses at most one prompt. `done`: entries read back from it, not measured again.
    """
    eos = eos_token_ids(tokenizer, model.base.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    runs = [Run(BASELINE)] + runs_of(settings)
    encoded = [encode_prompt(tokenizer, record.prompt, settings.chat_template) for record in records]
    done_by_key = {entry["key"]: entry for entry in done}
    sink = None
    if partial is not None:
        sink = open(partial, "w", encoding="utf-8")  # rewritten whole: drops any torn line
        sink.write(json.dumps(header) + "\n" + "".join(json.dumps(e) + "\n" for e in done))
        sink.flush()
    # Warm-up (first-call allocations, lazy inits), untimed: a short run of each kind.
    warm = replace(settings, max_new_tokens=min(8, settings.max_new_tokens))
    for run in runs:
        _measure(model, encoded[0], run, warm, eos, pad)
    order = random.Random(seed)
    results = []
    bar = tqdm(total=len(records) * len(runs), desc="bench", unit="run", file=sys.stderr, disable=not progress)
    try:
        for record, prompt_ids in zip(records, encoded):
            shuffled = list(runs)
            order.shuffle(shuffled)  # drawn even for a resumed prompt: the same order as one uninterrupted run
            if _prompt_key(record) in done_by_key:
                results.append(done_by_key[_prompt_key(record)])
                bar.update(len(runs))
                continue
            entry = measure_prompt(model, record, prompt_ids, shuffled, settings, eos, pad, bar)
            results.append(entry)
            if sink is not None:
                sink.write(json.dumps(entry) + "\n")
                sink.flush()
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return results


def _offset_acceptance(runs: list[dict], k: int) -> list[float]:
    """Per offset i: accepted ≥ i ÷ proposed ≥ i over all steps of these runs (trace convention)."""
    rates = []
    for offset in range(1, k + 1):
        pairs = [(a, p) for run in runs for a, p in zip(run["accept_counts"], run["proposed_counts"]) if p >= offset]
        rates.append(sum(a >= offset for a, _ in pairs) / len(pairs) if pairs else 0.0)
    return rates


def _aggregate(runs: list[dict]) -> dict:
    tokens = sum(run["new_tokens"] for run in runs)
    steps = sum(run["steps"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    return {"prompts": len(runs), "new_tokens": tokens, "steps": steps, "seconds": seconds,
            "tokens_per_step": tokens / steps if steps else 0.0,
            "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}


def summarize(results: list[dict], settings: Settings) -> dict:
    """Per domain and over all prompts ("all"): baseline and each run's τ, tokens/s and speedups."""
    domains = list(dict.fromkeys(entry["domain"] for entry in results)) + ["all"]
    summary = {}
    for domain in domains:
        entries = [e for e in results if domain in ("all", e["domain"])]
        baseline = _aggregate([e["baseline"] for e in entries])
        block = {BASELINE: baseline, "runs": {}}
        lookup = None
        for name in runs_of(settings):
            runs = [run for e in entries for run in e["runs"] if run_of(run) == name]
            stats = _aggregate(runs)
            stats.update(method=name.method, k=name.k, lookup=name.lookup,
                         mismatches=sum(run["mismatch_at"] is not None for run in runs))
            stats["speedup_vs_generate"] = stats["tokens_per_second"] / baseline["tokens_per_second"]
            if name.k is not None:
                stats["per_offset_acceptance"] = _offset_acceptance(runs, name.k)
            if name.method == "prompt_lookup":
                lookup = stats
            block["runs"][run_name(name)] = stats
        for stats in block["runs"].values():
            stats["speedup_vs_prompt_lookup"] = (
                stats["tokens_per_second"] / lookup["tokens_per_second"] if lookup else None)
        if settings.tau_table_k:
            block["tau_table"] = tau_table(entries, settings)
        summary[domain] = block
    return summary


def _replayed(entries: list[dict], drafter: str, method: str, k: int, groups: int | None = None) -> float:
    # A prompt that generated nothing has no draft matches: its one pass is the prefill.
    return acceptance.tokens_per_step([e.get("draft_matches", {}).get(drafter, []) for e in entries],
                                      [e["baseline"]["new_tokens"] for e in entries], method, k, groups)


def tau_table(entries: list[dict], settings: Settings) -> dict:
    """{drafter: {method: [τ at k = 1..tau_table_k]}} replayed from the teacher-forced match lengths,
    {"tree B": {method: {k: τ}}} for the draft trees (groups k+1, as the paper's chain layout), and,
    per decoded linear/quadratic run, on how many prompts the replay gives its exact pass count."""
    table = {drafter: {method: [_replayed(entries, drafter, method, k) for k in range(1, settings.tau_table_k + 1)]
                       for method in DRAFTING_METHODS}
             for drafter in acceptance.DRAFTERS}
    trees = {f"tree {budget}": {method: {str(k): _replayed(entries, acceptance.tree_key(k, budget), method, k)
                                         for k in settings.k_list}
                                for method in DRAFTING_METHODS}
             for budget in settings.tau_trees}
    chain_drafter = acceptance.DRAFTERS[0] if settings.use_sampler else acceptance.DRAFTERS[1]
    agreement = {}
    for name in runs_of(settings):
        if name.method not in DRAFTING_METHODS:
            continue
        drafter = acceptance.tree_key(name.k, name.tree_budget) if name.tree_budget else chain_drafter
        # One prompt's replayed τ equals its decoded τ exactly when the pass counts are equal.
        pairs = [(run["steps"], len(acceptance.replay(e.get("draft_matches", {}).get(drafter, []), name.method, name.k,
                                                      e["baseline"]["new_tokens"], _groups(settings, name.method, name.k),
                                                      e.get("lookup_matches") if name.lookup else None)))
                 for e in entries for run in e["runs"] if run_of(run) == name and drafter in e.get("draft_matches", {})]
        agreement[run_name(name)] = {"prompts": len(pairs), "same_passes": sum(a == b for a, b in pairs)}
    return {"tau": table, "trees": trees, "replay_agreement": agreement}


def mismatches(results: list[dict]) -> list[dict]:
    return [{"domain": e["domain"], "source": e["source"], "method": run["method"], "k": run["k"],
             "lookup": run.get("lookup", False), "first_mismatch_at": run["mismatch_at"]}
            for e in results for run in e["runs"] if run["mismatch_at"] is not None]


# -- cost curve -----------------------------------------------------------------------------------
def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Quadratic groups the autotuner tries with draft trees (a group costs k mask tokens in every pass).
TREE_GROUPS = (1, 2, 4)


def _step_shapes(k: int) -> dict[str, tuple[int, Policy]]:
    """Name -> (chain drafts fed, policy) of the chain passes decoding makes (see decoding.verify)."""
    shapes = {"autoregressive": (0, Autoregressive()), "draftless": (0, Quadratic(1)), "linear": (k, Linear())}
    shapes.update({f"quadratic g={g}": (k, Quadratic(g)) for g in range(1, k + 2)})
    return shapes


def tree_shape(budget: int, groups: int) -> str:
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
    cache = DynamicCache(config=model.base.config)
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
                anchors = Quadratic(groups).anchors(tree)
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

    A pass with drafts costs its shape's pass plus drafting (the chain, or the tree); a draftless
    pass (after the accepted path ended where no group was) costs the 1-token pass plus drafting.
    A pass verifying m lookup drafts costs the chain shape with the same groups, plus the backbone's
    cost of its extra input tokens. The prefill is the same for every method and is not priced.
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
            shape = steps["linear" if method == "linear" else f"quadratic g={min(groups or k + 1, drafts + 1)}"]
            length = shape["input_length"] + drafts - k
            return shape["seconds"] + _backbone_at(curve, length) - _backbone_at(curve, shape["input_length"])

        shapes = [("linear", None, 0, steps["linear"]["seconds"])] + [
            ("quadratic", g, 0, steps[f"quadratic g={g}"]["seconds"]) for g in range(1, k + 2)] + [
            ("quadratic", g, budget, steps[tree_shape(budget, g)]["seconds"])
            for tree_k, budget in tree_configs(settings) if tree_k == k for g in TREE_GROUPS]
        for method, groups, budget, with_drafts in shapes:
            draft_cost = (curve["tree_drafting_seconds"][key][str(budget)] if budget
                          else curve["drafting_seconds"][key])
            drafter = acceptance.tree_key(k, budget) if budget else chain_drafter
            for lookup in lookups:
                passes = [p for e in entries for p in acceptance.replay(
                    e["draft_matches"][drafter], method, k, e["baseline"]["new_tokens"], groups,
                    e["lookup_matches"] if lookup else None)[1:]]
                if not passes:
                    continue
                seconds = sum(lookup_pass(method, groups, p.lookup_drafts) + draft_cost if p.lookup_drafts
                              else with_drafts + draft_cost if p.accepted is not None
                              else steps["draftless"]["seconds"] + draft_cost for p in passes)
                candidates.append({"method": method, "k": k, "groups": groups, "lookup": lookup, "tree_budget": budget,
                                   "tokens_per_step": tokens / len(passes),
                                   "predicted_tokens_per_second": tokens / seconds})
    base = candidates[0]["predicted_tokens_per_second"]
    for candidate in candidates:
        candidate["predicted_speedup_vs_autoregressive"] = candidate["predicted_tokens_per_second"] / base
    return sorted(candidates, key=lambda c: -c["predicted_tokens_per_second"])


# -- machine and provenance -----------------------------------------------------------------------
def machine_info(device: torch.device, cpu_linear: str) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device), "cpu_linear": cpu_linear,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        root = Path(__file__).resolve().parent.parent
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


# -- outputs --------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(report: dict) -> str:
    """results.md: identity, the Table-1 layout of τ, speed tables, cost curve and chosen defaults."""
    settings, summary = report["settings"], report["summary"]
    domains = list(summary)
    k_list = settings["k_list"]
    machine = report["machine"]
    total_runs = sum(len(e["runs"]) for e in report["prompts"])
    counts = ", ".join(f"{d} {summary[d][BASELINE]['prompts']}" for d in domains[:-1])
    parts = [
        "# MTP benchmark", "",
        f"Command: `{report['command']}`  ", f"Date: {report['created']}  ",
        f"Model: {report['model']['name']}, checkpoint: {report['model']['checkpoint'] or 'none (fresh adapter)'} "
        f"(k={report['model']['k']}, sampler {'on' if settings['use_sampler'] else 'off'}"
        f"{'' if settings['groups'] is None else ', quadratic groups ' + str(settings['groups'])})  ",
        f"Machine: {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, device {machine['device']}"
        f"{', CPU linear kernel ' + machine.get('cpu_linear', 'torch') if machine['device'] == 'cpu' else ''}), "
        "load average at start "
        f"{machine['load_average']}  ",
        f"Prompts: {len(report['prompts'])} ({counts}),"
        f" {settings['max_new_tokens']} new tokens max, chat template {'on' if settings['chat_template'] else 'off'}.",
        "", "τ = new tokens ÷ forward passes; tokens/s and speedups are ratios of sums over a domain's prompts; "
        f"the baseline is transformers `generate(do_sample=False)`, prompt lookup uses "
        f"`prompt_lookup_num_tokens={settings['prompt_lookup_tokens']}`, both timed in the same run, "
        "interleaved per prompt.", "", "## Greedy token identity", "",
    ]
    bad = report["mismatches"]
    if bad:
        parts.append(f"**{len(bad)} of {total_runs} runs differ from `generate`:**")
        parts += [f"- {m['source']} ({m['domain']}): {run_name(run_of(m))}, first at token "
                  f"{m['first_mismatch_at']}" for m in bad]
    elif total_runs:
        parts.append(f"All {total_runs} greedy runs are token-identical to `generate` (0 mismatches).")
    else:
        parts.append("No decoded run to compare (`--methods none`): τ below is replayed from the teacher-forced table.")
    for method, lookup in [(m, lu) for m in ("linear", "quadratic") for lu in (False, True)]:
        if method not in settings["methods"] or lookup not in LOOKUP_RUNS[settings.get("lookup", "off")]:
            continue
        tree = settings.get("tree_budget", 0)
        parts += ["", f"## τ (tokens per step), {method}{f' tree {tree}' if tree else ''}"
                      f"{' + lookup' if lookup else ''}", ""]
        rows = [[d] + [_fmt(summary[d]["runs"][run_name(Run(method, k, lookup, tree))]["tokens_per_step"])
                       for k in k_list] for d in domains]
        parts.append(_table(["domain"] + [f"k={k}" for k in k_list], rows))
    if "prompt_lookup" in settings["methods"]:
        parts += ["", "Prompt lookup τ: " + ", ".join(
            f"{d} {_fmt(summary[d]['runs']['prompt_lookup']['tokens_per_step'])}" for d in domains)]
    parts += ["", "Paper (Tulu3-8B, quadratic + sampler + LCM, DESIGN §6), for comparison:", "",
              _table(["benchmark"] + [f"k={k}" for k in PAPER_K],
                     [[name] + [f"{v:.2f}" for v in values] for name, values in PAPER_TAU.items()])]
    if settings.get("tau_table_k"):
        parts += _tau_table_markdown(summary, settings)
    names = list(summary["all"]["runs"])
    parts += ["", "## Tokens per second", ""]
    rows = [[BASELINE] + [_fmt(summary[d][BASELINE]["tokens_per_second"], 1) for d in domains]]
    rows += [[n] + [_fmt(summary[d]["runs"][n]["tokens_per_second"], 1) for d in domains] for n in names]
    parts.append(_table(["run"] + domains, rows))
    for key, title in (("speedup_vs_generate", "Wall-clock speedup vs `generate`"),
                       ("speedup_vs_prompt_lookup", "Wall-clock speedup vs prompt lookup")):
        if not names or (key == "speedup_vs_prompt_lookup" and "prompt_lookup" not in settings["methods"]):
            continue  # nothing decoded (--methods none), or no prompt-lookup baseline
        parts += ["", f"## {title}", ""]
        parts.append(_table(["run"] + domains,
                            [[n] + [_fmt(summary[d]["runs"][n][key], 2, "×") for d in domains] for n in names]))
    curve = report.get("cost_curve")
    if curve:
        parts += ["", f"## Cost curve (warm cache of {curve['cache_tokens']} tokens, median of {curve['repeats']})",
                  "", _table(["input tokens"] + [str(n) for n in curve["backbone_seconds"]],
                             [["backbone ms"] + [f"{1e3 * s:.1f}" for s in curve["backbone_seconds"].values()]]),
                  "", _table(["lm_head rows"] + [str(r) for r in curve["lm_head_seconds"]],
                             [["ms"] + [f"{1e3 * s:.1f}" for s in curve["lm_head_seconds"].values()]]),
                  "", "Decoding passes as `decoding.verify` makes them (logits of the verified rows and the surviving "
                  "mask group included) + drafting (the draft chain on those logits):", ""]
        rows = [[str(k), name, str(v["input_length"]), f"{1e3 * v['seconds']:.1f}",
                 f"{1e3 * curve['drafting_seconds'][k]:.1f}"]
                for k, shapes in curve["step_seconds"].items() for name, v in shapes.items()]
        parts.append(_table(["k", "pass", "input tokens", "pass ms", "drafting ms"], rows))
    ranked = report.get("predictions")
    if ranked:
        parts += ["", "## Predicted best settings (cost curve × replayed passes, all prompts)", ""]
        parts.append(_table(["method", "k", "groups", "lookup", "tree", "τ", "tokens/s", "vs autoregressive"],
                            [[c["method"], str(c["k"] or "–"), str(c["groups"] or "–"), str(c["lookup"] or "–"),
                              str(c.get("tree_budget") or "–"),
                              _fmt(c["tokens_per_step"]),
                              _fmt(c["predicted_tokens_per_second"], 1),
                              _fmt(c["predicted_speedup_vs_autoregressive"], 2, "×")] for c in ranked[:10]]))
        best = report.get("defaults")
        if best:
            speedup = best["predicted_speedup_vs_autoregressive"]
            verdict = "faster" if speedup > 1 else "not faster"
            parts += ["", f"Chosen defaults, the fastest MTP setting (written to `{DEFAULTS_FILE}`): method "
                          f"{best['method']}, k {best['k']}, groups {best['groups'] or '–'}, lookup drafts "
                          f"{best['lookup'] or 'off'}, draft tree {best.get('tree_budget') or 'off (a chain)'}; predicted "
                          f"{speedup:.2f}× autoregressive, so {verdict} than plain decoding on this device."]
    return "\n".join(parts) + "\n"


def _tau_table_markdown(summary: dict, settings: dict) -> list[str]:
    """The teacher-forced τ tables (k = 1..K per method and drafter) and the replay check."""
    domains = list(summary)
    ks = range(1, settings["tau_table_k"] + 1)
    paper_cols = [f"paper k={k}" for k in PAPER_K]
    parts = ["", f"## τ at k = 1…{ks[-1]}, replayed from teacher-forced drafts", "",
             "One pass per prompt runs every mask group over the greedy output (`mtp.acceptance`); replaying "
             "linear and quadratic decoding on the match lengths gives their pass counts exactly "
             "(paper rows: the closest benchmark of its Table 1, Tulu3-8B)."]
    for drafter, label in (("sampler", "sampler drafts"), ("lm_head", "lm_head drafts (no sampler)")):
        for method in DRAFTING_METHODS:
            with_paper = (method, drafter) == ("quadratic", "sampler")
            rows = []
            for d in domains:
                row = [d] + [_fmt(v) for v in summary[d]["tau_table"]["tau"][drafter][method]]
                if with_paper:
                    paper = PAPER_TAU.get(PAPER_ROW.get(d, ""))
                    row += [f"{v:.2f}" for v in paper] if paper else ["–"] * len(PAPER_K)
                rows.append(row)
            parts += ["", f"**{method}, {label}**", "",
                      _table(["domain"] + [f"k={k}" for k in ks] + (paper_cols if with_paper else []), rows)]
    for name in summary["all"]["tau_table"].get("trees", {}):
        for method in DRAFTING_METHODS:
            ks_tree = list(summary["all"]["tau_table"]["trees"][name][method])
            rows = [[d] + [_fmt(summary[d]["tau_table"]["trees"][name][method][k]) for k in ks_tree] for d in domains]
            parts += ["", f"**{method}, sampler draft {name} nodes (groups k+1 after the nodes most likely to end "
                          "the accepted path)**", "", _table(["domain"] + [f"k={k}" for k in ks_tree], rows)]
    agreement = summary["all"]["tau_table"]["replay_agreement"]
    if agreement:
        parts += ["", "Replay vs decoding (same pass count per prompt): " + ", ".join(
            f"{name} {a['same_passes']}/{a['prompts']}" for name, a in agreement.items()) + "."]
    return parts


def figures(report: dict) -> dict[str, go.Figure]:
    """τ vs k per domain (one panel per method), speedup per run and domain, and the cost curve."""
    settings, summary = report["settings"], report["summary"]
    domains = list(summary)
    out = {}
    table_k = settings.get("tau_table_k", 0)
    # τ vs k from the τ table (every k, replayed) when there is one, else from the decoded runs.
    methods = list(DRAFTING_METHODS) if table_k else [m for m in DRAFTING_METHODS if m in settings["methods"]]
    ks = list(range(1, table_k + 1)) if table_k else list(settings["k_list"])

    def taus(domain: str, method: str) -> list[float]:
        if table_k:
            return summary[domain]["tau_table"]["tau"]["sampler"][method]
        lookup = LOOKUP_RUNS[settings.get("lookup", "off")][0]
        return [summary[domain]["runs"][run_name(Run(method, k, lookup, settings.get("tree_budget", 0)))]["tokens_per_step"] for k in ks]
    if methods:
        fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
        for col, method in enumerate(methods, start=1):
            for i, domain in enumerate(domains):
                fig.add_trace(go.Scatter(
                    x=ks, y=taus(domain, method), mode="lines+markers", name=domain, legendgroup=domain,
                    showlegend=col == 1, line={"color": _color(i), "dash": "dot" if domain == "all" else None}),
                    row=1, col=col)
            fig.update_xaxes(title_text="k (masks)", row=1, col=col)
        fig.update_yaxes(title_text="τ (tokens per forward pass)", row=1, col=1)
        fig.update_layout(title="Tokens per step vs k, per domain", template="plotly_white")
        out["tau_vs_k"] = fig
    names = list(summary["all"]["runs"])
    fig = go.Figure([go.Bar(name=d, x=names, y=[summary[d]["runs"][n]["speedup_vs_generate"] for n in names],
                            marker_color=_color(i)) for i, d in enumerate(domains)])
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="transformers generate")
    fig.update_layout(title="Wall-clock speedup vs transformers generate (greedy, KV cache)", barmode="group",
                      yaxis_title="speedup (×)", template="plotly_white")
    out["speedup"] = fig
    curve = report.get("cost_curve")
    if curve:
        fig = make_subplots(rows=1, cols=2, subplot_titles=["backbone pass", "lm_head"])
        fig.add_trace(go.Scatter(x=list(curve["backbone_seconds"]), y=[1e3 * s for s in curve["backbone_seconds"].values()],
                                 mode="lines+markers", name="backbone (real tokens)"), row=1, col=1)
        for i, (k, shapes) in enumerate(curve["step_seconds"].items()):
            fig.add_trace(go.Scatter(x=[v["input_length"] for v in shapes.values()],
                                     y=[1e3 * v["seconds"] for v in shapes.values()], mode="markers",
                                     text=list(shapes), name=f"decoding passes k={k}", marker_color=_color(i + 1)),
                          row=1, col=1)
        fig.add_trace(go.Scatter(x=list(curve["lm_head_seconds"]), y=[1e3 * s for s in curve["lm_head_seconds"].values()],
                                 mode="lines+markers", name="lm_head"), row=1, col=2)
        fig.update_xaxes(title_text="input tokens", row=1, col=1)
        fig.update_xaxes(title_text="rows", row=1, col=2)
        fig.update_yaxes(title_text="ms (median)", row=1, col=1)
        fig.update_layout(title=f"Forward-pass cost on a warm cache of {curve['cache_tokens']} tokens",
                          template="plotly_white")
        out["cost_curve"] = fig
    return out


def _color(i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    return palette[i % len(palette)]


def _kaleido_available() -> bool:
    try:
        import kaleido  # noqa: F401  (optional: PNGs only where it is installed)
    except ImportError:
        return False
    return True


def write_outputs(report: dict, out_dir: str | Path) -> list[Path]:
    """bench.json, results.md, one HTML (+PNG with kaleido) per figure, defaults.json with a cost curve."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / RESULTS_FILE, out_dir / "results.md"]
    write_atomic(written[0], json.dumps(report, indent=1) + "\n")
    write_atomic(written[1], markdown(report))
    png = _kaleido_available()
    for name, fig in figures(report).items():
        # plotly.js from its CDN keeps each page small; the numbers are all in bench.json.
        path = out_dir / f"{name}.html"
        fig.write_html(path, include_plotlyjs="cdn")
        written.append(path)
        if png:
            fig.write_image(out_dir / f"{name}.png")
            written.append(out_dir / f"{name}.png")
    if report.get("defaults"):
        written.append(out_dir / DEFAULTS_FILE)
        write_atomic(written[-1], json.dumps(report["defaults"], indent=1) + "\n")
    return written


def benchmark(model: MTPModel, tokenizer: PreTrainedTokenizerBase, records: list[PromptRecord],
              settings: Settings, *, model_name: str, checkpoint: str | None, command: str,
              with_cost_curve: bool = False, curve_repeats: int = 7, progress: bool = True,
              partial: Path | None = None, resume: bool = False) -> dict:
    """Run everything and return the report that write_outputs saves.

    partial: where finished prompts are written as they complete; resume: read it back first
    (it must come from a run with the same model and settings) and measure only what is missing.
    """
    device = model.mask_embeddings.device
    report = {
        "command": command, "argv": sys.argv,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device, cpu_linear_of(model)),
        "model": {"name": model_name, "checkpoint": checkpoint, "k": model.k, "sampler": model.sampler is not None},
        "settings": asdict(settings),
    }
    header = json.loads(json.dumps({"model": report["model"], "settings": report["settings"]}))
    done = read_partial(partial, header) if resume and partial is not None and partial.exists() else []
    results = bench_prompts(model, tokenizer, records, settings, progress=progress, partial=partial,
                            header=header, done=done)
    report.update(prompts=results, summary=summarize(results, settings), mismatches=mismatches(results))
    if with_cost_curve:
        if not settings.tau_table_k:
            raise ValueError("the cost curve's predictions replay the τ table: set tau_table_k")
        curve = cost_curve(model, tuple(range(1, settings.tau_table_k + 1)), repeats=curve_repeats,
                           use_sampler=settings.use_sampler, trees=tree_configs(settings))
        ranked = predict(results, curve, settings)
        report.update(cost_curve=curve, predictions=ranked)
        # `mtp generate` runs MTP decoding, so its default is the fastest MTP setting even where
        # autoregressive would win; the speedup field says which.
        best = next((c for c in ranked if c["method"] in DEFAULTS_METHODS), None)
        if best is not None:
            machine = report["machine"]
            report["defaults"] = {
                "method": best["method"], "k": best["k"], "groups": best["groups"], "lookup": best["lookup"],
                "tree_budget": best["tree_budget"],
                "predicted_tokens_per_second": best["predicted_tokens_per_second"],
                "predicted_speedup_vs_autoregressive": best["predicted_speedup_vs_autoregressive"],
                "tokens_per_step": best["tokens_per_step"], "device": str(device),
                "machine": machine.get("gpu", machine["cpu"]), "torch_threads": machine["torch_threads"],
                "cpu_linear": machine["cpu_linear"],
                "model": model_name, "checkpoint": checkpoint, "use_sampler": settings.use_sampler,
                "prompts": len(records), "created": report["created"], "command": command,
                "basis": "cost curve (warm cache) x each prompt's pass sequence replayed from teacher-forced drafts",
            }
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report
