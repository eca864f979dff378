"""The training loop: the model built (fresh, from --init-from, or resumed), AdamW with a warm-up and
constant or cosine schedule, micro-batches under accelerate, one log record per optimizer step,
held-out evaluation and checkpoints; also the per-layout throughput benchmark."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .. import acceptance, adapter
from ..config import CheckpointError
from ..models import LoadedModel, load_model
from .checkpoint import EVAL_LOG_FILE, LOG_FILE, prepare_logs, resume_check, save_checkpoint
from .config import TrainConfig, TrainError
from .data import Sequence, load_data, load_sequences, sample_anchors, sample_order, within_vocabulary
from .forward import FORWARDS, TrainStep

log = logging.getLogger(__package__)


def lr_at(config: TrainConfig, step: int) -> float:
    """Linear warm-up to lr, then constant or cosine down to min_lr_ratio·lr at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def heldout_tau(model: adapter.MTPModel, sequences: list[Sequence], k: int) -> dict:
    """τ of quadratic and linear decoding at k (sampler drafts; quadratic also with lm_head drafts)
    on held-out sequences whose responses are the base model's greedy output, and the per-offset
    rate at which the k-draft chain still matches (cumulative, over all anchors)."""
    was_training = model.training
    model.eval()
    try:
        matches = [acceptance.draft_matches(model, seq.ids, seq.prompt_len) for seq in sequences]
    finally:
        model.train(was_training)
    new_tokens = [len(seq.ids) - seq.prompt_len for seq in sequences]

    def tau(drafter: str, method: str) -> float:
        return round(acceptance.tokens_per_step([m[drafter] for m in matches], new_tokens, method, k), 4)
    chains = [n for m in matches for n in m["sampler"]]
    return {"sequences": len(sequences), "tokens": sum(new_tokens), "k": k,
            "tau_quadratic": tau("sampler", "quadratic"), "tau_linear": tau("sampler", "linear"),
            "tau_quadratic_lm_head": tau("lm_head", "quadratic"),
            "match_by_offset": [round(sum(n >= i for n in chains) / len(chains), 4) for i in range(1, k + 1)]}


def _evaluate(out: Path, model: adapter.MTPModel, heldout: list[Sequence], k: int, step: int) -> None:
    """heldout_tau at this step, appended to the eval log and logged."""
    result = {"step": step, **heldout_tau(model, heldout, k)}
    with open(out / EVAL_LOG_FILE, "a") as handle:
        handle.write(json.dumps(result) + "\n")
    log.info("held-out τ at step %d: quadratic %.3f, linear %.3f (k=%d, %d sequences)", step,
             result["tau_quadratic"], result["tau_linear"], k, len(heldout))


def _build_model(config: TrainConfig, loaded: LoadedModel, init_from: str | Path | None,
                 resume_weights: dict | None) -> adapter.MTPModel:
    """A fresh adapter (with the resumed weights, if any), or --init-from's checkpoint checked against the config."""
    if init_from is not None:
        try:
            model = adapter.load(init_from, loaded.model, loaded.identity)
        except CheckpointError as error:
            raise TrainError(str(error)) from error
        theirs = model.config
        ours = dict(k=config.k, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                    lora_targets=tuple(config.lora_targets), sampler=config.sampler, sampler_hidden=config.sampler_hidden)
        mismatched = [f"{name}: checkpoint {getattr(theirs, name)!r}, config {value!r}"
                      for name, value in ours.items() if getattr(theirs, name) != value]
        if mismatched:
            raise TrainError(f"--init-from {init_from} does not match the config ({'; '.join(mismatched)})")
        return model
    torch.manual_seed(config.seed)
    model = adapter.create(loaded.model, loaded.identity, k=config.k, lora_rank=config.lora_rank,
                           lora_alpha=config.lora_alpha, lora_targets=tuple(config.lora_targets),
                           sampler=config.sampler, sampler_hidden=config.sampler_hidden)
    if resume_weights is not None:
        model.load_trainable_state_dict(resume_weights)
    return model


