"""Issue 20: run directories that are never stuck or lost, whatever point of a save fails or is killed;
bad input (data, checkpoints, resume state, output paths) refused with one message.

The fault-injection tests count every write and rename a training run makes (os.replace, os.mkdir,
Path.write_text, Path.write_bytes, safetensors save_file, torch.save, shutil.copy2, shutil.rmtree) and
fail the Nth, for every N: once by raising in-process, once by killing a forked copy of the run with os._exit.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from mtp import adapter, atomic
from mtp.train import checkpoint, loop
from mtp.train import data as train_data
from mtp.config import CheckpointError
from mtp.train import LOG_FILE, STATE_DIR, TrainConfig, TrainError, load_sequences, read_log, train
from tests.train_helpers import tiny_loaded, write_data

STEPS, SAVE_EVERY = 2, 1
FAULT_POINTS = [(os, "replace"), (os, "mkdir"), (Path, "write_text"), (Path, "write_bytes"),
                (checkpoint, "save_file"), (torch, "save"), (shutil, "copy2"), (shutil, "rmtree")]


def run_config(tmp_path: Path, name: str) -> TrainConfig:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        write_data(data)
    return TrainConfig(data=str(data), out=str(tmp_path / name), k=2, lora_rank=4, anchors_per_seq=4,
                       warmup_steps=1, lr=1e-2, batch_size=2, steps=STEPS, save_every=SAVE_EVERY)


class Injected(Exception):
    """Not an OSError: `Path.mkdir(exist_ok=True)` would swallow one where the folder exists."""


class Faults:
    """Counts the calls to FAULT_POINTS; the Nth one runs `fault` (raise or exit) instead."""

    def __init__(self, monkeypatch, fail_at: int | None, fault) -> None:
        self.calls, self.fail_at, self.fault, self.ends_of_saves = 0, fail_at, fault, []
        for owner, name in FAULT_POINTS:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name)))
        save = loop.save_checkpoint

        def counted_save(*args, **kwargs):
            save(*args, **kwargs)
            self.ends_of_saves.append(self.calls)
        monkeypatch.setattr(loop, "save_checkpoint", counted_save)

    def _wrap(self, function):
        def wrapper(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                self.fault()
            return function(*args, **kwargs)
        return wrapper


def raise_injected():
    raise Injected("injected fault")


def weights(out: Path) -> dict[str, torch.Tensor]:
    loaded = tiny_loaded()
    return adapter.load(out, loaded.model, loaded.identity).trainable_state_dict()


@pytest.fixture
def baseline(tmp_path, monkeypatch):
    """An uninterrupted run, its final weights, and the fault counter's value at the end of each save.
    One thread throughout: the forked runs use one (threads after a fork are unsafe), and a different
    thread count changes the float sums, so the weights would not compare exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with monkeypatch.context() as patch:
        faults = Faults(patch, None, raise_injected)
        out = train(run_config(tmp_path, "baseline"), loaded=tiny_loaded(), progress=False)
    assert len(faults.ends_of_saves) == STEPS // SAVE_EVERY
    yield out, weights(out), faults.ends_of_saves, faults.calls
    torch.set_num_threads(threads)


def continue_after_fault(config: TrainConfig, saves_done: int) -> list[dict]:
    """What a user does next: --resume when the run has a checkpoint, else the same command again.
    Returns the log records of that continuation."""
    out = Path(config.out)
    # A kill between the renames of a save leaves the checkpoint in .NAME.new-PID or .NAME.old-PID only.
    copies = [out] + [p for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.new-", f".{out.name}.old-"))]
    checkpointed = any((copy / STATE_DIR / "state.json").exists() for copy in copies)
    records = []
    if checkpointed:
        train(config, on_log=records.append, resume=True, loaded=tiny_loaded(), progress=False)
        # Never silently from step 0: at least the last completed save's step is kept.
        assert records == [] or records[0]["step"] > saves_done * SAVE_EVERY, (saves_done, records[:1])
    else:
        assert saves_done == 0, "a completed checkpoint was lost"
        train(config, on_log=records.append, loaded=tiny_loaded(), progress=False)
        assert records[0]["step"] == 1
    return records


def check_same_as_baseline(out: Path, baseline_out: Path, expected: dict[str, torch.Tensor]) -> None:
    """The continued run ends exactly where the uninterrupted one did: same log, same weights."""
    got = read_log(out / LOG_FILE)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in read_log(baseline_out / LOG_FILE)]
    final = weights(out)
    assert all(torch.equal(expected[name], final[name]) for name in expected)
    assert json.loads((out / STATE_DIR / "state.json").read_text())["step"] == STEPS
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # recover() cleaned every staging copy
    assert out in adapter.checkpoint_dirs(out.parent)


