"""The MTP model: gated LoRA is lossless on real tokens, per-call gate, save/load, bad checkpoints."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from mtp import adapter
from mtp.config import CheckpointError, MTPConfig
from mtp.layouts import step_layout
from mtp.models import BaseIdentity
from tests.conftest import randomize_lora, tiny_model


def make(family: str, k: int = 4, seed: int = 0) -> adapter.MTPModel:
    base = tiny_model(family, seed)
    model = adapter.create(base, adapter.identity_of(base, f"tiny-{family}"), k=k, lora_rank=4)
    randomize_lora(model)
    return model


def masked_pass(model: adapter.MTPModel, ids: list[int], k: int, gate=None, replace_masks: bool = False):
    """Real tokens + one k-mask group after the last one; returns real-token logits."""
    layout = step_layout(ids, 0, k, [len(ids) - 1])
    input_ids = layout.input_ids.clone()
    if replace_masks:  # the plain model on the very same tensor shape: masks become ordinary tokens
        input_ids[input_ids < 0] = 3
    out = model(input_ids[None], layout.position_ids[None], layout.attention[None],
                logits_for=torch.arange(len(ids)), gate=gate)
    return out.logits[0]


def test_real_token_logits_are_untouched_by_masks_and_lora(tiny_family):
    model = make(tiny_family)
    ids = torch.randint(0, 128, (12,), generator=torch.Generator().manual_seed(5)).tolist()
    with_masks = masked_pass(model, ids, k=4)
    same_shape_plain = masked_pass(model, ids, k=4, gate=False, replace_masks=True)
    plain = model.base(torch.tensor([ids])).logits[0]
    # Bit-identical to the plain model computed on the same tensor shape.
    assert (with_masks - same_shape_plain).abs().max().item() == 0.0
    # Against the plain model on the real tokens alone, CPU GEMM/attention kernels block a 12-row
    # and a 16-row product differently; the difference is float rounding only.
    assert (with_masks - plain).abs().max().item() <= 1e-6
    gate_forced_on = masked_pass(model, ids, k=4, gate=True)
    assert (gate_forced_on - plain).abs().max().item() > 1e-2


def test_masks_and_lora_change_mask_outputs(tiny_family):
    model = make(tiny_family)
    ids = [5, 9, 17, 33]
    layout = step_layout(ids, 0, 4, [3])
    args = (layout.input_ids[None], layout.position_ids[None], layout.attention[None])
    trained = model(*args).hidden[0, 4:]
    closed = model(*args, gate=False).hidden[0, 4:]
    assert (trained - closed).abs().max().item() > 1e-3


def test_gate_slices_a_mask_suffix_and_gathers_otherwise(tiny_family, monkeypatch):
    suffix = adapter.Gate.of(torch.tensor([[False, False, True, True]]))
    assert suffix.start == 2 and suffix.rows.tolist() == [2, 3]
    assert adapter.Gate.of(torch.tensor([[False, True, False, True]])).start is None
    assert adapter.Gate.of(torch.tensor([[True, True, False, False]])).start is None  # not to the end
    assert adapter.Gate.of(torch.tensor([[False, True], [True, True]])).start == 1  # flat over the batch
    assert adapter.Gate.of(torch.tensor([[True, True]])).rows is None
    assert adapter.Gate.of(torch.tensor([[False, False]])) is None
    # Decoding's layout (masks after the tokens) takes the slice; the gathered path gives the same bits.
    model = make(tiny_family)
    layout = step_layout([5, 9, 17, 33, 40], 0, 4, [2, 4])
    args = (layout.input_ids[None], layout.position_ids[None], layout.attention[None])
    sliced = model(*args).hidden
    monkeypatch.setattr(adapter.Gate, "of", staticmethod(
        lambda open_positions: adapter.Gate(rows=open_positions.reshape(-1).nonzero().squeeze(1))))
    gathered = model(*args).hidden
    assert torch.equal(sliced, gathered)
    assert not torch.equal(sliced, model(*args, gate=False).hidden)


@pytest.mark.slow
def test_smollm2_lossless(smollm2):
    model = adapter.create(smollm2.model, smollm2.identity, k=4, lora_rank=8)
    randomize_lora(model, std=0.05)
    ids = smollm2.tokenizer("The quick brown fox jumps over the lazy dog because")["input_ids"]
    plain = smollm2.model(torch.tensor([ids])).logits[0]
    with_masks = masked_pass(model, ids, k=4)
    assert (with_masks - masked_pass(model, ids, k=4, gate=False, replace_masks=True)).abs().max().item() == 0.0
    # vs the plain model on the real tokens alone: 30 layers of shape-dependent fp32 rounding on
    # logits of magnitude ~15 (measured 5.4e-5, relative ~4e-6); the greedy choice is unchanged.
    assert (with_masks - plain).abs().max().item() <= 1e-4
    assert torch.equal(with_masks.argmax(-1), plain.argmax(-1))
    assert (masked_pass(model, ids, k=4, gate=True) - plain).abs().max().item() > 1e-2


def test_inference_lora_update_matches_the_module_path(tiny_family):
    """Decoding's fused update (masks last, eval, no grad) equals peft's module calls (grad mode)."""
    model = make(tiny_family).eval()
    ids = list(range(3, 15))
    layout = step_layout(ids, 0, 4, [len(ids) - 1])  # the k masks after the last token: an open slice
    args = (layout.input_ids[None], layout.position_ids[None], layout.attention[None])
    with torch.no_grad():
        fused = model(*args).hidden
    with torch.enable_grad():
        modules = model(*args).hidden
    assert torch.allclose(fused, modules, atol=1e-6)
    assert torch.equal(fused[0, :len(ids)], modules[0, :len(ids)])  # real tokens: no update either way
    with torch.no_grad():
        closed = model(*args, gate=False).hidden
    assert (fused[0, len(ids):] - closed[0, len(ids):]).abs().max() > 1e-3  # the masks' rows did get the update


def test_inference_lora_update_follows_the_weights():
    """Decoding's kept (A^T, B^T, scale) see in-place training steps, swapped storage, a new scale and a
    disabled adapter."""
    model = make("llama").eval()
    ids = list(range(3, 15))
    layout = step_layout(ids, 0, 4, [len(ids) - 1])
    args = (layout.input_ids[None], layout.position_ids[None], layout.attention[None])

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            fused = model(*args).hidden
        with torch.enable_grad():
            modules = model(*args).hidden
        return fused, modules

    before, _ = both()
    layers = [m for m in model.modules() if isinstance(m, adapter.GatedLoraLinear)]
    with torch.no_grad():
        for layer in layers:
            layer.lora_B[adapter.ADAPTER_NAME].weight.mul_(2.0)  # in place, as an optimizer step
    fused, modules = both()
    assert torch.allclose(fused, modules, atol=1e-6) and not torch.allclose(fused, before, atol=1e-3)
    for layer in layers:  # new storage, as .to() or a loaded state can give
        weight = layer.lora_A[adapter.ADAPTER_NAME].weight
        weight.data = weight.data * 0.5
    fused, modules = both()
    assert torch.allclose(fused, modules, atol=1e-6)
    for layer in layers:
        layer.scaling[adapter.ADAPTER_NAME] *= 3.0  # as peft's set_scale does
    rescaled, modules = both()
    assert (rescaled - modules).abs().max() < 1e-4 and not torch.allclose(rescaled, fused, atol=1e-3)
    for layer in layers:
        layer.enable_adapters(False)
    with torch.no_grad():
        disabled = model(*args).hidden
        closed = model(*args, gate=False).hidden
    assert torch.equal(disabled, closed)


def test_concurrent_calls_keep_their_own_gate():
    model = make("llama", k=4)
    layouts = [step_layout([1, 2, 3, 4, 5, 6], 0, 4, [5]), step_layout([7, 8, 9], 0, 4, [0, 1, 2])]

    def run(layout):
        with torch.no_grad():
            return model(layout.input_ids[None], layout.position_ids[None], layout.attention[None]).hidden

    expected = [run(layout) for layout in layouts]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    barrier = threading.Barrier(4)

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(30):
            results[index % 2].append(run(layouts[index % 2]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in (0, 1):
        assert len(results[index]) == 60
        assert all(torch.equal(result, expected[index]) for result in results[index])


def test_save_load_round_trip(tmp_path, tiny_family):
    model = make(tiny_family)
    with torch.no_grad():
        model.sampler.out.weight.normal_()
    model.save(tmp_path / "ck")
    fresh_base = tiny_model(tiny_family)
    loaded = adapter.load(tmp_path / "ck", fresh_base, adapter.identity_of(fresh_base, "whatever"))
    layout = step_layout([3, 1, 4, 1, 5], 0, 4, [0, 2, 4])
    args = (layout.input_ids[None], layout.position_ids[None], layout.attention[None])
    a, b = model(*args), loaded(*args)
    assert torch.equal(a.hidden, b.hidden)
    prev = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model.sampler_logits(a.hidden[:, 5:9], prev), loaded.sampler_logits(b.hidden[:, 5:9], prev))
    config = json.loads((tmp_path / "ck" / adapter.CONFIG_FILE).read_text())
    assert config["k"] == 4 and config["lora_rank"] == 4 and config["base"]["vocab_size"] == 128


@pytest.fixture
def saved(tmp_path):
    model = make("llama")
    return model.save(tmp_path / "ck")


def _fresh(family: str = "llama"):
    base = tiny_model(family)
    return base, adapter.identity_of(base, "tiny")


def test_load_refuses_other_base(saved):
    base, identity = _fresh("qwen2")
    with pytest.raises(CheckpointError, match="trained on base model"):
        adapter.load(saved, base, identity)


def test_load_refuses_missing_weights(saved):
    (saved / adapter.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        adapter.load(saved, *_fresh())


def test_load_refuses_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        adapter.load(tmp_path / "nope", *_fresh())


def test_load_refuses_truncated_weights(saved):
    weights = saved / adapter.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        adapter.load(saved, *_fresh())


def test_load_refuses_newer_format(saved):
    path = saved / adapter.CONFIG_FILE
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="upgrade mtp"):
        adapter.load(saved, *_fresh())


def test_load_refuses_missing_or_corrupt_config(saved):
    (saved / adapter.CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        adapter.load(saved, *_fresh())
    (saved / adapter.CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        adapter.load(saved, *_fresh())


def test_failed_save_keeps_previous_checkpoint(saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    model = make("llama", seed=3)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(adapter, "safetensors_bytes", broken)
    with pytest.raises(OSError):
        model.save(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert [p.name for p in saved.parent.iterdir() if p.name.startswith(".")] == []


def test_config_validation():
    with pytest.raises(ValueError, match="k must be"):
        MTPConfig(k=0)
    config = MTPConfig(k=2, base={"name": "x", "config_hash": "ab", "vocab_size": 3})
    assert config.base == BaseIdentity("x", "ab", 3)


def test_unknown_lora_target_is_an_error():
    base = tiny_model("llama")
    with pytest.raises(ValueError):
        adapter.create(base, adapter.identity_of(base, "t"), k=2, lora_targets=("nonexistent_proj",))


def test_second_adapter_on_same_base_is_refused():
    model = make("llama")
    with pytest.raises(ValueError, match="already carries"):
        adapter.create(model.base, adapter.identity_of(model.base, "t"), k=2)
