"""Decoding variants side by side on the 48 held-out distilled prompts (16 math, 16 code, 16 chat;
never the eval sets), as issue 19's held-out A/B scripts run them: per prompt every variant in turn,
the order reversed on every other prompt, all in one process, outputs asserted identical.
Used by the held-out scripts of first_probe/, tree_k3/, tree_k5/, regime_probe/, lookup_tree/ and
tree_cutoff/, and by tree_vs_chain_pass/.
"""
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from transformers import PreTrainedTokenizerBase

import mtp.decoding
from mtp.adapter import MTPModel
from mtp.api import load_mtp
from mtp.data import read_prompts
from mtp.decoding import generate
from mtp.methods import CostAware
from mtp.models import encode_prompt
from mtp.trace import Trace

HELDOUT = "assets/distilled/smollm2_val_48.jsonl.gz"
DOMAINS = (("math", slice(0, 16)), ("code", slice(16, 32)), ("chat", slice(32, 48)))


def load_default() -> tuple[MTPModel, PreTrainedTokenizerBase, dict]:
    """The shipped model on 2 threads and the CPU default's options but its tree and cost-awareness
    (quadratic, k = 4, 1 group, lookup 10, 128 new tokens, stop at EOS), after one warm-up decode."""
    torch.set_num_threads(2)
    model, tokenizer = load_mtp()
    base = dict(method="quadratic", k=4, groups=1, lookup=10, max_new_tokens=128, eos_token_ids=[tokenizer.eos_token_id])
    generate(model, encode_prompt(tokenizer, read_prompts(HELDOUT)[0].prompt), tree_budget=8, **base)
    return model, tokenizer, base


@dataclass
class Tally:
    """One variant's decoded runs summed: wall time, new tokens, forward passes, and the tokens fed
    to the passes after each prefill (`fed_passes` of them)."""

    seconds: float = 0.0
    tokens: int = 0
    passes: int = 0
    fed: int = 0
    fed_passes: int = 0

    def add(self, trace: Trace, seconds: float) -> None:
        self.seconds += seconds
        self.tokens += len(trace.token_ids)
        self.passes += trace.forward_passes
        self.fed += sum(step.input_length for step in trace.steps[1:])
        self.fed_passes += len(trace.steps) - 1

    def merge(self, other: "Tally") -> None:
        for name in ("seconds", "tokens", "passes", "fed", "fed_passes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def speed(self) -> float:
        return self.tokens / self.seconds

    @property
    def tau(self) -> float:
        return self.tokens / self.passes

    @property
    def fed_per_pass(self) -> float:
        return self.fed / self.fed_passes


def side_by_side(names: list[str], decode: Callable[[str, list[int]], Trace],
                 tokenizer: PreTrainedTokenizerBase) -> Iterator[tuple[str, dict[str, Tally]]]:
    """(domain, each variant's Tally) per domain; decode(name, prompt ids) runs variant `name`."""
    rows = read_prompts(HELDOUT)
    for domain, part in DOMAINS:
        tallies = {name: Tally() for name in names}
        for i, row in enumerate(rows[part]):
            ids = encode_prompt(tokenizer, row.prompt)
            outputs = {}
            for name in names if i % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                trace = decode(name, ids)
                tallies[name].add(trace, time.perf_counter() - start)
                outputs[name] = trace.token_ids
            assert all(output == outputs[names[0]] for output in outputs.values()), (domain, i)
        yield domain, tallies


def report(names: list[str], decode: Callable[[str, list[int]], Trace], tokenizer: PreTrainedTokenizerBase,
           entry: Callable[[str, dict[str, Tally]], str]) -> None:
    """Run side_by_side and print a line per domain (entry(name, that domain's tallies) per variant),
    then each variant's tokens/s over all prompts."""
    total = {name: Tally() for name in names}
    for domain, tallies in side_by_side(names, decode, tokenizer):
        print(f"{domain}: " + " | ".join(entry(name, tallies) for name in names), flush=True)
        for name, tally in tallies.items():
            total[name].merge(tally)
    print("all: " + " | ".join(f"{name} {total[name].speed:.2f}" for name in names), flush=True)


def against_first(names: list[str], fed: bool = False, name_first: bool = False) -> Callable[[str, dict[str, Tally]], str]:
    """A `report` entry: a variant's tokens/s, its ratio to names[0]'s (followed by that name when
    name_first), τ (and tokens fed a pass)."""
    def entry(name: str, tallies: dict[str, Tally]) -> str:
        tally = tallies[name]
        ratio = f"{tally.speed / tallies[names[0]].speed:.3f}x" + (f" {names[0]}" if name_first else "")
        line = f"{name} {tally.speed:.2f} ({ratio}) tau {tally.tau:.2f}"
        return line + (f" fed {tally.fed_per_pass:.1f}" if fed else "")
    return entry


def generate_cost_aware_as(policy: type[CostAware], model: MTPModel, ids: list[int], **options) -> Trace:
    """generate(cost_aware=True) with `policy` (a CostAware subclass) in CostAware's place: generate
    builds its CostAware from mtp.decoding's name, so the name is swapped for the call."""
    saved = mtp.decoding.CostAware
    mtp.decoding.CostAware = policy
    try:
        return generate(model, ids, cost_aware=True, **options)
    finally:
        mtp.decoding.CostAware = saved


def report_k_budget(variants: dict[str, tuple[int, int, bool]], fed: bool = False) -> None:
    """`report` for variants of the default's options given as name -> (k, tree budget, cost-aware)."""
    model, tokenizer, base = load_default()

    def decode(name: str, ids: list[int]) -> Trace:
        k, budget, cost_aware = variants[name]
        return generate(model, ids, tree_budget=budget, cost_aware=cost_aware, **{**base, "k": k})

    names = list(variants)
    report(names, decode, tokenizer, against_first(names, fed))
