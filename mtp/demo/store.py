"""The models the demo offers: checkpoint choices per base model, and the loaded (model, checkpoint) pairs."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from .. import adapter
from ..adapter import MTPModel
from ..api import CHECKPOINTS, load_mtp
from ..config import CheckpointError, MTPConfig
from ..models import EMBEDDED_NAME, load_model
from .checks import USER_ERRORS
from .compute import on_own_thread

log = logging.getLogger("mtp.app")
ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FRESH = "fresh adapter (untrained)"
FRESH_K = 8
MAX_LOADED_MODELS = 3


def checkpoint_label(folder: Path) -> str:
    """How a checkpoint folder is named in the page: relative to the repository when inside it."""
    folder = folder.resolve()
    return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)


def checkpoint_path(label: str) -> Path:
    """The folder of an offered checkpoint label (see checkpoint_choices), still a checkpoint."""
    path = Path(label)
    path = path if path.is_absolute() else ROOT / path
    if not adapter.is_checkpoint(path):
        raise CheckpointError(f"checkpoint {label} does not exist (any more): pick another one")
    return path


def checkpoint_choices(model_name: str, extra: list[str], runs_dir: Path = RUNS) -> list[str]:
    """Checkpoint labels (shipped, trained here, given on the command line) for this base model, then FRESH.

    Only real checkpoints directly under checkpoints/ and the runs folder: never a hidden staging copy
    that an interrupted save left, nor a run's training state.
    """
    found = []
    candidates = adapter.checkpoint_dirs(CHECKPOINTS) + adapter.checkpoint_dirs(runs_dir)
    candidates += [Path(e) for e in extra if adapter.is_checkpoint(e)]
    for folder in candidates:
        try:
            config = MTPConfig.load(folder / adapter.CONFIG_FILE)
        except CheckpointError:
            continue
        if config.base is not None and config.base.name == Path(model_name).name:
            label = checkpoint_label(folder)
            if label not in found:
                found.append(label)
    return found + [FRESH]


class ModelStore:
    """Loaded (model, checkpoint) pairs, each on its own base-model copy, least recently used evicted.

    The gate is a per-call value inside MTPModel, so one loaded model serves concurrent requests.
    Callers pass only choices the server offers (handlers.Demo.model checks them).
    """

    def __init__(self, device: str, capacity: int = MAX_LOADED_MODELS) -> None:
        self.device = device
        self.capacity = capacity
        self._models: OrderedDict[tuple[str, str], tuple[MTPModel, object]] = OrderedDict()
        self._lock = threading.Lock()  # guards the dict
        self._load_lock = threading.Lock()  # one load at a time (memory, CPU)
        self.loading: tuple[str, str] | None = None
        self.errors: dict[tuple[str, str], str] = {}

    def peek(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object] | None:
        """The loaded (model, tokenizer), without loading or reordering."""
        return self._models.get((model_name, checkpoint))

    def get(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object]:
        key = (model_name, checkpoint)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._load_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            self.loading = key
            try:
                pair = self._load(model_name, checkpoint)
            except USER_ERRORS as error:
                self.errors[key] = str(error)
                raise
            finally:
                self.loading = None
            self.errors.pop(key, None)
            with self._lock:
                self._models[key] = pair
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)  # requests still running keep their reference
            return pair

    def _load(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object]:
        return on_own_thread(self._load_here, model_name, checkpoint)  # other visitors keep decoding meanwhile

    def _load_here(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object]:
        source = None if model_name == EMBEDDED_NAME else model_name
        started = time.perf_counter()
        if checkpoint == FRESH:
            loaded = load_model(source, device=self.device)
            torch.manual_seed(0)  # the same fresh adapter every time
            model = adapter.create(loaded.model, loaded.identity, k=FRESH_K).eval()
            tokenizer = loaded.tokenizer
        else:
            model, tokenizer = load_mtp(source, checkpoint_path(checkpoint), device=self.device)
        log.info("loaded %s + %s in %.1f s", model_name, checkpoint, time.perf_counter() - started)
        return model, tokenizer
