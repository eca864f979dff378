"""mtp demo: see a language model guess the future, and make decoding faster without changing a token.

    python app.py                      # http://127.0.0.1:7860, embedded SmolLM2 + shipped checkpoint
    python app.py --host 0.0.0.0 --port 7860 [--model DIR_OR_HUB_ID] [--checkpoint DIR]

UI only: every number shown comes from mtp.probe results, decoding Traces or training log records,
turned into figures and tables by mtp.viz. GPU when one is present, else CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import html
import inspect
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from mtp import adapter, viz  # noqa: E402
from mtp.adapter import MTPModel  # noqa: E402
from mtp.api import DecodingSettings, decoding_settings, default_checkpoint, load_mtp  # noqa: E402
from mtp.config import CheckpointError, MTPConfig  # noqa: E402
from mtp.data import BUNDLED_TRAIN, distill  # noqa: E402
from mtp.decoding import METHODS, generate  # noqa: E402
from mtp.models import EMBEDDED_NAME, ModelSourceError, encode_prompt, load_model  # noqa: E402
from mtp.probe import future_probe, lossless_check  # noqa: E402
from mtp.trace import Trace  # noqa: E402

log = logging.getLogger("mtp.app")
ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "runs"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FRESH = "fresh adapter (untrained)"
FRESH_K = 8

# Limits, enforced here (clear messages) and again by the engine (ValueError).
MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 512
MAX_NEW_TOKENS = 256
MAX_TOP_N = 10
MAX_TEMPERATURE = 2.0
MAX_TRAIN_STEPS = 300
MAX_TRAIN_PROMPTS = 64
MAX_LOADED_MODELS = 3

PROMPT_SETS = {  # name fragments of the files in assets/prompts/train
    "math (GSM8K train)": ("gsm8k",),
    "code (Code Alpaca, stdlib and package stubs)": ("code_alpaca", "code_python"),
    "chat (Self-Instruct)": ("self_instruct",),
    "mix of all three": ("gsm8k", "code_alpaca", "code_python", "self_instruct"),
}
USER_ERRORS = (ValueError, CheckpointError, ModelSourceError)


# -- models ------------------------------------------------------------------------------------------
class ModelStore:
    """Loaded (model, checkpoint) pairs, each on its own base-model copy, least recently used evicted.

    The gate is a per-call value inside MTPModel, so one loaded model serves concurrent requests.
    """

    def __init__(self, device: str, capacity: int = MAX_LOADED_MODELS) -> None:
        self.device = device
        self.capacity = capacity
        self._models: OrderedDict[tuple[str, str], tuple[MTPModel, object]] = OrderedDict()
        self._lock = threading.Lock()  # guards the dict
        self._load_lock = threading.Lock()  # one load at a time (memory, CPU)
        self.loading: tuple[str, str] | None = None
        self.errors: dict[tuple[str, str], str] = {}

    def peek(self, model_name: str, checkpoint: str) -> MTPModel | None:
        """The loaded model, without loading or reordering."""
        pair = self._models.get((model_name, checkpoint))
        return pair[0] if pair else None

    def get(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object]:
        key = (model_name, checkpoint)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._load_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            self.loading = key
            try:
                pair = self._load(model_name, checkpoint)
            except USER_ERRORS as error:
                self.errors[key] = str(error)
                raise
            finally:
                self.loading = None
            self.errors.pop(key, None)
            with self._lock:
                self._models[key] = pair
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)  # requests still running keep their reference
            return pair

    def _load(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object]:
        source = None if model_name == EMBEDDED_NAME else model_name
        started = time.perf_counter()
        if checkpoint == FRESH:
            loaded = load_model(source, device=self.device)
            torch.manual_seed(0)  # the same fresh adapter every time
            model = adapter.create(loaded.model, loaded.identity, k=FRESH_K).eval()
            tokenizer = loaded.tokenizer
        else:
            model, tokenizer = load_mtp(source, resolve_checkpoint(checkpoint), device=self.device)
        log.info("loaded %s + %s in %.1f s", model_name, checkpoint, time.perf_counter() - started)
        return model, tokenizer


def checkpoint_label(folder: Path) -> str:
    folder = folder.resolve()
    return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)


def resolve_checkpoint(choice: str) -> Path:
    path = Path(choice)
    path = path if path.is_absolute() else ROOT / path
    if not (path / adapter.CONFIG_FILE).exists():
        raise CheckpointError(f"checkpoint {choice} does not exist (any more): pick another one")
    return path


def checkpoint_choices(model_name: str, extra: list[str], runs_dir: Path = RUNS) -> list[str]:
    """Checkpoint folders (shipped, trained here, given on the command line) for this base model."""
    found = []
    candidates = [p.parent for parent in (ROOT / "checkpoints", runs_dir)
                  for p in sorted(parent.glob(f"*/{adapter.CONFIG_FILE}"))]
    candidates += [Path(e) for e in extra]
    for folder in candidates:
        try:
            config = MTPConfig.load(folder / adapter.CONFIG_FILE)
        except CheckpointError:
            continue
        if config.base is not None and config.base.name == Path(model_name).name:
            label = checkpoint_label(folder)
            if label not in found:
                found.append(label)
    return found + [FRESH]


# -- input checks --------------------------------------------------------------------------------------
def check_prompt(tokenizer, prompt: str | None) -> list[int]:
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Type a prompt first (or click one of the examples).")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt has {len(prompt)} characters; this demo accepts up to {MAX_PROMPT_CHARS}.")
    ids = encode_prompt(tokenizer, prompt)
    if len(ids) > MAX_PROMPT_TOKENS:
        raise gr.Error(f"The prompt is {len(ids)} tokens long; this demo accepts up to {MAX_PROMPT_TOKENS}.")
    return ids


def check_int(value, name: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}") from None
    if number != int(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value}")
    return int(number)


def check_temperature(value) -> float:
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"temperature must be a number, got {value!r}") from None
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise gr.Error(f"temperature must be between 0 and {MAX_TEMPERATURE}, got {value}")
    return temperature


def ui_error(error: Exception) -> gr.Error:
    """One clear message in the page for any failure; unexpected ones are logged in full."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, USER_ERRORS):
        return gr.Error(str(error))
    if isinstance(error, torch.OutOfMemoryError):
        return gr.Error("out of memory: try a shorter prompt, fewer new tokens or a smaller k")
    log.error("request failed", exc_info=error)
    return gr.Error(f"internal error ({type(error).__name__}): {error}")


