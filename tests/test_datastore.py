"""Datastore drafts (mtp.datastore, drafting.DatastoreDrafts): the table's rules, its cache, bad
sources, the drafter, and exact greedy decoding with it."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import random

import numpy as np
import pytest
import torch
from decoding_helpers import greedy_reference, random_prompt, tiny_mtp

from mtp.api import load_datastore
from mtp.datastore import MAX_DRAFTS, Datastore, DatastoreError, _window_hashes, context_hash
from mtp.decoding import generate
from mtp.drafting import DATASTORE, LOOKUP, MASKS, DatastoreDrafts, Draft
from mtp.options import OptionError
from mtp.sampling import Sampling


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_CACHE", str(tmp_path / "cache"))


def test_window_hashes_equal_context_hash() -> None:
    tokens = [random.Random(0).randrange(50000) for _ in range(40)]
    for n in (3, 4, 6):
        assert _window_hashes(np.array(tokens), n).tolist() == [context_hash(tokens[i:i + n])
                                                                for i in range(len(tokens) - n + 1)]
    assert context_hash([1, 2, 3]) != context_hash([0, 1, 2, 3])  # the length is part of the hash


def test_longest_known_context_decides() -> None:
    store = Datastore.build([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [9, 2, 3, 4, 6]])
    assert store.next_token([1, 2, 3, 4]) == 5  # seen twice, always 5
    assert store.next_token([7, 2, 3, 4]) == 5  # (2, 3, 4): 5 twice, 6 once
    assert store.next_token([9, 2, 3, 4]) is None  # (9, 2, 3, 4) was seen once: not clear, and it decides
    assert store.next_token([3, 4]) is None and store.next_token([8, 8, 8]) is None  # too short / unknown


def test_clear_continuations_only() -> None:
    tie = Datastore.build([[7, 8, 9, 2]] * 2 + [[7, 8, 9, 1]] * 2)
    assert tie.next_token([7, 8, 9]) == 1  # half each: the lower token id
    spread = Datastore.build([[7, 8, 9, 1]] * 2 + [[7, 8, 9, t] for t in (2, 3, 4)])
    assert spread.next_token([7, 8, 9]) is None  # 2 of 5: under MIN_SHARE


def test_drafts_follow_the_table_up_to_max_drafts() -> None:
    text = list(range(1, 20))
    store = Datastore.build([text, text])
    assert store.max_drafts == MAX_DRAFTS == 8
    assert store.drafts([5, 1, 2, 3]) == list(range(4, 12))
    assert dataclasses.replace(store, max_drafts=3).drafts([1, 2, 3]) == [4, 5, 6]
    assert store.drafts([15, 16, 17]) == [18, 19] and store.drafts([40, 41, 42]) == []  # ends where the text did
    with pytest.raises(DatastoreError, match="no sample longer than 3 tokens"):
        Datastore.build([[1, 2], [3]])


def _distilled(path, rows: list[tuple[list[int], list[int]]]) -> None:
    with gzip.open(path, "wt") as out:
        for prompt, response in rows:
            out.write(json.dumps({"prompt_ids": prompt, "response_ids": response}) + "\n")


def test_from_distilled_caches_by_content_and_refuses_bad_sources(tmp_path, monkeypatch, caplog) -> None:
    source = tmp_path / "distilled.jsonl.gz"
    _distilled(source, [([1, 2, 50, 51], [10, 11, 12, 13])] * 2)
    store = Datastore.from_distilled([source], vocab_size=100)
    assert store.drafts([50, 51, 10]) == [11, 12, 13]  # the prompt's tail gives the answer's first tokens contexts
    assert store.next_token([2, 50, 51]) == 10
    cached = list((tmp_path / "cache" / "datastore").glob("*.npz"))
    assert len(cached) == 1 and not list(cached[0].parent.glob("*.tmp"))
    with monkeypatch.context() as patched:  # a second load reads the cache, builds nothing
        patched.setattr(Datastore, "build", classmethod(lambda cls, *a, **k: pytest.fail("rebuilt")))
        assert Datastore.from_distilled([source], vocab_size=100).drafts([50, 51, 10]) == [11, 12, 13]
    cached[0].write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="mtp.datastore"):
        assert Datastore.from_distilled([source], vocab_size=100).drafts([50, 51, 10]) == [11, 12, 13]
    assert "unreadable" in caplog.text
    with pytest.raises(DatastoreError, match="cannot read datastore source"):
        Datastore.from_distilled([tmp_path / "missing.jsonl.gz"])
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(source.read_bytes()[:20])
    with pytest.raises(DatastoreError, match="cannot read datastore source"):
        Datastore.from_distilled([truncated])
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"prompt": "no ids"}\nnot json\n')
    with pytest.raises(DatastoreError, match="no sample longer than 3 tokens"):
        Datastore.from_distilled([junk])
    with pytest.raises(DatastoreError, match="no sample"):  # every token id must fit the model's vocabulary
        Datastore.from_distilled([source], vocab_size=40)  # (not the table cached for a vocabulary of 100)


def test_load_datastore_required_or_not(tmp_path, caplog) -> None:
    model = tiny_mtp("llama", vocab=64, k=2)
    assert load_datastore(model, []) is None
    with pytest.raises(DatastoreError):
        load_datastore(model, [tmp_path / "missing.jsonl.gz"])
    with caplog.at_level(logging.WARNING, logger="mtp.api"):  # a checkpoint's default naming data not installed
        assert load_datastore(model, [tmp_path / "missing.jsonl.gz"], required=False) is None
    assert "decoding without the checkpoint's datastore" in caplog.text
    data = tmp_path / "own.jsonl.gz"
    _distilled(data, [([1, 2, 3], [4, 5, 6, 7])] * 2)
    first = load_datastore(model, [data])
    assert load_datastore(model, [str(data)]) is first and first.drafts([1, 2, 3]) == [4, 5, 6, 7]  # loaded once
    _distilled(data, [([1, 2, 3], [9, 9, 8, 8, 7])] * 2)  # the file changed: loaded again
    assert load_datastore(model, [data]).drafts([1, 2, 3]) == [9, 9, 8, 8, 7]


class _Fixed:
    """A drafter that always proposes `draft`."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft

    def propose(self, context, group, sampling) -> Draft:
        return self.draft


