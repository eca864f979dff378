"""Prompt sets and self-distillation: the base model's own greedy responses become the training data.

Readers accept: JSONL with a `prompt` field (other fields kept), GSM8K-style JSONL (`question`),
the eval sets' JSONL (`turns`), Self-Instruct JSONL (`instruction` + first instance input) and a
Code-Alpaca-style JSON array (`instruction` + `input`). Prompts are used verbatim: leading and
trailing whitespace and newlines are part of the prompt (a code stub ending in "\n" is another
prompt than one without it). A line that is not valid UTF-8 or not valid JSON, or that holds no
prompt text (or only whitespace), is reported as file:line and skipped; a whole-file JSON array
with invalid UTF-8 is refused with its file:line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
import torch
from tqdm import tqdm

from .models import encode_prompt, load_model

log = logging.getLogger("mtp.data")
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "prompts"
BUNDLED_TRAIN = sorted((ASSETS / "train").glob("*.json*"))
EVAL_SETS = {"math": "gsm8k", "code": "humaneval", "chat": "mt_bench", "knowledge": "qa",
             "instructions": "alpaca", "summarisation": "sum"}
_DOMAIN_BY_NAME = {"gsm8k": "math", "code": "code", "humaneval": "code", "self_instruct": "chat",
                   "mt_bench": "chat", "qa": "knowledge", "alpaca": "instructions", "sum": "summarisation"}


@dataclass
class PromptRecord:
    prompt: str
    domain: str
    source: str  # file:line, for messages
    fields: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


def _domain_for(path: Path) -> str:
    stem = path.stem.lower()
    return next((domain for name, domain in _DOMAIN_BY_NAME.items() if name in stem), "general")


def _prompt_of(obj: dict) -> str | None:
    if isinstance(obj.get("prompt"), str):
        return obj["prompt"]
    if isinstance(obj.get("question"), str):
        return obj["question"]
    turns = obj.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return turns[0]
    if isinstance(obj.get("instruction"), str):
        extra = obj.get("input")
        instances = obj.get("instances")
        if not extra and isinstance(instances, list) and instances and isinstance(instances[0], dict):
            extra = instances[0].get("input")
        return obj["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    return None


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_line(raw: bytes, where: str) -> str | None:
    """One line as strict UTF-8, or None with a warning naming file:line: a bad byte is never
    silently replaced by U+FFFD."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        log.warning("%s: skipped, not valid UTF-8 (byte 0x%02x at column %d)", where, raw[error.start], error.start + 1)
        return None


def _json_entries(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed object) of a JSONL file or of each item of a JSON array file."""
    with _open_binary(path) as handle:
        raw = handle.read()
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is not part of the first line
    if path.suffix == ".json" or raw.lstrip().startswith(b"["):
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            line = raw.count(b"\n", 0, error.start) + 1
            raise ValueError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[error.start]:02x})") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json prompt file must hold an array of objects")
        return [(index + 1, obj) for index, obj in enumerate(data)]
    entries = []
    # Split on "\n" only: str.splitlines() would also cut at U+2028 and other characters inside a prompt.
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        text = decode_line(line, f"{path}:{number}")
        if text is None:
            continue
        try:
            entries.append((number, json.loads(text)))
        except json.JSONDecodeError as error:
            log.warning("%s:%d: skipped, not valid JSON (%s)", path, number, error.msg)
    return entries


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """Prompt records from one file (JSONL or a JSON array, optionally gzipped: a distilled data file
    is a prompt file too), each prompt verbatim; bad lines are logged as file:line and skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    default_domain = _domain_for(path)
    records = []
    for number, obj in _json_entries(path):
        prompt = _prompt_of(obj) if isinstance(obj, dict) else None
        if prompt is None or not prompt.strip():
            log.warning("%s:%d: skipped, no prompt/question/turns/instruction text (or only whitespace)", path, number)
            continue
        domain = obj.get("domain") or default_domain
        records.append(PromptRecord(prompt, str(domain), f"{path.name}:{number}", obj))
    return records


def read_prompt_files(paths: list[str | Path]) -> list[PromptRecord]:
    return [record for path in paths for record in read_prompts(path)]


