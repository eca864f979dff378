"""The accelerate trainer: prefix-cache or full-layout steps, AdamW, checkpoints, exact resume, logs.

One code path for one CPU, one GPU or many processes (`accelerate launch -m mtp train ...`).
Randomness is counter-based: the data order of epoch e and the anchors of global sample g are drawn
from generators seeded by (seed, e) and (seed, g), so the training state needed for an exact resume
is the step number plus weights and optimizer moments, whatever the number of processes.

Files under `out/`:
- the adapter (MTPModel.save: adapter.safetensors + mtp_config.json), rewritten atomically at each
  checkpoint, with train_config.yaml and train_curves.html beside it;
- train_log.jsonl: one record per optimizer step (losses, lr, accuracy, tokens/s);
- train_state/: what --resume needs (trainable weights, optimizer, step), also written atomically;
- eval_log.jsonl (with eval_data): held-out τ every eval_every steps and at the end, replayed from
  teacher-forced drafts on held-out distilled sequences (mtp.acceptance: exact for greedy decoding).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from . import acceptance, adapter, atomic
from .config import ALL_PROJECTIONS, CheckpointError
from .data import read_distilled
from .layouts import IGNORE, default_anchors, interleaved_layout, mask_blocks_layout
from .losses import LossWeights, mtp_losses
from .models import LoadedModel, load_model

log = logging.getLogger("mtp.train")
STATE_DIR = "train_state"
STATE_FILE, STATE_WEIGHTS, STATE_OPTIMIZER = "state.json", "trainable.safetensors", "optimizer.pt"
LOG_FILE = "train_log.jsonl"
EVAL_LOG_FILE = "eval_log.jsonl"
CURVES_FILE = "train_curves.html"
CONFIG_COPY = "train_config.yaml"
# Fields that define the adapter's shape: a resumed run must agree on them.
MODEL_FIELDS = ("model", "k", "lora_rank", "lora_alpha", "lora_targets", "sampler", "sampler_hidden")


class TrainError(ValueError):
    """A training run that cannot start as asked; nothing has been written."""


@dataclass
class TrainConfig:
    data: str = "data/distill_train.jsonl"  # distilled JSONL: prompt_ids, response_ids
    out: str = "runs/mtp"
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    # adapter
    k: int = 8
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: list = field(default_factory=lambda: list(ALL_PROJECTIONS))
    sampler: bool = True
    sampler_hidden: int = 0
    # layout
    layout: str = "prefix_cache"  # prefix_cache | full
    anchors_per_seq: int = 32  # mask blocks per sequence, sampled among the labelled tokens; 0: all
    max_seq_len: int = 768  # prompt + response tokens, response truncated beyond
    # losses
    weight_base: float = 1.0
    weight_sampler: float = 1.0
    weight_lcm: float = 1.0
    # optimisation
    steps: int = 1000
    batch_size: int = 1  # sequences per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 50
    schedule: str = "constant"  # constant | cosine (after warm-up)
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # 0: off
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | no | bf16
    # bookkeeping
    save_every: int = 100
    eval_data: str = ""  # held-out distilled JSONL ("": no evaluation); never the data trained on
    eval_every: int = 0  # steps between held-out evaluations (0: only at the last step)
    eval_sequences: int = 32  # the first N held-out sequences are evaluated
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: torch's default

    def __post_init__(self) -> None:
        checks = [
            (self.layout in ("prefix_cache", "full"), f"layout must be prefix_cache or full, got {self.layout!r}"),
            (self.schedule in ("constant", "cosine"), f"schedule must be constant or cosine, got {self.schedule!r}"),
            (self.mixed_precision in ("auto", "no", "bf16"), f"mixed_precision must be auto, no or bf16"),
            (self.k >= 1 and self.lora_rank >= 1, "k and lora_rank must be at least 1"),
            (self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1, "steps, batch_size and grad_accum must be at least 1"),
            (self.save_every >= 1, "save_every must be at least 1"),
            (self.eval_every >= 0 and self.eval_sequences >= 1, "eval_every must be >= 0 and eval_sequences >= 1"),
            (self.anchors_per_seq >= 0 and self.warmup_steps >= 0, "anchors_per_seq and warmup_steps must be >= 0"),
            (self.max_seq_len >= 2, "max_seq_len must be at least 2"),
            (self.threads >= 0, "threads must be >= 0"),
            (bool(self.data) and bool(self.out), "data and out must be non-empty paths"),
            (self.lora_targets and all(isinstance(t, str) and t for t in self.lora_targets),
             "lora_targets must be a non-empty list of module names"),
        ]
        floats = {f.name: getattr(self, f.name) for f in fields(self) if f.type == "float"}
        checks += [(math.isfinite(value), f"{name} must be a finite number, got {value}") for name, value in floats.items()]
        if all(math.isfinite(value) for value in floats.values()):
            checks += [
                (self.lr > 0 and self.lora_alpha > 0, "lr and lora_alpha must be positive"),
                (min(self.weight_base, self.weight_sampler, self.weight_lcm, self.weight_decay, self.grad_clip) >= 0,
                 "weight_base, weight_sampler, weight_lcm, weight_decay and grad_clip must be >= 0"),
                (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
                (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)
        self.lora_targets = list(self.lora_targets)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TrainError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        defaults = cls()
        data = dict(data)
        for name, value in data.items():
            default = getattr(defaults, name)
            expected = type(default) if default is not None else str
            if expected is float and isinstance(value, str):
                try:  # YAML 1.1 reads exponents without a dot (5e-4) as strings
                    value = data[name] = float(value)
                except ValueError:
                    pass
            ok = (value is None and name == "model") or isinstance(value, expected) or (
                expected is float and isinstance(value, int))
            if not ok or (expected in (int, float) and isinstance(value, bool)):
                raise TrainError(f"{source}: {name} must be a {expected.__name__}, got {value!r}")
        return cls(**{n: float(v) if isinstance(getattr(defaults, n), float) else v for n, v in data.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise TrainError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise TrainError(f"{path} is not valid YAML ({error})") from error
        if not isinstance(data, dict):
            raise TrainError(f"{path} must hold a mapping of key: value")
        return cls.from_dict({**data, **(overrides or {})}, source=str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(self.weight_base, self.weight_sampler, self.weight_lcm)


# -- data -------------------------------------------------------------------------------------------
@dataclass
class Sequence:
    ids: list[int]
    prompt_len: int
    source: str = ""  # file:line of the distilled sample, for messages


def load_sequences(path: str | Path, max_seq_len: int) -> list[Sequence]:
    """Prompt + response id sequences; responses cut to fit max_seq_len, over-long prompts dropped,
    malformed samples reported as file:line and skipped (data.read_distilled)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"data file {path} does not exist (make it with: python -m mtp distill ...)")
    sequences = []
    for source, sample in read_distilled(path):
        prompt, response = sample["prompt_ids"], sample["response_ids"]
        if len(prompt) >= max_seq_len:
            continue
        sequences.append(Sequence(prompt + response[:max_seq_len - len(prompt)], len(prompt), source))
    if not sequences:
        raise TrainError(f"data file {path} holds no usable sample (prompt_ids + response_ids under {max_seq_len} tokens)")
    return sequences


