"""A training run's settings: TrainConfig (YAML file + --set overrides, every value checked) and
TrainError, the one error a run that cannot start as asked raises."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..config import ALL_PROJECTIONS
from ..losses import LossWeights


class TrainError(ValueError):
    """A training run that cannot start as asked; nothing has been written."""


@dataclass
class TrainConfig:
    """One run's settings; every value is checked on construction (TrainError)."""

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
            (self.mixed_precision in ("auto", "no", "bf16"), "mixed_precision must be auto, no or bf16"),
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