def _finished_keys(out: Path) -> set[str]:
    """Keys already written. A torn last line (a kill mid-write leaves no newline at its end) is cut
    off; any other line that is not a distilled sample is refused, since appending to a file that
    distill did not write would damage it."""
    if not out.exists():
        return set()
    raw = out.read_bytes()
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    keys = set()
    for number, line in enumerate(lines, start=1):
        try:
            keys.add(json.loads(line)["key"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ValueError(f"{out}:{number}: not a sample written by distill: choose another output file, "
                             "this one is left as it is") from None
    if torn:
        log.warning("%s: cut its torn last line (a run killed mid-write); its prompts are distilled again", out)
        with open(out, "r+b") as handle:
            handle.truncate(len(raw) - len(torn))
    return keys


def select_prompts(records: list[PromptRecord], limit: int | None, seed: int,
                   per_domain: dict[str, int] | None = None) -> list[PromptRecord]:
    """A deterministic, de-duplicated selection (seeded shuffle, optional per-domain caps)."""
    unique = list({record.key: record for record in records}.values())
    random.Random(seed).shuffle(unique)
    if per_domain:
        taken: dict[str, int] = {}
        chosen = []
        for record in unique:
            if taken.get(record.domain, 0) < per_domain.get(record.domain, 0):
                chosen.append(record)
                taken[record.domain] = taken.get(record.domain, 0) + 1
        unique = chosen
    return unique[:limit] if limit else unique


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy responses for a batch (left padding); each ends at and includes EOS if reached."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    output = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False,
                            max_new_tokens=max_new_tokens, pad_token_id=pad)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    responses = []
    for row in output[:, width:].tolist():
        cut = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))
        responses.append(row[:cut])
    return responses


def distill(prompt_files: list[str | Path], out: str | Path, *, model_source: str | None = None,
            max_new_tokens: int = 192, batch_size: int = 16, limit: int | None = None, seed: int = 0,
            per_domain: dict[str, int] | None = None, max_prompt_tokens: int = 512,
            chat_template: bool = True) -> Path:
    """Write JSONL {key, domain, source, prompt, prompt_ids, response_ids}; resumable and kill-safe."""
    out = Path(out)
    records = select_prompts(read_prompt_files(prompt_files), limit, seed, per_domain)
    if not records:
        raise ValueError(f"no prompts to distill in {', '.join(map(str, prompt_files))}"
                         + (f" for the domains {sorted(per_domain)}" if per_domain else "") + ": nothing written")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _finished_keys(out)
    todo = [r for r in records if r.key not in done]
    log.info("%d prompts selected, %d already distilled, %d to go", len(records), len(records) - len(todo), len(todo))
    if not todo:
        return out
    loaded = load_model(model_source)
    encoded = []
    for record in todo:
        ids = encode_prompt(loaded.tokenizer, record.prompt, chat_template)
        if len(ids) > max_prompt_tokens:
            log.warning("%s: skipped, prompt has %d tokens (> %d)", record.source, len(ids), max_prompt_tokens)
            continue
        encoded.append((record, ids))
    if not encoded:
        raise ValueError(f"all {len(todo)} prompts to distill are longer than {max_prompt_tokens} tokens: nothing written")
    # Sort by length within windows: less padding per batch, while a partial file (a run that is
    # still going) already holds the whole selection's mix of domains.
    window = batch_size * 8
    encoded = [item for start in range(0, len(encoded), window)
               for item in sorted(encoded[start:start + window], key=lambda item: len(item[1]))]
    with open(out, "a", encoding="utf-8") as handle, tqdm(total=len(encoded), desc="distill", unit="prompt",
                                                         file=sys.stderr) as bar:
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start:start + batch_size]
            responses = generate_batch(loaded.model, loaded.tokenizer, [ids for _, ids in batch], max_new_tokens)
            lines = [json.dumps({"key": r.key, "domain": r.domain, "source": r.source, "prompt": r.prompt,
                                 "prompt_ids": ids, "response_ids": resp})
                     for (r, ids), resp in zip(batch, responses)]
            # One write + fsync per batch: a kill leaves at most one torn line, cut on resume.
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    return out


def _ids_problem(value: object, vocab_size: int | None) -> str | None:
    """Why a prompt_ids / response_ids value is unusable, or None when it is a non-empty list of token ids."""
    if not isinstance(value, list) or not value:
        return "not a non-empty list"
    bad = next((v for v in value if not isinstance(v, int) or isinstance(v, bool) or v < 0
                or (vocab_size is not None and v >= vocab_size)), None)
    if bad is None:
        return None
    vocabulary = "" if vocab_size is None else f" below the vocabulary size {vocab_size}"
    return f"holds {bad!r}, not a token id (an integer >= 0{vocabulary})"


def read_distilled(path: str | Path, vocab_size: int | None = None) -> list[tuple[str, dict]]:
    """(file:line, sample) of each distilled sample (JSONL, or JSONL.gz as committed). A line that
    is not valid UTF-8 or JSON, or whose prompt_ids / response_ids are not lists of token ids (below
    vocab_size when given), is reported as file:line and skipped."""
    path = Path(path)
    samples = []
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            text = decode_line(raw, where)
            if text is None:
                continue
            try:
                sample = json.loads(text)
            except json.JSONDecodeError as error:
                log.warning("%s: skipped distilled sample, not valid JSON (%s)", where, error.msg)
                continue
            if not isinstance(sample, dict):
                log.warning("%s: skipped distilled sample, not a JSON object", where)
                continue
            problem = next((f"{name} {problem}" for name in ("prompt_ids", "response_ids")
                            if (problem := _ids_problem(sample.get(name), vocab_size))), None)
            if problem:
                log.warning("%s: skipped distilled sample, %s", where, problem)
                continue
            samples.append((where, sample))
    return samples