@pytest.mark.slow
def test_a_failure_at_every_write_or_rename_leaves_a_resumable_run(tmp_path, monkeypatch, baseline):
    baseline_out, expected, ends_of_saves, total = baseline
    for fail_at in range(1, total + 1):
        config = run_config(tmp_path, f"fail{fail_at}")
        with monkeypatch.context() as patch:
            Faults(patch, fail_at, raise_injected)
            with pytest.raises(Injected):
                train(config, loaded=tiny_loaded(), progress=False)
                pytest.fail(f"write/rename {fail_at} did not fail")
        saves_done = sum(end < fail_at for end in ends_of_saves)
        continue_after_fault(config, saves_done)
        check_same_as_baseline(Path(config.out), baseline_out, expected)
        shutil.rmtree(config.out)


@pytest.mark.slow
@pytest.mark.multiprocess  # forks the run
def test_a_kill_at_every_write_or_rename_leaves_a_resumable_run(tmp_path, monkeypatch, baseline):
    """The run is forked and the child dies with os._exit at the Nth write/rename: no cleanup code runs."""
    baseline_out, expected, ends_of_saves, total = baseline
    for fail_at in range(1, total + 1):
        config = run_config(tmp_path, f"kill{fail_at}")
        child = os.fork()
        if child == 0:  # the doomed run: it never returns to pytest
            try:
                Faults(monkeypatch, fail_at, lambda: os._exit(9))
                train(config, loaded=tiny_loaded(), progress=False)
            finally:
                os._exit(3)  # reached only if the run outlived its fault point
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 9, f"the run was not killed at write/rename {fail_at}"
        saves_done = sum(end < fail_at for end in ends_of_saves)
        continue_after_fault(config, saves_done)
        check_same_as_baseline(Path(config.out), baseline_out, expected)
        shutil.rmtree(config.out)


def test_kill_between_the_renames_of_a_save_is_recovered_and_never_listed(tmp_path):
    """The exact state issue 20 found: NAME gone, its data in hidden .NAME.old-PID / .NAME.new-PID dirs."""
    root = tmp_path / "checkpoints"
    loaded = tiny_loaded()
    saved = adapter.create(loaded.model, loaded.identity, k=2, lora_rank=4).save(root / "mine")
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    os.replace(saved, root / f".mine.old-{dead}")
    shutil.copytree(root / f".mine.old-{dead}", root / f".mine.new-{dead}")
    (root / f".mine.tmp-{dead}-x").mkdir()
    assert not adapter.is_checkpoint(root / f".mine.new-{dead}")  # a staging copy is no checkpoint
    assert adapter.checkpoint_dirs(root) == [root / "mine"]  # restored, and only it is listed
    assert sorted(p.name for p in root.iterdir()) == ["mine"]
    adapter.load(root / "mine", tiny_loaded().model, loaded.identity)


def test_saved_directories_and_files_follow_the_umask(tmp_path):
    """Issue 20: saved run directories were 0700 (tempfile.mkdtemp), so other users could not read them."""
    old_umask = os.umask(0o022)
    try:
        loaded = tiny_loaded()
        saved = adapter.create(loaded.model, loaded.identity, k=2, lora_rank=4).save(tmp_path / "mine")
    finally:
        os.umask(old_umask)
    assert saved.stat().st_mode & 0o777 == 0o755
    assert {path.stat().st_mode & 0o777 for path in saved.iterdir() if path.is_file()} == {0o644}


def test_run_stopped_before_its_first_checkpoint_restarts_or_resumes(tmp_path, caplog):
    config = run_config(tmp_path, "early")
    config.save_every = 100

    def crash(record):
        raise Injected("killed at step 1")
    with pytest.raises(Injected):
        train(config, on_log=crash, loaded=tiny_loaded(), progress=False)
    assert (Path(config.out) / LOG_FILE).exists() and not (Path(config.out) / STATE_DIR).exists()
    with caplog.at_level(logging.WARNING, logger="mtp.train"):
        train(config, resume=True, loaded=tiny_loaded(), progress=False)  # said, not silent
    assert "stopped before its first checkpoint: starting it over from step 0" in caplog.text
    shutil.rmtree(Path(config.out) / STATE_DIR)
    (Path(config.out) / adapter.CONFIG_FILE).unlink()
    (Path(config.out) / adapter.WEIGHTS_FILE).unlink()
    train(config, loaded=tiny_loaded(), progress=False)  # the same command again also works
    assert [r["step"] for r in read_log(Path(config.out) / LOG_FILE)] == list(range(1, STEPS + 1))


def test_malicious_optimizer_state_is_refused_with_one_message(tmp_path):
    config = run_config(tmp_path, "run")
    config.steps = 2
    out = train(config, loaded=tiny_loaded(), progress=False)

    class Payload:
        def __reduce__(self):
            return os.getcwd, ()  # a harmless call; any global outside torch's allowlist is refused
    (out / STATE_DIR / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload()}))
    config.steps = 4
    with pytest.raises(TrainError) as caught:
        train(config, resume=True, loaded=tiny_loaded(), progress=False)
    message = str(caught.value)
    assert "optimizer.pt holds objects other than tensors" in message and "weights_only" not in message


