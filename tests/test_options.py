"""mtp.options: the shared decoding-option validator, EOS resolution, and that it imports no torch."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mtp.options import MAX_TREE_BUDGET, METHODS, OptionError, check_decoding, eos_token_ids


@pytest.mark.parametrize("options, message", [
    (dict(method="beam"), "unknown method 'beam'"),
    (dict(k=0), "k must be at least 1"),
    (dict(k=9, max_k=8), "k must be between 1 and 8"),
    (dict(k="2"), "k must be an integer"),
    (dict(k=True), "k must be an integer"),
    (dict(method="linear", groups=2), "groups applies to the quadratic method only"),
    (dict(method="quadratic", k=4, groups=6), "groups must be between 1 and 5"),
    (dict(groups=0), "groups must be at least 1"),
    (dict(lookup=-1), "lookup must be at least 0"),
    (dict(method="autoregressive", lookup=3), "lookup needs a drafting method"),
    (dict(tree_budget=-1), "tree_budget must be between 0 and 256"),
    (dict(tree_budget=MAX_TREE_BUDGET + 1), "tree_budget must be between 0 and 256"),
    (dict(method="autoregressive", tree_budget=8), "tree_budget needs a drafting method"),
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(temperature=math.inf), "temperature must be a finite number"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(temperature="hot"), "temperature must be a number"),
    (dict(top_k=0), "top_k must be at least 1"),
    (dict(top_p=math.nan), "top_p must be a finite number"),
    (dict(top_p=0.0), "top_p must be in (0, 1]"),
    (dict(top_p=1.5), "top_p must be in (0, 1]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be at least 0"),
    (dict(cost_aware=1), "cost_aware must be True or False, got 1"),
])
def test_bad_options_raise_one_clear_message(options, message) -> None:
    with pytest.raises(OptionError, match=None) as caught:
        check_decoding(**options)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError keep working


def test_good_options_and_not_given_pass() -> None:
    check_decoding()  # nothing given
    for method in METHODS:
        check_decoding(method=method, k=4, max_k=8, lookup=0, tree_budget=0, temperature=0.7, top_k=5, top_p=1.0,
                       max_new_tokens=0)
    check_decoding(method="quadratic", k=8, max_k=8, groups=9, lookup=10, tree_budget=MAX_TREE_BUDGET)
    check_decoding(groups=3)  # k not known yet: only groups >= 1
    check_decoding(cost_aware=True)


def test_eos_token_ids_is_the_union() -> None:
    tokenizer = SimpleNamespace(eos_token_id=2)
    assert eos_token_ids(tokenizer, SimpleNamespace(eos_token_id=[7, 2])) == [2, 7]
    assert eos_token_ids(tokenizer, SimpleNamespace(eos_token_id=5)) == [2, 5]
    assert eos_token_ids(tokenizer, SimpleNamespace(eos_token_id=None)) == [2]
    assert eos_token_ids(SimpleNamespace(eos_token_id=None), None) == []


@pytest.mark.multiprocess  # a fresh interpreter
def test_options_imports_no_torch() -> None:
    code = "import sys, mtp.options; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
