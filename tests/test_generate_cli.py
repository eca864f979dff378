"""`python -m mtp generate`: the issue-4 CLI contract and every bad-input case, through subprocesses.

A tiny random Llama saved with SmolLM2's tokenizer (and an adapter checkpoint for it) keeps the runs
fast; one run uses the default embedded model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mtp import adapter
from mtp.api import DEFAULT_CHECKPOINT
from mtp.config import read_decoding_defaults, write_decoding_defaults
from mtp.models import encode_prompt, load_model

pytestmark = pytest.mark.multiprocess  # every test runs `python -m mtp generate` in a subprocess

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 96
# One thread: tiny models gain nothing from more, and a busy machine makes extra threads spin.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
CONTRACT_FIELDS = {"text", "token_ids", "method", "k", "steps", "new_tokens", "tokens_per_step", "seconds",
                   "tokens_per_second", "accept_counts", "draft_acceptance_rate", "per_offset_acceptance"}


def mtp_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtp", "generate", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, checkpoint dir with k=4, the loaded model) for a tiny Llama with SmolLM2's tokenizer."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = load_model().tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=WINDOW,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model_dir = root / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    loaded = load_model(str(model_dir))
    checkpoint = root / "ckpt"
    adapter.create(loaded.model, loaded.identity, k=4, lora_rank=2).save(checkpoint)
    return model_dir, checkpoint, loaded


def _reference(loaded, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([encode_prompt(loaded.tokenizer, prompt)])
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=loaded.tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_prompts_file_json_contract(tiny, tmp_path) -> None:
    model_dir, checkpoint, loaded = tiny
    prompts = [{"prompt": "Say hello.", "question_id": 7, "category": "chat"},
               {"prompt": "Count to five.", "question_id": 8}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    result = mtp_generate("--prompts-file", str(path), "--model", str(model_dir), "--checkpoint", str(checkpoint),
                          "--method", "linear", "--k", "3", "--max-new-tokens", "9", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2  # exactly one JSON object per prompt, nothing else on stdout
    records = [json.loads(line) for line in lines]
    for prompt, record in zip(prompts, records):
        assert CONTRACT_FIELDS <= set(record)
        assert record["question_id"] == prompt["question_id"] and "prompt" not in record
        assert record["method"] == "linear" and record["k"] == 3
        reference = _reference(loaded, prompt["prompt"], 9)
        assert record["token_ids"] == reference and record["new_tokens"] == len(reference)
        assert record["text"] == loaded.tokenizer.decode(reference, skip_special_tokens=True)
        assert record["steps"] == len(record["accept_counts"])
        assert record["tokens_per_step"] == pytest.approx(record["new_tokens"] / record["steps"])
        assert record["tokens_per_second"] == pytest.approx(record["new_tokens"] / record["seconds"])
        assert len(record["per_offset_acceptance"]) == 3
    assert records[0]["category"] == "chat"


@pytest.mark.slow
def test_tree_budget_decodes_the_same_tokens(tiny, tmp_path) -> None:
    """--tree-budget drafts trees: the JSON says so, the tokens are generate's, the summary names it."""
    model_dir, checkpoint, loaded = tiny
    common = ("--model", str(model_dir), "--checkpoint", str(checkpoint), "--max-new-tokens", "10", "--k", "3")
    result = mtp_generate("--prompt", "Count to five.", *common, "--method", "quadratic", "--groups", "2",
                          "--tree-budget", "12", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["tree_budget"] == 12 and record["token_ids"] == _reference(loaded, "Count to five.", 10)
    result = mtp_generate("--prompt", "Count to five.", *common, "--method", "linear", "--tree-budget", "12")
    assert result.returncode == 0 and " tree=12: 10 tokens in " in result.stderr.splitlines()[-1], result.stderr


def test_datastore_decodes_the_same_tokens(tiny, tmp_path) -> None:
    """--datastore FILE drafts from self-distilled data: the JSON and the summary say so, the tokens are
    generate's; the checkpoint's defaults name their datastore relative to the checkpoint."""
    model_dir, checkpoint, loaded = tiny
    reference = _reference(loaded, "Count to five.", 12)
    data = tmp_path / "own.jsonl"
    sample = {"prompt_ids": encode_prompt(loaded.tokenizer, "Count to five."), "response_ids": reference}
    data.write_text((json.dumps(sample) + "\n") * 2)
    common = ("--prompt", "Count to five.", "--model", str(model_dir), "--max-new-tokens", "12", "--k", "3",
              "--method", "quadratic", "--tree-budget", "4", "--json")
    result = mtp_generate(*common, "--checkpoint", str(checkpoint), "--datastore", str(data))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["datastore"] == str(data) and record["token_ids"] == reference
    assert record["steps"] < 12  # its own answer, drafted back from the datastore
    measured = tmp_path / "measured"
    shutil.copytree(checkpoint, measured)
    write_decoding_defaults(measured, "cpu", {"method": "quadratic", "k": 3, "groups": 1, "tokens_per_step": 2.0,
                                              "machine": "test", "torch_threads": 1, "created": "now",
                                              "command": "test", "datastore": ["../own.jsonl"]})
    result = mtp_generate(*common[:-1], "--checkpoint", str(measured))
    assert result.returncode == 0 and " + datastore: " in result.stderr.splitlines()[-1], result.stderr
    result = mtp_generate(*common, "--checkpoint", str(measured), "--datastore", "none")
    assert result.returncode == 0 and json.loads(result.stdout)["datastore"] is None, result.stderr
    data.unlink()  # the defaults' datastore is gone: decoding goes on without it, and says so
    result = mtp_generate(*common, "--checkpoint", str(measured))
    assert result.returncode == 0 and json.loads(result.stdout)["datastore"] is None, result.stderr
    assert "decoding without the checkpoint's datastore" in result.stderr


@pytest.mark.slow
def test_cost_aware_decodes_the_same_tokens(tiny) -> None:
    """--cost-aware: the JSON and the summary say so, the tokens are generate's."""
    model_dir, checkpoint, loaded = tiny
    common = ("--prompt", "Count to five.", "--model", str(model_dir), "--checkpoint", str(checkpoint),
              "--max-new-tokens", "30", "--k", "3", "--method", "quadratic", "--cost-aware")
    result = mtp_generate(*common, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["cost_aware"] is True and record["token_ids"] == _reference(loaded, "Count to five.", 30)
    result = mtp_generate(*common)
    assert result.returncode == 0 and " cost-aware: " in result.stderr.splitlines()[-1], result.stderr


def test_prompt_streams_text_and_summary(tiny) -> None:
    model_dir, checkpoint, loaded = tiny
    result = mtp_generate("--prompt", "Name a colour.", "--model", str(model_dir), "--checkpoint", str(checkpoint),
                          "--max-new-tokens", "12", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3")
    assert result.returncode == 0, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("quadratic k=4: 12 tokens in ") and "τ" in summary
    assert len(result.stdout.strip()) > 0 and result.stdout.endswith("\n")


@pytest.mark.slow
def test_default_embedded_model() -> None:
    result = mtp_generate("--prompt", "What is 2+2?", "--max-new-tokens", "4", "--json", "--k", "2")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    # --k alone keeps the shipped checkpoint's measured method and its groups while they fit k+1.
    measured = read_decoding_defaults(DEFAULT_CHECKPOINT, "cuda" if torch.cuda.is_available() else "cpu")
    method = measured["method"] if measured else "quadratic"
    groups = measured["groups"] if measured and measured["groups"] and measured["groups"] <= 3 else 3
    assert record["method"] == method and record["k"] == 2 and record["new_tokens"] == 4
    assert record.get("groups") == (groups if method == "quadratic" else None)
    assert record["prompt_tokens"] > 10  # the chat template wrapped the prompt


@pytest.mark.slow
def test_measured_defaults_are_used(tiny, tmp_path) -> None:
    """A checkpoint with a measured entry for this device: no --method/--k/--groups picks it, and says so."""
    model_dir, checkpoint, loaded = tiny
    measured = tmp_path / "ckpt"
    shutil.copytree(checkpoint, measured)
    entry = {"method": "quadratic", "k": 3, "groups": 2, "predicted_tokens_per_second": 50.0,
             "predicted_speedup_vs_autoregressive": 1.3, "tokens_per_step": 1.9, "machine": "Bench CPU",
             "torch_threads": 1, "created": "2025-02-03T04:05:06+00:00", "command": "python -m mtp bench"}
    write_decoding_defaults(measured, "cpu", entry)
    base = ["--prompt", "Say hello.", "--model", str(model_dir), "--checkpoint", str(measured), "--max-new-tokens", "6"]
    result = mtp_generate(*base, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["method"], record["k"], record["groups"]) == ("quadratic", 3, 2)
    assert record["defaults_source"] == "measured on Bench CPU (2025-02-03T04:05:06+00:00)"
    assert record["token_ids"] == _reference(loaded, "Say hello.", 6)
    result = mtp_generate(*base, "--method", "linear", "--json")  # another method: the checkpoint's k
    record = json.loads(result.stdout)
    assert (record["method"], record["k"], record["defaults_source"]) == ("linear", 4, "built-in")
    write_decoding_defaults(measured, "cpu", {**entry, "method": "linear", "k": 2, "groups": None})
    result = mtp_generate(*base)
    assert result.returncode == 0, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("linear k=2: ") and summary.endswith("; defaults: measured on Bench CPU "
                                                                    "(2025-02-03T04:05:06+00:00)")
    result = mtp_generate(*base, "--groups", "2")  # the measured method is linear: --groups does not apply
    assert result.returncode == 2 and "--groups applies to the quadratic method only, not linear" in result.stderr
    # Measured lookup drafts are used (and reported); --lookup 0 turns them off; the output never changes.
    write_decoding_defaults(measured, "cpu", {**entry, "lookup": 10})
    prompt = "Say hello hello hello hello hello."
    record = json.loads(mtp_generate(*base[2:], "--prompt", prompt, "--json").stdout)
    assert (record["method"], record["k"], record["groups"], record["lookup"]) == ("quadratic", 3, 2, 10)
    assert record["token_ids"] == _reference(loaded, prompt, 6)
    record = json.loads(mtp_generate(*base[2:], "--prompt", prompt, "--lookup", "0", "--json").stdout)
    assert record["lookup"] == 0 and record["token_ids"] == _reference(loaded, prompt, 6)
    # A measured cost-aware default likewise, and --no-cost-aware turns it off.
    write_decoding_defaults(measured, "cpu", {**entry, "cost_aware": True})
    record = json.loads(mtp_generate(*base, "--json").stdout)
    assert record["cost_aware"] is True and record["token_ids"] == _reference(loaded, "Say hello.", 6)
    record = json.loads(mtp_generate(*base, "--no-cost-aware", "--json").stdout)
    assert record["cost_aware"] is False and record["defaults_source"] == "measured on Bench CPU (2025-02-03T04:05:06+00:00)"


@pytest.mark.slow
def test_cpu_linear_choice(tiny) -> None:
    """torch's own CPU kernel on request gives the same greedy output; an unknown kernel is refused."""
    model_dir, checkpoint, loaded = tiny
    base = ["--prompt", "Count to five.", "--model", str(model_dir), "--checkpoint", str(checkpoint),
            "--max-new-tokens", "8", "--json"]
    for kernel in ("torch", "onednn"):
        result = mtp_generate(*base, "--cpu-linear", kernel)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["token_ids"] == _reference(loaded, "Count to five.", 8)
    result = mtp_generate(*base, "--cpu-linear", "mkl")
    assert result.returncode == 2 and "argument --cpu-linear: invalid choice: 'mkl'" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--prompt", "  "], "the prompt is empty"),
    (["--prompt", "x", "--temperature", "-0.5"], "--temperature must be >= 0"),
    (["--prompt", "x", "--method", "cubic"], "unknown method 'cubic'"),
    (["--prompt", "x", "--k", "0"], "--k must be at least 1"),
    (["--prompt", "x", "--checkpoint", "/no/such/checkpoint"], "checkpoint directory /no/such/checkpoint does not exist"),
    (["--prompts-file", "/no/such/prompts.jsonl"], "cannot read prompts file"),
    (["--prompt", "x", "--method", "linear", "--groups", "2"], "--groups applies to the quadratic method only"),
    (["--prompt", "x", "--lookup", "-1"], "--lookup must be at least 0"),
    (["--prompt", "x", "--method", "autoregressive", "--lookup", "4"], "--lookup needs a drafting method"),
    (["--prompt", "x", "--temperature", "nan"], "--temperature must be a finite number"),
    (["--prompt", "x", "--temperature", "inf"], "--temperature must be a finite number"),
    (["--prompt", "x", "--top-p", "nan"], "--top-p must be a finite number"),
    (["--prompt", "x", "--top-k", "0"], "--top-k must be at least 1"),
    (["--prompt", "x", "--tree-budget", "300"], "--tree-budget must be between 0 and 256"),
    (["--prompt", "x", "--method", "autoregressive", "--tree-budget", "8"], "--tree-budget needs a drafting method"),
    (["--prompt", "x", "--datastore", "/no/such/data.jsonl.gz"], "--datastore: /no/such/data.jsonl.gz is not a file"),
    (["--prompt", "x", "--method", "autoregressive", "--datastore", "README.md"], "--datastore needs a drafting method"),
])
def test_bad_input_before_loading(args: list[str], message: str) -> None:
    result = mtp_generate(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert result.stdout == "" and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr


@pytest.mark.parametrize("case", ["k_too_large", "prompt_too_long", "no_prompts", "bad_config", "bad_datastore"])
def test_bad_input_needing_the_model(tiny, tmp_path, case: str) -> None:
    model_dir, checkpoint, _ = tiny
    base = ["--model", str(model_dir), "--checkpoint", str(checkpoint)]
    if case == "k_too_large":
        result, message = mtp_generate("--prompt", "hi", "--k", "5", *base), "--k must be between 1 and 4, got 5"
    elif case == "prompt_too_long":
        result = mtp_generate("--prompt", "word " * 200, *base)
        message = f"more than the model's context window of {WINDOW}"
    elif case == "bad_config":  # issue 20: a wrongly typed field was a traceback
        broken = tmp_path / "broken"
        shutil.copytree(checkpoint, broken)
        config = json.loads((broken / adapter.CONFIG_FILE).read_text())
        (broken / adapter.CONFIG_FILE).write_text(json.dumps({**config, "base": "smollm2"}))
        result = mtp_generate("--prompt", "hi", "--model", str(model_dir), "--checkpoint", str(broken))
        message = "holds an invalid config: base must be an object"
    elif case == "bad_datastore":
        path = tmp_path / "prompts.jsonl"  # prompts, not self-distilled data
        path.write_text('{"prompt": "hi"}\n')
        result = mtp_generate("--prompt", "hi", *base, "--datastore", str(path))
        message = "--datastore: " + f"{path} holds no sample longer than 3 tokens"
    else:
        path = tmp_path / "bad.jsonl"
        path.write_text('{"text": "no prompt field"}\nnot json\n')
        result, message = mtp_generate("--prompts-file", str(path), *base), "holds no prompts"
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_prompts_file_is_read_verbatim_like_prompt(tmp_path) -> None:
    """Issue 20: --prompts-file stripped each prompt, so a code stub ending in newlines got other tokens
    than --prompt with the same text. Embedded model: the shipped tokenizer and chat template."""
    text = '  def add(a, b):\n    """Return a + b."""\n\n'
    path = tmp_path / "stub.jsonl"
    path.write_text(json.dumps({"prompt": text}) + "\n")
    common = ("--max-new-tokens", "3", "--method", "autoregressive", "--json")
    from_file = mtp_generate("--prompts-file", str(path), *common)
    given = mtp_generate("--prompt", text, *common)
    assert from_file.returncode == 0 and given.returncode == 0, from_file.stderr + given.stderr
    file_record, prompt_record = json.loads(from_file.stdout), json.loads(given.stdout)
    assert file_record["token_ids"] == prompt_record["token_ids"]
    assert file_record["prompt_tokens"] == prompt_record["prompt_tokens"]
    tokenizer = load_model().tokenizer  # the whitespace really is part of the prompt
    assert len(encode_prompt(tokenizer, text)) == prompt_record["prompt_tokens"] != len(encode_prompt(tokenizer, text.strip()))