def friendly(function):
    """Wrap an event handler (plain or generator) so no request can take the server down."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                raise ui_error(error) from error
    else:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as error:
                raise ui_error(error) from error
    return wrapper


def token_code(text: str) -> str:
    """A token as inline code inside Markdown, whatever characters it holds (backticks, *, _)."""
    safe = html.escape(viz.token_label(text)).replace("`", "&#96;").replace("*", "&#42;").replace("_", "&#95;")
    return f"<code>{safe}</code>"


def token_texts(tokenizer, ids) -> dict[int, str]:
    return {int(t): tokenizer.decode([int(t)]) for t in set(ids)}


# -- the demo's actions ----------------------------------------------------------------------------------
class Demo:
    def __init__(self, store: ModelStore, models: list[str], extra_checkpoints: list[str], runs_dir: Path) -> None:
        self.store = store
        self.models = models
        self.extra_checkpoints = extra_checkpoints
        self.training = TrainingRun(runs_dir)

    def checkpoints(self, model_name: str) -> list[str]:
        return checkpoint_choices(model_name, self.extra_checkpoints, self.training.runs_dir)

    def model(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object]:
        if model_name not in self.models:
            raise gr.Error(f"unknown model {model_name!r}: choose one of {self.models}")
        if checkpoint not in self.checkpoints(model_name):
            raise gr.Error(f"unknown checkpoint {checkpoint!r} for {model_name}")
        return self.store.get(model_name, checkpoint)

    def settings(self, model: MTPModel, checkpoint: str, method: str | None = None,
                 k: int | None = None) -> DecodingSettings:
        """(method, k, groups, lookup, source) from the same resolver as `mtp generate` (measured defaults first)."""
        return decoding_settings(model, None if checkpoint == FRESH else resolve_checkpoint(checkpoint), method, k)

    def status(self, model_name: str, checkpoint: str) -> str:
        key = (model_name, checkpoint)
        where = f"`{model_name}` + `{checkpoint}` on **{self.store.device}**"
        model = self.store.peek(*key)
        if model is not None:
            trained = "" if checkpoint != FRESH else " — untrained: drafts are poor, output is still exact"
            chosen = self.settings(model, checkpoint)
            defaults = (f"decoding defaults: {chosen.method}, k = {chosen.k}"
                        + (f", {chosen.groups} mask groups" if chosen.groups else "")
                        + (f", up to {chosen.lookup} prompt-lookup drafts" if chosen.lookup else "")
                        + f" ({chosen.source})")
            return f"✅ Ready: {where} (k = {model.k}){trained} — {defaults}"
        if key in self.store.errors:
            return f"❌ Could not load {where}: {self.store.errors[key]}"
        if self.store.loading == key:
            return f"⏳ Loading {where} … (the first start de-quantizes the embedded GGUF, ~30 s on CPU)"
        return f"⏳ Waiting to load {where} …"

    # Settings
    @friendly
    def select(self, model_name: str, checkpoint: str):
        model, _ = self.model(model_name, checkpoint)
        chosen = self.settings(model, checkpoint)
        method, k = chosen.method, chosen.k
        return gr.update(maximum=model.k, value=k), method, self.status(model_name, checkpoint)

    @friendly
    def choose_model(self, model_name: str):
        choices = self.checkpoints(model_name)
        return gr.update(choices=choices, value=choices[0])

    def check_k(self, model: MTPModel, k) -> int:
        return check_int(k, "k (masks)", 1, model.k)

    # Future heatmap
    @friendly
    def probe(self, prompt, model_name, checkpoint, k, top_n):
        model, tokenizer = self.model(model_name, checkpoint)
        ids = check_prompt(tokenizer, prompt)
        k = self.check_k(model, k)
        top_n = check_int(top_n, "top N", 1, MAX_TOP_N)
        result = future_probe(model, ids, k, top_n, tokenizer=tokenizer)
        greedy = [token_code(result.text(t)) for t in result.greedy_ids]
        hits = {name: sum(r == 1 for r in view.greedy_rank) for name, view in result.views.items()}
        summary = (
            f"Plain greedy decoding continues with {greedy[0]} (the ordinary next token) and then "
            + " ".join(greedy[1:]) + f" at offsets +1…+{k}. Top-1 hits out of {k}: "
            + ", ".join(f"{viz.VIEW_TITLES[n]}: **{h}**" for n, h in hits.items()) + "."
        )
        return viz.heatmap_figure(result), viz.probe_table(result), summary

    # Accepted vs rejected
    @friendly
    def generate(self, prompt, model_name, checkpoint, method, k, temperature, max_new_tokens, seed):
        model, tokenizer = self.model(model_name, checkpoint)
        ids = check_prompt(tokenizer, prompt)
        k = self.check_k(model, k)
        if method not in METHODS:
            raise gr.Error(f"method must be one of {', '.join(METHODS)}")
        max_new_tokens = check_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS)
        temperature = check_temperature(temperature)
        seed = check_int(seed, "seed", 0, 2**31 - 1)
        chosen = self.settings(model, checkpoint, method, k)
        trace = generate(model, ids, method=method, k=k, max_new_tokens=max_new_tokens, temperature=temperature,
                         seed=seed, eos_token_ids=eos_ids(tokenizer), tokenizer=tokenizer, groups=chosen.groups,
                         lookup=chosen.lookup)
        texts = token_texts(tokenizer, [t for s in trace.steps for t in s.drafts + [s.bonus]])
        state = {"trace": dataclasses.asdict(trace), "texts": {str(t): s for t, s in texts.items()}}
        steps = len(trace.steps)
        return (viz.accept_reject_html(trace, texts), gr.update(maximum=max(steps, 1), value=steps),
                viz.steps_table(trace, texts), viz.offset_acceptance_figure(trace), metrics_markdown(trace),
                json.dumps(state))

    @friendly
    def replay(self, state: str, step):
        if not state:
            return "<i>Generate first, then drag the slider to replay.</i>"
        data = json.loads(state)
        trace = Trace.from_dict(data["trace"])
        texts = {int(t): s for t, s in data["texts"].items()}
        return viz.accept_reject_html(trace, texts, upto_step=int(step))

    # Race
    @friendly
    def race(self, prompt, model_name, checkpoint, k, max_new_tokens):
        model, tokenizer = self.model(model_name, checkpoint)
        ids = check_prompt(tokenizer, prompt)
        k = self.check_k(model, k)
        max_new_tokens = check_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS)
        eos = eos_ids(tokenizer)
        texts = {m: "" for m in METHODS}
        stats = {m: "waiting for its turn …" for m in METHODS}
        series: dict[str, list[tuple[float, int]]] = {}
        traces: dict[str, Trace] = {}

        def frame(verdict: str):
            return (*[value for m in METHODS for value in (texts[m], stats[m])], viz.race_figure(series),
                    verdict, viz.race_table(traces) if traces else None)

        for method in METHODS:
            events: queue.Queue = queue.Queue()
            chosen = self.settings(model, checkpoint, method, k)
            started = time.perf_counter()

            def work(method=method, events=events, groups=chosen.groups, lookup=chosen.lookup):
                try:
                    events.put(("done", generate(
                        model, ids, method=method, k=k, groups=groups, lookup=lookup, max_new_tokens=max_new_tokens,
                        eos_token_ids=eos,
                        tokenizer=tokenizer, on_chunk=lambda chunk: events.put(("chunk", time.perf_counter(), chunk)))))
                except Exception as error:  # handed to the UI thread below
                    events.put(("error", error))

            threading.Thread(target=work, daemon=True, name=f"race-{method}").start()
            tokens: list[int] = []
            series[method] = [(0.0, 0)]
            last_frame = 0.0
            while True:
                try:
                    event = events.get(timeout=0.25)
                except queue.Empty:
                    event = ("tick",)
                if event[0] == "error":
                    raise event[1]
                if event[0] == "done":
                    trace = traces[method] = event[1]
                    texts[method] = trace.text
                    series[method] = viz.trace_points(trace)
                    stats[method] = metrics_markdown(trace)
                    break
                if event[0] == "chunk":
                    tokens += event[2]
                    elapsed = event[1] - started
                    series[method].append((elapsed, len(tokens)))
                    passes = len(series[method]) - 1
                    texts[method] = tokenizer.decode(tokens, skip_special_tokens=True)
                    stats[method] = (f"**running** · {len(tokens)} tokens · {passes} forward passes · "
                                     f"τ {len(tokens) / passes:.2f} · {len(tokens) / max(elapsed, 1e-9):.1f} tokens/s · "
                                     f"{elapsed:.2f} s")
                if time.perf_counter() - last_frame > 0.2:
                    last_frame = time.perf_counter()
                    yield frame(f"⏳ running {method} …")
            yield frame(f"⏳ {method} done …")
        yield frame(identity_verdict(traces))

    # Lossless
    @friendly
    def lossless(self, prompt, model_name, checkpoint, k):
        model, tokenizer = self.model(model_name, checkpoint)
        ids = check_prompt(tokenizer, prompt)
        k = self.check_k(model, k)
        result = lossless_check(model, ids, k, placeholder_id=tokenizer.pad_token_id or 0)
        ok = result.max_delta_same_shape == 0.0 and result.argmax_same
        lines = [
            f"### {'✅' if ok else '❌'} With {k} masks appended, max |Δ logit| at the {result.num_real} real tokens "
            f"= **{result.max_delta_same_shape:.3g}** (vs the plain base model, same tensor shape)",
            f"Against the base model run on the real tokens alone: **{result.max_delta_base_alone:.3g}** — "
            "not a model difference: CPU/GPU matrix kernels round differently when the number of rows changes.",
            f"Gate forced **on** everywhere (LoRA applied to the real tokens too): max |Δ logit| = "
            f"**{result.max_delta_gate_on:.3g}**; next-token choices "
            f"{'unchanged' if result.argmax_same_gate_on else 'CHANGED'}.",
        ]
        if result.max_delta_gate_on == 0.0:
            lines.append("This adapter is untrained (LoRA B = 0), so even the open gate changes nothing yet: "
                         "pick a trained checkpoint to see the difference.")
        return viz.lossless_table(result), "\n\n".join(lines)

    # Training
    @friendly
    def train_start(self, model_name, k, steps, prompt_set, prompts, start_from, request: gr.Request):
        k = check_int(k, "k (masks)", 1, 16)
        steps = check_int(steps, "steps", 1, MAX_TRAIN_STEPS)
        prompts = check_int(prompts, "prompts", 2, MAX_TRAIN_PROMPTS)
        if prompt_set not in PROMPT_SETS:
            raise gr.Error(f"prompt set must be one of {list(PROMPT_SETS)}")
        init_from = None
        if start_from != FRESH:
            init_from = resolve_checkpoint(start_from)
        owner = getattr(request, "session_hash", None) or "api"
        self.training.start(owner, model_name, k, steps, prompt_set, prompts, init_from)
        return self.training.describe(owner)

    @friendly
    def train_stop(self, request: gr.Request):
        owner = getattr(request, "session_hash", None) or "api"
        self.training.stop(owner)
        return self.training.describe(owner)

    def tick(self, model_name, checkpoint, seen, request: gr.Request):
        """Timer: model status for this visitor, and the shared training run's progress."""
        owner = getattr(request, "session_hash", None) or "api"
        run = self.training
        now = (run.run_id, len(run.records), run.phase)
        status = self.status(model_name, checkpoint)
        if seen == list(now):
            return status, gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        choices = self.checkpoints(model_name)
        return (status, run.describe(owner), viz.loss_figure(list(run.records)),
                gr.update(choices=choices), gr.update(choices=choices), list(now))


