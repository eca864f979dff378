"""Plotly figures, pandas tables and HTML built only from Traces, probe results and training logs.

Every number the demo shows passes through here; nothing here runs a model.
"""

from __future__ import annotations

import html
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .probe import VIEW_TITLES, LosslessResult, ProbeResult
from .drafting import DATASTORE
from .layouts import tree_positions
from .trace import Step, Trace

COLORS = {"accepted": "#1b7a36", "rejected": "#c0392b", "bonus": "#1f5fbf"}
BACKGROUNDS = {"accepted": "#d9f2df", "rejected": "#fbe0dd", "bonus": "#dce7fb"}
# The race's lanes: the three methods, quadratic with a draft tree, and the checkpoint's measured default.
LANE_COLORS = {"autoregressive": "#7f7f7f", "linear": "#ff7f0e", "quadratic": "#1f77b4", "tree": "#9467bd",
               "default": "#2ca02c"}
LEGEND = {
    "accepted": "accepted draft",
    "rejected": "rejected draft (never part of the output)",
    "bonus": "bonus token (the model's own next token, free with every pass)",
}

Decode = Callable[[int], str]


def token_decoder(tokenizer=None) -> Decode:
    """id -> display text from a tokenizer (anything with .decode) or a {id: text} mapping; else <id>."""
    if tokenizer is None:
        return lambda token: f"<{token}>"
    if isinstance(tokenizer, Mapping):
        return lambda token: tokenizer.get(token, f"<{token}>")
    return lambda token: tokenizer.decode([token])


def _show(text: str) -> str:
    """Token text as safe HTML; newlines and tabs made visible."""
    return html.escape(text).replace("\n", "↵<br>").replace("\t", "⇥")


def token_label(text: str) -> str:
    """Token text as a one-line label: spaces, newlines and tabs made visible."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


# -- Future heatmap ----------------------------------------------------------------------------------
def heatmap_figure(probe: ProbeResult) -> go.Figure:
    """Offset (+1..+k, rows) × rank (1..N, columns) per view; cells: candidate token, colour: probability.

    The token plain greedy decoding really produces at each offset is boxed where it is in the top N,
    and its rank in the full distribution is written in the row label.
    """
    names = list(probe.views)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=False, horizontal_spacing=0.09,
                        subplot_titles=[VIEW_TITLES.get(n, n) for n in names])
    for col, name in enumerate(names, start=1):
        view = probe.views[name]
        rows = [f"+{i + 1} · rank {view.greedy_rank[i]}" for i in range(probe.k)]
        cells = [[token_label(probe.text(t)) for t in row] for row in view.top_ids]
        hover = [[f"offset +{i + 1}<br>{html.escape(cells[i][j])}: p={view.top_probs[i][j]:.3f}"
                  f"<br>greedy token {html.escape(token_label(probe.text(probe.greedy_ids[i + 1])))} has rank "
                  f"{view.greedy_rank[i]} (p={view.greedy_prob[i]:.3f})" for j in range(probe.top_n)]
                 for i in range(probe.k)]
        fig.add_trace(go.Heatmap(
            z=view.top_probs, x=[f"#{j + 1}" for j in range(probe.top_n)], y=rows, text=cells,
            texttemplate="%{text}", hovertext=hover, hoverinfo="text", zmin=0, zmax=1,
            colorscale="Blues", showscale=col == len(names), name=name,
            colorbar=dict(title="p", len=0.9),
        ), row=1, col=col)
        for i, row in enumerate(view.top_ids):
            target = probe.greedy_ids[i + 1]
            if target in row:
                j = row.index(target)
                fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                              line=dict(color="#e6550d", width=3), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col, tickfont=dict(size=11))
    fig.update_layout(height=110 + 42 * probe.k, margin=dict(l=10, r=10, t=40, b=10),
                      font=dict(size=12))
    return fig


def probe_table(probe: ProbeResult) -> pd.DataFrame:
    """Per offset: the greedy token and its rank / probability in each view."""
    data = {"offset": [f"+{i + 1}" for i in range(probe.k)],
            "greedy token": [token_label(probe.text(t)) for t in probe.greedy_ids[1:probe.k + 1]]}
    for name, view in probe.views.items():
        data[f"{name} rank"] = view.greedy_rank
        data[f"{name} p"] = [float(f"{p:.3g}") for p in view.greedy_prob]
    return pd.DataFrame(data)


# -- Accepted vs rejected ----------------------------------------------------------------------------
def step_tokens(step: Step) -> list[tuple[str, int]]:
    """(kind, id) in display order: accepted drafts (a tree: its accepted path), rejected drafts, then the
    bonus token.

    A step cut short by a stop (new_tokens < accepted + 1) shows only what reached the output.
    """
    kept = step.accepted + 1 if step.new_tokens <= 0 else step.new_tokens
    parts = [("accepted", step.drafts[i]) for i in step.accepted_path][:kept]
    parts += [("rejected", t) for t in step.rejected]
    if kept > step.accepted:
        parts.append(("bonus", step.bonus))
    return parts


def output_tokens(steps: Iterable[Step]) -> list[int]:
    """The output ids the steps produced (accepted drafts + bonus tokens, stops respected)."""
    return [t for step in steps for kind, t in step_tokens(step) if kind != "rejected"]


def legend_html() -> str:
    items = "".join(
        f'<span class="mtp-tok mtp-{kind}" style="{_style(kind)}">{kind}</span> {html.escape(text)}&nbsp;&nbsp; '
        for kind, text in LEGEND.items())
    return f'<div class="mtp-legend" style="margin-bottom:6px;font-size:0.9em">{items}</div>'


def _style(kind: str) -> str:
    style = f"color:{COLORS[kind]};background:{BACKGROUNDS[kind]};border-radius:3px;padding:0 1px;"
    if kind == "rejected":
        style += "text-decoration:line-through;opacity:0.85;"
    if kind == "bonus":
        style += "font-weight:600;"
    return style


def draft_source(step: Step) -> str:
    """Where a step's drafts came from: the masks, prompt lookup, the datastore, or several (grafted
    onto one tree). Steps stored without sources tell lookup from the masks only."""
    if step.sources:
        return " + ".join(step.sources)
    if step.looked_up:
        return "masks + prompt lookup" if step.parents else "prompt lookup"
    return "masks" if step.drafts else "–"


def _looked_up(step: Step) -> bool:
    """Its drafts hold copies: from the prompt (lookup) or from the model's past answers (datastore)."""
    return step.looked_up or DATASTORE in step.sources


