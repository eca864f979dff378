"""The MTP model: k learned mask vectors, gated LoRA (peft) and the sampler head; save/load.

Mask tokens are not vocabulary entries: in `input_ids` the mask for offset i (1..k) is written as
the negative id -i, so one tensor says both what each position is and where the gate is open.
The gate is set for the duration of one forward call in a ContextVar, which is private to the
calling thread / asyncio task: concurrent calls with different layouts never see each other's gate.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora.layer import Linear as LoraLinear
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from . import atomic, attention
from .config import CheckpointError, MTPConfig
from .models import BaseIdentity, config_hash

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "mtp_config.json"
ADAPTER_NAME = "mtp"

@dataclass(frozen=True)
class Gate:
    """Where one forward call opens the LoRA update, computed once per call (not once per layer:
    210 adapted layers on SmolLM2 made per-layer gate bookkeeping cost more than the LoRA itself)."""
    rows: torch.Tensor | None  # flat (batch * seq) indices of open positions; None = open everywhere
    # Flat index from which every position is open and none before it, else None. Decoding puts all
    # masks after the tokens, so its update is a slice (a view) instead of a gather and a scatter.
    start: int | None = None

    @staticmethod
    def of(open_positions: torch.Tensor) -> "Gate | None":
        """(batch, seq) bool -> the gate, or None when it is closed everywhere."""
        if not bool(open_positions.any()):
            return None
        if bool(open_positions.all()):
            return Gate(rows=None)
        rows = open_positions.reshape(-1).nonzero().squeeze(1)
        first = int(rows[0])
        return Gate(rows=rows, start=first if int(rows[-1]) - first + 1 == len(rows) == open_positions.numel() - first
                    else None)


# The gate of the forward call running in this thread / asyncio task. None: closed everywhere.
_GATE: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("mtp_gate", default=None)


class GatedLoraLinear(LoraLinear):
    """peft LoRA Linear whose update is added only at positions where the call's gate is open."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        gate = _GATE.get()
        if gate is None or self._disable_adapters or self.merged_adapters:
            return result
        if gate.start is not None and not self.training and not torch.is_grad_enabled():
            updates = self._inference_updates()
            if updates is not None:
                # Decoding (masks last, no grad): one mm and one in-place addmm on a view per adapter.
                rows = x.reshape(-1, x.shape[-1])[gate.start:]
                out = result.view(-1, result.shape[-1])[gate.start:]
                for a_t, b_t, scale in updates:
                    out.addmm_(torch.mm(rows, a_t), b_t, alpha=scale)
                return result
        # LoRA cost only where it is used: the open rows (all rows in a mask-only training pass).
        flat = x.reshape(-1, x.shape[-1])
        if gate.rows is None:
            rows = x
        elif gate.start is not None:
            rows = flat[gate.start:]
        else:
            rows = flat.index_select(0, gate.rows)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            delta = lora_b(lora_a(self.lora_dropout[name](rows.to(lora_a.weight.dtype)))).to(result.dtype)
            scale = self.scaling[name]  # applied by the add itself: one op fewer in each of the adapted layers
            # Closed-gate rows are never written: real-token outputs stay bit-identical to the base model.
            if gate.rows is None:
                result = torch.add(result, delta, alpha=scale)
            elif gate.start is not None:
                result.view(-1, result.shape[-1])[gate.start:].add_(delta, alpha=scale)  # in place: a view
            else:
                result = result.reshape(-1, result.shape[-1]).index_add(0, gate.rows, delta, alpha=scale).view_as(result)
        return result

    def _inference_updates(self) -> list[tuple[torch.Tensor, torch.Tensor, float]] | None:
        """(A^T, B^T, scale) of each active adapter, for decoding's update; None where it does not apply
        (a bias on B, mixed dtypes). Kept between calls, checked against the active adapters, their
        weights' storage and their scales only: looking everything up through peft's modules and
        properties in each of 210 layers cost more than the update itself (SmolLM2, a pass with 4 drafts
        and 4 masks: 62.5 -> 59.7 ms on 2 cores; docs/bench/lean_lora_eval)."""
        kept = self.__dict__.get("_kept_updates")
        if (kept is not None and kept.active is self._active_adapter
                and kept.pointers == [w.data_ptr() for w in kept.weights]
                and kept.scales == [self.scaling[name] for name in kept.names]):
            return kept.updates
        names = [name for name in self.active_adapters if name in self.lora_A]
        a_weights, b_layers = [self.lora_A[n].weight for n in names], [self.lora_B[n] for n in names]
        scales = [self.scaling[n] for n in names]
        updates = None
        if all(b.bias is None and a.dtype == b.weight.dtype == self.base_layer.weight.dtype
               for a, b in zip(a_weights, b_layers)):
            updates = [(a.t(), b.weight.t(), scale) for a, b, scale in zip(a_weights, b_layers, scales)]
        weights = a_weights + [b.weight for b in b_layers]
        self.__dict__["_kept_updates"] = _KeptUpdates(self._active_adapter, names, weights,
                                                      [w.data_ptr() for w in weights], scales, updates)
        return updates


class _KeptUpdates(NamedTuple):
    """GatedLoraLinear's decoding update and what it was built from."""

    active: str | list[str]  # peft's active adapter(s) then
    names: list[str]
    weights: list[torch.Tensor]  # the A and B weights
    pointers: list[int]  # their storage then
    scales: list[float]
    updates: list[tuple[torch.Tensor, torch.Tensor, float]] | None


class Sampler(nn.Module):
    """h = z + W_out · MLP([E(y_prev); z]) with W_out zero-initialised, so it starts as plain lm_head."""

    def __init__(self, model_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * model_dim, hidden_dim), nn.SiLU(), nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.LayerNorm(hidden_dim),
        )
        self.out = nn.Linear(hidden_dim, model_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, mask_hidden: torch.Tensor, prev_embedding: torch.Tensor) -> torch.Tensor:
        return mask_hidden + self.out(self.mlp(torch.cat([prev_embedding, mask_hidden], dim=-1)))


@dataclass
class MTPOutput:
    hidden: torch.Tensor  # (batch, seq, d): final post-norm hidden states at every input position
    logits: torch.Tensor | None  # (batch, len(logits_for), vocab) when asked for
    past_key_values: object | None


def attention_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool visibility (batch, q, kv) or (batch, 1, q, kv) -> additive 4-D mask HF accepts as-is."""
    if allowed.dim() == 3:
        allowed = allowed[:, None]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


FULL, SLIDING = "full_attention", "sliding_attention"


def layer_types(config: PreTrainedConfig) -> list[str]:
    """Each layer's attention type, named as transformers' models and caches name them."""
    types = getattr(config, "layer_types", None)
    if types is None:  # Mistral-style configs: one window for every layer, or none
        types = [SLIDING if getattr(config, "sliding_window", None) is not None else FULL] * config.num_hidden_layers
    unknown = sorted(set(types) - {FULL, SLIDING})
    if unknown:
        raise ValueError(f"attention layers of type {unknown} are not supported (full and sliding-window only)")
    return list(types)


def sliding_visibility(allowed: torch.Tensor, position_ids: torch.Tensor | None, window: int,
                       past_key_values: object | None, layer_idx: int) -> torch.Tensor:
    """Visibility for a sliding-window layer: the columns of the keys its cache layer returns (a
    sliding cache keeps only the last window-1 entries), each seen only within `window` positions.

    allowed (batch, q, past+q); the cache holds real tokens at positions 0..past-1, in order.
    """
    q = allowed.shape[-2]
    past = allowed.shape[-1] - q
    offset = 0 if past_key_values is None else past_key_values.get_mask_sizes(q, layer_idx)[1]
    device = allowed.device
    query_pos = torch.arange(past, past + q, device=device)[None] if position_ids is None else position_ids.to(device)
    key_pos = torch.cat([torch.arange(offset, past, device=device).expand(query_pos.shape[0], -1), query_pos], dim=-1)
    in_window = query_pos[..., :, None] - key_pos[..., None, :] < window
    return allowed[..., offset:] & in_window


class MTPModel(nn.Module):
    """A frozen causal LM plus the trainable MTP pieces. `base` keeps behaving as the plain model."""

    def __init__(self, base: PreTrainedModel, config: MTPConfig) -> None:
        super().__init__()
        if any(isinstance(m, GatedLoraLinear) for m in base.modules()):
            raise ValueError("this base model already carries an MTP adapter: load a fresh base model")
        base.requires_grad_(False)
        model_dim = base.config.hidden_size
        lora = LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=list(config.lora_targets),
            lora_dropout=0.0, bias="none", init_lora_weights=True,
        )
        lora._register_custom_module({nn.Linear: GatedLoraLinear})
        inject_adapter_in_model(lora, base, adapter_name=ADAPTER_NAME)
        if not any(isinstance(m, GatedLoraLinear) for m in base.modules()):
            raise ValueError(f"none of the LoRA targets {list(config.lora_targets)} exist in this model")
        attention.use_for(base)
        self.base = base
        self.config = config
        embeddings = base.get_input_embeddings().weight
        noise = torch.randn(config.k, model_dim, dtype=embeddings.dtype) * embeddings.std() * 0.1
        self.mask_embeddings = nn.Parameter(embeddings.mean(0, keepdim=True).detach().cpu() + noise)
        hidden = config.sampler_hidden or model_dim
        self.sampler = Sampler(model_dim, hidden) if config.sampler else None
        self.to(embeddings.device)

    @property
    def k(self) -> int:
        return self.config.k

    # -- trainable state -------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"lora.{name}": t for name, t in
                 get_peft_model_state_dict(self.base, adapter_name=ADAPTER_NAME).items()}
        state["mask_embeddings"] = self.mask_embeddings.detach()
        if self.sampler is not None:
            state.update({f"sampler.{n}": t.detach() for n, t in self.sampler.state_dict().items()})
        return {name: t.detach().contiguous().cpu() for name, t in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise CheckpointError(f"weight {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")
        lora = {n[len("lora."):]: t for n, t in state.items() if n.startswith("lora.")}
        set_peft_model_state_dict(self.base, lora, adapter_name=ADAPTER_NAME)
        device = self.mask_embeddings.device
        with torch.no_grad():
            self.mask_embeddings.copy_(state["mask_embeddings"].to(device))
        if self.sampler is not None:
            self.sampler.load_state_dict({n[len("sampler."):]: t for n, t in state.items() if n.startswith("sampler.")})

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- forward ---------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings; negative ids -i are mask tokens for offset i."""
        is_mask = input_ids < 0
        embeddings = self.base.get_input_embeddings()(input_ids.clamp(min=0))
        if not bool(is_mask.any()):
            return embeddings
        offsets = (-input_ids[is_mask] - 1)
        if int(offsets.max()) >= self.k:
            raise ValueError(f"mask offset {int(offsets.max()) + 1} exceeds this adapter's k={self.k}")
        return embeddings.index_put((is_mask,), self.mask_embeddings[offsets].to(embeddings.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: object | None = None,
        use_cache: bool = False,
        logits_for: torch.Tensor | None = None,
        gate: bool | None = None,
    ) -> MTPOutput:
        """One pass over real tokens and masks.

        attention_mask: bool visibility (batch, q, past+q), True = may attend; None = causal.
        logits_for: indices along seq whose lm_head logits to return (vocab logits are costly).
        gate: None opens it exactly at mask positions; True/False force it (the lossless demo).
        """
        open_positions = input_ids < 0 if gate is None else torch.full_like(input_ids, gate, dtype=torch.bool)
        bias = None if attention_mask is None else self.attention_biases(attention_mask, position_ids, past_key_values)
        # A pass appends masks and drafts that the caller then drops from the cache (kv_cache.keep_in_cache):
        # a sliding-window cache layer must keep its older entries until then instead of evicting them.
        for layer in getattr(past_key_values, "layers", ()):
            if getattr(layer, "is_sliding", False) and not layer.record_past:
                layer.activate_past_recording()
        token = _GATE.set(Gate.of(open_positions))
        try:
            with attention.mtp_pass():
                out = self.base.model(
                    inputs_embeds=self.embed(input_ids), position_ids=position_ids, attention_mask=bias,
                    past_key_values=past_key_values, use_cache=use_cache,
                )
        finally:
            _GATE.reset(token)
        hidden = out.last_hidden_state
        logits = None if logits_for is None else self.lm_logits(hidden[:, logits_for])
        return MTPOutput(hidden=hidden, logits=logits, past_key_values=out.past_key_values if use_cache else None)

    def attention_biases(self, allowed: torch.Tensor, position_ids: torch.Tensor | None,
                         past_key_values: object | None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks from bool visibility (batch, q, past+q): one tensor when every layer has the
        same attention type, else one per type (the mapping Gemma-3-style models take)."""
        types = layer_types(self.base.config)
        dtype = self.mask_embeddings.dtype
        biases = {}
        if FULL in types:
            biases[FULL] = attention_bias(allowed, dtype)
        if SLIDING in types:
            visible = sliding_visibility(allowed, position_ids, self.base.config.sliding_window,
                                         past_key_values, types.index(SLIDING))
            biases[SLIDING] = attention_bias(visible, dtype)
        return next(iter(biases.values())) if len(biases) == 1 else biases

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.base.get_output_embeddings()(hidden)

    def sampler_head(self, mask_hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
        """(n, d) what lm_head reads for mask hidden states (n, d) given the token chosen just before
        each: the sampler's output, or the hidden states themselves without a sampler."""
        if self.sampler is None:
            return mask_hidden
        return self.sampler(mask_hidden, self.base.get_input_embeddings()(prev_ids).to(mask_hidden.dtype))

    def lm_logits_at(self, head: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """lm_head logits of `head` (n, d) at only the token ids `candidates`: (n, C) per row, or (C,)
        shared by every row (one read of those lm_head rows instead of one per row)."""
        lm_head = self.base.get_output_embeddings()
        weight = lm_head.weight[candidates].to(head.dtype)
        logits = head @ weight.T if candidates.dim() == 1 else torch.einsum("nd,ncd->nc", head, weight)
        return logits if lm_head.bias is None else logits + lm_head.bias[candidates]

    def sampler_logits(self, mask_hidden: torch.Tensor, prev_ids: torch.Tensor,
                       candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Sampler logits (n, V) for mask hidden states (n, d) given the token chosen just before each.

        candidates (n, C): score only these token ids, (n, C) logits. A full-vocabulary row costs a
        read of the whole lm_head (~10 ms on 2 CPU cores); drafting reads it once for all k masks.
        """
        head = self.sampler_head(mask_hidden, prev_ids)
        return self.lm_logits(head) if candidates is None else self.lm_logits_at(head, candidates)

    # -- checkpoints -----------------------------------------------------------------------------
    def write_files(self, directory: Path, extra_files: dict[str, str] | None = None) -> None:
        """Weights, config and extra text files into an existing directory (not atomic: see save)."""
        # Written by Python, not safetensors' save_file (which creates the file 0600): the umask decides.
        (directory / WEIGHTS_FILE).write_bytes(safetensors_bytes(self.trainable_state_dict(), metadata={"format": "mtp"}))
        self.config.save(directory / CONFIG_FILE)
        for name, text in (extra_files or {}).items():
            (directory / name).write_text(text, encoding="utf-8")

    def save(self, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write weights + config atomically (atomic.replaced_dir): a kill or error at any point leaves
        the previous checkpoint or the new one, never neither; files the folder already holds stay."""
        with atomic.replaced_dir(directory) as staging:
            self.write_files(staging, extra_files)
        return Path(directory)


def is_checkpoint(directory: str | Path) -> bool:
    """A real checkpoint directory: weights and config present, and not a hidden staging copy that an
    interrupted save left (those are `.NAME.tmp-*`, `.NAME.new-*`, `.NAME.old-*`)."""
    directory = Path(directory)
    return (not atomic.is_staging_name(directory.absolute().name) and (directory / CONFIG_FILE).is_file()
            and (directory / WEIGHTS_FILE).is_file())


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """The checkpoint directories directly under `root`, sorted; a checkpoint that a killed save left
    hidden is restored first, and staging copies are never listed."""
    root = Path(root)
    if not root.is_dir():
        return []
    for path in root.iterdir():
        leftover = atomic.leftover_target(path)
        if leftover is not None:
            atomic.recover(leftover)
    return sorted(path for path in root.iterdir() if path.is_dir() and is_checkpoint(path))


def identity_of(base: PreTrainedModel, name: str) -> BaseIdentity:
    return BaseIdentity(name=name, config_hash=config_hash(base), vocab_size=base.config.vocab_size)


def create(base: PreTrainedModel, identity: BaseIdentity, **config_fields) -> MTPModel:
    """A fresh MTP model on top of `base` (LoRA B starts at zero, as peft initialises it)."""
    return MTPModel(base, MTPConfig(base=identity, **config_fields))


def load(directory: str | Path, base: PreTrainedModel, identity: BaseIdentity) -> MTPModel:
    """Load a checkpoint onto `base`, refusing a base model it was not trained on."""
    directory = Path(directory)
    atomic.recover(directory)  # a save killed between its renames: put the complete copy back first
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config = MTPConfig.load(directory / CONFIG_FILE)
    if config.base is None:
        raise CheckpointError(f"{directory / CONFIG_FILE} does not record its base model")
    if (config.base.config_hash, config.base.vocab_size) != (identity.config_hash, identity.vocab_size):
        raise CheckpointError(
            f"checkpoint {directory} was trained on base model '{config.base.name}' "
            f"(config {config.base.config_hash}, vocab {config.base.vocab_size}) but the loaded base is "
            f"'{identity.name}' (config {identity.config_hash}, vocab {identity.vocab_size}): load the matching model"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing: the checkpoint is incomplete")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights} is unreadable or truncated ({error})") from error
    model = MTPModel(base, config)
    model.load_trainable_state_dict(state)
    return model