def eos_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def metrics_markdown(trace: Trace) -> str:
    s = viz.trace_summary(trace)
    return (f"**{s['method']}** · {s['new tokens']} tokens · {s['forward passes']} forward passes · "
            f"τ = **{s['τ (tokens per step)']}** tokens per step · draft acceptance {s['draft acceptance']} · "
            f"{s['tokens/s']} tokens/s · {s['wall s']} s · stop: {s['stop']}")


def identity_verdict(traces: dict[str, Trace]) -> str:
    reference = traces["autoregressive"].token_ids
    differ = [m for m, t in traces.items() if t.token_ids != reference]
    if not differ:
        return (f"✅ **All three outputs are identical** ({len(reference)} tokens): speculative decoding with the "
                "model's own verification changes the speed, never the text.")
    other = traces[differ[0]].token_ids
    first = next((i for i, (a, b) in enumerate(zip(other, reference)) if a != b), min(len(other), len(reference)))
    return f"❌ **Outputs differ** ({', '.join(differ)} vs autoregressive, first at token {first}): this is a bug."


# -- training ------------------------------------------------------------------------------------------
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


# -- the page --------------------------------------------------------------------------------------------
INTRO = """# Your LLM knows the future — multi-token prediction with mask tokens
An ordinary language model writes one token per forward pass. Append **k mask tokens** after the text and
the same model, with a small gated-LoRA fine-tune, also guesses the k tokens *after* the next one. The
model then checks its own guesses (speculative decoding): greedy output stays **exactly** the same, it just
needs fewer forward passes. Based on Samragh et al., *Your LLM Knows the Future* (arXiv 2507.11851)."""