def train(config: TrainConfig, on_log: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, *, resume: bool = False,
          init_from: str | Path | None = None, loaded: LoadedModel | None = None,
          progress: bool = True) -> Path:
    """Train an MTP adapter; returns the checkpoint directory (config.out).

    on_log receives each step's log record; should_stop() is polled after each step and ends the run
    with a checkpoint. resume continues config.out exactly; init_from starts from a checkpoint's
    weights with a fresh optimizer. `loaded` supplies an already loaded base model (tests, UI).
    """
    from accelerate import Accelerator

    if resume and init_from is not None:
        raise TrainError("--resume and --init-from exclude each other")
    out = Path(config.out)
    state, resume_weights, optimizer_state = resume_check(config, resume) or (None, None, None)
    sequences, heldout = load_data(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    # cpu=True on a machine without an accelerator: a multi-process launch then runs as MULTI_CPU
    # (gloo) instead of each process silently training alone as process 0.
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.accelerator.is_available())
    if loaded is None:
        loaded = load_model(config.model)
    vocab_size = loaded.model.get_input_embeddings().num_embeddings
    sequences = within_vocabulary(sequences, vocab_size, config.data)
    heldout = within_vocabulary(heldout, vocab_size, config.eval_data) if heldout else []
    model = _build_model(config, loaded, init_from, resume_weights)
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    start = 0
    if state is not None:
        optimizer.load_state_dict(optimizer_state)
        start = state["step"]
        if state["num_sequences"] != len(sequences):
            log.warning("the data file now holds %d sequences (was %d): the data order from here differs "
                        "from an uninterrupted run", len(sequences), state["num_sequences"])
    step_module, optimizer = accelerator.prepare(TrainStep(model, config.layout, config.loss_weights), optimizer)
    main = accelerator.is_main_process
    log_path = out / LOG_FILE
    if main:
        prepare_logs(out, start)
    orders: dict[int, list[int]] = {}

    def pick(global_index: int) -> tuple[Sequence, list[int]]:
        epoch, within = divmod(global_index, len(sequences))
        if epoch not in orders:
            orders.clear()
            orders[epoch] = sample_order(len(sequences), config.seed, epoch)
        seq = sequences[orders[epoch][within]]
        return seq, sample_anchors(seq, config.anchors_per_seq, config.seed, global_index)

    params = model.trainable_parameters()
    bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", file=sys.stderr,
               disable=not (main and progress), dynamic_ncols=True)
    step = start
    stop = False
    try:
        while step < config.steps and not stop:
            began = time.perf_counter()
            lr = lr_at(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            collected: dict[str, list[torch.Tensor]] = {}
            for micro in range(config.grad_accum):
                first = ((step * config.grad_accum + micro) * accelerator.num_processes
                         + accelerator.process_index) * config.batch_size
                picked = [pick(first + b) for b in range(config.batch_size)]
                sync = micro == config.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(step_module):
                    loss, stats = step_module([p[0] for p in picked], [p[1] for p in picked])
                    accelerator.backward(loss / config.grad_accum)
                for name, value in stats.items():
                    collected.setdefault(name, []).append(value.detach().float().reshape(-1))
            if config.grad_clip:
                grad_norm = accelerator.clip_grad_norm_(params, config.grad_clip)
            else:
                grad_norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            stop_flag = float(bool(should_stop and should_stop()))
            record = _log_record(accelerator, collected, config.k, step, lr, float(grad_norm),
                                 time.perf_counter() - began, stop_flag)
            stop = record.pop("stop") > 0
            if main:
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['acc_base']:.3f}",
                                mtok_s=f"{record['mask_tokens_per_s']:.0f}")
                if on_log is not None:
                    on_log(record)
            last = step == config.steps or stop
            # Not on a stop: a run trained in interrupted chunks would pay an evaluation per chunk.
            if heldout and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
                accelerator.wait_for_everyone()
                if main:
                    _evaluate(out, accelerator.unwrap_model(step_module).model, heldout, config.k, step)
                accelerator.wait_for_everyone()
            if step % config.save_every == 0 or last:
                accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(out, accelerator.unwrap_model(step_module).model, optimizer, step, config,
                                    len(sequences))
                accelerator.wait_for_everyone()
    finally:
        bar.close()
    return out


