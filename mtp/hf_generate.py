"""MTP decoding behind transformers' own `model.generate(...)` (its `custom_generate` hook).

    from mtp.hf_generate import entry_path
    out = model.generate(input_ids, custom_generate=entry_path(), trust_remote_code=True,
                         mtp_checkpoint="checkpoints/smollm2-135m-mtp", max_new_tokens=64, streamer=streamer)

transformers 5.23 takes `custom_generate` as a Hub repo or a local directory holding
`custom_generate/generate.py` (mtp ships one: `entry_path()` is its directory; a local directory
needs `trust_remote_code=True`), or as a callable. The callable form gets the prepared inputs but
not the streamer (transformers drops it after sending it the prompt, so a TextIteratorStreamer
would wait forever): the directory form receives every `generate` argument, so it is the entry.

Greedy only: the output is token for token what plain greedy `generate` returns, produced in fewer
forward passes. Options that would change the greedy tokens (sampling, beams, logits processors,
extra stopping criteria) are refused with one OptionError instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.generation import GenerateDecoderOnlyOutput, GenerationConfig, GenerationMode

from . import adapter
from .adapter import MTPModel
from .api import decoding_settings, load_datastore
from .config import CheckpointError
from .decoding import generate as mtp_generate
from .options import OptionError

# generate(..., mtp_<name>=value): the MTP options the entry takes, as api.decoding_settings names them.
SETTINGS = ("method", "k", "groups", "lookup", "tree_budget", "cost_aware", "datastore")
# Arguments of `generate` the entry refuses unless unset, False or an empty list.
_NEUTRAL = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
            "negative_prompt_ids", "negative_prompt_attention_mask")
# GenerationConfig fields the entry cannot honour (output_* ask for per-step tensors it does not make).
_UNSUPPORTED_CONFIG = ("max_time", "stop_strings", "output_scores", "output_logits", "output_attentions",
                       "output_hidden_states")


def entry_path() -> str:
    """The directory to pass as `generate(custom_generate=...)`: mtp's package, which holds
    `custom_generate/generate.py`."""
    return str(Path(__file__).resolve().parent)


def attached(model: PreTrainedModel, checkpoint: str | Path) -> MTPModel:
    """The MTP adapter of `checkpoint` on `model`, loaded on first use and kept on the model.

    The gated LoRA is injected into the model itself (closed outside MTP passes, so the model's own
    outputs are unchanged, but its state dict gains the LoRA weights: save a freshly loaded copy), so
    one model carries one checkpoint: another one is refused.
    """
    path = Path(checkpoint).resolve()
    loaded = model.__dict__.get("_mtp_adapter")  # outside the registered submodules: the MTPModel holds the model
    if loaded is not None:
        if loaded[0] != path:
            raise CheckpointError(f"this model already carries the MTP adapter of {loaded[0]}: load the model "
                                  f"again to decode with {path}")
        return loaded[1]
    if not path.is_dir():
        raise CheckpointError(f"mtp_checkpoint: directory {checkpoint} does not exist")
    mtp_model = adapter.load(path, model, adapter.identity_of(model, model.config.name_or_path)).eval()
    model.__dict__["_mtp_adapter"] = (path, mtp_model)
    return mtp_model


def _prompt(inputs: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor:
    """The one prompt row; refuses batches, padding and embeddings."""
    input_ids = kwargs.pop("input_ids", None)
    ids = inputs if inputs is not None else input_ids
    if ids is None or not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.long, torch.int):
        raise OptionError("MTP generate needs the prompt as a LongTensor of token ids (inputs or input_ids)")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise OptionError(f"MTP generate decodes one non-empty prompt at a time: got input ids of shape {tuple(ids.shape)}")
    mask = kwargs.pop("attention_mask", None)
    if mask is not None and not bool((mask == 1).all()):
        raise OptionError("MTP generate takes an unpadded prompt: the attention_mask must be all ones")
    return ids


def _greedy_config(model: PreTrainedModel, generation_config: GenerationConfig | None, prompt_length: int,
                   kwargs: dict[str, Any]) -> GenerationConfig:
    """generate's own merged config (the call's options over the model's generation_config), checked to be
    plain greedy search with nothing that changes its ids."""
    config, unused = model._prepare_generation_config(generation_config, **kwargs)
    unused.pop("use_cache", None)
    if unused:
        raise OptionError(f"MTP generate does not take {', '.join(sorted(unused))}")
    mode = config.get_generation_mode()
    if mode != GenerationMode.GREEDY_SEARCH:
        raise OptionError(f"MTP generate decodes greedily, this call asks for {mode.value} "
                          "(pass do_sample=False, num_beams=1 and no assistant)")
    given = [name for name in _UNSUPPORTED_CONFIG if getattr(config, name, None)]
    if given:
        raise OptionError(f"MTP generate does not support {', '.join(given)}")
    model._prepare_special_tokens(config, device=model.device)
    processors = model._get_logits_processor(config, input_ids_seq_length=prompt_length, device=model.device)
    if len(processors):
        raise OptionError("MTP generate keeps greedy ids exact, so it takes no option that changes the logits "
                          f"(this call sets up {', '.join(type(p).__name__ for p in processors)})")
    return config


@torch.no_grad()
def generate(model: PreTrainedModel, inputs: torch.Tensor | None = None,
             generation_config: GenerationConfig | None = None, streamer: Any = None,
             **kwargs: Any) -> torch.LongTensor | GenerateDecoderOnlyOutput:
    """transformers' `generate` contract, decoded by MTP: prompt + new ids, (1, n), or a
    GenerateDecoderOnlyOutput with return_dict_in_generate=True.

    mtp_checkpoint (required): the MTP checkpoint directory trained on this model.
    mtp_method, mtp_k, mtp_groups, mtp_lookup, mtp_tree_budget, mtp_cost_aware: as in mtp.decoding.generate;
    mtp_datastore: a self-distilled data file or a list of them to draft from (api.load_datastore; [] = off); unset ones come
    from the checkpoint's measured defaults (api.decoding_settings).
    max_new_tokens / max_length and eos_token_id come from the call or the model's generation_config.
    """
    for name in _NEUTRAL:
        value = kwargs.pop(name, None)
        if value is not None and value is not False and not (isinstance(value, list) and not value):
            raise OptionError(f"MTP generate does not support {name}")
    checkpoint = kwargs.pop("mtp_checkpoint", None)
    if checkpoint is None:
        raise CheckpointError("MTP generate needs mtp_checkpoint=<an MTP checkpoint directory for this model>")
    settings = {name: kwargs.pop(f"mtp_{name}", None) for name in SETTINGS}
    unknown = sorted(name for name in kwargs if name.startswith("mtp_"))
    if unknown:
        raise OptionError(f"unknown MTP option(s) {', '.join(unknown)}: use {', '.join('mtp_' + s for s in SETTINGS)}")
    kwargs.pop("tokenizer", None)  # generate takes one for stop strings, which are refused anyway
    ids = _prompt(inputs, kwargs)
    config = _greedy_config(model, generation_config, ids.shape[1], kwargs)
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - ids.shape[1]
    if max_new < 1:
        raise OptionError(f"no new token to generate: max_new_tokens={config.max_new_tokens}, max_length="
                          f"{config.max_length} for a prompt of {ids.shape[1]} tokens")
    mtp_model = attached(model, checkpoint)
    chosen = decoding_settings(mtp_model, checkpoint, **settings)
    eos = [] if config._eos_token_tensor is None else config._eos_token_tensor.reshape(-1).tolist()
    prompt = ids[0].tolist()
    trace = mtp_generate(mtp_model, prompt, method=chosen.method, k=chosen.k, groups=chosen.groups,
                         lookup=chosen.lookup, tree_budget=chosen.tree_budget, cost_aware=chosen.cost_aware,
                         datastore=None if chosen.method == "autoregressive" else load_datastore(
                             mtp_model, chosen.datastore, required=settings["datastore"] is not None),
                         max_new_tokens=max_new, eos_token_ids=eos, streamer=streamer)
    sequences = torch.tensor([prompt + trace.token_ids], dtype=ids.dtype, device=ids.device)
    if config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences
