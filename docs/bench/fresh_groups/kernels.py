"""Where a multi-row pass's time goes on this CPU: the linear layers of all 30 SmolLM2-135M layers
(q/k/v and gate/up as the fused sibling matmuls decoding runs), each layer with its own random
weights so that they stream from memory as in the model, for 1-32 input rows. Milliseconds per
30-layer sweep, median of 9: torch's kernel (MKL) on W and on a contiguous W^T, oneDNN on the plain
weight, oneDNN on its packed copy (what decoding runs for 2+ rows).

    PYTHONPATH=. python docs/bench/fresh_groups/kernels.py
"""
import torch, time
from mtp.models import pack
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
shapes = {"qkv": (960, 576), "o": (576, 576), "gate/up": (3072, 576), "down": (576, 1536)}
L = 30
def med(fns, n=9):
    ts = []
    for rep in range(n + 2):
        t = time.perf_counter()
        for f in fns: f()
        ts.append(time.perf_counter() - t)
    ts = ts[2:]
    return sorted(ts)[n // 2] * 1e3
res = {}
with torch.inference_mode():
    ws = {name: [torch.randn(o, i, generator=g) for _ in range(L)] for name, (o, i) in shapes.items()}
    wts = {name: [w.t().contiguous() for w in v] for name, v in ws.items()}
    pws = {name: [pack(w) for w in v] for name, v in ws.items()}
    for rows in (1, 2, 3, 4, 5, 8, 9, 13, 16, 20, 24, 32):
        out = {}
        xs = {name: torch.randn(rows, i, generator=g) for name, (o, i) in shapes.items()}
        def run(kind):
            fns = []
            for l in range(L):
                for name in shapes:
                    x = xs[name]
                    if kind == "mkl": fns.append(lambda x=x, w=ws[name][l]: torch.nn.functional.linear(x, w))
                    if kind == "mklT": fns.append(lambda x=x, w=wts[name][l]: torch.mm(x, w))
                    if kind == "dnn": fns.append(lambda x=x, w=ws[name][l]: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
                    if kind == "packed": fns.append(lambda x=x, w=pws[name][l]: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
            return med(fns)
        print(rows, {k: round(run(k), 1) for k in ("mkl", "mklT", "dnn", "packed")}, flush=True)
