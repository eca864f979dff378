"""MTPConfig: everything needed to rebuild an MTP adapter; saved as JSON beside its weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .models import BaseIdentity

FORMAT_VERSION = 1
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {self.lora_rank}")
        self.lora_targets = tuple(self.lora_targets)
        if isinstance(self.base, dict):
            self.base = BaseIdentity(**self.base)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "MTPConfig":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as error:
            raise CheckpointError(f"{path} is missing: not an mtp checkpoint directory") from error
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
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