def _log_record(accelerator, collected: dict[str, list[torch.Tensor]], k: int, step: int, lr: float,
                grad_norm: float, seconds: float, stop_flag: float) -> dict:
    """Means over micro-batches and processes: losses, accuracy (overall and per offset), throughput."""
    device = accelerator.device
    names = [n for n in ("loss", "loss_base", "loss_sampler", "loss_lcm") if n in collected]
    offsets = torch.cat(collected["offsets"]).long()
    correct = {n: torch.cat(collected[f"correct_{n}"]) for n in ("base", "sampler") if f"correct_{n}" in collected}
    per_offset = torch.zeros(1 + len(correct), k)
    per_offset[0].index_add_(0, offsets - 1, torch.ones_like(offsets, dtype=torch.float))
    for row, values in enumerate(correct.values(), start=1):
        per_offset[row].index_add_(0, offsets - 1, values.cpu())
    means = torch.stack([torch.cat(collected[n]).mean().cpu() for n in names]) if names else torch.zeros(0)
    sums = torch.tensor([sum(float(t.sum()) for t in collected["real_tokens"]),
                         sum(float(t.sum()) for t in collected["mask_tokens"]), stop_flag])
    means = accelerator.reduce(means.to(device), "mean").cpu()
    per_offset = accelerator.reduce(per_offset.to(device), "sum").cpu()
    sums = accelerator.reduce(sums.to(device), "sum").cpu()
    record = {"step": step, **{n: round(float(v), 5) for n, v in zip(names, means)}, "lr": lr,
              "grad_norm": round(grad_norm, 4)}
    counts = per_offset[0].clamp(min=1)
    for row, name in enumerate(correct, start=1):
        record[f"acc_{name}"] = round(float(per_offset[row].sum() / counts.sum()), 4)
        record[f"acc_{name}_by_offset"] = [round(float(v), 4) for v in per_offset[row] / counts]
    record["supervised_masks"] = int(per_offset[0].sum())
    record["seconds"] = round(seconds, 3)
    record["tokens_per_s"] = round(float(sums[0] + sums[1]) / seconds, 1)
    record["mask_tokens_per_s"] = round(float(per_offset[0].sum()) / seconds, 1)
    record["stop"] = float(sums[2])
    return record


def benchmark(config: TrainConfig, steps: int, layouts: tuple[str, ...] = ("full", "prefix_cache"),
              loaded: LoadedModel | None = None) -> list[dict]:
    """Training throughput per layout on the same sequences and anchors (one untimed warm-up step).

    Each step is forward + backward + AdamW step on one micro-batch; nothing is written.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    sequences = load_sequences(config.data, config.max_seq_len)
    loaded = loaded or load_model(config.model)
    model = _build_model(config, loaded, None, None)
    model.train()
    picks = [[(sequences[index % len(sequences)], sample_anchors(sequences[index % len(sequences)],
                                                                  config.anchors_per_seq, config.seed, index))
              for index in range(step * config.batch_size, (step + 1) * config.batch_size)]
             for step in range(steps + 1)]
    results = []
    for layout in layouts:
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr)
        seconds, masks, tokens = 0.0, 0, 0.0
        for step, batch in enumerate(picks):
            began = time.perf_counter()
            loss, stats = FORWARDS[layout](model, [b[0] for b in batch], [b[1] for b in batch], config.loss_weights)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step:  # the first step warms up allocator and kernels
                seconds += time.perf_counter() - began
                masks += len(stats["offsets"])
                tokens += float(stats["real_tokens"] + stats["mask_tokens"])
        results.append({"layout": layout, "steps": steps, "seconds_per_step": round(seconds / steps, 2),
                        "supervised_masks_per_step": masks / steps, "mask_tokens_per_s": round(masks / seconds, 1),
                        "tokens_per_s": round(tokens / seconds, 1)})
    return results
