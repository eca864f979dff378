"""The demo's parts without a server: offered choices, race lanes, the machine lock, the speed picture's data."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import gradio as gr
import pytest

from mtp import adapter
from mtp.api import BUILT_IN, DEFAULT_CHECKPOINT, DecodingSettings
from mtp.demo import race, speed
from mtp.demo.checks import check_int, check_temperature, friendly
from mtp.demo.compute import on_own_thread, on_torch_thread
from mtp.demo.handlers import Demo
from mtp.demo.store import FRESH, ModelStore, checkpoint_choices
from mtp.models import EMBEDDED_NAME
from tests.app_helpers import autoregressive_trace, recorded_trace
from tests.train_helpers import tiny_loaded

MEASURED = DecodingSettings("quadratic", 4, 1, 10, 0, False, "measured on AMD EPYC (2026-11-26)")


def fake_checkpoint(folder: Path) -> Path:
    """The shipped checkpoint's config beside a link to its weights: a real checkpoint, cheaply."""
    folder.mkdir(parents=True)
    shutil.copy(DEFAULT_CHECKPOINT / adapter.CONFIG_FILE, folder / adapter.CONFIG_FILE)
    (folder / adapter.WEIGHTS_FILE).symlink_to(DEFAULT_CHECKPOINT / adapter.WEIGHTS_FILE)
    return folder


def test_checkpoint_list_hides_staging_copies_and_train_state(tmp_path):
    run = fake_checkpoint(tmp_path / "ui-1")
    fake_checkpoint(run / "train_state")
    fake_checkpoint(tmp_path / f".ui-2.tmp-{os.getpid()}-abc")  # a save in progress (this process is alive)
    choices = checkpoint_choices(EMBEDDED_NAME, [], tmp_path)
    assert [c for c in choices if "ui-" in c or "train_state" in c] == [str(run)]
    assert choices[-1] == FRESH and choices.count(str(run)) == 1


def test_handlers_accept_only_offered_choices(tmp_path):
    demo = Demo(ModelStore("cpu"), [EMBEDDED_NAME], [], tmp_path)
    elsewhere = fake_checkpoint(tmp_path.parent / f"{tmp_path.name}-elsewhere")  # a checkpoint, but not offered
    with pytest.raises(gr.Error, match="unknown checkpoint"):
        demo.checkpoint_dir(EMBEDDED_NAME, str(elsewhere))
    with pytest.raises(gr.Error, match="unknown model"):
        demo.checkpoint_dir("org/other", FRESH)
    # The Train tab's start_from goes through the same check before anything starts.
    with pytest.raises(gr.Error, match="unknown checkpoint"):
        demo.train_start(EMBEDDED_NAME, 2, 2, "mix of all three", 2, str(elsewhere), None)
    assert demo.training.phase == "idle"
    trained = fake_checkpoint(tmp_path / "ui-7")  # trained since the page was built: offered at once
    assert demo.checkpoint_dir(EMBEDDED_NAME, str(trained)) == trained


def test_status_says_when_prompts_go_in_raw(tmp_path):
    """A base model (no chat template, as Gemma 3 270M's GGUF) gets the prompt as text to continue: the
    status line says so; a chat model's does not."""
    loaded = tiny_loaded()
    model = adapter.create(loaded.model, loaded.identity, k=2, lora_rank=4).eval()
    store = ModelStore("cpu")
    demo = Demo(store, ["tiny"], [], tmp_path)

    class Tokenizer:
        chat_template = None

    store._models[("tiny", FRESH)] = (model, Tokenizer())
    assert "prompts go in raw" in demo.status("tiny", FRESH)
    Tokenizer.chat_template = "{{ messages }}"
    assert "prompts go in raw" not in demo.status("tiny", FRESH) and "Ready" in demo.status("tiny", FRESH)


