"""Where a multi-row pass's time goes on this CPU: the linear layers of all 30 SmolLM2-135M layers
(q/k/v and gate/up as the fused sibling matmuls decoding runs), each layer with its own random
weights so that they stream from memory as in the model, for 1-32 input rows. Milliseconds per
30-layer sweep, median of 9: torch's kernel (MKL) on W and on a contiguous W^T, oneDNN on the plain
weight, oneDNN on its packed copy (what decoding runs for 2+ rows).

    PYTHONPATH=. python docs/bench/fresh_groups/linear_kernels.py
"""
import time

import torch

from mtp.models import pack

torch.set_num_threads(2)
generator = torch.Generator().manual_seed(0)
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate/up": (3072, 576), "down": (576, 1536)}  # (out, in)
LAYERS = 30


def median_ms(calls: list, repeats: int = 9) -> float:
    """Median milliseconds of running all `calls` once, after two warm-up sweeps."""
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        for call in calls:
            call()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[repeats // 2] * 1e3


def onednn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


with torch.inference_mode():
    weights = {name: [torch.randn(o, i, generator=generator) for _ in range(LAYERS)] for name, (o, i) in SHAPES.items()}
    kernels = {  # name -> (kernel, the weight copies it reads)
        "mkl": (torch.nn.functional.linear, weights),
        "mklT": (torch.mm, {name: [w.t().contiguous() for w in ws] for name, ws in weights.items()}),
        "dnn": (onednn, weights),
        "packed": (onednn, {name: [pack(w) for w in ws] for name, ws in weights.items()}),
    }
    for rows in (1, 2, 3, 4, 5, 8, 9, 13, 16, 20, 24, 32):
        inputs = {name: torch.randn(rows, i, generator=generator) for name, (o, i) in SHAPES.items()}
        result = {}
        for kind, (kernel, copies) in kernels.items():
            calls = [lambda x=inputs[name], w=copies[name][layer], kernel=kernel: kernel(x, w)
                     for layer in range(LAYERS) for name in SHAPES]
            result[kind] = round(median_ms(calls), 1)
        print(rows, result, flush=True)
