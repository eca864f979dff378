"""Python API: load a base model with an MTP checkpoint in one call, and pick its decoding settings.

    from mtp.api import chosen_checkpoint, decoding_settings, load_datastore, load_mtp
    mtp_model, tokenizer = load_mtp()            # embedded model + shipped checkpoint
    settings = decoding_settings(mtp_model, chosen_checkpoint(None, None))  # method, k, groups, lookup, tree_budget,
                                                                             # cost_aware, source, datastore
    datastore = load_datastore(mtp_model, settings.datastore)  # generate(..., datastore=datastore)
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from . import adapter
from .adapter import MTPModel
from .config import CheckpointError, read_decoding_defaults
from .datastore import Datastore, DatastoreError
from .models import load_model

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINTS / "smollm2-135m-mtp"
EXPLICIT = "explicit"  # decoding_settings' source when the caller fixed everything
BUILT_IN = "built-in"
log = logging.getLogger("mtp.api")


def default_checkpoint() -> Path | None:
    """The shipped checkpoint for the embedded model, if one is present."""
    return DEFAULT_CHECKPOINT if (DEFAULT_CHECKPOINT / adapter.CONFIG_FILE).exists() else None


def chosen_checkpoint(model: str | None, checkpoint: str | Path | None) -> Path | None:
    """The checkpoint load_mtp(model, checkpoint) loads: the given one, else the shipped one for the embedded model."""
    if checkpoint is not None:
        return Path(checkpoint)
    return default_checkpoint() if model is None else None


def load_mtp(model: str | None = None, checkpoint: str | Path | None = None, *,
             device: str | torch.device | None = None, k: int = 8,
             trust_remote_code: bool = False, cpu_linear: str = "onednn") -> tuple[MTPModel, PreTrainedTokenizerBase]:
    """Base model (embedded by default) + checkpoint (shipped one by default for the embedded model).

    Without any checkpoint, a fresh untrained adapter with `k` masks is attached: drafts are then
    poor but decoding stays exact. cpu_linear: the base model's CPU linear kernel (models.load_model).
    """
    loaded = load_model(model, device=device, trust_remote_code=trust_remote_code, cpu_linear=cpu_linear)
    checkpoint = chosen_checkpoint(model, checkpoint)
    if checkpoint is None:
        mtp_model = adapter.create(loaded.model, loaded.identity, k=k)
    else:
        if not Path(checkpoint).is_dir():
            raise CheckpointError(f"checkpoint directory {checkpoint} does not exist")
        mtp_model = adapter.load(checkpoint, loaded.model, loaded.identity)
    return mtp_model.eval(), loaded.tokenizer


class DecodingSettings(NamedTuple):
    method: str
    k: int
    groups: int | None  # quadratic mask groups; None: k+1, the paper's layout
    lookup: int  # prompt-lookup drafts per pass (0: the masks' drafts only)
    tree_budget: int  # nodes of the masks' draft tree per pass (0: a chain)
    cost_aware: bool  # mask groups only while they pay (decoding.generate's cost_aware)
    source: str  # where the defaults came from
    datastore: tuple[str, ...] = ()  # self-distilled data files whose datastore drafts too (load_datastore)


def decoding_settings(model: MTPModel, checkpoint_dir: str | Path | None, method: str | None = None,
                      k: int | None = None, groups: int | None = None,
                      lookup: int | None = None, tree_budget: int | None = None,
                      cost_aware: bool | None = None,
                      datastore: str | Path | Sequence[str | Path] | None = None) -> DecodingSettings:
    """(method, k, groups, lookup, tree_budget, cost_aware, source, datastore) to decode with.

    Given values win. The rest comes from the checkpoint's measured defaults for the model's device
    type (`python -m mtp bench --save-defaults`), else quadratic with the checkpoint's k and no lookup.
    The source says where the defaults came from: "measured on <machine> (<created>)", "built-in", or
    "explicit" when the method's layout was fully given (lookup, trees, cost-awareness and the
    datastore then default to off). The entry's datastore files are relative to the checkpoint;
    datastore may be one file or several ([] = off).
    """
    if isinstance(datastore, (str, Path)):  # one file, not a sequence of one-letter paths
        datastore = [datastore]
    given_store = tuple(str(path) for path in datastore or ())
    unmeasured = (lookup or 0, tree_budget or 0, False if cost_aware is None else cost_aware)  # all off unless given
    if method is not None and k is not None and (groups is not None or method != "quadratic"):
        return DecodingSettings(method, k, groups, *unmeasured, EXPLICIT, given_store)
    entry = _measured_defaults(model, checkpoint_dir)
    if entry is None or method not in (None, entry["method"]):
        # No measurement, or another method than the measured one: its k and groups do not carry over.
        return DecodingSettings(method or "quadratic", k or model.k, groups, *unmeasured, BUILT_IN, given_store)
    used = method is None or k is None
    k = k or entry["k"]
    if groups is None and entry["groups"] is not None and entry["groups"] <= k + 1:
        groups, used = entry["groups"], True
    if lookup is None:
        lookup = entry.get("lookup", 0)
        used = used or bool(lookup)
    if tree_budget is None:
        tree_budget = entry.get("tree_budget", 0)
        used = used or bool(tree_budget)
    if cost_aware is None:
        cost_aware = entry.get("cost_aware", False)
        used = used or cost_aware
    if datastore is None:
        given_store = tuple(str(Path(checkpoint_dir) / path) for path in entry.get("datastore", []))
        used = used or bool(given_store)
    source = f"measured on {entry['machine']} ({entry['created']})" if used else BUILT_IN
    return DecodingSettings(entry["method"], k, groups, lookup, tree_budget, cost_aware, source, given_store)


@functools.lru_cache(maxsize=4)
def _datastore(files: tuple[tuple[str, int, int], ...], vocab_size: int) -> Datastore:
    """Loaded once per process and file version (path, mtime, size): the bench and the demo's race
    decode with it again and again."""
    return Datastore.from_distilled([path for path, _, _ in files], vocab_size=vocab_size)


def _version(path: str | Path) -> tuple[str, int, int]:
    try:
        stat = Path(path).stat()
    except OSError:
        return str(path), 0, 0  # Datastore.from_distilled says what is wrong with it
    return str(path), stat.st_mtime_ns, stat.st_size


def load_datastore(model: MTPModel, files: Sequence[str | Path], required: bool = True) -> Datastore | None:
    """The datastore of these self-distilled data files for this model (None: no files). Missing or
    unusable files raise DatastoreError naming them; unless `required` (files the user named), they
    are only logged and decoding goes on without (a checkpoint's defaults naming data not installed)."""
    if not files:
        return None
    try:
        return _datastore(tuple(map(_version, files)), model.base.config.vocab_size)
    except DatastoreError as error:
        if required:
            raise
        log.warning("decoding without the checkpoint's datastore: %s", error)
        return None


def _measured_defaults(model: MTPModel, checkpoint_dir: str | Path | None) -> dict | None:
    """The checkpoint's measured entry for the model's device type, unless it cannot apply to this model."""
    if checkpoint_dir is None:
        return None
    device_type = model.mask_embeddings.device.type
    entry = read_decoding_defaults(checkpoint_dir, device_type)
    if entry is not None and entry["k"] > model.k:
        log.warning("ignoring the measured %s defaults in %s: k=%d exceeds the checkpoint's k=%d (a stale file; "
                    "rerun the bench with --save-defaults)", device_type, checkpoint_dir, entry["k"], model.k)
        return None
    return entry
