"""Python API: load a base model with an MTP checkpoint in one call.

    from mtp.api import load_mtp
    mtp_model, tokenizer = load_mtp()            # embedded model + shipped checkpoint
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from . import adapter
from .adapter import MTPModel
from .config import CheckpointError
from .models import load_model

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINTS / "smollm2-135m-mtp"


def default_checkpoint() -> Path | None:
    """The shipped checkpoint for the embedded model, if one is present."""
    return DEFAULT_CHECKPOINT if (DEFAULT_CHECKPOINT / adapter.CONFIG_FILE).exists() else None


def load_mtp(model: str | None = None, checkpoint: str | Path | None = None, *,
             device: str | torch.device | None = None, k: int = 8,
             trust_remote_code: bool = False) -> tuple[MTPModel, PreTrainedTokenizerBase]:
    """Base model (embedded by default) + checkpoint (shipped one by default for the embedded model).

    Without any checkpoint, a fresh untrained adapter with `k` masks is attached: drafts are then
    poor but decoding stays exact.
    """
    loaded = load_model(model, device=device, trust_remote_code=trust_remote_code)
    if checkpoint is None and model is None:
        checkpoint = default_checkpoint()
    if checkpoint is None:
        mtp_model = adapter.create(loaded.model, loaded.identity, k=k)
    else:
        if not Path(checkpoint).is_dir():
            raise CheckpointError(f"checkpoint directory {checkpoint} does not exist")
        mtp_model = adapter.load(checkpoint, loaded.model, loaded.identity)
    return mtp_model.eval(), loaded.tokenizer
