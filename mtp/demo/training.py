"""The Train tab's runner: the one training run this server allows at a time, seen by every visitor."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import gradio as gr

from .. import adapter
from ..config import MTPConfig
from ..data import BUNDLED_TRAIN, distill
from ..models import EMBEDDED_NAME
from .store import checkpoint_label

log = logging.getLogger("mtp.app")
MAX_TRAIN_STEPS = 300
MAX_TRAIN_PROMPTS = 64
PROMPT_SETS = {  # name fragments of the files in assets/prompts/train
    "math (GSM8K train)": ("gsm8k",),
    "code (Code Alpaca, stdlib and package stubs)": ("code_alpaca", "code_python"),
    "chat (Self-Instruct)": ("self_instruct",),
    "mix of all three": ("gsm8k", "code_alpaca", "code_python", "self_instruct"),
}


class TrainingRun:
    """The one training run this server allows at a time; every visitor sees its progress."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self._lock = threading.Lock()
        self.run_id = 0
        self.phase = "idle"  # idle | distilling | training | finished | stopped | failed
        self.records: list[dict] = []
        self.owner = ""
        self.steps = 0
        self.out: Path | None = None
        self.message = ""
        self.stop_event = threading.Event()

    @property
    def running(self) -> bool:
        return self.phase in ("distilling", "training")

    def start(self, owner: str, model_name: str, k: int, steps: int, prompt_set: str, prompts: int,
              init_from: Path | None) -> None:
        with self._lock:
            if self.running:
                raise gr.Error(f"A training run is already going ({self.phase}, started by "
                               f"{'you' if owner == self.owner else 'another visitor'}): one at a time.")
            self.run_id += 1
            self.phase, self.records, self.owner, self.steps, self.message = "distilling", [], owner, steps, ""
            self.out = self.runs_dir / f"ui-{time.strftime('%Y%m%d-%H%M%S')}-{self.run_id}"
            self.stop_event = threading.Event()
        threading.Thread(target=self._run, args=(model_name, k, steps, prompt_set, prompts, init_from),
                         daemon=True, name="train").start()

    def stop(self, owner: str) -> None:
        if not self.running:
            raise gr.Error("No training run is going.")
        if owner != self.owner:
            raise gr.Error("Only the visitor who started this run can stop it.")
        self.stop_event.set()

    def _run(self, model_name: str, k: int, steps: int, prompt_set: str, prompts: int, init_from: Path | None) -> None:
        from mtp.train import TrainConfig, train  # heavy: imported on first use

        source = None if model_name == EMBEDDED_NAME else model_name
        try:
            files = [p for p in BUNDLED_TRAIN if any(name in p.name for name in PROMPT_SETS[prompt_set])]
            slug = "-".join(PROMPT_SETS[prompt_set])
            data = self.runs_dir / "ui-data" / f"{slug}-{prompts}.jsonl"
            self.message = f"self-distilling {prompts} prompts (the base model writes its own answers) …"
            distill(files, data, model_source=source, limit=prompts, max_new_tokens=96, batch_size=8, seed=0)
            if self.stop_event.is_set():
                self.phase, self.message = "stopped", "stopped before training started"
                return
            fields = dict(k=k)
            if init_from is not None:  # the adapter's shape comes from the checkpoint
                theirs = MTPConfig.load(init_from / adapter.CONFIG_FILE)
                fields = dict(k=theirs.k, lora_rank=theirs.lora_rank, lora_alpha=theirs.lora_alpha,
                              lora_targets=list(theirs.lora_targets), sampler=theirs.sampler,
                              sampler_hidden=theirs.sampler_hidden)
            config = TrainConfig(data=str(data), out=str(self.out), model=source, steps=steps, save_every=steps,
                                 warmup_steps=max(1, steps // 10), anchors_per_seq=16, max_seq_len=384,
                                 batch_size=1, lr=1e-3, **fields)
            self.phase, self.message = "training", "training …"
            train(config, on_log=self.records.append, should_stop=self.stop_event.is_set, init_from=init_from,
                  progress=False)
            stopped = self.stop_event.is_set()
            self.phase = "stopped" if stopped else "finished"
            self.message = (f"{'stopped' if stopped else 'finished'} after {len(self.records)} steps; checkpoint "
                            f"`{checkpoint_label(self.out)}` — pick it under Settings › Checkpoint")
        except Exception as error:  # reported in the page, the server keeps running
            log.exception("training failed")
            self.phase, self.message = "failed", f"{type(error).__name__}: {error}"

    def describe(self, viewer: str) -> str:
        if self.phase == "idle":
            return "No training run yet."
        who = "you" if viewer == self.owner else "another visitor"
        icon = {"distilling": "⏳", "training": "⏳", "finished": "✅", "stopped": "⏹", "failed": "❌"}[self.phase]
        line = f"{icon} **{self.phase}** (run {self.run_id}, started by {who})"
        if self.records:
            last = self.records[-1]
            line += f" · step {last['step']}/{self.steps} · loss {last.get('loss', float('nan')):.3f}"
        return f"{line}\n\n{self.message}"
