"""The accelerate trainer: prefix-cache or full-layout steps, AdamW, checkpoints, exact resume, logs.

One code path for one CPU, one GPU or many processes (`accelerate launch -m mtp train ...`).
Randomness is counter-based: the data order of epoch e and the anchors of global sample g are drawn
from generators seeded by (seed, e) and (seed, g), so the training state needed for an exact resume
is the step number plus weights and optimizer moments, whatever the number of processes.

Files under `out/`:
- the adapter (MTPModel.save: adapter.safetensors + mtp_config.json), rewritten atomically at each
  checkpoint, with train_config.yaml and train_curves.html beside it;
- train_log.jsonl: one record per optimizer step (losses, lr, accuracy, tokens/s);
- train_state/: what --resume needs (trainable weights, optimizer, step), also written atomically;
- eval_log.jsonl (with eval_data): held-out τ every eval_every steps and at the end, replayed from
  teacher-forced drafts on held-out distilled sequences (mtp.acceptance: exact for greedy decoding).

By job: config (TrainConfig, TrainError), checkpoint (the run directory: checkpoints, logs, the resume
check), data (sequences, data order, anchors), forward (one micro-batch's losses per layout) and loop
(the run, held-out evaluation, the throughput benchmark).
"""

from .checkpoint import EVAL_LOG_FILE, LOG_FILE, STATE_DIR, read_log
from .config import TrainConfig, TrainError
from .data import Sequence, load_sequences
from .forward import full_forward, prefix_cache_forward
from .loop import benchmark, heldout_tau, lr_at, train

# What the CLI, the demo and the tests use, importable as `mtp.train.NAME` whichever module owns it.
__all__ = ["EVAL_LOG_FILE", "LOG_FILE", "STATE_DIR", "Sequence", "TrainConfig", "TrainError", "benchmark",
           "full_forward", "heldout_tau", "load_sequences", "lr_at", "prefix_cache_forward", "read_log", "train"]