@pytest.mark.parametrize("state, message", [
    ({"step": "3", "num_sequences": 4, "config": {}}, "state.json has step '3'"),
    ({"step": -1, "num_sequences": 4, "config": {}}, "state.json has step -1"),
    ([1, 2], "state.json is not a JSON object"),
])
def test_bad_state_json_is_refused(tmp_path, state, message):
    config = run_config(tmp_path, "run")
    out = train(config, loaded=tiny_loaded(), progress=False)
    (out / STATE_DIR / "state.json").write_text(json.dumps(state))
    with pytest.raises(TrainError, match=message):
        train(config, resume=True, loaded=tiny_loaded(), progress=False)


# -- training data ------------------------------------------------------------------------------------
def test_bad_distilled_lines_are_skipped_with_file_and_line(tmp_path, caplog):
    good = {"prompt_ids": [1, 2, 3], "response_ids": [4, 5, 6, 7]}
    lines = [json.dumps(good).encode(),
             b'{"prompt_ids": [1, 2], "response_ids": [3, "4"]}',
             b'{"prompt_ids": [1, -2], "response_ids": [3, 4]}',
             b'{"prompt_ids": [1, true], "response_ids": [3, 4]}',
             b'{"prompt_ids": "1 2", "response_ids": [3, 4]}',
             b'{"prompt_ids": [1, 2], "response_ids": [300]}',  # outside the tiny model's vocabulary of 128
             b'{"prompt_ids": [1, 2], "response_ids": [3], "note": "caf\xe9"}',  # Latin-1, not UTF-8
             b"[1, 2]",
             json.dumps(good).encode()]
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        assert len(load_sequences(data, 768)) == 3
        config = run_config(tmp_path, "run")
        config.data, config.steps = str(data), 1
        train(config, loaded=tiny_loaded(), progress=False)
    for number, reason in [(2, "response_ids holds '4'"), (3, "prompt_ids holds -2"), (4, "prompt_ids holds True"),
                           (5, "prompt_ids not a non-empty list"), (6, "token id 300 is outside the model's vocabulary"),
                           (7, "not valid UTF-8 (byte 0xe9"), (8, "not a JSON object")]:
        assert f"data.jsonl:{number}: skipped" in caplog.text and reason in caplog.text, (number, caplog.text)
    assert "Traceback" not in caplog.text


def test_data_outside_the_vocabulary_only_is_refused(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt_ids": [1, 2], "response_ids": [500, 501]}) + "\n")
    config = run_config(tmp_path, "run")
    config.data = str(data)
    with pytest.raises(TrainError, match="no sample within the model's vocabulary of 128 tokens"):
        train(config, loaded=tiny_loaded(), progress=False)
    assert not Path(config.out).exists()


def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write in: root ignores permission bits, but not sysfs."""
    if os.geteuid() == 0:
        return Path("/sys/mtp-no-such-dir")
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o500)
    return path


def test_read_only_out_is_refused_before_anything_loads(tmp_path, monkeypatch):
    out = read_only_dir(tmp_path) / "run"
    if atomic.writable_problem(out) is None:
        pytest.skip("no read-only location on this machine")
    monkeypatch.setattr(train_data, "load_sequences", lambda *a: pytest.fail("data loaded before the check"))
    config = run_config(tmp_path, "x")
    config.out = str(out)
    with pytest.raises(TrainError, match="cannot write the run to .*: cannot write in"):
        train(config, loaded=tiny_loaded(), progress=False)


# -- checkpoints ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("base", "smollm2", "base must be an object"),
    ("base", {"name": "x", "config_hash": "y"}, "base must have exactly the fields"),
    ("base", {"name": "x", "config_hash": "y", "vocab_size": "128"}, "base.vocab_size must be a positive integer"),
    ("k", "8", "k must be an integer"),
    ("k", True, "k must be an integer"),
    ("k", 0, "k must be at least 1"),
    ("lora_rank", 2.5, "lora_rank must be an integer"),
    ("lora_alpha", float("nan"), "lora_alpha must be a finite number"),
    ("lora_alpha", -1, "lora_alpha must be positive"),
    ("lora_targets", "q_proj", "lora_targets must be a non-empty list"),
    ("lora_targets", [], "lora_targets must be a non-empty list"),
    ("sampler", "yes", "sampler must be true or false"),
    ("sampler_hidden", -3, "sampler_hidden must be at least 0"),
    ("extra", [1], "extra must be a JSON object"),
    ("format_version", 0, "format_version must be at least 1"),
])
def test_wrongly_typed_checkpoint_config_is_one_checkpoint_error(tmp_path, field, value, message):
    loaded = tiny_loaded()
    saved = adapter.create(loaded.model, loaded.identity, k=2, lora_rank=4).save(tmp_path / "ck")
    path = saved / adapter.CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    fresh = tiny_loaded()
    with pytest.raises(CheckpointError, match="holds an invalid config: ") as caught:
        adapter.load(saved, fresh.model, fresh.identity)
    assert message in str(caught.value) and "\n" not in str(caught.value)