def test_user_errors_are_one_log_line(caplog):
    caplog.set_level(logging.INFO, logger="mtp.app")
    @friendly
    def handler(value):
        return check_int(value, "steps", 1, 5)

    with pytest.raises(gr.Error, match="steps must be a whole number from 1 to 5"):
        handler(9)
    with pytest.raises(gr.Error, match="temperature must be a finite number"):
        friendly(check_temperature)("nan")
    refused = [r for r in caplog.records if r.name == "mtp.app"]
    assert len(refused) == 2 and all(r.exc_info is None and "\n" not in r.getMessage() for r in refused)


def test_race_lanes_name_their_settings():
    lanes = race.race_lanes(4, MEASURED)
    assert [lane.slot for lane in lanes] == list(race.SLOTS)
    auto, linear, paper, tree, default = lanes
    assert (paper.method, paper.k, paper.groups, paper.lookup, paper.tree_budget) == ("quadratic", 4, 5, 0, 0)
    assert (tree.method, tree.k, tree.groups, tree.lookup, tree.tree_budget) == ("quadratic", 4, 5, 0, 16)
    assert "a draft tree of up to 16 nodes" in tree.settings and "tree" not in paper.settings
    assert (default.method, default.k, default.groups, default.lookup) == ("quadratic", 4, 1, 10)
    assert "5 mask groups (all k+1)" in paper.settings and "no lookup" in paper.settings
    assert "1 mask group " in default.settings + " " and "up to 10 lookup drafts" in default.settings
    assert "k = 4" in linear.settings and "drafts" in auto.settings
    assert default.details() == {"lane": "measured default", "groups": "1", "lookup": 10, "tree": "–"}
    # Without measured defaults (or when they equal a lane) there is no default lane.
    assert len(race.race_lanes(4, DecodingSettings("quadratic", 4, None, 0, 0, False, BUILT_IN))) == 4
    assert len(race.race_lanes(4, MEASURED._replace(groups=5, lookup=0))) == 4
    assert len(race.race_lanes(4, MEASURED._replace(groups=5, lookup=0, tree_budget=16))) == 4
    assert race.race_lanes(4, MEASURED._replace(tree_budget=8))[-1].details()["tree"] == 8
    # A cost-aware default is a lane of its own, even where its layout equals another lane's.
    aware = race.race_lanes(4, MEASURED._replace(groups=5, lookup=0, cost_aware=True))
    assert len(aware) == 5 and aware[-1].cost_aware and "mask groups only while they pay" in aware[-1].settings
    # So is a default with datastore drafts; it decodes with the measured files.
    stored = race.race_lanes(4, MEASURED._replace(groups=5, lookup=0, datastore=("data.jsonl.gz",)))
    assert len(stored) == 5 and stored[-1].datastore == ("data.jsonl.gz",) and "datastore drafts" in stored[-1].settings


def test_machine_serialises_races_and_sees_other_requests():
    machine = race.Machine()
    mark = machine.mark()
    assert not machine.disturbed_since(mark)
    with machine.busy():
        assert machine.disturbed_since(mark)
    assert machine.disturbed_since(mark) and not machine.disturbed_since(machine.mark())
    order = []
    assert machine.race.acquire(blocking=False)
    second = threading.Thread(target=lambda: (machine.race.acquire(), order.append("second"), machine.race.release()))
    second.start()
    second.join(0.2)
    order.append("first")
    machine.race.release()
    second.join()
    assert order == ["first", "second"]


def test_decode_rate_leaves_out_the_prefill():
    trace = recorded_trace()  # 9 tokens; the prefill took 0.20 s, the other three passes 0.30 s
    assert race.decode_rate(trace) == pytest.approx(8 / 0.30)
    assert race.identity_verdict({"autoregressive": autoregressive_trace(trace.token_ids), "q": trace}).startswith("✅")
    other = autoregressive_trace(trace.token_ids[:4] + [0] + trace.token_ids[5:])
    assert "first at token 4" in race.identity_verdict({"autoregressive": trace, "x": other})