def accept_reject_html(trace: Trace, tokenizer=None, upto_step: int | None = None) -> str:
    """The output with every step's drafts, coloured by fate, replayed up to step `upto_step` (1-based)."""
    decode = token_decoder(tokenizer)
    shown = trace.steps if upto_step is None else trace.steps[:max(0, upto_step)]
    spans = []
    for number, step in enumerate(shown, start=1):
        # Drafts looked up (alone, or grafted onto the masks' tree): underlined, the tooltip says from where.
        copied = _looked_up(step)
        source, underline = (f" from {draft_source(step)}", "border-bottom:2px dashed #8e44ad;") if copied else ("", "")
        spans.append(f'<span class="mtp-step{" mtp-lookup" if copied else ""}" data-step="{number}" '
                     f'title="step {number}: {step.accepted}/{len(step.drafts)} drafts{source} accepted" '
                     f'style="border-left:1px dotted #999;margin-left:1px;{underline}">')
        for kind, token in step_tokens(step):
            if kind == "rejected" and step.parents:
                continue  # a tree's rejected nodes would be a wall of struck-through text: counted below
            spans.append(f'<span class="mtp-tok mtp-{kind}" style="{_style(kind)}">{_show(decode(token))}</span>')
        if step.parents:
            rejected = len(step.rejected)
            spans.append(f'<sup class="mtp-tree" title="{rejected} rejected nodes of a {len(step.drafts)}-node draft '
                         f'tree (see the tree view)" style="color:{COLORS["rejected"]}">✗{rejected}</sup>')
        spans.append("</span>")
    looked_up = sum(s.looked_up for s in shown)
    retrieved = sum(DATASTORE in s.sources for s in shown)
    status = (f"step {len(shown)} of {len(trace.steps)} · {len(output_tokens(shown))} tokens · "
              f"{sum(s.accepted for s in shown)} of {sum(len(s.drafts) for s in shown)} drafts accepted"
              + (f" · prompt-lookup drafts in {looked_up} of them" if looked_up else "")
              + (f" · datastore drafts in {retrieved} of them" if retrieved else "")
              + (" (dashed underline)" if looked_up or retrieved else ""))
    return (legend_html() + f'<div class="mtp-status" style="font-size:0.85em;color:#666">{status}</div>'
            f'<div class="mtp-output" style="white-space:pre-wrap;line-height:1.7;font-family:monospace">'
            + "".join(spans) + "</div>")


