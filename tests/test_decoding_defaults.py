"""Measured decoding defaults: the per-checkpoint file (read, merge, atomic write, refusal of bad
content) and the resolver that turns it, the caller's arguments and built-in defaults into settings."""

from __future__ import annotations

import json
import logging

import pytest

from mtp import adapter, atomic
from mtp.api import BUILT_IN, EXPLICIT, decoding_settings
from mtp.config import DECODING_DEFAULTS_FILE, CheckpointError, read_decoding_defaults, write_decoding_defaults

from tests.train_helpers import tiny_loaded

MEASURED = "measured on Test CPU (2025-01-01T00:00:00+00:00)"


def entry(method: str = "quadratic", k: int = 3, groups: int | None = 2, **fields) -> dict:
    return {"method": method, "k": k, "groups": groups, "predicted_tokens_per_second": 12.5,
            "predicted_speedup_vs_autoregressive": 1.25, "tokens_per_step": 1.8, "machine": "Test CPU",
            "torch_threads": 2, "created": "2025-01-01T00:00:00+00:00", "command": "python -m mtp bench ...",
            **fields}


@pytest.fixture(scope="module")
def model():
    """A tiny k=4 adapter on CPU: the resolver reads only its k and device."""
    loaded = tiny_loaded()
    return adapter.create(loaded.model, loaded.identity, k=4).eval()


def test_round_trip_and_merge(tmp_path) -> None:
    assert read_decoding_defaults(tmp_path, "cpu") is None  # no file: nothing measured
    path = write_decoding_defaults(tmp_path, "cpu", entry())
    assert path == tmp_path / DECODING_DEFAULTS_FILE
    assert read_decoding_defaults(tmp_path, "cpu") == entry()
    write_decoding_defaults(tmp_path, "cuda", entry("linear", 4, None))
    assert read_decoding_defaults(tmp_path, "cpu") == entry()  # the other device's entry is kept
    assert read_decoding_defaults(tmp_path, "cuda") == entry("linear", 4, None)
    assert read_decoding_defaults(tmp_path, "mps") is None
    write_decoding_defaults(tmp_path, "cpu", entry(k=2, groups=1))
    assert json.loads(path.read_text()) == {"cpu": entry(k=2, groups=1), "cuda": entry("linear", 4, None)}
    assert [p.name for p in tmp_path.iterdir()] == [DECODING_DEFAULTS_FILE]  # no temp file left


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    path = write_decoding_defaults(tmp_path, "cpu", entry())
    before = path.read_text()

    def interrupted(source, target) -> None:
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        write_decoding_defaults(tmp_path, "cuda", entry())
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [DECODING_DEFAULTS_FILE]


def test_writer_refuses_a_bad_entry(tmp_path) -> None:
    with pytest.raises(ValueError, match="autoregressive"):
        write_decoding_defaults(tmp_path, "cpu", entry("autoregressive", 1, None))
    assert not (tmp_path / DECODING_DEFAULTS_FILE).exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable"),
    ("[1, 2]", "keyed by device type"),
    (json.dumps({"cpu": "fast"}), "is not a JSON object"),
    (json.dumps({"cpu": {"method": "quadratic", "k": 2}}), "lacks"),
    (json.dumps({"cpu": entry(method="beam")}), "method 'beam'"),
    (json.dumps({"cpu": entry(k=0)}), "k 0"),
    (json.dumps({"cpu": entry(k=2, groups=4)}), "groups 4"),
    (json.dumps({"cpu": entry("linear", 2, 2)}), "groups 2"),
    (json.dumps({"cpu": entry(lookup=-1)}), "lookup -1"),
    (json.dumps({"cpu": entry(lookup="on")}), "lookup 'on'"),
    (json.dumps({"cpu": entry(cost_aware="yes")}), "cost_aware 'yes'"),
    (json.dumps({"cpu": entry(datastore="data.jsonl")}), "datastore 'data.jsonl', not a list"),
    (json.dumps({"cpu": entry(datastore=[""])}), r"datastore \[''\]"),
])
def test_malformed_file_is_refused(tmp_path, content: str, message: str) -> None:
    (tmp_path / DECODING_DEFAULTS_FILE).write_text(content)
    with pytest.raises(CheckpointError, match=message) as error:
        read_decoding_defaults(tmp_path, "cpu")
    assert str(tmp_path / DECODING_DEFAULTS_FILE) in str(error.value)