def curve() -> dict:
    shapes = lambda k, s: {"autoregressive": {"input_length": 1, "seconds": 0.03},  # noqa: E731
                           "draftless": {"input_length": k + 1, "seconds": s},
                           "linear": {"input_length": 2 * k + 1, "seconds": s},
                           **{f"quadratic g={g}": {"input_length": k + 1 + g * k, "seconds": s + 0.01 * g}
                              for g in range(1, k + 2)}}
    return {"step_seconds": {"1": shapes(1, 0.04), "2": shapes(2, 0.05)}, "drafting_seconds": {"1": 0.001, "2": 0.002},
            "backbone_seconds": {"1": 0.025, "10": 0.03, "100": 0.1}}


def test_one_pass_curve_prices_every_pass_as_one_token():
    flat = speed.one_pass_curve(curve())
    assert {s["seconds"] for shapes in flat["step_seconds"].values() for s in shapes.values()} == {0.03}
    assert set(flat["backbone_seconds"].values()) == {0.025} and flat["drafting_seconds"] == curve()["drafting_seconds"]
    assert list(speed.up_to_k(curve(), 1)["step_seconds"]) == ["1"]


def test_predicted_lines_pick_each_lanes_layout():
    candidates = [{"method": "autoregressive", "k": None, "groups": None, "lookup": 0, "predicted_tokens_per_second": 30}]
    for k in (1, 2):
        candidates += [{"method": "linear", "k": k, "groups": None, "lookup": 0, "predicted_tokens_per_second": 40 + k}]
        candidates += [{"method": "quadratic", "k": k, "groups": g, "lookup": lookup,
                        "predicted_tokens_per_second": 50 + 10 * k + g + lookup} for g in range(1, k + 2) for lookup in (0, 10)]
    assert speed._pick(candidates, speed.LineSpec("paper", "quadratic", None, 0)) == [(1, 62), (2, 73)]
    assert speed._pick(candidates, speed.LineSpec("default", "quadratic", 1, 10)) == [(1, 71), (2, 81)]
    assert speed._pick(candidates, speed.LineSpec("linear", "linear", None, 0)) == [(1, 41), (2, 42)]
    trees = [{**c, "tree_budget": 8, "predicted_tokens_per_second": c["predicted_tokens_per_second"] + 100}
             for c in candidates if c["method"] == "quadratic"]
    assert speed._pick(candidates + trees, speed.LineSpec("tree", "quadratic", None, 0, 8)) == [(1, 162), (2, 173)]
    assert speed._pick(candidates + trees, speed.LineSpec("paper", "quadratic", None, 0)) == [(1, 62), (2, 73)]


def test_measured_cost_curve_is_the_committed_one_for_the_embedded_model():
    cost = speed.measured_cost_curve(EMBEDDED_NAME)
    assert cost is not None and "AMD EPYC" in cost.where and set(cost.curve["step_seconds"]) >= {"1", "4", "8"}
    assert speed.measured_cost_curve("org/other-model") is None


def test_model_calls_run_on_one_thread_whoever_calls():
    """Every handler thread's model call lands on the same thread (one OpenMP pool, docs in
    mtp/demo/compute.py); results and errors come back to the caller."""
    names = []
    callers = [threading.Thread(target=lambda: names.append(on_torch_thread(lambda: threading.current_thread().name)))
               for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(names) == 4 and len(set(names)) == 1 and names[0].startswith("mtp-torch")
    assert on_torch_thread(sum, [1, 2], start=3) == 6
    with pytest.raises(ValueError, match="invalid literal"):
        on_torch_thread(int, "x")


def test_model_loading_runs_on_a_thread_that_ends_with_it():
    """Loading does not queue behind decoding, and its thread (with its OpenMP pool) is gone afterwards."""
    seen = []
    assert on_own_thread(lambda: seen.append(threading.current_thread()) or 7) == 7
    assert seen[0].name.startswith("mtp-load") and not seen[0].is_alive()
