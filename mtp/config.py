"""MTPConfig: everything needed to rebuild an MTP adapter; saved as JSON beside its weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .atomic import write_text as write_atomic
from .models import BaseIdentity
from .options import check_finite, check_int

FORMAT_VERSION = 1
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DECODING_DEFAULTS_FILE = "decoding_defaults.json"  # measured best decoding settings, keyed by device type
DEFAULTS_METHODS = ("linear", "quadratic")  # the defaults pick MTP decoding; autoregressive needs no checkpoint
# What an entry holds: the settings, how fast they were, where and how measured. The speed is either
# predicted (the autotuner: cost curve x replay) or measured (decoded side by side with `generate`).
DEFAULTS_FIELDS = ("method", "k", "groups", "lookup", "tree_budget", "cost_aware", "tokens_per_step",
                   "predicted_tokens_per_second", "predicted_speedup_vs_autoregressive", "tokens_per_second",
                   "speedup_vs_generate", "basis", "machine", "torch_threads", "created", "command", "datastore")
DEFAULTS_REQUIRED = ("method", "k", "groups", "tokens_per_step", "machine", "torch_threads", "created", "command")
# Absent from files written before they existed: 0, no lookup drafts, chains rather than trees.
DEFAULTS_OPTIONAL = ("lookup", "tree_budget")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


@dataclass
class MTPConfig:
    k: int = 8
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ALL_PROJECTIONS
    sampler: bool = True
    sampler_hidden: int = 0  # 0: the base model's hidden size
    base: BaseIdentity | None = None
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # free-form provenance (training run, data)

    def __post_init__(self) -> None:
        """Check the type and range of every field (a config file is input like any other)."""
        check_int("k", self.k, 1)
        check_int("lora_rank", self.lora_rank, 1)
        check_finite("lora_alpha", self.lora_alpha)
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if (not isinstance(self.lora_targets, (list, tuple)) or not self.lora_targets
                or not all(isinstance(name, str) and name for name in self.lora_targets)):
            raise ValueError(f"lora_targets must be a non-empty list of module names, got {self.lora_targets!r}")
        self.lora_targets = tuple(self.lora_targets)
        if not isinstance(self.sampler, bool):
            raise ValueError(f"sampler must be true or false, got {self.sampler!r}")
        check_int("sampler_hidden", self.sampler_hidden, 0)
        check_int("format_version", self.format_version, 1)
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a JSON object, got {self.extra!r}")
        if isinstance(self.base, dict):
            self.base = _base_identity(self.base)
        elif self.base is not None and not isinstance(self.base, BaseIdentity):
            raise ValueError(f"base must be an object with name, config_hash and vocab_size, got {self.base!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "MTPConfig":
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8"))
        except FileNotFoundError as error:
            raise CheckpointError(f"{path} is missing: not an mtp checkpoint directory") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} is unreadable or not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has format_version {version!r}; this mtp reads up to {FORMAT_VERSION}: upgrade mtp"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{path} has unknown fields {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path} holds an invalid config: {error}") from error


def _base_identity(data: dict) -> BaseIdentity:
    expected = {"name": str, "config_hash": str, "vocab_size": int}
    if set(data) != set(expected):
        raise ValueError(f"base must have exactly the fields {sorted(expected)}, got {sorted(data)}")
    for name, kind in expected.items():
        value = data[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise ValueError(f"base.{name} must be a {'positive integer' if kind is int else 'string'}, got {value!r}")
    return BaseIdentity(**data)


# -- measured decoding defaults ------------------------------------------------------------------
def _defaults_problem(entry: object) -> str | None:
    """Why an entry of decoding_defaults.json is unusable, or None when it is fine."""
    if not isinstance(entry, dict):
        return "is not a JSON object"
    missing = [name for name in DEFAULTS_REQUIRED if name not in entry]
    if missing:
        return f"lacks {missing}"
    k, groups = entry["k"], entry["groups"]
    if entry["method"] not in DEFAULTS_METHODS:
        return f"has method {entry['method']!r}, not one of {', '.join(DEFAULTS_METHODS)}"
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return f"has k {k!r}, not an integer >= 1"
    if groups is not None and (entry["method"] != "quadratic" or not isinstance(groups, int)
                               or isinstance(groups, bool) or not 1 <= groups <= k + 1):
        return f"has groups {groups!r}: quadratic only, an integer in 1..k+1"
    for name in DEFAULTS_OPTIONAL:
        value = entry.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"has {name} {value!r}, not an integer >= 0"
    if not isinstance(entry.get("cost_aware", False), bool):  # absent: written before it existed, off
        return f"has cost_aware {entry['cost_aware']!r}, not true or false"
    datastore = entry.get("datastore", [])  # absent: off
    if not isinstance(datastore, list) or not all(isinstance(path, str) and path for path in datastore):
        return f"has datastore {datastore!r}, not a list of file paths (relative to the checkpoint)"
    return None


def _read_defaults_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is unreadable ({error}): fix or delete it") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object keyed by device type: fix or delete it")
    return data


def read_decoding_defaults(checkpoint_dir: str | Path, device_type: str) -> dict | None:
    """The measured decoding defaults of this checkpoint for a device type ("cpu", "cuda", ...), if any."""
    path = Path(checkpoint_dir) / DECODING_DEFAULTS_FILE
    entry = _read_defaults_file(path).get(device_type)
    if entry is None:
        return None
    problem = _defaults_problem(entry)
    if problem:
        raise CheckpointError(f"{path}: the entry for {device_type!r} {problem}: fix or delete it")
    return entry


def write_decoding_defaults(checkpoint_dir: str | Path, device_type: str, entry: dict) -> Path:
    """Set one device type's entry, keeping the others; atomic, so readers never see half a file."""
    problem = _defaults_problem(entry)
    if problem:
        raise ValueError(f"decoding defaults entry {problem}")
    path = Path(checkpoint_dir) / DECODING_DEFAULTS_FILE
    data = {**_read_defaults_file(path), device_type: entry}
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
