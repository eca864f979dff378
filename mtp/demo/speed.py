"""Why MTP is faster: predicted tokens/s against k for one prompt, on this device and on a GPU-like one.

The prompt's τ at every k comes exactly from one teacher-forced pass over its greedy output
(mtp.acceptance); each replayed pass is priced by the bench's measured cost curve (mtp.bench.predict),
as `python -m mtp bench --save-defaults` does when it picks the checkpoint's defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import acceptance, bench
from ..adapter import MTPModel

# The cost curve the shipped checkpoint's defaults were chosen with (bench --cost-curve --save-defaults).
COST_CURVE_FILE = Path(__file__).resolve().parents[2] / "docs" / "bench" / "step23193_defaults" / "bench.json"
LOOKUP_DRAFTS = 10  # prompt-lookup drafts priced when no lane uses lookup


@dataclass(frozen=True)
class CostCurve:
    curve: dict  # bench.cost_curve's record
    where: str  # the machine it was measured on, in words


@dataclass(frozen=True)
class LineSpec:
    """One predicted line: a method's layout at every k (groups None: k+1, the paper's layout)."""

    name: str
    method: str
    groups: int | None
    lookup: int
    tree_budget: int = 0  # a line exists only where the cost curve priced trees of this budget


def measured_cost_curve(model_name: str, path: Path = COST_CURVE_FILE) -> CostCurve | None:
    """The committed cost curve measured with this base model, if there is one."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    if report.get("model", {}).get("name") != Path(model_name).name or "cost_curve" not in report:
        return None
    machine = report.get("machine", {})
    where = (f"{machine.get('cpu', machine.get('device', '?'))}, {machine.get('torch_threads', '?')} threads, "
             f"{report.get('created', '?')[:10]}")
    return CostCurve(report["cost_curve"], where)


def one_pass_curve(curve: dict) -> dict:
    """The same curve on a device where a verify pass costs what a 1-token pass does (a GPU, roughly):
    every pass shape priced as that k's 1-token pass, extra input tokens free; drafting as measured."""
    steps = {k: {name: {**shape, "seconds": shapes["autoregressive"]["seconds"]} for name, shape in shapes.items()}
             for k, shapes in curve["step_seconds"].items()}
    one_token = min(curve["backbone_seconds"].items(), key=lambda item: int(item[0]))[1]
    return {**curve, "step_seconds": steps, "backbone_seconds": {n: one_token for n in curve["backbone_seconds"]}}


def up_to_k(curve: dict, max_k: int) -> dict:
    """The curve restricted to k ≤ max_k (the adapter's masks)."""
    return {**curve, "step_seconds": {k: v for k, v in curve["step_seconds"].items() if int(k) <= max_k},
            "drafting_seconds": {k: v for k, v in curve["drafting_seconds"].items() if int(k) <= max_k}}


def _pick(candidates: list[dict], line: LineSpec) -> list[tuple[int, float]]:
    """(k, predicted tokens/s) of one line, by k."""
    points = []
    for c in candidates:
        if c["method"] != line.method or c["lookup"] != line.lookup or c.get("tree_budget", 0) != line.tree_budget:
            continue
        groups = None if line.groups is None or line.groups > c["k"] + 1 else line.groups
        if line.method == "quadratic" and c["groups"] != (groups or c["k"] + 1):
            continue
        points.append((c["k"], c["predicted_tokens_per_second"]))
    return sorted(points)


def predicted_lines(model: MTPModel, prompt_ids: list[int], output_ids: list[int], cost: CostCurve,
                    lines: list[LineSpec]) -> dict[str, dict]:
    """{panel: {"autoregressive": tokens/s, line name: [(k, tokens/s)]}} for this device's curve and
    the one-pass (GPU-like) curve, from this prompt's greedy output."""
    if len(output_ids) < 2:
        return {}
    lookup = max((line.lookup for line in lines), default=0) or LOOKUP_DRAFTS
    entry = {"baseline": {"new_tokens": len(output_ids)},
             "draft_matches": acceptance.draft_matches(model, prompt_ids + output_ids, len(prompt_ids)),
             "lookup_matches": acceptance.lookup_matches(prompt_ids, output_ids, lookup)}
    settings = bench.Settings(prompt_lookup_tokens=lookup)
    curve = up_to_k(cost.curve, model.k)
    panels = {}
    for panel, priced in ((f"this device (cost curve measured on {cost.where})", curve),
                          ("a device where a verify pass costs a 1-token pass (a GPU)", one_pass_curve(curve))):
        candidates = bench.predict([entry], priced, settings)
        autoregressive = next(c for c in candidates if c["method"] == "autoregressive")
        panels[panel] = {"autoregressive": autoregressive["predicted_tokens_per_second"],
                         **{line.name: _pick(candidates, line) for line in lines}}
    return panels
