"""All of the demo's model calls run on one thread; model loading on threads that end with it.

PyTorch's CPU kernels parallelise with GNU OpenMP, which keeps a pool of worker threads for every
thread that calls into it; once it manages more threads than there are CPUs, every pool's workers
sleep between parallel regions instead of spin-waiting, and waking them costs each small matmul
dearly. Gradio calls handlers from a pool of threads, so before this a model loaded in one thread
and decoding in another ran at ~40 % of the engine's speed on 2 cores (linear k = 4: 43 vs 109
tokens/s in the main thread, 110 with loading and decoding on one worker thread; 2026-12-02).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

_TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtp-torch")


def on_torch_thread(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """fn(*args, **kwargs) run on the demo's one torch thread, after any call queued before it."""
    return _TORCH_THREAD.submit(fn, *args, **kwargs).result()


def on_own_thread(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """fn(*args, **kwargs) run on a new thread that ends with it, so its OpenMP pool ends too: for long
    jobs (loading a model) that must not queue the demo's model calls behind them."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtp-load") as once:
        return once.submit(fn, *args, **kwargs).result()
