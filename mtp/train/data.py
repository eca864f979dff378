"""Training data: distilled prompt + response sequences read and cut to max_seq_len, held out apart
from the trained prompts, kept within the model's vocabulary; the counter-based data order of each
epoch and the anchors of each global sample (so a resume redraws them exactly)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import read_distilled
from ..layouts import default_anchors
from .config import TrainConfig, TrainError

log = logging.getLogger(__package__)


@dataclass
class Sequence:
    """One distilled sample: prompt + response token ids."""

    ids: list[int]
    prompt_len: int
    source: str = ""  # file:line of the distilled sample, for messages


def load_sequences(path: str | Path, max_seq_len: int) -> list[Sequence]:
    """Prompt + response id sequences; responses cut to fit max_seq_len, over-long prompts dropped,
    malformed samples reported as file:line and skipped (data.read_distilled)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"data file {path} does not exist (make it with: python -m mtp distill ...)")
    sequences = []
    for source, sample in read_distilled(path):
        prompt, response = sample["prompt_ids"], sample["response_ids"]
        if len(prompt) >= max_seq_len:
            continue
        sequences.append(Sequence(prompt + response[:max_seq_len - len(prompt)], len(prompt), source))
    if not sequences:
        raise TrainError(f"data file {path} holds no usable sample (prompt_ids + response_ids under {max_seq_len} tokens)")
    return sequences


def within_vocabulary(sequences: list[Sequence], vocab_size: int, path: str) -> list[Sequence]:
    """The sequences whose ids the model knows; each other one is reported as file:line and skipped."""
    kept = []
    for seq in sequences:
        if max(seq.ids) < vocab_size:
            kept.append(seq)
        else:
            log.warning("%s: skipped distilled sample, token id %d is outside the model's vocabulary of %d",
                        seq.source, max(seq.ids), vocab_size)
    if not kept:
        raise TrainError(f"data file {path} holds no sample within the model's vocabulary of {vocab_size} tokens: "
                         "was it distilled with another model?")
    return kept


def load_data(config: TrainConfig) -> tuple[list[Sequence], list[Sequence]]:
    """The training sequences and the first eval_sequences held-out ones (none without eval_data);
    TrainError when a held-out prompt is also trained on."""
    sequences = load_sequences(config.data, config.max_seq_len)
    heldout = load_sequences(config.eval_data, config.max_seq_len)[:config.eval_sequences] if config.eval_data else []
    trained_prompts = {tuple(seq.ids[:seq.prompt_len]) for seq in sequences} if heldout else set()
    overlap = sum(tuple(seq.ids[:seq.prompt_len]) in trained_prompts for seq in heldout)
    if overlap:
        raise TrainError(f"{overlap} of the {len(heldout)} held-out prompts in {config.eval_data} are also in the "
                         f"training data {config.data}: hold out prompts that are not trained on")
    # Read once: a data file that grows meanwhile (distill still running) is picked up on --resume.
    log.info("%d training sequences from %s", len(sequences), config.data)
    return sequences, heldout


def sample_order(num: int, seed: int, epoch: int) -> list[int]:
    """Epoch `epoch`'s permutation of the `num` sequences, drawn from (seed, epoch) alone."""
    return torch.randperm(num, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def sample_anchors(seq: Sequence, count: int, seed: int, index: int) -> list[int]:
    """A sorted random subset of `count` anchors (all when count is 0 or there are fewer)."""
    anchors = default_anchors(len(seq.ids), seq.prompt_len)
    if count == 0 or len(anchors) <= count:
        return anchors
    generator = torch.Generator().manual_seed((seed + 1) * 7_919_993 + index)
    return sorted(anchors[i] for i in torch.randperm(len(anchors), generator=generator)[:count].tolist())