def within_vocabulary(sequences: list[Sequence], vocab_size: int, path: str) -> list[Sequence]:
    """The sequences whose ids the model knows; each other one is reported as file:line and skipped."""
    kept = []
    for seq in sequences:
        if max(seq.ids) < vocab_size:
            kept.append(seq)
        else:
            log.warning("%s: skipped distilled sample, token id %d is outside the model's vocabulary of %d",
                        seq.source, max(seq.ids), vocab_size)
    if not kept:
        raise TrainError(f"data file {path} holds no sample within the model's vocabulary of {vocab_size} tokens: "
                         "was it distilled with another model?")
    return kept


def sample_order(num: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(num, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def sample_anchors(seq: Sequence, count: int, seed: int, index: int) -> list[int]:
    """A sorted random subset of `count` anchors (all when count is 0 or there are fewer)."""
    anchors = default_anchors(len(seq.ids), seq.prompt_len)
    if count == 0 or len(anchors) <= count:
        return anchors
    generator = torch.Generator().manual_seed((seed + 1) * 7_919_993 + index)
    return sorted(anchors[i] for i in torch.randperm(len(anchors), generator=generator)[:count].tolist())


# -- one training forward ---------------------------------------------------------------------------
def _pad_rows(rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
    return torch.stack([torch.cat([r, r.new_full((width - len(r),), value)]) for r in rows])


def _mask_rows(model: adapter.MTPModel, hidden: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor,
               labels: torch.Tensor, same_real: torch.Tensor, real_hidden: torch.Tensor,
               seqs: list[Sequence], weights: LossWeights):
    """Gather the mask rows of a (B, Q) pass and compute the losses on them."""
    is_mask = input_ids < 0
    batch_index = torch.arange(len(seqs), device=hidden.device)[:, None].expand_as(input_ids)
    prev = torch.stack([torch.tensor(s.ids, device=hidden.device)[positions[b].clamp(max=len(s.ids) - 1)]
                        for b, s in enumerate(seqs)])
    target = real_hidden[batch_index, same_real.clamp(min=0)]
    return mtp_losses(model, hidden[is_mask], labels[is_mask], prev[is_mask], target[is_mask],
                      (same_real >= 0)[is_mask], -input_ids[is_mask], weights)


def prefix_cache_forward(model: adapter.MTPModel, seqs: list[Sequence], anchors: list[list[int]],
                         weights: LossWeights):
    """Real tokens once without grad (KV cache + hidden), then only the mask blocks with grad.

    Sequence b caches its real tokens 0..max(anchors_b): that is all its masks attend to, and masks
    further on have no same-position real token (as in the full layout), so both layouts agree.
    """
    device = model.mask_embeddings.device
    lengths = [max(a) + 1 for a in anchors]
    cached = max(lengths)
    real_ids = _pad_rows([torch.tensor(s.ids[:n]) for s, n in zip(seqs, lengths)], cached, 0).to(device)
    real_pos = torch.arange(cached, device=device).expand(len(seqs), cached)
    with torch.no_grad():
        real = model(real_ids, real_pos, use_cache=True, gate=False)
    layouts = [mask_blocks_layout(s.ids, model.k, a, n) for s, a, n in zip(seqs, anchors, lengths)]
    q = max(len(lay.input_ids) for lay in layouts)
    attention = torch.zeros(len(seqs), q, cached + q, dtype=torch.bool)
    attention[:, torch.arange(q), cached + torch.arange(q)] = True  # padding rows see themselves
    for b, (lay, n) in enumerate(zip(layouts, lengths)):
        rows = len(lay.input_ids)
        attention[b, :rows, :n] = lay.attention[:, :n]
        attention[b, :rows, cached:cached + rows] = lay.attention[:, n:]
    input_ids = _pad_rows([lay.input_ids for lay in layouts], q, -1).to(device)
    positions = _pad_rows([lay.position_ids for lay in layouts], q, 0).to(device)
    labels = _pad_rows([lay.labels for lay in layouts], q, IGNORE).to(device)
    same_real = _pad_rows([lay.same_position_real for lay in layouts], q, -1).to(device)
    out = model(input_ids, positions, attention.to(device), past_key_values=real.past_key_values, use_cache=True)
    loss, stats = _mask_rows(model, out.hidden, input_ids, positions, labels, same_real, real.hidden, seqs, weights)
    stats["real_tokens"] = torch.tensor(float(sum(lengths)))
    stats["mask_tokens"] = torch.tensor(float(sum(len(lay.input_ids) for lay in layouts)))
    return loss, stats


def full_forward(model: adapter.MTPModel, seqs: list[Sequence], anchors: list[list[int]], weights: LossWeights):
    """The full interleaved layout (docs/design.md §3): real tokens and mask blocks in one pass with grad."""
    device = model.mask_embeddings.device
    layouts = [interleaved_layout(s.ids, model.k, s.prompt_len, a) for s, a in zip(seqs, anchors)]
    q = max(len(lay.input_ids) for lay in layouts)
    attention = torch.eye(q, dtype=torch.bool).repeat(len(seqs), 1, 1)  # padding rows see themselves
    for b, lay in enumerate(layouts):
        rows = len(lay.input_ids)
        attention[b, :rows, :rows] = lay.attention
    input_ids = _pad_rows([lay.input_ids for lay in layouts], q, -1).to(device)
    positions = _pad_rows([lay.position_ids for lay in layouts], q, 0).to(device)
    labels = _pad_rows([lay.labels for lay in layouts], q, IGNORE).to(device)
    same_real = _pad_rows([lay.same_position_real for lay in layouts], q, -1).to(device)
    out = model(input_ids, positions, attention.to(device))
    # Real hidden states in real-token order (index j = x_j), padded: the LCM targets.
    reals = [out.hidden[b, :len(lay.input_ids)][lay.input_ids.to(device) >= 0] for b, lay in enumerate(layouts)]
    width = max(len(r) for r in reals)
    real_hidden = torch.stack([torch.cat([r, r.new_zeros(width - len(r), r.shape[-1])]) for r in reals]).detach()
    loss, stats = _mask_rows(model, out.hidden, input_ids, positions, labels, same_real, real_hidden, seqs, weights)
    stats["real_tokens"] = torch.tensor(float(sum(len(r) for r in reals)))
    stats["mask_tokens"] = torch.tensor(float(sum(int((lay.input_ids < 0).sum()) for lay in layouts)))
    return loss, stats


FORWARDS = {"prefix_cache": prefix_cache_forward, "full": full_forward}


class TrainStep(nn.Module):
    """Wraps the MTP model so that one forward = one micro-batch's losses (what DDP wraps)."""

    def __init__(self, model: adapter.MTPModel, layout: str, weights: LossWeights) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.weights = weights

    def forward(self, seqs: list[Sequence], anchors: list[list[int]]):
        return FORWARDS[self.layout](self.model, seqs, anchors, self.weights)


# -- schedule, logging, checkpoints ----------------------------------------------------------------
def lr_at(config: TrainConfig, step: int) -> float:
    """Linear warm-up to lr, then constant or cosine down to min_lr_ratio·lr at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            break  # a torn last line from a kill
    return records


def curves_figure(records: list[dict]):
    """Plotly figure: the loss terms and accuracy per step (left), lr (right)."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    figure = make_subplots(rows=1, cols=3, subplot_titles=("losses", "top-1 accuracy at masks", "learning rate"))
    steps = [r["step"] for r in records]
    for name in ("loss", "loss_base", "loss_sampler", "loss_lcm"):
        if any(name in r for r in records):
            figure.add_trace(go.Scatter(x=steps, y=[r.get(name) for r in records], name=name, mode="lines"), 1, 1)
    for name in ("acc_base", "acc_sampler"):
        if any(name in r for r in records):
            figure.add_trace(go.Scatter(x=steps, y=[r.get(name) for r in records], name=name, mode="lines"), 1, 2)
    figure.add_trace(go.Scatter(x=steps, y=[r["lr"] for r in records], name="lr", mode="lines"), 1, 3)
    figure.update_layout(height=420, width=1300, title="MTP training")
    return figure


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


def write_train_state(directory: Path, model: adapter.MTPModel, optimizer, step: int, config: TrainConfig,
                      num_sequences: int) -> None:
    """Weights, optimizer moments and the step into `directory` (made here; atomic as part of the checkpoint)."""
    directory.mkdir()
    save_file(model.trainable_state_dict(), str(directory / STATE_WEIGHTS))
    torch.save(optimizer.state_dict(), directory / STATE_OPTIMIZER)
    state = {"step": step, "num_sequences": num_sequences, "config": asdict(config)}
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def _state_problem(state: object) -> str | None:
    if not isinstance(state, dict):
        return "is not a JSON object"
    for name in ("step", "num_sequences"):
        value = state.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"has {name} {value!r}, not an integer >= 0"
    if not isinstance(state.get("config"), dict):
        return "has no training config"
    return None


def load_train_state(out: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(state.json, trainable weights, optimizer state) of the run in `out`; TrainError with one message
    when any of them is unreadable, of the wrong shape or (optimizer.pt) holds more than tensors."""
    directory = out / STATE_DIR
    try:
        state = json.loads((directory / STATE_FILE).read_bytes().decode("utf-8"))
        weights = load_file(str(directory / STATE_WEIGHTS))
        optimizer = torch.load(directory / STATE_OPTIMIZER, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise TrainError(f"cannot resume from {directory}: {STATE_OPTIMIZER} holds objects other than tensors, "
                         "numbers and containers, and is refused (loading it could run code). Delete that "
                         f"{STATE_DIR} and start a new run with --init-from {out} to keep the adapter weights") from None
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as error:
        raise TrainError(f"cannot resume from {directory}: {error}") from None
    problem = _state_problem(state)
    if problem is None and not isinstance(optimizer, dict):
        problem = f"is paired with a {STATE_OPTIMIZER} that is not an optimizer state"
    if problem:
        raise TrainError(f"cannot resume from {directory}: {STATE_FILE} {problem}")
    return state, weights, optimizer


def _save_checkpoint(out: Path, model: adapter.MTPModel, optimizer, step: int, config: TrainConfig,
                     num_sequences: int) -> None:
    """The adapter, train_state, config copy and curves as ONE atomic replacement of `out` (logs carried
    over): a kill at any point leaves the previous checkpoint or this one, always resumable."""
    model.config.extra = {"training": {"step": step, "data": config.data, "layout": config.layout,
                                       "anchors_per_seq": config.anchors_per_seq, "lr": config.lr}}
    records = read_log(out / LOG_FILE)
    files = {CONFIG_COPY: config.to_yaml()}
    if records:
        files[CURVES_FILE] = curves_figure(records).to_html(include_plotlyjs="cdn", full_html=True)
    with atomic.replaced_dir(out) as staging:
        model.write_files(staging, files)
        write_train_state(staging / STATE_DIR, model, optimizer, step, config, num_sequences)


# -- the run -------------------------------------------------------------------------------------------
def _build_model(config: TrainConfig, loaded: LoadedModel, init_from: str | Path | None,
                 resume_weights: dict | None) -> adapter.MTPModel:
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
    atomic.recover(out)  # a checkpoint save killed between its renames: its complete copy comes back first
    state, resume_weights, optimizer_state = None, None, None
    checkpointed = (out / STATE_DIR / STATE_FILE).is_file()
    # A run killed or failed before its first checkpoint leaves only its log: nothing to lose by starting over.
    unsaved = not checkpointed and (out / LOG_FILE).is_file() and not (out / adapter.CONFIG_FILE).exists()
    if resume and not checkpointed and not unsaved:
        raise TrainError(f"nothing to resume: {out} holds no training run ({out / STATE_DIR} does not exist)"
                         + (f"; use --init-from {out} to start from its weights" if adapter.is_checkpoint(out) else ""))
    if unsaved:
        log.warning("%s holds a run that stopped before its first checkpoint: starting it over from step 0", out)
    elif resume:
        state, resume_weights, optimizer_state = load_train_state(out)
        theirs = state["config"]
        changed = [f"{n}: {theirs.get(n)!r} -> {getattr(config, n)!r}" for n in MODEL_FIELDS
                   if theirs.get(n) != getattr(config, n)]
        if changed:
            raise TrainError(f"cannot resume {out}: the config changed the adapter ({'; '.join(changed)})")
        # More or fewer steps only extend or cut a constant schedule; a cosine one's horizon moves.
        free = ("save_every",) + (("steps",) if config.schedule == "constant" else ())
        differs = [n for n, v in asdict(config).items() if n not in MODEL_FIELDS + free and theirs.get(n) != v]
        if differs:
            log.warning("resuming with changed settings %s: not an exact continuation",
                        {n: (theirs.get(n), getattr(config, n)) for n in differs})
    elif checkpointed or (out / adapter.CONFIG_FILE).exists():
        raise TrainError(f"{out} already holds a training run: pass --resume to continue it, "
                         f"or choose another out (use --init-from {out} to start from its weights)")
    problem = atomic.writable_problem(out)
    if problem:
        raise TrainError(f"cannot write the run to {out}: {problem}")
    sequences = load_sequences(config.data, config.max_seq_len)
    heldout = load_sequences(config.eval_data, config.max_seq_len)[:config.eval_sequences] if config.eval_data else []
    trained_prompts = {tuple(seq.ids[:seq.prompt_len]) for seq in sequences} if heldout else set()
    overlap = sum(tuple(seq.ids[:seq.prompt_len]) in trained_prompts for seq in heldout)
    if overlap:
        raise TrainError(f"{overlap} of the {len(heldout)} held-out prompts in {config.eval_data} are also in the "
                         f"training data {config.data}: hold out prompts that are not trained on")
    # Read once: a data file that grows meanwhile (distill still running) is picked up on --resume.
    log.info("%d training sequences from %s", len(sequences), config.data)
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
        out.mkdir(parents=True, exist_ok=True)
        # Drop log records past the resumed step (steps taken after the last checkpoint).
        for path in (log_path, out / EVAL_LOG_FILE):
            if path == log_path or path.exists():
                kept = [r for r in read_log(path) if r["step"] <= start]
                atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    per_step = config.batch_size * config.grad_accum * accelerator.num_processes
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
                    result = {"step": step, **heldout_tau(accelerator.unwrap_model(step_module).model, heldout,
                                                          config.k)}
                    with open(out / EVAL_LOG_FILE, "a") as handle:
                        handle.write(json.dumps(result) + "\n")
                    log.info("held-out τ at step %d: quadratic %.3f, linear %.3f (k=%d, %d sequences)", step,
                             result["tau_quadratic"], result["tau_linear"], config.k, len(heldout))
                accelerator.wait_for_everyone()
            if step % config.save_every == 0 or last:
                accelerator.wait_for_everyone()
                if main:
                    _save_checkpoint(out, accelerator.unwrap_model(step_module).model, optimizer, step, config,
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
