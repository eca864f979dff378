"""The demo's event handlers: every input checked (choices the server offers, limits), then the engine
called and its results handed to mtp.viz."""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

import gradio as gr

from .. import viz
from ..adapter import MTPModel
from ..api import DecodingSettings, decoding_settings, load_datastore
from ..decoding import generate
from ..options import check_decoding, eos_token_ids
from ..probe import future_probe, lossless_check
from ..trace import Trace
from .checks import LOOKUP_DRAFTS, MAX_NEW_TOKENS, MAX_SEED, MAX_TOP_N, MAX_TREE_NODES, check_int, check_prompt, check_temperature, friendly
from .compute import on_torch_thread
from .race import Machine, Race, race_lanes, tree_lane_budget
from .speed import measured_cost_curve
from .store import FRESH, ModelStore, checkpoint_choices, checkpoint_path
from .training import MAX_TRAIN_PROMPTS, MAX_TRAIN_STEPS, PROMPT_SETS, TrainingRun


def token_code(text: str) -> str:
    """A token as inline code inside Markdown, whatever characters it holds (backticks, *, _)."""
    safe = html.escape(viz.token_label(text)).replace("`", "&#96;").replace("*", "&#42;").replace("_", "&#95;")
    return f"<code>{safe}</code>"


def token_texts(tokenizer, ids) -> dict[int, str]:
    return {int(t): tokenizer.decode([int(t)]) for t in set(ids)}


