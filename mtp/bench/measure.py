"""Measuring: each run decoded on each prompt and timed from outside, interleaved per prompt in a shuffled
order so every method shares the same noise; greedy outputs checked token for token against the
baseline (transformers' own `generate`); finished prompts streamed to a partial file for --resume;
the machine a measurement was made on."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from .. import acceptance, decoding
from ..adapter import MTPModel
from ..api import load_datastore
from ..data import PromptRecord
from ..models import encode_prompt
from ..options import eos_token_ids
from .runs import BASELINE, Run, Settings, run_name, runs_of, tree_configs

PARTIAL_FILE = "partial.jsonl"  # finished prompts of a run in progress, for --resume


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timer around it measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        sync(device)
        start = time.perf_counter()
        output = base.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, temperature=None,
            top_p=None, top_k=None, max_new_tokens=settings.max_new_tokens, eos_token_id=eos,
            pad_token_id=pad, **extra)
        sync(device)
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    token_ids = output[0, len(prompt_ids):].tolist()
    return {"token_ids": token_ids, "new_tokens": len(token_ids), "steps": passes[0], "seconds": seconds}


def run_mtp(model: MTPModel, prompt_ids: list[int], run: Run, settings: Settings, eos: list[int]) -> dict:
    """One engine generation, timed from outside like the baseline; the trace's metrics kept."""
    device = model.mask_embeddings.device
    sync(device)
    start = time.perf_counter()
    trace = decoding.generate(
        model, prompt_ids, method=run.method, k=run.k, max_new_tokens=settings.max_new_tokens, eos_token_ids=eos,
        use_sampler=settings.use_sampler, lookup=settings.prompt_lookup_tokens if run.lookup else 0,
        groups=run.groups, tree_budget=run.tree_budget, cost_aware=run.cost_aware,
        datastore=load_datastore(model, settings.datastore_files) if run.datastore else None)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "token_ids": trace.token_ids, "new_tokens": trace.new_tokens, "steps": trace.forward_passes,
        "seconds": seconds, "accept_counts": trace.accept_counts,
        "proposed_counts": [step.depth for step in trace.steps],  # how far ahead each pass's drafts reach
        "looked_up": [step.looked_up for step in trace.steps],
        "input_lengths": [step.input_length for step in trace.steps],
        "step_seconds": [round(step.seconds, 6) for step in trace.steps],
    }


def measure_run(model: MTPModel, prompt_ids: list[int], run: Run, settings: Settings, eos: list[int], pad: int) -> dict:
    """One timed generation of `run`: the baseline and prompt lookup by transformers, the rest by the engine."""
    if run.method == BASELINE:
        return run_generate(model, prompt_ids, settings, eos, pad)
    if run.method == "prompt_lookup":
        return run_generate(model, prompt_ids, settings, eos, pad, prompt_lookup=True)
    return run_mtp(model, prompt_ids, run, settings, eos)


def first_mismatch(tokens: list[int], reference: list[int]) -> int | None:
    """Index of the first differing token (or of the shorter end); None when identical."""
    for index, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return index
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


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
        measured[run] = measure_run(model, prompt_ids, run, settings, eos, pad)
        bar.update()
    baseline = measured.pop(Run(BASELINE))
    entry = {"key": _prompt_key(record), "domain": record.domain, "source": record.source,
             "prompt_tokens": len(prompt_ids), "baseline": baseline, "runs": []}
    for name in runs_of(settings):
        run = measured[name]
        run.update(method=name.method, k=name.k, lookup=name.lookup, tree_budget=name.tree_budget, groups=name.groups,
                   cost_aware=name.cost_aware, datastore=name.datastore, mismatch_at=first_mismatch(run["token_ids"], baseline["token_ids"]))
        if run["mismatch_at"] is None:
            del run["token_ids"]  # the baseline's tokens; kept only where they differ
        entry["runs"].append(run)
    if settings.tau_table_k and baseline["token_ids"]:
        bar.set_postfix_str(f"{record.domain} teacher-forced drafts")
        entry["draft_matches"] = acceptance.draft_matches(model, prompt_ids + baseline["token_ids"], len(prompt_ids),
                                                          trees=tree_configs(settings),
                                                          lookup=settings.prompt_lookup_tokens)
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
        measure_run(model, encoded[0], run, warm, eos, pad)
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


def machine_info(device: torch.device, cpu_linear: str) -> dict:
    """Where the numbers were measured: CPU/GPU, library versions, threads, load and the git commit."""
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
        root = Path(__file__).resolve().parents[2]  # the checkout: mtp/bench/measure.py
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


