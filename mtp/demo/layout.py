"""The page: gr.Blocks with the settings, the five tabs and their wiring to handlers.Demo."""

from __future__ import annotations

import json

import gradio as gr

from ..options import METHODS
from .checks import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_TEMPERATURE, MAX_TOP_N, MAX_TREE_NODES, quiet_refusals
from .handlers import Demo
from .race import SLOTS
from .store import FRESH, FRESH_K, ROOT
from .texts import EXPLAIN, INTRO, SPEED_NOTE
from .training import MAX_TRAIN_PROMPTS, MAX_TRAIN_STEPS, PROMPT_SETS

RACE_VISITORS = 8  # races admitted to wait for the machine at once; more wait in Gradio's queue


def load_examples() -> dict[str, list[str]]:
    """Example prompts by category."""
    return json.loads((ROOT / "assets" / "examples.json").read_text())


def build(demo_state: Demo, default_model: str, default_checkpoint: str) -> gr.Blocks:
    examples = load_examples()
    with gr.Blocks(title="mtp — your LLM knows the future") as page:
        gr.Markdown(INTRO)
        status = gr.Markdown(demo_state.status(default_model, default_checkpoint), elem_id="model-status")
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                model_name = gr.Dropdown(demo_state.models, value=default_model, label="Model", elem_id="model")
                # Custom values pass Gradio's check so API clients can pick checkpoints trained since
                # the page was built; the handlers accept only the ones the server offers.
                checkpoint = gr.Dropdown(demo_state.checkpoints(default_model), value=default_checkpoint,
                                         label="Checkpoint", elem_id="checkpoint", allow_custom_value=True)
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
                probe_tree = gr.Plot(label="The draft tree after the next token", elem_id="probe-tree")
            with gr.Tab("Accepted vs rejected", id="accept"):
                gr.Markdown(EXPLAIN["accept"])
                with gr.Row():
                    gen_tree = gr.Slider(0, MAX_TREE_NODES, value=0, step=1, elem_id="gen-tree",
                                         label="Draft tree: nodes per pass (0 = one chain, the paper's drafts)")
                    gen_lookup = gr.Checkbox(False, label="Mix in looked-up drafts (copies from the prompt, and from the "
                                                   "datastore of the model's own past answers)",
                                             elem_id="gen-lookup")
                gen_button = gr.Button("Generate", variant="primary", elem_id="gen-run")
                gen_metrics = gr.Markdown(elem_id="gen-metrics")
                gen_step = gr.Slider(0, 1, value=0, step=1, label="Replay up to step", elem_id="gen-step")
                gen_html = gr.HTML(elem_id="gen-html")
                with gr.Row():
                    gen_tree_plot = gr.Plot(label="The drafts this step verified", elem_id="gen-tree-plot")
                    gen_chart = gr.Plot(label="Per-offset acceptance", elem_id="gen-chart")
                gen_table = gr.Dataframe(label="Every forward pass", elem_id="gen-table", wrap=True)
                gen_state = gr.Textbox(visible=False)
            with gr.Tab("Race", id="race"):
                gr.Markdown(EXPLAIN["race"])
                race_button = gr.Button("Start the race (greedy)", variant="primary", elem_id="race-run")
                race_verdict = gr.Markdown(elem_id="race-verdict")
                race_lanes = []
                with gr.Row():
                    for slot in SLOTS:
                        with gr.Column(min_width=160):
                            race_lanes.append(gr.Textbox(label=slot, lines=8, interactive=False,
                                                         elem_id=f"race-text-{slot}"))
                            race_lanes.append(gr.Markdown(elem_id=f"race-stats-{slot}"))
                race_plot = gr.Plot(label="Tokens vs time", elem_id="race-plot")
                race_table = gr.Dataframe(label="Summary", elem_id="race-table", wrap=True)
                race_speed = gr.Plot(label="Why it is faster", elem_id="race-speed")
                gr.Markdown(SPEED_NOTE, elem_id="race-speed-note")
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
                    train_from = gr.Dropdown(demo_state.checkpoints(default_model), value=FRESH,
                                             label="Start from (a checkpoint fixes k)", allow_custom_value=True)
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
        probe_button.click(demo_state.probe, [prompt, *settings, k, top_n], [probe_plot, probe_table, probe_summary, probe_tree],
                           api_name="probe")
        gen_button.click(demo_state.generate, [prompt, *settings, method, k, temperature, max_new, seed, gen_lookup,
                                               gen_tree],
                         [gen_html, gen_step, gen_table, gen_chart, gen_metrics, gen_state, gen_tree_plot],
                         api_name="generate")
        gen_step.change(demo_state.replay, [gen_state, gen_step], [gen_html, gen_tree_plot], api_name="replay",
                        concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")
        # Races queue on the machine inside the handler (visible as "waiting for the machine"); the
        # progress overlay is hidden so the page draws nothing while the lanes are timed.
        race_button.click(demo_state.race, [prompt, *settings, k, max_new],
                          [*race_lanes, race_plot, race_verdict, race_table, race_speed], api_name="race",
                          concurrency_limit=RACE_VISITORS, concurrency_id="race", show_progress="hidden")
        lossless_button.click(demo_state.lossless, [prompt, *settings, k], [lossless_table, lossless_verdict],
                              api_name="lossless")
        train_button.click(demo_state.train_start, [model_name, train_k, train_steps, train_set, train_prompts,
                                                    train_from], [train_status], api_name="train")
        stop_button.click(demo_state.train_stop, None, [train_status], api_name="train_stop")
        timer.tick(demo_state.tick, [*settings, seen], [status, train_status, train_plot, checkpoint, train_from, seen],
                   concurrency_limit=None, show_progress="hidden", api_name=False)
    quiet_refusals(page)
    return page
