"""A run directory's state: what a checkpoint writes (the adapter, train_state/, the config copy and the
training curves, as one atomic replacement), the per-step logs, reading train_state/ back, and the
resume check: whether a run starts, starts over or resumes in config.out."""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import adapter, atomic, viz
from .config import TrainConfig, TrainError

log = logging.getLogger(__package__)
STATE_DIR = "train_state"
STATE_FILE, STATE_WEIGHTS, STATE_OPTIMIZER = "state.json", "trainable.safetensors", "optimizer.pt"
LOG_FILE = "train_log.jsonl"
EVAL_LOG_FILE = "eval_log.jsonl"
CURVES_FILE = "train_curves.html"
CONFIG_COPY = "train_config.yaml"
# Fields that define the adapter's shape: a resumed run must agree on them.
MODEL_FIELDS = ("model", "k", "lora_rank", "lora_alpha", "lora_targets", "sampler", "sampler_hidden")


def read_log(path: Path) -> list[dict]:
    """The JSONL log's records ([] when there is none yet)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            break  # a torn last line from a kill
    return records


def write_train_state(directory: Path, model: adapter.MTPModel, optimizer: torch.optim.Optimizer, step: int,
                      config: TrainConfig, num_sequences: int) -> None:
    """Weights, optimizer moments and the step into `directory` (made here; atomic as part of the checkpoint)."""
    directory.mkdir()
    save_file(model.trainable_state_dict(), str(directory / STATE_WEIGHTS))
    torch.save(optimizer.state_dict(), directory / STATE_OPTIMIZER)
    state = {"step": step, "num_sequences": num_sequences, "config": asdict(config)}
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def _state_problem(state: object) -> str | None:
    """What is wrong with a read state.json, or None."""
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


def save_checkpoint(out: Path, model: adapter.MTPModel, optimizer: torch.optim.Optimizer, step: int,
                    config: TrainConfig, num_sequences: int) -> None:
    """The adapter, train_state, config copy and curves as ONE atomic replacement of `out` (logs carried
    over): a kill at any point leaves the previous checkpoint or this one, always resumable."""
    model.config.extra = {"training": {"step": step, "data": config.data, "layout": config.layout,
                                       "anchors_per_seq": config.anchors_per_seq, "lr": config.lr}}
    records = read_log(out / LOG_FILE)
    files = {CONFIG_COPY: config.to_yaml()}
    if records:
        files[CURVES_FILE] = viz.training_figure(records).to_html(include_plotlyjs="cdn", full_html=True)
    with atomic.replaced_dir(out) as staging:
        model.write_files(staging, files)
        write_train_state(staging / STATE_DIR, model, optimizer, step, config, num_sequences)


def resume_check(config: TrainConfig, resume: bool) -> tuple[dict, dict[str, torch.Tensor], dict] | None:
    """What config.out allows: None to start (or start over) from step 0, the saved (state, weights,
    optimizer state) to resume; TrainError, with nothing written, where neither is possible."""
    out = Path(config.out)
    atomic.recover(out)  # a checkpoint save killed between its renames: its complete copy comes back first
    saved = None
    checkpointed = (out / STATE_DIR / STATE_FILE).is_file()
    # A run killed or failed before its first checkpoint leaves only its log: nothing to lose by starting over.
    unsaved = not checkpointed and (out / LOG_FILE).is_file() and not (out / adapter.CONFIG_FILE).exists()
    if resume and not checkpointed and not unsaved:
        raise TrainError(f"nothing to resume: {out} holds no training run ({out / STATE_DIR} does not exist)"
                         + (f"; use --init-from {out} to start from its weights" if adapter.is_checkpoint(out) else ""))
    if unsaved:
        log.warning("%s holds a run that stopped before its first checkpoint: starting it over from step 0", out)
    elif resume:
        saved = load_train_state(out)
        theirs = saved[0]["config"]
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
    return saved


def prepare_logs(out: Path, step: int) -> None:
    """Make `out` and drop the log records past `step`, the resumed one (steps taken after the last checkpoint)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in (out / LOG_FILE, out / EVAL_LOG_FILE):
        if path.name == LOG_FILE or path.exists():
            kept = [r for r in read_log(path) if r["step"] <= step]
            atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
