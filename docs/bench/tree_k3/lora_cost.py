"""What the gated LoRA costs a decoding pass on CPU (issue 19): one 13-token pass (a tree's size)
plus one 4-mask group after a 300-token cached context, shipped checkpoint, 2 threads, median of
60 passes, with GatedLoraLinear's forward swapped for variants that do part of the update only.
"closed" runs the same pass with the gate shut (no LoRA anywhere): the difference is LoRA's cost.

    PYTHONPATH=. python docs/bench/tree_k3/lora_cost.py > docs/bench/tree_k3/lora_cost.txt
"""
import time

import torch

import mtp.adapter as adapter
from mtp.api import load_mtp
from mtp.kv_cache import decoding_cache, keep_in_cache
from mtp.layouts import step_layout

torch.set_num_threads(2)
model, _ = load_mtp()
context = list(range(1000, 1300))
TINY = torch.randn(16, 16)


def pass_ms(gate: bool | None, repeats: int = 60) -> float:
    cache = decoding_cache(model.base.config)
    with torch.inference_mode():
        model(torch.tensor([context]), torch.arange(len(context))[None], past_key_values=cache, use_cache=True)
        layout = step_layout(list(range(2000, 2013)), len(context), 4, [12])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(layout.input_ids[None], layout.position_ids[None], attention_mask=layout.attention[None],
                  past_key_values=cache, use_cache=True, logits_for=torch.arange(len(layout.input_ids)), gate=gate)
            times.append(time.perf_counter() - start)
            keep_in_cache(cache, len(context), [])
    return sorted(times)[repeats // 2] * 1e3


def partial(part: str):
    def forward(self, x, *args, **kwargs):
        result = self.base_layer(x, *args, **kwargs)
        gate = adapter._GATE.get()
        if gate is None:
            return result
        a_t, b_t, scale = self._inference_updates()[0]
        rows, out = x.reshape(-1, x.shape[-1])[gate.start:], result.view(-1, result.shape[-1])[gate.start:]
        if part == "mm":  # x A^T only
            torch.mm(rows, a_t)
        elif part == "addmm":  # the B^T product and add only, from zeros
            out.addmm_(rows.new_zeros(rows.shape[0], a_t.shape[1]), b_t, alpha=scale)
        elif part == "tiny":  # one tiny op on a shared 16x16 matrix: the cost of a call
            torch.mm(rows[:, :16], TINY)
        elif part == "both":  # the update without the checks of the shipped forward
            out.addmm_(torch.mm(rows, a_t), b_t, alpha=scale)
        return result
    return forward


shipped = adapter.GatedLoraLinear.forward
variants = {"shipped forward": shipped, "lookups only (no arithmetic)": partial("none"),
            "+ one tiny op": partial("tiny"), "+ x A^T only": partial("mm"), "+ B^T product only": partial("addmm"),
            "+ both, no checks": partial("both")}
for name, forward in variants.items():
    adapter.GatedLoraLinear.forward = forward
    gated, closed = pass_ms(None), pass_ms(False)
    print(f"{name}: gated {gated:.2f} ms, closed {closed:.2f} ms, LoRA {gated - closed:.2f} ms", flush=True)
adapter.GatedLoraLinear.forward = shipped