EXPLAIN = {
    "heatmap": """**What you see.** Each row is a future offset: +1 is the token *after* the next one, +k the
token k steps after it. Cells are the model's top candidates, coloured by probability; the orange box marks
the token plain greedy decoding really writes there, and the row label gives its rank in the full
distribution. **Left:** the untouched base model with k placeholder tokens `-` appended (gate off) — it
often ranks the future token surprisingly high already: the paper's *LLM knows the future* probe.
**Middle:** the learned mask tokens read out through the same `lm_head`. **Right:** the sampler head,
which chains the guesses (each conditioned on the one before) so they form a coherent sequence.""",
    "accept": """**What you see.** Each forward pass verifies the previous pass's drafts against the model's own
next-token choices: the longest matching prefix is **accepted** (green), the rest **rejected** (red, struck
through, never part of the output), and the model's own token after the accepted ones comes for free as the
**bonus** (blue). *Linear* drafts again only after a pass that accepted everything; *quadratic* appends a
mask group after every draft so fresh drafts survive any rejection. Drag the slider to replay step by step.""",
    "race": """**What you see.** The same prompt decoded three ways, one after another (each gets the whole
machine, so the times are fair), greedy. Autoregressive needs one forward pass per token; linear and quadratic
need fewer (τ = tokens per forward pass). On a GPU the extra mask positions are almost free; on a small CPU
they cost time, so tokens/s gains are smaller than τ. The check at the bottom compares the three token
sequences.""",
    "lossless": """**Why it is lossless.** The LoRA update is multiplied by a gate that is 1 only at mask positions
and 0 at real tokens, and real tokens never attend to masks. So appending masks leaves every real token's
logits *exactly* as the base model computes them: Δ = 0. Force the gate on everywhere and the LoRA changes
the real tokens too — the base model's answers would drift (the paper reports plain LoRA losing accuracy).""",
    "train": """**Train your own.** A short fine-tune of the embedded model: the base model first answers a few
prompts itself (self-distillation), then the masks, gated LoRA and sampler learn to predict those answers
several tokens ahead. Losses: `loss_base` (cross-entropy of lm_head at the masks), `loss_sampler` (the
sampler head), `loss_lcm` (latent consistency with the real token's hidden state). One run at a time on this
server; everyone sees it. When it finishes, pick the new checkpoint in Settings and try the other tabs.
A few dozen CPU steps will not beat the shipped checkpoint — it is about watching it learn.""",
}