def visitor(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


class Demo:
    def __init__(self, store: ModelStore, models: list[str], extra_checkpoints: list[str], runs_dir: Path) -> None:
        self.store = store
        self.models = models
        self.extra_checkpoints = extra_checkpoints
        self.training = TrainingRun(runs_dir)
        self.machine = Machine()

    # -- the choices the server offers (checked again here: API clients can send anything) -------------
    def checkpoints(self, model_name: str) -> list[str]:
        return checkpoint_choices(model_name, self.extra_checkpoints, self.training.runs_dir)

    def check_model(self, model_name: str) -> str:
        if model_name not in self.models:
            raise gr.Error(f"unknown model {model_name!r}: choose one of {self.models}")
        return model_name

    def checkpoint_dir(self, model_name: str, checkpoint: str) -> Path | None:
        """The folder of an offered checkpoint choice (None: the fresh adapter)."""
        if checkpoint not in self.checkpoints(self.check_model(model_name)):
            raise gr.Error(f"unknown checkpoint {checkpoint!r} for {model_name}: pick one from the list")
        return None if checkpoint == FRESH else checkpoint_path(checkpoint)

    def model(self, model_name: str, checkpoint: str) -> tuple[MTPModel, object]:
        self.checkpoint_dir(model_name, checkpoint)
        return self.store.get(model_name, checkpoint)

    def settings(self, model: MTPModel, checkpoint: str, method: str | None = None,
                 k: int | None = None) -> DecodingSettings:
        """(method, k, groups, lookup, tree_budget, cost_aware, source) from the same resolver as `mtp generate`
        (measured defaults first)."""
        return decoding_settings(model, None if checkpoint == FRESH else checkpoint_path(checkpoint), method, k)

    def status(self, model_name: str, checkpoint: str) -> str:
        key = (model_name, checkpoint)
        where = f"`{model_name}` + `{checkpoint}` on **{self.store.device}**"
        loaded = self.store.peek(*key)
        if loaded is not None:
            model, tokenizer = loaded
            trained = "" if checkpoint != FRESH else " — untrained: drafts are poor, output is still exact"
            if not getattr(tokenizer, "chat_template", None):
                trained += " — a base model (no chat template): prompts go in raw, as text to continue"
            chosen = self.settings(model, checkpoint)
            defaults = (f"decoding defaults: {chosen.method}, k = {chosen.k}"
                        + (f", {chosen.groups} mask groups" if chosen.groups else "")
                        + (f", up to {chosen.lookup} prompt-lookup drafts" if chosen.lookup else "")
                        + (", datastore drafts" if chosen.datastore else "")
                        + (", mask groups only while they pay" if chosen.cost_aware else "")
                        + f" ({chosen.source})")
            return f"✅ Ready: {where} (k = {model.k}){trained} — {defaults}"
        if key in self.store.errors:
            return f"❌ Could not load {where}: {self.store.errors[key]}"
        if self.store.loading == key:
            return f"⏳ Loading {where} … (the first start de-quantizes the embedded GGUF, ~30 s on CPU)"
        return f"⏳ Waiting to load {where} …"

    def request(self, prompt, model_name, checkpoint, k) -> tuple[MTPModel, object, list[int], int]:
        """(model, tokenizer, prompt ids, k) of a request, every input checked."""
        model, tokenizer = self.model(model_name, checkpoint)
        return model, tokenizer, check_prompt(tokenizer, prompt), check_int(k, "k (masks)", 1, model.k)

    # -- Settings ----------------------------------------------------------------------------------------
    @friendly
    def select(self, model_name: str, checkpoint: str):
        model, _ = self.model(model_name, checkpoint)
        chosen = self.settings(model, checkpoint)
        return gr.update(maximum=model.k, value=chosen.k), chosen.method, self.status(model_name, checkpoint)

    @friendly
    def choose_model(self, model_name: str):
        choices = self.checkpoints(self.check_model(model_name))
        return gr.update(choices=choices, value=choices[0])

    # -- Future heatmap ----------------------------------------------------------------------------------
    @friendly
    def probe(self, prompt, model_name, checkpoint, k, top_n):
        model, tokenizer, ids, k = self.request(prompt, model_name, checkpoint, k)
        top_n = check_int(top_n, "top N", 1, MAX_TOP_N)
        with self.machine.busy():
            result = on_torch_thread(future_probe, model, ids, k, top_n, tokenizer=tokenizer,
                                     tree_budget=tree_lane_budget(k))
        greedy = [token_code(result.text(t)) for t in result.greedy_ids[:k + 1]]
        hits = {name: sum(r == 1 for r in view.greedy_rank) for name, view in result.views.items()}
        summary = (
            f"Plain greedy decoding continues with {greedy[0]} (the ordinary next token) and then "
            + " ".join(greedy[1:]) + f" at offsets +1…+{k}. Top-1 hits out of {k}: "
            + ", ".join(f"{viz.VIEW_TITLES[n]}: **{h}**" for n, h in hits.items()) + ". "
            + f"Verifying these drafts, greedy decoding would keep **{result.views['sampler_chain'].chain_accepted}** "
            + f"of the sampler chain's {k} and **{result.tree.accepted}** along the best path of a "
            + f"{len(result.tree.drafts)}-node draft tree (below)."
        )
        return (viz.heatmap_figure(result), viz.probe_table(result), summary,
                viz.tree_figure(result.tree, result.texts, title="The draft tree the masks propose"))

    # -- Accepted vs rejected ----------------------------------------------------------------------------
    @friendly
    def generate(self, prompt, model_name, checkpoint, method, k, temperature, max_new_tokens, seed,
                 lookup_drafts=False, tree_budget=0):
        """lookup_drafts: mix in prompt-lookup drafts, and the datastore's where the checkpoint's defaults
        name one (off by default: this tab shows the masks' own drafts); tree_budget: nodes of a draft
        tree per pass (0: a chain)."""
        model, tokenizer, ids, k = self.request(prompt, model_name, checkpoint, k)
        check_decoding(method=method)
        max_new_tokens = check_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS)
        temperature = check_temperature(temperature)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        tree_budget = check_int(tree_budget, "draft tree nodes", 0, MAX_TREE_NODES) if method != "autoregressive" else 0
        chosen = self.settings(model, checkpoint, method, k)
        mixed = lookup_drafts and method != "autoregressive"
        lookup = (chosen.lookup or LOOKUP_DRAFTS) if mixed else 0
        datastore = load_datastore(model, chosen.datastore, required=False) if mixed else None
        with self.machine.busy():
            trace = on_torch_thread(generate, model, ids, method=method, k=k, max_new_tokens=max_new_tokens,
                                    temperature=temperature, seed=seed,
                                    eos_token_ids=eos_token_ids(tokenizer, model.base.generation_config),
                                    tokenizer=tokenizer, groups=chosen.groups, lookup=lookup, tree_budget=tree_budget,
                                    datastore=datastore)
        texts = token_texts(tokenizer, [t for s in trace.steps for t in s.drafts + [s.bonus]])
        state = {"trace": dataclasses.asdict(trace), "texts": {str(t): s for t, s in texts.items()}}
        steps = len(trace.steps)
        return (viz.accept_reject_html(trace, texts), gr.update(maximum=max(steps, 1), value=steps),
                viz.steps_table(trace, texts), viz.offset_acceptance_figure(trace), viz.trace_markdown(trace),
                json.dumps(state), self._step_tree(trace, texts, steps))

    @friendly
    def replay(self, state: str, step):
        if not state:
            return "<i>Generate first, then drag the slider to replay.</i>", None
        data = json.loads(state)
        trace = Trace.from_dict(data["trace"])
        texts = {int(t): s for t, s in data["texts"].items()}
        step = int(step)
        return viz.accept_reject_html(trace, texts, upto_step=step), self._step_tree(trace, texts, step)

    @staticmethod
    def _step_tree(trace: Trace, texts: dict[int, str], step: int):
        """The drafts that step `step` (1-based) verified, drawn as a tree; the last step with drafts
        at or before it when it had none."""
        drafted = [number for number in range(1, min(step, len(trace.steps)) + 1) if trace.steps[number - 1].drafts]
        return viz.tree_figure(trace.steps[drafted[-1] - 1], texts, drafted[-1]) if drafted else None

    # -- Race --------------------------------------------------------------------------------------------
    @friendly
    def race(self, prompt, model_name, checkpoint, k, max_new_tokens):
        model, tokenizer, ids, k = self.request(prompt, model_name, checkpoint, k)
        max_new_tokens = check_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS)
        lanes = race_lanes(k, self.settings(model, checkpoint, k=k))
        race = Race(self.machine, model, tokenizer, ids, lanes, max_new_tokens,
                    eos_token_ids(tokenizer, model.base.generation_config), measured_cost_curve(model_name),
                    lambda: self.training.running)
        yield from race.run()

    # -- Lossless check ----------------------------------------------------------------------------------
    @friendly
    def lossless(self, prompt, model_name, checkpoint, k):
        model, tokenizer, ids, k = self.request(prompt, model_name, checkpoint, k)
        with self.machine.busy():
            result = on_torch_thread(lossless_check, model, ids, k, placeholder_id=tokenizer.pad_token_id or 0)
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

    # -- Training ----------------------------------------------------------------------------------------
    @friendly
    def train_start(self, model_name, k, steps, prompt_set, prompts, start_from, request: gr.Request):
        init_from = self.checkpoint_dir(model_name, start_from)
        k = check_int(k, "k (masks)", 1, 16)
        steps = check_int(steps, "steps", 1, MAX_TRAIN_STEPS)
        prompts = check_int(prompts, "prompts", 2, MAX_TRAIN_PROMPTS)
        if prompt_set not in PROMPT_SETS:
            raise gr.Error(f"prompt set must be one of {list(PROMPT_SETS)}")
        owner = visitor(request)
        self.training.start(owner, model_name, k, steps, prompt_set, prompts, init_from)
        return self.training.describe(owner)

    @friendly
    def train_stop(self, request: gr.Request):
        owner = visitor(request)
        self.training.stop(owner)
        return self.training.describe(owner)

    def tick(self, model_name, checkpoint, seen, request: gr.Request):
        """Timer: model status for this visitor, and the shared training run's progress."""
        owner = visitor(request)
        run = self.training
        now = (run.run_id, len(run.records), run.phase)
        status = self.status(model_name, checkpoint)
        if seen == list(now):
            return status, gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        choices = self.checkpoints(model_name) if model_name in self.models else []
        return (status, run.describe(owner), viz.training_figure(list(run.records)),
                gr.update(choices=choices), gr.update(choices=choices), list(now))