def test_datastore_drafts_join_the_draft() -> None:
    store = Datastore.build([[1, 2, 3, 4, 5, 6]] * 2)
    greedy = Sampling(0.0, None, None, None, torch.device("cpu"))
    tree = Draft([4, 9], [-1, -1], None, [0.7, 0.2], (MASKS,))
    joined = DatastoreDrafts(store, _Fixed(tree)).propose([1, 2, 3], None, greedy)
    assert joined.tokens == [4, 9, 5, 6] and joined.parents == [-1, -1, 0, 2] and not joined.looked_up
    assert joined.sources == (MASKS, DATASTORE)
    alone = DatastoreDrafts(store, _Fixed(Draft())).propose([1, 2, 3], None, greedy)
    assert alone.tokens == [4, 5, 6] and alone.is_chain and alone.sources == (DATASTORE,)
    looked_up = DatastoreDrafts(store, _Fixed(Draft.chain([7], source=LOOKUP))).propose([1, 2, 3], None, greedy)
    assert looked_up.tokens == [7, 4, 5, 6] and looked_up.looked_up and looked_up.sources == (LOOKUP, DATASTORE)
    sampled = Draft.chain([8], torch.full((1, 10), 0.1))
    assert DatastoreDrafts(store, _Fixed(sampled)).propose([1, 2, 3], None, greedy) is sampled
    assert DatastoreDrafts(store, _Fixed(tree)).propose([7, 7, 7], None, greedy) is tree  # nothing known


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_identity_with_datastore(family: str) -> None:
    """Whatever the datastore proposes, the output is plain greedy decoding; drafts from a datastore of
    the model's own outputs are accepted, and passes get fewer."""
    model = tiny_mtp(family, seed=3, k=6, vocab=12, lora_std=0.5)
    prompts = [random_prompt(seed, 6, 12) for seed in range(4)]
    references = [greedy_reference(model, prompt, 40) for prompt in prompts]
    own = Datastore.build([prompt[-3:] + reference for prompt, reference in zip(prompts, references)] * 2)
    noise = Datastore.build([random_prompt(seed, 60, 12) for seed in range(10, 30)])
    fewer = 0
    for prompt, reference in zip(prompts, references):
        for method, groups, budget, lookup in (("quadratic", 1, 8, 4), ("quadratic", None, 0, 0), ("linear", None, 4, 0)):
            options = dict(method=method, k=4, groups=groups, max_new_tokens=40, tree_budget=budget, lookup=lookup)
            plain = generate(model, prompt, **options)
            for store in (own, noise):
                trace = generate(model, prompt, datastore=store, **options)
                assert trace.token_ids == reference, (family, method, budget, lookup)
            fewer += generate(model, prompt, datastore=own, **options).forward_passes < plain.forward_passes
    assert fewer >= 8
    with pytest.raises(OptionError, match="datastore drafts need a drafting method"):
        generate(model, prompts[0], method="autoregressive", datastore=own)