def steps_table(trace: Trace, tokenizer=None) -> pd.DataFrame:
    """One row per forward pass: drafts, how many were accepted, the bonus token, time."""
    decode = token_decoder(tokenizer)

    def join(ids: Sequence[int]) -> str:
        return " | ".join(token_label(decode(t)) for t in ids)

    return pd.DataFrame({
        "step": list(range(1, len(trace.steps) + 1)),
        "drafts from": [draft_source(s) for s in trace.steps],
        "drafts": [join(s.drafts) for s in trace.steps],
        "accepted": [s.accepted for s in trace.steps],
        "of": [len(s.drafts) for s in trace.steps],
        "rejected": [join(s.rejected) for s in trace.steps],
        "bonus": [token_label(decode(s.bonus)) for s in trace.steps],
        "new tokens": [len([k for k, _ in step_tokens(s) if k != "rejected"]) for s in trace.steps],
        "input length": [s.input_length for s in trace.steps],
        "ms": [round(s.seconds * 1000, 1) for s in trace.steps],
    }, columns=["step", "drafts from", "drafts", "accepted", "of", "rejected", "bonus", "new tokens", "input length", "ms"])


def offset_acceptance_figure(trace: Trace) -> go.Figure:
    """Per-offset acceptance: of the steps that proposed a draft at offset i, the share accepting it."""
    proposed = [sum(s.depth >= i for s in trace.steps) for i in range(1, trace.k + 1)]
    accepted = [sum(s.depth >= i and s.accepted >= i for s in trace.steps) for i in range(1, trace.k + 1)]
    rates = trace.per_offset_acceptance
    fig = go.Figure(go.Bar(
        x=[f"+{i}" for i in range(1, trace.k + 1)], y=rates, marker_color=COLORS["accepted"],
        text=[f"{a}/{p}" for a, p in zip(accepted, proposed)], textposition="outside",
        hovertemplate="offset %{x}: %{y:.2f} (%{text})<extra></extra>",
    ))
    fig.update_layout(title=f"Per-offset acceptance ({trace.method}, k={trace.k})", xaxis_title="draft offset",
                      yaxis=dict(title="accepted ÷ proposed", range=[0, 1.15]), height=320,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def tree_layout(parents: Sequence[int]) -> list[float]:
    """A height for each node (-1, the root, last) so that every subtree spans its own band of heights:
    leaves take consecutive heights in depth-first order, a parent sits at its children's mean."""
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(parents):
        children.setdefault(parent, []).append(node)
    heights: dict[int, float] = {}
    leaves = 0

    def place(node: int) -> float:
        nonlocal leaves
        below = [place(child) for child in children.get(node, [])]
        if below:
            heights[node] = sum(below) / len(below)
        else:
            heights[node], leaves = float(leaves), leaves + 1
        return heights[node]

    place(-1)
    return [heights[node] for node in range(len(parents))] + [heights[-1]]


def tree_figure(step: Step, tokenizer=None, number: int | None = None, title: str | None = None) -> go.Figure:
    """One pass's drafts as a tree rooted at the newest verified token: the accepted path in green, the
    rejected nodes in red, the bonus token in blue after the path's end (a chain is a tree of width 1).
    The title says the step's number and counts, after `title` if given."""
    decode = token_decoder(tokenizer)
    parents = step.parents or list(range(-1, len(step.drafts) - 1))
    heights = tree_layout(parents)
    depths = [1 + d for d in tree_positions(parents)] if parents else []
    on_path, path_end = set(step.accepted_path), (step.accepted_path or [-1])[-1]
    fig = go.Figure()
    for kind in ("rejected", "accepted"):
        edges_x, edges_y = [], []
        for node, parent in enumerate(parents):
            if (node in on_path) == (kind == "accepted"):
                edges_x += [depths[parent] if parent >= 0 else 0, depths[node], None]
                edges_y += [heights[parent], heights[node], None]
        fig.add_trace(go.Scatter(x=edges_x, y=edges_y, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=COLORS[kind], width=3 if kind == "accepted" else 1)))
    # The bonus gets a row of its own below the tree: at the path's height it would cover a sibling.
    bonus_xy = (depths[path_end] + 1 if path_end >= 0 else 1, -1.0)
    fig.add_trace(go.Scatter(x=[depths[path_end] if path_end >= 0 else 0, bonus_xy[0]], y=[heights[path_end], bonus_xy[1]],
                             mode="lines", hoverinfo="skip", showlegend=False,
                             line=dict(color=COLORS["bonus"], width=3, dash="dot")))
    nodes = [("root", 0, heights[-1], "▶", "the newest verified token")]
    nodes += [("accepted" if node in on_path else "rejected", depths[node], heights[node],
               token_label(decode(token)), f"draft {node}, depth {depths[node]}")
              for node, token in enumerate(step.drafts)]
    nodes.append(("bonus", *bonus_xy, token_label(decode(step.bonus)), "the model's own next token"))
    for kind, name in (("root", "context"), ("accepted", "accepted"), ("rejected", "rejected"), ("bonus", "bonus")):
        chosen = [n for n in nodes if n[0] == kind]
        if not chosen:
            continue
        color = COLORS.get(kind, "#555")
        fig.add_trace(go.Scatter(
            x=[n[1] for n in chosen], y=[n[2] for n in chosen], mode="markers+text", name=name,
            text=[n[3] for n in chosen], textposition="middle right",
            customdata=[n[4] for n in chosen], hovertemplate="%{text}: %{customdata}<extra>" + name + "</extra>",
            marker=dict(size=11 if kind != "rejected" else 8, color=BACKGROUNDS.get(kind, "#eee"),
                        line=dict(color=color, width=2)),
            textfont=dict(color=color)))
    counts = f"{len(step.drafts)} drafts, {step.accepted} accepted" + (" (a tree)" if step.parents else " (a chain)")
    if number:
        counts = f"Step {number}: {counts}"
    fig.update_layout(title=f"{title}: {counts}" if title else counts, height=max(280, 22 * (max(heights) + 2) + 110), margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(title="tokens ahead", dtick=1), yaxis=dict(visible=False),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"))
    return fig


def trace_summary(trace: Trace) -> dict[str, float | int | str]:
    """The docs/design.md §6 metrics of one trace, rounded for display."""
    return {
        "method": trace.method, "k": trace.k, "new tokens": trace.new_tokens, "forward passes": trace.forward_passes,
        "τ (tokens per step)": round(trace.tokens_per_step, 3),
        "draft acceptance": round(trace.draft_acceptance_rate, 3),
        "tokens/s": round(trace.tokens_per_second, 2), "wall s": round(trace.seconds, 3),
        "stop": trace.stop_reason,
    }


# -- Race --------------------------------------------------------------------------------------------
def trace_points(trace: Trace) -> list[tuple[float, int]]:
    """(seconds since start, tokens so far) after each forward pass, from the trace's step times."""
    points, elapsed, tokens = [(0.0, 0)], 0.0, 0
    for step in trace.steps:
        elapsed += step.seconds
        tokens += len([k for k, _ in step_tokens(step) if k != "rejected"])
        points.append((elapsed, tokens))
    return points


def trace_markdown(trace: Trace) -> str:
    """One line of Markdown with the trace's metrics."""
    s = trace_summary(trace)
    return (f"**{s['method']}** · {s['new tokens']} tokens · {s['forward passes']} forward passes · "
            f"τ = **{s['τ (tokens per step)']}** tokens per step · draft acceptance {s['draft acceptance']} · "
            f"**{s['tokens/s']} tokens/s** · {s['wall s']} s · stop: {s['stop']}")


def race_figure(series: Mapping[str, Sequence[tuple[float, int]]],
                colors: Mapping[str, str] | None = None) -> go.Figure:
    """Tokens vs time, one line per lane (each from its own start)."""
    fig = go.Figure()
    for name, points in series.items():
        fig.add_trace(go.Scatter(
            x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=name,
            line=dict(shape="hv", color=(colors or {}).get(name)), marker=dict(size=4),
        ))
    fig.update_layout(title="Tokens generated vs time", xaxis_title="seconds", yaxis_title="tokens",
                      height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


def race_table(traces: Mapping[str, Trace], details: Mapping[str, Mapping] | None = None) -> pd.DataFrame:
    """One row per lane: its details (settings) if given, then the trace's metrics."""
    return pd.DataFrame([{**(details or {}).get(name, {}), **trace_summary(trace)} for name, trace in traces.items()])


def speed_figure(panels: Mapping[str, Mapping], measured: Mapping[str, tuple[int, float]],
                 colors: Mapping[str, str]) -> go.Figure:
    """Predicted tokens/s against k, one panel per device: a line per lane (autoregressive flat, dashed),
    and on the first panel each lane's measured point (a star at its k; autoregressive at k = 0).

    panels: {title: {"autoregressive": tokens/s, lane: [(k, tokens/s), ...]}}; measured: {lane: (k, tokens/s)}.
    """
    titles = list(panels)
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.06)
    for col, title in enumerate(titles, start=1):
        lines = panels[title]
        ks = sorted({k for name, points in lines.items() if name != "autoregressive" for k, _ in points})
        for name, points in lines.items():
            if name == "autoregressive":
                x, y, dash = [0, *ks], [points] * (len(ks) + 1), "dash"
            else:
                x, y, dash = [k for k, _ in points], [v for _, v in points], None
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines" if dash else "lines+markers", name=f"{name} (predicted)",
                                     line=dict(color=colors.get(name), dash=dash), legendgroup=name,
                                     showlegend=col == 1,
                                     hovertemplate=f"{name}<br>k=%{{x}}: %{{y:.1f}} tokens/s predicted<extra></extra>"),
                          row=1, col=col)
        if col == 1:
            for name, (k, value) in measured.items():
                fig.add_trace(go.Scatter(x=[k], y=[value], mode="markers", name=f"{name} (measured here)",
                                         marker=dict(symbol="star", size=14, color=colors.get(name),
                                                     line=dict(color="black", width=1)), legendgroup=name,
                                         hovertemplate=f"{name}<br>k=%{{x}}: %{{y:.1f}} tokens/s measured<extra></extra>"),
                              row=1, col=col)
        fig.update_xaxes(title_text="k (mask tokens; 0 = autoregressive)", dtick=1, row=1, col=col)
    fig.update_yaxes(title_text="tokens/s after the first token", rangemode="tozero", row=1, col=1)
    fig.update_layout(title="Why it is faster: tokens/s against k", height=420, margin=dict(l=10, r=10, t=70, b=10),
                      legend=dict(orientation="h", y=-0.25), font=dict(size=12))
    return fig


