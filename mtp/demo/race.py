"""The Race tab: each lane timed undisturbed, one race at a time, then replayed side by side at its pace.

Streaming tokens to the page while a lane decodes makes the browser re-render on the same cores the
lane needs, so the lanes are decoded first at full speed with nothing sent to the page, and their
recorded passes (Step.seconds) are then played back in real time.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import gradio as gr

from .. import viz
from ..adapter import MTPModel
from ..api import BUILT_IN, EXPLICIT, DecodingSettings, load_datastore
from ..decoding import generate
from ..trace import Trace
from . import speed
from .compute import on_torch_thread

SLOTS = ("autoregressive", "linear", "quadratic", "tree", "default")  # the page's lane columns
WARM_UP_TOKENS = 4  # each lane decodes this much before it is timed: kernels and caches warm alike
REPLAY_FRAME_SECONDS = 0.1


@dataclass(frozen=True)
class Lane:
    slot: str
    title: str
    method: str
    k: int
    groups: int | None = None  # quadratic mask groups (None: k+1, the paper's layout)
    lookup: int = 0  # prompt-lookup drafts per pass
    tree_budget: int = 0  # draft-tree nodes per pass (0: a chain)
    cost_aware: bool = False  # mask groups only while they pay (decoding.generate's cost_aware)
    datastore: tuple[str, ...] = ()  # self-distilled data files whose datastore drafts too (api.load_datastore)

    @property
    def settings(self) -> str:
        """The lane's decoding settings in words."""
        if self.method == "autoregressive":
            return "one token per forward pass, no drafts"
        parts = [] if self.title.startswith(self.method) else [self.method]
        parts.append(f"k = {self.k}")
        if self.method == "quadratic":
            groups = self.groups or self.k + 1
            parts.append(f"{groups} mask group{'s' if groups > 1 else ''}" + (" (all k+1)" if groups == self.k + 1 else ""))
        if self.tree_budget:
            parts.append(f"a draft tree of up to {self.tree_budget} nodes")
        parts.append(f"up to {self.lookup} lookup drafts" if self.lookup else "no lookup drafts")
        if self.datastore:
            parts.append("datastore drafts")
        if self.cost_aware:
            parts.append("mask groups only while they pay")
        return " · ".join(parts)

    @property
    def decoding(self) -> tuple:
        """What decodes: lanes with equal tuples decode the same way."""
        groups = (self.groups or self.k + 1) if self.method == "quadratic" else None
        return self.method, self.k, groups, self.lookup, self.tree_budget, self.cost_aware, self.datastore

    @property
    def label(self) -> str:
        return f"{self.title}: {self.settings}"

    def details(self) -> dict:
        """The lane's settings as table columns."""
        return {"lane": self.title, "groups": str(self.groups or self.k + 1) if self.method == "quadratic" else "–",
                "lookup": self.lookup, "tree": self.tree_budget or "–"}


def tree_lane_budget(k: int) -> int:
    """The tree lane's node budget: four candidates per draft position."""
    return 4 * k


def race_lanes(k: int, measured: DecodingSettings) -> list[Lane]:
    """Autoregressive, linear, the paper's quadratic layout, the same layout verifying a draft tree and,
    when the checkpoint has one that differs from those, its measured default for this device — all at
    the same k."""
    lanes = [Lane("autoregressive", "autoregressive", "autoregressive", k),
             Lane("linear", "linear", "linear", k),
             Lane("quadratic", "quadratic, the paper's layout", "quadratic", k, k + 1),
             Lane("tree", "quadratic with a draft tree", "quadratic", k, k + 1, 0, tree_lane_budget(k))]
    if measured.source not in (BUILT_IN, EXPLICIT):
        default = Lane("default", "measured default", measured.method, measured.k, measured.groups, measured.lookup,
                       measured.tree_budget, measured.cost_aware, measured.datastore)
        if all(lane.decoding != default.decoding for lane in lanes):
            lanes.append(default)
    return lanes


