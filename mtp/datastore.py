"""Datastore drafts: what the model itself wrote after the same few tokens (docs/design.md §9).

Retrieval drafting (REST, He et al. arXiv 2311.08252) over the model's own greedy outputs, i.e. the
self-distilled training data (`mtp distill`): after each 3- to 6-token context seen there, the token
that followed it most often. A draft follows the longest context that occurred; it stops where that
context's continuation was not clear (seen fewer than MIN_COUNT times, or under MIN_SHARE of its
occurrences). The table is a sorted array of 64-bit context hashes with each one's token, so
looking a context up is one binary search and the whole thing sits in a few tens of MB.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .atomic import staged_file
from .data import read_distilled
from .models import cache_root

log = logging.getLogger("mtp.datastore")

NGRAMS = (6, 5, 4, 3)  # context lengths, longest first; 2-grams drafted more rows than they paid (§9)
MAX_DRAFTS = 8  # per pass; 16 was no faster on held-out prompts (docs/bench/datastore)
MIN_COUNT = 2
MIN_SHARE = 0.5
# The prompt's last tokens kept with each response (the chat template's assistant header), so the
# answer's first tokens have contexts too.
PROMPT_TAIL = 8
_MULTIPLIER = 0x9E3779B97F4A7C15  # odd 64-bit constant of the polynomial context hash
_MASK = (1 << 64) - 1
_NONE = -1  # a context whose continuation is not clear: drafting stops there
FORMAT = 1  # bumps invalidate cached tables


def context_hash(tokens: Sequence[int]) -> int:
    """The 64-bit hash of a context (its length is part of it); `_window_hashes` computes the same."""
    value = len(tokens)
    for token in tokens:
        value = (value * _MULTIPLIER + token + 1) & _MASK
    return value


def _window_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """context_hash of every n-token window tokens[i:i+n], i = 0 .. len-n (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        value = np.full(len(tokens) - n + 1, n, dtype=np.uint64)
        for j in range(n):
            value = value * np.uint64(_MULTIPLIER) + tokens[j:len(tokens) - n + 1 + j].astype(np.uint64) + np.uint64(1)
    return value


def distilled_sequences(paths: Sequence[str | Path], vocab_size: int | None = None) -> list[list[int]]:
    """What the table is built from: each self-distilled sample's response after its prompt's last
    PROMPT_TAIL tokens."""
    return [sample["prompt_ids"][-PROMPT_TAIL:] + sample["response_ids"]
            for path in paths for _, sample in read_distilled(path, vocab_size)]


class DatastoreError(ValueError):
    """A datastore source that cannot be used: missing, unreadable, or without usable samples."""


@dataclass(frozen=True)
class Datastore:
    """Sorted context hashes (`keys`) and the token each one drafts (`tokens`, _NONE: stop); a draft
    holds at most `max_drafts` tokens (dataclasses.replace to change it)."""

    keys: np.ndarray
    tokens: np.ndarray
    source: str = ""  # what it was built from, for messages
    max_drafts: int = MAX_DRAFTS

    @classmethod
    def build(cls, sequences: Iterable[Sequence[int]], source: str = "") -> "Datastore":
        """The table of every NGRAMS context in `sequences` (each a prompt tail + response)."""
        sequences = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) > min(NGRAMS)]
        hashes, following = [], []
        for sequence in sequences:
            for n in NGRAMS:
                if len(sequence) > n:
                    hashes.append(_window_hashes(sequence[:-1], n))
                    following.append(sequence[n:])
        if not hashes:
            raise DatastoreError(f"{source or 'the datastore source'} holds no sample longer than {min(NGRAMS)} tokens "
                                 "(self-distilled data: JSONL with prompt_ids and response_ids, as `mtp distill` writes)")
        hashes, following = np.concatenate(hashes), np.concatenate(following)
        order = np.lexsort((following, hashes))
        hashes, following = hashes[order], following[order]
        # Runs of equal (context, token) pairs, then per context: total count and its most frequent token.
        pair_start = np.flatnonzero(np.r_[True, (hashes[1:] != hashes[:-1]) | (following[1:] != following[:-1])])
        pair_count = np.diff(np.r_[pair_start, len(hashes)])
        pair_hash, pair_token = hashes[pair_start], following[pair_start]
        by_count = np.lexsort((pair_token, -pair_count, pair_hash))  # per context: most frequent, then lowest id
        pair_hash, pair_token, pair_count = pair_hash[by_count], pair_token[by_count], pair_count[by_count]
        first = np.flatnonzero(np.r_[True, pair_hash[1:] != pair_hash[:-1]])
        total = np.add.reduceat(pair_count, first)
        best, best_count = pair_token[first], pair_count[first]
        clear = (best_count >= MIN_COUNT) & (best_count >= MIN_SHARE * total)
        return cls(pair_hash[first], np.where(clear, best, _NONE).astype(np.int32), source)

    @classmethod
    def from_distilled(cls, paths: Sequence[str | Path], vocab_size: int | None = None) -> "Datastore":
        """The table of self-distilled data files (`mtp distill`'s JSONL / JSONL.gz), cached under
        the model cache by the files' contents."""
        paths = [Path(p) for p in paths]
        # vocab_size is in the key: it decides which samples are kept.
        digest = hashlib.sha256(f"format {FORMAT} {NGRAMS} {MIN_COUNT} {MIN_SHARE} {PROMPT_TAIL} {vocab_size}".encode())
        for path in paths:
            try:
                digest.update(path.read_bytes())
            except OSError as error:
                raise DatastoreError(f"cannot read datastore source {path}: {error.strerror or error}") from None
        source = ", ".join(str(p) for p in paths)
        cached = cache_root() / "datastore" / f"{digest.hexdigest()[:24]}.npz"
        if cached.is_file():
            try:
                with np.load(cached) as table:
                    return cls(table["keys"], table["tokens"], source)
            except (OSError, ValueError, KeyError) as error:  # a damaged cache is rebuilt, not trusted
                log.warning("rebuilding the datastore: cached table %s unreadable (%s)", cached, error)
        try:
            sequences = distilled_sequences(paths, vocab_size)
        except (OSError, EOFError) as error:  # e.g. a truncated .gz
            raise DatastoreError(f"cannot read datastore source {source}: {error}") from None
        store = cls.build(sequences, source)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(cached) as staging, open(staging, "wb") as out:  # a file handle: savez names it as given
            np.savez(out, keys=store.keys, tokens=store.tokens)
        log.info("datastore: %d contexts from %s", len(store.keys), source)
        return store

    def next_token(self, context: Sequence[int]) -> int | None:
        """The token the longest known context at the end of `context` drafts (None: none known, or
        its continuation is not clear)."""
        lengths = [n for n in NGRAMS if len(context) >= n]
        if not lengths:
            return None
        wanted = np.array([context_hash(context[-n:]) for n in lengths], dtype=np.uint64)
        where = np.searchsorted(self.keys, wanted).clip(max=len(self.keys) - 1)
        found = np.flatnonzero(self.keys[where] == wanted)
        if not len(found):
            return None
        token = int(self.tokens[where[found[0]]])
        return None if token == _NONE else token

    def drafts(self, context: Sequence[int]) -> list[int]:
        """Up to `max_drafts` tokens, each the next_token of the context with the ones before it."""
        tail = list(context[-max(NGRAMS):])
        out: list[int] = []
        while len(out) < self.max_drafts:
            token = self.next_token(tail)
            if token is None:
                break
            out.append(token)
            tail = tail[1:] + [token] if len(tail) == max(NGRAMS) else tail + [token]
        return out