# -- Lossless check ----------------------------------------------------------------------------------
def lossless_table(result: LosslessResult) -> pd.DataFrame:
    return pd.DataFrame({
        "comparison": [
            "masks appended (gate at masks) vs plain base, same tensor shape",
            "masks appended (gate at masks) vs plain base on the real tokens alone",
            "gate forced ON everywhere vs plain base, same tensor shape",
        ],
        "max |Δ logit| over real tokens": [result.max_delta_same_shape, result.max_delta_base_alone,
                                           result.max_delta_gate_on],
        "next-token argmax unchanged": [result.argmax_same, result.argmax_same, result.argmax_same_gate_on],
    })


# -- Training ----------------------------------------------------------------------------------------
def numeric_fields(records: Sequence[dict], prefix: str) -> list[str]:
    """Numeric fields named prefix* present in the log records, in first-seen order."""
    names: list[str] = []
    for record in records:
        for key, value in record.items():
            if key.startswith(prefix) and isinstance(value, (int, float)) and key not in names:
                names.append(key)
    return names


def training_figure(records: Sequence[dict]) -> go.Figure:
    """The training log against the optimizer step: each loss term, the top-1 accuracies at the masks,
    and the learning rate (records without a field, such as checkpoint events, are skipped)."""
    panels = {"losses": numeric_fields(records, "loss"), "top-1 accuracy at masks": numeric_fields(records, "acc"),
              "learning rate": numeric_fields(records, "lr")}
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels))
    for col, names in enumerate(panels.values(), start=1):
        for name in names:
            rows = [r for r in records if isinstance(r.get(name), (int, float))]
            fig.add_trace(go.Scatter(x=[r.get("step", i) for i, r in enumerate(rows)], y=[r[name] for r in rows],
                                     mode="lines", name=name), row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_layout(title="MTP training", height=360, margin=dict(l=10, r=10, t=60, b=10))
    return fig
