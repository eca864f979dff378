"""python -m mtp distill: malformed lines reported as file:line and skipped; resumable; deterministic;
the bundled training prompts and distilled mixes are disjoint from the eval sets."""

from __future__ import annotations

import gzip
import json
import logging
import os

import pytest

from mtp.__main__ import main as cli
from mtp.data import ASSETS, BUNDLED_TRAIN, EVAL_SETS, _prompt_of, read_prompt_files, read_prompts
from tests.train_helpers import tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny", vocab_size=49152)


def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": "Add 2 and 3."}),
             "{not json",
             json.dumps({"answer": "no prompt field here"}),
             json.dumps({"question": "What is the capital of France?", "domain": "knowledge"}),
             json.dumps({"instruction": "Write a haiku.", "input": "about rain"}),
             json.dumps({"prompt": "Name three colours."})]
    path.write_text("\n".join(lines) + "\n")
    return path


def distill(model_dir, prompts, out, *extra):
    return cli(["distill", "--prompts", str(prompts), "--out", str(out), "--model", str(model_dir),
                "--max-new-tokens", "6", "--batch-size", "1", *extra])


def test_malformed_lines_are_reported_and_skipped(tmp_path, model_dir, caplog):
    out = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="mtp.data"):
        assert distill(model_dir, prompt_file(tmp_path), out) == 0
    assert "prompts.jsonl:2: skipped, not valid JSON" in caplog.text
    assert "prompts.jsonl:3: skipped, no prompt" in caplog.text
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(s["source"] for s in samples) == ["prompts.jsonl:1", "prompts.jsonl:4", "prompts.jsonl:5", "prompts.jsonl:6"]
    assert {s["domain"] for s in samples} == {"general", "knowledge"}
    assert all(1 <= len(s["response_ids"]) <= 6 and s["prompt_ids"] for s in samples)


def test_resumable_after_a_kill_and_deterministic(tmp_path, model_dir):
    prompts = prompt_file(tmp_path)
    whole = tmp_path / "whole.jsonl"
    assert distill(model_dir, prompts, whole) == 0
    again = tmp_path / "again.jsonl"
    assert distill(model_dir, prompts, again) == 0
    assert again.read_text() == whole.read_text()  # deterministic: same selection, order and responses
    # A killed run: two finished lines and a torn third one.
    lines = whole.read_text().splitlines(keepends=True)
    killed = tmp_path / "killed.jsonl"
    killed.write_text("".join(lines[:2]) + lines[2][:25])
    assert distill(model_dir, prompts, killed) == 0
    assert killed.read_text() == whole.read_text()
    # Everything done: a re-run adds nothing.
    assert distill(model_dir, prompts, killed) == 0
    assert killed.read_text() == whole.read_text()


def test_bad_arguments(tmp_path, model_dir, capsys):
    assert distill(model_dir, tmp_path / "missing.jsonl", tmp_path / "o.jsonl") == 2
    assert "prompt file(s) not found" in capsys.readouterr().err
    assert distill(model_dir, prompt_file(tmp_path), tmp_path / "o.jsonl", "--per-domain", "math:3") == 2
    assert "--per-domain expects DOMAIN=N" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_gzipped_prompt_files_are_read(tmp_path):
    plain = prompt_file(tmp_path)
    packed = tmp_path / "prompts.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [(r.prompt, r.domain) for r in read_prompts(packed)] == [(r.prompt, r.domain) for r in read_prompts(plain)]
    assert len(read_prompts(packed)) == 4


def test_bundled_training_data_is_disjoint_from_the_eval_sets():
    # Compared without outer whitespace: the distilled mixes hold prompts as an older reader stripped them.
    eval_prompts = {r.prompt.strip()
                    for r in read_prompt_files([ASSETS / "eval" / f"{name}.jsonl" for name in EVAL_SETS.values()])}
    train = read_prompt_files(BUNDLED_TRAIN)
    assert {r.domain for r in train} == {"math", "code", "chat"}
    assert not eval_prompts & {r.prompt.strip() for r in train}
    mixes = sorted((ASSETS.parent / "distilled").glob("smollm2_*.jsonl.gz"))
    assert mixes and not eval_prompts & {r.prompt.strip() for r in read_prompt_files(mixes)}