class Machine:
    """This server's cores as the race sees them: one race is timed at a time, and other requests are
    counted so a race can say when they ran while its lanes were timed."""

    class Mark(NamedTuple):
        active: int
        started: int

    def __init__(self) -> None:
        self.race = threading.Lock()
        self._count = threading.Lock()
        self.active = 0  # other requests running now
        self.started = 0  # other requests started so far

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark a non-race request running (a probe, a generation, a lossless check)."""
        with self._count:
            self.active += 1
            self.started += 1
        try:
            yield
        finally:
            with self._count:
                self.active -= 1

    def mark(self) -> Mark:
        return Machine.Mark(self.active, self.started)

    def disturbed_since(self, mark: Mark) -> bool:
        return mark.active > 0 or self.active > 0 or self.started > mark.started


def decode_rate(trace: Trace) -> float:
    """Tokens/s after the first token (the prefill), the rate the cost model predicts."""
    seconds = sum(step.seconds for step in trace.steps[1:])
    return (trace.new_tokens - 1) / seconds if seconds > 0 and trace.new_tokens > 1 else 0.0


def identity_verdict(traces: dict[str, Trace]) -> str:
    reference = traces["autoregressive"].token_ids
    differ = [slot for slot, t in traces.items() if t.token_ids != reference]
    if not differ:
        return (f"✅ **All {len(traces)} outputs are identical** ({len(reference)} tokens): speculative decoding "
                "with the model's own verification changes the speed, never the text.")
    other = traces[differ[0]].token_ids
    first = next((i for i, (a, b) in enumerate(zip(other, reference)) if a != b), min(len(other), len(reference)))
    return f"❌ **Outputs differ** ({', '.join(differ)} vs autoregressive, first at token {first}): this is a bug."


class Race:
    """One race: validated inputs in, frames for the page out (see frame())."""

    def __init__(self, machine: Machine, model: MTPModel, tokenizer, prompt_ids: list[int], lanes: list[Lane],
                 max_new_tokens: int, eos: list[int], cost: speed.CostCurve | None,
                 training_running: Callable[[], bool]) -> None:
        self.machine, self.model, self.tokenizer, self.prompt_ids = machine, model, tokenizer, prompt_ids
        self.lanes = {lane.slot: lane for lane in lanes}
        self.max_new_tokens, self.eos, self.cost = max_new_tokens, eos, cost
        self.training_running = training_running

    def frame(self, texts: dict[str, str], stats: dict[str, str], verdict: str, plot=None, table=None,
              speed_plot=None) -> tuple:
        """Outputs in the layout's order: per slot its text box and stats, then race plot, verdict,
        table and speed plot (gr.skip() leaves an output as it is)."""
        lanes = []
        for slot in SLOTS:
            lane = self.lanes.get(slot)
            if lane is None:
                lanes += [gr.update(label="measured default: none for this checkpoint, or the same as a lane here",
                                    value=""), ""]
            else:
                lanes += [gr.update(label=lane.label, value=texts.get(slot, "")), stats.get(slot, "")]
        return (*lanes, plot, verdict, table, speed_plot)

    def _decode(self, lane: Lane, max_new_tokens: int) -> Trace:
        return generate(self.model, self.prompt_ids, method=lane.method, k=lane.k, groups=lane.groups,
                        lookup=lane.lookup, tree_budget=lane.tree_budget, cost_aware=lane.cost_aware,
                        datastore=load_datastore(self.model, lane.datastore, required=False),
                        max_new_tokens=max_new_tokens, eos_token_ids=self.eos, tokenizer=self.tokenizer)

    def _timed_lanes(self) -> dict[str, Trace]:
        """Every lane warmed up (untimed: the same warm start for each), then every lane timed."""
        for lane in self.lanes.values():
            self._decode(lane, min(WARM_UP_TOKENS, self.max_new_tokens))
        return {slot: self._decode(lane, self.max_new_tokens) for slot, lane in self.lanes.items()}

    def run(self) -> Iterator[tuple]:
        """Wait for the machine, time every lane, price the speed picture, then replay."""
        waiting = {slot: "⏳ waiting for the machine …" for slot in self.lanes}
        if not self.machine.race.acquire(blocking=False):
            yield self.frame({}, waiting, "⏳ **Waiting for the machine**: another visitor's race is being timed. "
                             "Yours starts as soon as it ends.", gr.skip(), gr.skip(), gr.skip())
            self.machine.race.acquire()
        try:
            timing = {slot: "⏱ timing at full speed …" for slot in self.lanes}
            yield self.frame({}, timing, "⏱ **Timing the lanes** one after another at full speed; nothing is drawn "
                             "until they finish, then they are replayed at their true pace.")
            mark = self.machine.mark()
            traces = on_torch_thread(self._timed_lanes)
            disturbed = self.machine.disturbed_since(mark) or self.training_running()
            speed_plot = on_torch_thread(self.speed_figure, traces)  # replays the lanes: a forward pass
        finally:
            self.machine.race.release()
        yield from self.replay(traces)
        verdict = identity_verdict(traces)
        if disturbed:
            verdict += ("\n\n⚠️ Other requests (another visitor's, or a training run) ran on this machine while the "
                        "lanes were timed: their speeds may be lower than undisturbed.")
        series = {self.lanes[slot].title: viz.trace_points(trace) for slot, trace in traces.items()}
        colors = {self.lanes[slot].title: viz.LANE_COLORS[slot] for slot in traces}
        table = viz.race_table({self.lanes[s].title: t for s, t in traces.items()},
                               {self.lanes[s].title: self.lanes[s].details() for s in traces})
        yield self.frame({slot: trace.text for slot, trace in traces.items()},
                         {slot: viz.trace_markdown(trace) for slot, trace in traces.items()}, verdict,
                         viz.race_figure(series, colors), table, speed_plot)

    def replay(self, traces: dict[str, Trace]) -> Iterator[tuple]:
        """The recorded lanes side by side, each token shown when its pass ended in the timed run."""
        points = {slot: viz.trace_points(trace) for slot, trace in traces.items()}
        end = max(p[-1][0] for p in points.values())
        started = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - started
            texts, stats = {}, {}
            for slot, trace in traces.items():
                done = [(t, n) for t, n in points[slot] if t <= elapsed]
                passes, tokens = len(done) - 1, done[-1][1]
                texts[slot] = self.tokenizer.decode(trace.token_ids[:tokens], skip_special_tokens=True)
                state = "finished" if passes == len(trace.steps) else "▶ replaying"
                stats[slot] = (f"**{state}** · {tokens} tokens · {passes} forward passes · "
                               f"{min(elapsed, points[slot][-1][0]):.2f} s")
            yield self.frame(texts, stats, f"▶ **Replaying at the measured pace**: {elapsed:.1f} s of {end:.1f} s "
                             "(the lanes were timed first, one after another, undisturbed)",
                             gr.skip(), gr.skip(), gr.skip())
            if elapsed >= end:
                return
            time.sleep(REPLAY_FRAME_SECONDS)

    def speed_figure(self, traces: dict[str, Trace]):
        """Predicted tokens/s against k (this device; a GPU-like one) with the lanes' measured points."""
        if self.cost is None:
            return None
        lanes = [self.lanes[slot] for slot in traces if slot != "autoregressive"]
        # A cost-aware lane's passes depend on timings, and the replay has no datastore drafts: no replay
        # predicts such a lane, so it shows its measured point only.
        lines = [speed.LineSpec(lane.title, lane.method, lane.groups, lane.lookup, lane.tree_budget)
                 for lane in lanes if not lane.cost_aware and not lane.datastore]
        panels = speed.predicted_lines(self.model, self.prompt_ids, traces["autoregressive"].token_ids, self.cost,
                                       lines)
        if not panels:
            return None
        measured = {self.lanes[slot].title: (self.lanes[slot].k if slot != "autoregressive" else 0, decode_rate(t))
                    for slot, t in traces.items()}
        colors = {self.lanes[slot].title: viz.LANE_COLORS[slot] for slot in traces}
        return viz.speed_figure(panels, measured, colors)