def load_examples() -> dict[str, list[str]]:
    return json.loads((ROOT / "assets" / "examples.json").read_text())


def build(demo_state: Demo, default_model: str, default_checkpoint: str) -> gr.Blocks:
    examples = load_examples()
    with gr.Blocks(title="mtp — your LLM knows the future") as page:
        gr.Markdown(INTRO)
        status = gr.Markdown(demo_state.status(default_model, default_checkpoint), elem_id="model-status")
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                model_name = gr.Dropdown(demo_state.models, value=default_model, label="Model", elem_id="model")
                checkpoint = gr.Dropdown(demo_state.checkpoints(default_model),
                                         value=default_checkpoint, label="Checkpoint", elem_id="checkpoint")
                k = gr.Slider(1, FRESH_K, value=4, step=1, label="k (mask tokens)", elem_id="k")
            with gr.Row():
                method = gr.Radio(list(METHODS), value="quadratic", label="Method (Accepted vs rejected tab)",
                                  elem_id="method")
                temperature = gr.Slider(0, MAX_TEMPERATURE, value=0, step=0.05,
                                        label="Temperature (0 = greedy; > 0 = exact speculative sampling)")
                max_new = gr.Slider(1, MAX_NEW_TOKENS, value=48, step=1, label="Max new tokens", elem_id="max-new")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0)
        prompt = gr.Textbox(label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="prompt",
                            placeholder="Ask anything, or click an example below")
        with gr.Row():
            for category, prompts in examples.items():
                gr.Examples([[p] for p in prompts], inputs=[prompt], label=f"{category.title()} examples")

        with gr.Tabs():
            with gr.Tab("Future heatmap", id="heatmap"):
                gr.Markdown(EXPLAIN["heatmap"])
                top_n = gr.Slider(1, MAX_TOP_N, value=5, step=1, label="Top N candidates")
                probe_button = gr.Button("Look into the future", variant="primary", elem_id="probe-run")
                probe_summary = gr.Markdown(elem_id="probe-summary")
                probe_plot = gr.Plot(show_label=False, elem_id="probe-plot")
                probe_table = gr.Dataframe(label="Where the greedy token ranks", elem_id="probe-table")
            with gr.Tab("Accepted vs rejected", id="accept"):
                gr.Markdown(EXPLAIN["accept"])
                gen_button = gr.Button("Generate", variant="primary", elem_id="gen-run")
                gen_metrics = gr.Markdown(elem_id="gen-metrics")
                gen_step = gr.Slider(0, 1, value=0, step=1, label="Replay up to step", elem_id="gen-step")
                gen_html = gr.HTML(elem_id="gen-html")
                with gr.Row():
                    gen_chart = gr.Plot(label="Per-offset acceptance", elem_id="gen-chart")
                gen_table = gr.Dataframe(label="Every forward pass", elem_id="gen-table", wrap=True)
                gen_state = gr.Textbox(visible=False)
            with gr.Tab("Race", id="race"):
                gr.Markdown(EXPLAIN["race"])
                race_button = gr.Button("Start the race (greedy)", variant="primary", elem_id="race-run")
                race_boxes = []
                with gr.Row():
                    for m in METHODS:
                        with gr.Column():
                            race_boxes.append(gr.Textbox(label=m, lines=8, interactive=False, elem_id=f"race-text-{m}"))
                            race_boxes.append(gr.Markdown(elem_id=f"race-stats-{m}"))
                race_verdict = gr.Markdown(elem_id="race-verdict")
                race_plot = gr.Plot(label="Tokens vs time", elem_id="race-plot")
                race_table = gr.Dataframe(label="Summary", elem_id="race-table")
            with gr.Tab("Lossless check", id="lossless"):
                gr.Markdown(EXPLAIN["lossless"])
                lossless_button = gr.Button("Run the lossless check", variant="primary", elem_id="lossless-run")
                lossless_verdict = gr.Markdown(elem_id="lossless-verdict")
                lossless_table = gr.Dataframe(label="max |Δ logit| at real tokens", elem_id="lossless-table")
            with gr.Tab("Train", id="train"):
                gr.Markdown(EXPLAIN["train"])
                with gr.Row():
                    train_k = gr.Slider(1, 8, value=4, step=1, label="k (fresh adapter)", elem_id="train-k")
                    train_steps = gr.Slider(1, MAX_TRAIN_STEPS, value=40, step=1, label="Steps", elem_id="train-steps")
                    train_prompts = gr.Slider(2, MAX_TRAIN_PROMPTS, value=16, step=1, label="Prompts to distil", elem_id="train-prompts")
                with gr.Row():
                    train_set = gr.Dropdown(list(PROMPT_SETS), value="mix of all three", label="Prompt set")
                    train_from = gr.Dropdown(demo_state.checkpoints(default_model),
                                             value=FRESH, label="Start from (a checkpoint fixes k)")
                with gr.Row():
                    train_button = gr.Button("Start training", variant="primary", elem_id="train-run")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="train-stop")
                train_status = gr.Markdown(demo_state.training.describe(""), elem_id="train-status")
                train_plot = gr.Plot(label="Loss curves", elem_id="train-plot")
        seen = gr.State([])
        timer = gr.Timer(2.0)

        settings = [model_name, checkpoint]
        model_name.change(demo_state.choose_model, [model_name], [checkpoint])
        checkpoint.change(demo_state.select, [model_name, checkpoint], [k, method, status])
        page.load(demo_state.select, [model_name, checkpoint], [k, method, status])
        probe_button.click(demo_state.probe, [prompt, *settings, k, top_n], [probe_plot, probe_table, probe_summary],
                           api_name="probe")
        gen_button.click(demo_state.generate, [prompt, *settings, method, k, temperature, max_new, seed],
                         [gen_html, gen_step, gen_table, gen_chart, gen_metrics, gen_state], api_name="generate")
        gen_step.change(demo_state.replay, [gen_state, gen_step], [gen_html], api_name="replay",
                        concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")
        race_button.click(demo_state.race, [prompt, *settings, k, max_new],
                          [*race_boxes, race_plot, race_verdict, race_table], api_name="race",
                          concurrency_limit=1, concurrency_id="race")
        lossless_button.click(demo_state.lossless, [prompt, *settings, k], [lossless_table, lossless_verdict],
                              api_name="lossless")
        train_button.click(demo_state.train_start, [model_name, train_k, train_steps, train_set, train_prompts,
                                                    train_from], [train_status], api_name="train")
        stop_button.click(demo_state.train_stop, None, [train_status], api_name="train_stop")
        timer.tick(demo_state.tick, [*settings, seen], [status, train_status, train_plot, checkpoint, train_from, seen],
                   concurrency_limit=None, show_progress="hidden", api_name=False)
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--model", action="append", default=[],
                        help="extra model to offer (local directory or Hub id); the embedded one is always there")
    parser.add_argument("--checkpoint", help="checkpoint directory to select at start")
    parser.add_argument("--concurrency", type=int, default=2, help="requests served at once (the rest queue)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="where the Train tab writes data and checkpoints")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    extra = [str(Path(args.checkpoint).resolve())] if args.checkpoint else []
    store = ModelStore(DEVICE)
    demo_state = Demo(store, [EMBEDDED_NAME, *args.model], extra, args.runs_dir.resolve())
    shipped = default_checkpoint()
    start_checkpoint = checkpoint_label(shipped) if shipped else FRESH
    if args.checkpoint:
        start_checkpoint = checkpoint_label(Path(extra[0]))
        if start_checkpoint not in demo_state.checkpoints(EMBEDDED_NAME):
            parser.error(f"{args.checkpoint} is not an mtp checkpoint for {EMBEDDED_NAME}")

    def warm() -> None:  # load the default model once, in the background; the page shows progress
        try:
            store.get(EMBEDDED_NAME, start_checkpoint)
        except Exception:
            log.exception("could not load the default model")

    threading.Thread(target=warm, daemon=True, name="warm").start()
    page = build(demo_state, EMBEDDED_NAME, start_checkpoint)
    page.queue(default_concurrency_limit=args.concurrency, max_size=64)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    page.launch(server_name=args.host, server_port=args.port, theme=theme, ssr_mode=False, show_error=True,
                footer_links=["api"])


if __name__ == "__main__":
    main()