@pytest.mark.parametrize("measured, given, expected", [
    (None, {}, ("quadratic", 4, None, 0, 0, False, BUILT_IN, ())),
    (entry(), {}, ("quadratic", 3, 2, 0, 0, False, MEASURED, ())),
    (entry("linear", 2, None), {}, ("linear", 2, None, 0, 0, False, MEASURED, ())),
    # another method than the measured one: the checkpoint's k and the default groups
    (entry(), {"method": "linear"}, ("linear", 4, None, 0, 0, False, BUILT_IN, ())),
    (entry("linear", 2, None), {"method": "quadratic"}, ("quadratic", 4, None, 0, 0, False, BUILT_IN, ())),
    (entry(), {"method": "quadratic"}, ("quadratic", 3, 2, 0, 0, False, MEASURED, ())),
    # k only: the measured method, its groups while they fit k+1
    (entry(), {"k": 1}, ("quadratic", 1, 2, 0, 0, False, MEASURED, ())),
    (entry(groups=4), {"k": 2}, ("quadratic", 2, None, 0, 0, False, MEASURED, ())),
    (entry("linear", 2, None), {"k": 4}, ("linear", 4, None, 0, 0, False, MEASURED, ())),
    (entry(), {"groups": 1}, ("quadratic", 3, 1, 0, 0, False, MEASURED, ())),
    (entry(), {"method": "quadratic", "k": 4}, ("quadratic", 4, 2, 0, 0, False, MEASURED, ())),
    (entry(groups=4), {"method": "quadratic", "k": 2}, ("quadratic", 2, None, 0, 0, False, BUILT_IN, ())),
    (entry(), {"method": "linear", "k": 2}, ("linear", 2, None, 0, 0, False, EXPLICIT, ())),
    (entry(), {"method": "quadratic", "k": 2, "groups": 3}, ("quadratic", 2, 3, 0, 0, False, EXPLICIT, ())),
    (None, {"method": "quadratic", "k": 2}, ("quadratic", 2, None, 0, 0, False, BUILT_IN, ())),
    # lookup: measured with the measured method, given wins, off where the layout was given or unmeasured
    (entry(lookup=10), {}, ("quadratic", 3, 2, 10, 0, False, MEASURED, ())),
    (entry(groups=None, lookup=10), {"k": 2}, ("quadratic", 2, None, 10, 0, False, MEASURED, ())),
    (entry(lookup=10), {"lookup": 0}, ("quadratic", 3, 2, 0, 0, False, MEASURED, ())),
    (entry(lookup=10), {"method": "linear"}, ("linear", 4, None, 0, 0, False, BUILT_IN, ())),
    (entry(lookup=10), {"method": "linear", "k": 2}, ("linear", 2, None, 0, 0, False, EXPLICIT, ())),
    (None, {"lookup": 6}, ("quadratic", 4, None, 6, 0, False, BUILT_IN, ())),
    # trees: like lookup
    (entry(tree_budget=16), {}, ("quadratic", 3, 2, 0, 16, False, MEASURED, ())),
    (entry(tree_budget=16), {"tree_budget": 0}, ("quadratic", 3, 2, 0, 0, False, MEASURED, ())),
    (entry(tree_budget=16), {"method": "linear"}, ("linear", 4, None, 0, 0, False, BUILT_IN, ())),
    (entry(tree_budget=16), {"method": "quadratic", "k": 2, "groups": 3}, ("quadratic", 2, 3, 0, 0, False, EXPLICIT, ())),
    (None, {"tree_budget": 32}, ("quadratic", 4, None, 0, 32, False, BUILT_IN, ())),
    # cost-awareness: like lookup
    (entry(cost_aware=True), {}, ("quadratic", 3, 2, 0, 0, True, MEASURED, ())),
    (entry(cost_aware=True), {"cost_aware": False}, ("quadratic", 3, 2, 0, 0, False, MEASURED, ())),
    (entry(cost_aware=True), {"method": "linear"}, ("linear", 4, None, 0, 0, False, BUILT_IN, ())),
    (entry(cost_aware=True), {"method": "quadratic", "k": 2, "groups": 3}, ("quadratic", 2, 3, 0, 0, False, EXPLICIT, ())),
    (entry(), {"method": "quadratic", "k": 2, "groups": 3, "cost_aware": True}, ("quadratic", 2, 3, 0, 0, True, EXPLICIT, ())),
    (None, {"cost_aware": True}, ("quadratic", 4, None, 0, 0, True, BUILT_IN, ())),
])
def test_resolver_precedence(model, tmp_path, measured: dict | None, given: dict, expected: tuple) -> None:
    if measured is not None:
        write_decoding_defaults(tmp_path, "cpu", measured)
    assert decoding_settings(model, tmp_path, **given) == expected


def test_resolver_ignores_other_devices_and_stale_entries(model, tmp_path, caplog) -> None:
    assert decoding_settings(model, None) == ("quadratic", 4, None, 0, 0, False, BUILT_IN, ())  # a fresh adapter: no file
    write_decoding_defaults(tmp_path, "cuda", entry("linear", 2, None))
    assert decoding_settings(model, tmp_path) == ("quadratic", 4, None, 0, 0, False, BUILT_IN, ())
    write_decoding_defaults(tmp_path, "cpu", entry("linear", 8, None))
    with caplog.at_level(logging.WARNING, logger="mtp.api"):
        assert decoding_settings(model, tmp_path) == ("quadratic", 4, None, 0, 0, False, BUILT_IN, ())
    assert "k=8 exceeds the checkpoint's k=4" in caplog.text


def test_resolver_datastore(model, tmp_path) -> None:
    """The entry's datastore files, relative to the checkpoint, come with the measured method like lookup;
    given files (or none) win; a fully given layout or another method has none unless given."""
    write_decoding_defaults(tmp_path, "cpu", entry(datastore=["../data/own.jsonl.gz"]))
    measured = decoding_settings(model, tmp_path)
    assert measured.datastore == (str(tmp_path / "../data/own.jsonl.gz"),) and measured.source == MEASURED
    assert decoding_settings(model, tmp_path, datastore=[]).datastore == ()
    assert decoding_settings(model, tmp_path, datastore=["mine.jsonl"]).datastore == ("mine.jsonl",)
    assert decoding_settings(model, tmp_path, method="linear").datastore == ()
    assert decoding_settings(model, tmp_path, method="quadratic", k=2, groups=3).datastore == ()
    assert decoding_settings(model, None, datastore=["mine.jsonl"]) == ("quadratic", 4, None, 0, 0, False, BUILT_IN,
                                                                       ("mine.jsonl",))