SHARED_DATA = ASSETS.parent.parent.parent / "shared" / "data"


@pytest.mark.parametrize("path", sorted(ASSETS.glob("*/*.json*")) + sorted(SHARED_DATA.glob("*/*.json*")),
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_bundled_prompt_files_are_read_verbatim(path):
    """Issue 20: every prompt exactly as the file holds it (the reader stripped them; all 80 HumanEval
    eval prompts and every code stub end in newlines)."""
    raw = path.read_bytes().decode("utf-8")  # strict: the bundled files are valid UTF-8
    objects = json.loads(raw) if path.suffix == ".json" else [json.loads(line) for line in raw.split("\n") if line]
    expected = [prompt for prompt in map(_prompt_of, objects) if prompt is not None and prompt.strip()]
    assert expected and [r.prompt for r in read_prompts(path)] == expected


def test_prompts_keep_their_whitespace_and_whitespace_only_prompts_are_skipped(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "  two leading spaces\n"}) + "\n" + json.dumps({"prompt": " \n\t"}) + "\n"
                    + json.dumps({"prompt": "a\u2028b"}) + "\n")  # U+2028 inside a prompt is no line break
    with caplog.at_level(logging.WARNING, logger="mtp.data"):
        assert [r.prompt for r in read_prompts(path)] == ["  two leading spaces\n", "a\u2028b"]
    assert "p.jsonl:2: skipped, no prompt/question/turns/instruction text (or only whitespace)" in caplog.text


def test_invalid_utf8_is_reported_never_replaced(tmp_path, caplog):
    lines = [json.dumps({"prompt": "fine"}).encode(), b'{"prompt": "caf\xe9"}', json.dumps({"prompt": "also fine"}).encode()]
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="mtp.data"):
        prompts = [r.prompt for r in read_prompts(path)]
    assert prompts == ["fine", "also fine"] and not any("\ufffd" in p for p in prompts)
    assert "latin1.jsonl:2: skipped, not valid UTF-8 (byte 0xe9 at column 16)" in caplog.text
    array = tmp_path / "latin1.json"
    array.write_bytes(b'[{"prompt": "fine"},\n {"prompt": "caf\xe9"}]')
    with pytest.raises(ValueError, match="latin1.json:2: not valid UTF-8"):
        read_prompts(array)


def test_output_problems_are_refused_before_the_model_loads(tmp_path, model_dir, capsys, monkeypatch):
    import mtp.data
    monkeypatch.setattr(mtp.data, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    assert distill(model_dir, prompt_file(tmp_path), tmp_path) == 2
    assert f"--out {tmp_path} is a directory" in capsys.readouterr().err
    read_only = "/sys/mtp-no-such-dir/o.jsonl" if os.geteuid() == 0 else str(tmp_path / "ro" / "o.jsonl")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
    assert distill(model_dir, prompt_file(tmp_path), read_only) == 2
    assert f"cannot write --out {read_only}: cannot write in" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert distill(model_dir, empty, tmp_path / "o.jsonl") == 2
    captured = capsys.readouterr()
    assert "no prompts to distill in" in captured.err and "distilled data" not in captured.out
    assert not (tmp_path / "o.jsonl").exists()


def test_an_output_file_distill_did_not_write_is_left_alone(tmp_path, model_dir, capsys):
    """--out pointing at another JSONL (say the prompts file) once truncated it at its first line."""
    prompts = prompt_file(tmp_path)
    before = prompts.read_bytes()
    assert distill(model_dir, prompts, prompts) == 2
    assert "prompts.jsonl:1: not a sample written by distill" in capsys.readouterr().err
    assert prompts.read_bytes() == before


@pytest.mark.parametrize("name", ["code_python_stdlib", "code_python_packages"])
def test_code_stubs_have_no_bodies(name):
    stubs = read_prompts(ASSETS / "train" / f"{name}.jsonl")
    assert len(stubs) > 1000 and {r.domain for r in stubs} == {"code"}
    for record in stubs:
        code = record.prompt.split("\n\n", 1)[1]
        assert code.startswith("def ") and code.rstrip().endswith('"""'), record.source
        assert code.count('"""') == 2, record.source
