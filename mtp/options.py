"""Decoding options: method names, argument limits and their validation, CPU kernels, EOS ids.

The one home for what the engine, the CLI, the bench and the demo accept, so that each refuses bad
input with the same one-line message. No torch import: the CLI checks its arguments with this module
before the slow imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

METHODS = ("autoregressive", "linear", "quadratic")
DRAFTING_METHODS = ("linear", "quadratic")  # the methods that propose drafts (masks or prompt lookup)
# How nn.Linear layers run on CPU at inference: oneDNN's fp32 matmul, or torch's default (MKL sgemm).
CPU_LINEAR_KERNELS = ("onednn", "torch")
MAX_TREE_BUDGET = 256  # draft-tree nodes verified in one pass at most


class OptionError(ValueError):
    """A decoding option out of range or not of its type; the message names the option and the fix."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: int | None, low: int, high: int | None = None) -> None:
    """Refuse a value that is not an integer in low..high (high None: no upper limit); None passes."""
    if value is None:
        return
    if not _is_int(value):
        raise OptionError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limits = f"at least {low}" if high is None else f"between {low} and {high}"
        raise OptionError(f"{name} must be {limits}, got {value}")


def check_finite(name: str, value: float | None) -> None:
    """Refuse a value that is not a finite number (NaN, inf, a string); None passes."""
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise OptionError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value}")


def cli_flag(name: str) -> str:
    """How the command line spells an option: top_p -> --top-p (pass as check_decoding's `spell`)."""
    return "--" + name.replace("_", "-")


def check_decoding(*, method: str | None = None, k: int | None = None, max_k: int | None = None,
                   groups: int | None = None, lookup: int | None = None, tree_budget: int | None = None,
                   temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   max_new_tokens: int | None = None, cost_aware: bool | None = None,
                   spell: Callable[[str], str] = str) -> None:
    """Raise OptionError with one message for the first decoding option that is invalid.

    None means "not given" and always passes. max_k is the adapter's k (None: not known yet, only
    k >= 1 is checked). groups (quadratic only) must fit 1..k+1 when k is known. lookup and
    tree_budget of 0 mean "off" and pass with any method; a positive one needs a drafting method.
    spell: how messages name an option (cli_flag for the command line; the Python names by default).
    """
    if method is not None and method not in METHODS:
        raise OptionError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    check_int(spell("k"), k, 1, max_k)
    if groups is not None:
        if method is not None and method != "quadratic":
            raise OptionError(f"{spell('groups')} applies to the quadratic method only, not {method}")
        check_int(spell("groups"), groups, 1, None if k is None else k + 1)
    for name, value, high in (("lookup", lookup, None), ("tree_budget", tree_budget, MAX_TREE_BUDGET)):
        check_int(spell(name), value, 0, high)
        if value and method == "autoregressive":
            raise OptionError(f"{spell(name)} needs a drafting method ({' or '.join(DRAFTING_METHODS)}), "
                              "not autoregressive")
    check_finite(spell("temperature"), temperature)
    if temperature is not None and temperature < 0:
        raise OptionError(f"{spell('temperature')} must be >= 0, got {temperature}")
    check_int(spell("top_k"), top_k, 1)
    check_finite(spell("top_p"), top_p)
    if top_p is not None and not 0 < top_p <= 1:
        raise OptionError(f"{spell('top_p')} must be in (0, 1], got {top_p}")
    check_int(spell("max_new_tokens"), max_new_tokens, 0)
    if cost_aware is not None and not isinstance(cost_aware, bool):
        raise OptionError(f"{spell('cost_aware')} must be True or False, got {cost_aware!r}")


def eos_token_ids(tokenizer: object, generation_config: object | None) -> list[int]:
    """The union of the generation config's eos_token_id (an int, a list or None) and the
    tokenizer's eos_token_id, sorted: a model may end a turn with any of several tokens."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids: Iterable[int | None] = configured if isinstance(configured, (list, tuple)) else [configured]
    return sorted({i for i in (*ids, getattr(tokenizer, "eos_token_id", None)) if i is not None})
