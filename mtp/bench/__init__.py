"""Benchmark: τ, tokens/s and wall-clock speedup of MTP decoding against transformers' own generate.

Per prompt, interleaved so every method shares the same noise: the baseline
`model.base.generate(do_sample=False)` (greedy, KV cache), transformers' prompt-lookup decoding,
then each (method, k[, lookup]) of the engine, in a per-prompt shuffled order. Greedy outputs are checked
token for token against the baseline. The cost curve times single forward passes on a warm cache;
crossed with the measured acceptance it picks the fastest MTP (method, k, groups) for this device.

By job: runs (settings, what is measured), measure (decoding and timing each prompt), summary
(aggregates and replayed τ tables), autotune (cost curve, predictions, defaults) and report (the
pages written); `benchmark` below runs them in that order.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..adapter import MTPModel
from ..data import PromptRecord
from ..models import cpu_linear_of
from .autotune import TREE_GROUPS, choose_decoded_defaults, choose_defaults, cost_curve, predict
from .measure import PARTIAL_FILE, PartialMismatch, bench_prompts, first_mismatch, machine_info, read_partial
from .report import write_outputs
from .runs import METHODS, Settings, limit_per_domain, run_name, run_of, runs_of, tree_configs
from .summary import mismatches, summarize

# What the CLI, the demo and the tests use, importable as `mtp.bench.NAME` whichever module owns it.
__all__ = ["METHODS", "PARTIAL_FILE", "TREE_GROUPS", "PartialMismatch", "Settings", "benchmark", "first_mismatch",
           "limit_per_domain", "predict", "run_name", "run_of", "runs_of", "write_outputs"]


def benchmark(model: MTPModel, tokenizer: PreTrainedTokenizerBase, records: list[PromptRecord],
              settings: Settings, *, model_name: str, checkpoint: str | None, command: str,
              with_cost_curve: bool = False, curve_repeats: int = 7, progress: bool = True,
              partial: Path | None = None, resume: bool = False, decoded_defaults: bool = False) -> dict:
    """Run everything and return the report that write_outputs saves.

    The report's defaults: the fastest prediction when the cost curve is measured, else, with
    decoded_defaults, the fastest decoded linear/quadratic run.
    partial: where finished prompts are written as they complete; resume: read it back first
    (it must come from a run with the same model and settings) and measure only what is missing.
    """
    device = model.mask_embeddings.device
    report = {
        "command": command, "argv": sys.argv,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device, cpu_linear_of(model)),
        "model": {"name": model_name, "checkpoint": checkpoint, "k": model.k, "sampler": model.sampler is not None},
        "settings": asdict(settings),
    }
    header = json.loads(json.dumps({"model": report["model"], "settings": report["settings"]}))
    done = read_partial(partial, header) if resume and partial is not None and partial.exists() else []
    results = bench_prompts(model, tokenizer, records, settings, progress=progress, partial=partial,
                            header=header, done=done)
    report.update(prompts=results, summary=summarize(results, settings), mismatches=mismatches(results))
    if with_cost_curve:
        if not settings.tau_table_k:
            raise ValueError("the cost curve's predictions replay the τ table: set tau_table_k")
        curve = cost_curve(model, tuple(range(1, settings.tau_table_k + 1)), repeats=curve_repeats,
                           use_sampler=settings.use_sampler, trees=tree_configs(settings))
        ranked = predict(results, curve, settings)
        report.update(cost_curve=curve, predictions=ranked)
        defaults = choose_defaults(report)
    else:
        defaults = choose_decoded_defaults(report, settings) if decoded_defaults else None
    if defaults is not None:
        report["defaults"] = defaults
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report
