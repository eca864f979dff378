"""A 1-token pass (t_0 after a 300-token cache, shipped checkpoint, 2 threads), median of 40, with the
base model's weights as from_pretrained leaves them (memory-mapped from the cached safetensors
file), then copied into process memory at the same 64-byte misalignment the mapping gave 272 of
them, then as load_model now keeps them (mtp.models.own_cpu_tensors); and, in each state, one-row
passes on torch's matrix-vector kernel against oneDNN's on the packed weights (alternating).

    PYTHONPATH=. python docs/bench/owned_weights/one_row_pass.py > docs/bench/owned_weights/one_row_pass.txt
"""
import time

import torch

import mtp.models as models

own_cpu_tensors = models.own_cpu_tensors
models.own_cpu_tensors = lambda model: None  # load as before the change: weights left in the mapped file
ONE_ROW_PACKED = [False]
plain_forward = models.OneDnnLinear.forward


def forward(self, x: torch.Tensor) -> torch.Tensor:
    """OneDnnLinear, but one row may take the packed (sibling-fused) path that 2+ rows take."""
    if ONE_ROW_PACKED[0] and not torch.is_grad_enabled() and x.dtype == self.weight.dtype == torch.float32:
        return self.packed_output(x)
    return plain_forward(self, x)


models.OneDnnLinear.forward = forward
from mtp.api import load_mtp  # noqa: E402
from mtp.kv_cache import decoding_cache, keep_in_cache  # noqa: E402

torch.set_num_threads(2)
model, _ = load_mtp()
print("one-row kernel chosen for this process: " + ("oneDNN" if models.one_row_uses_onednn() else "torch"))


def mapped() -> str:
    maps = open("/proc/self/maps").read()
    return "mapped" if "model.safetensors" in maps else "not mapped"


def one_row_ms(packed_too: bool, passes: int = 40) -> dict[bool, float]:
    cache = decoding_cache(model.base.config)
    times = {False: [], True: []}
    with torch.inference_mode():
        model(torch.arange(1000, 1300)[None], torch.arange(300)[None], past_key_values=cache, use_cache=True)
        for i in range(2 * passes if packed_too else passes):
            ONE_ROW_PACKED[0] = packed_too and bool(i % 2)
            start = time.perf_counter()
            model(torch.tensor([[2000 + i]]), torch.tensor([[300]]), past_key_values=cache, use_cache=True,
                  logits_for=torch.arange(1))
            times[ONE_ROW_PACKED[0]].append(time.perf_counter() - start)
            keep_in_cache(cache, 300, [])
    ONE_ROW_PACKED[0] = False
    return {packed: sorted(t)[len(t) // 2] * 1e3 for packed, t in times.items() if t}


def misaligned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in process memory starting at the same offset from a 64-byte boundary as `tensor`."""
    offset = tensor.data_ptr() % 64
    buffer = torch.empty(tensor.numel() + 64, dtype=tensor.dtype)
    start = ((64 - buffer.data_ptr() % 64) % 64 + offset) // tensor.element_size()
    copy = buffer[start:start + tensor.numel()].view(tensor.shape)
    copy.copy_(tensor)
    assert copy.data_ptr() % 64 == offset
    return copy


misaligned = sum(p.data_ptr() % 64 != 0 for p in model.base.parameters())
times = one_row_ms(True)
print(f"as loaded ({mapped()}; {misaligned} parameters not 64-byte aligned): torch {times[False]:.1f} ms, "
      f"oneDNN packed {times[True]:.1f} ms")
with torch.no_grad():
    for parameter in model.base.parameters():
        parameter.data = misaligned_copy(parameter.data)
print(f"copied, same misalignment ({mapped()}): torch {one_row_ms(False)[False]:.1f} ms")
own_cpu_tensors(model.base)
times = one_row_ms(True)
print(f"own_cpu_tensors ({mapped()}): torch {times[False]:.1f} ms, oneDNN packed {times[True]:.1f} ms")
