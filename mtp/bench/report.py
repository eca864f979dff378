"""Reporting: a benchmark report as bench.json, a results.md page (identity, τ in the paper's Table-1
layout, speed tables, cost curve, chosen defaults), plotly pages (+PNG with kaleido) and defaults.json."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..atomic import write_text as write_atomic
from ..options import DRAFTING_METHODS
from .runs import BASELINE, Run, run_name, run_of

RESULTS_FILE = "bench.json"
DEFAULTS_FILE = "defaults.json"
# docs/design.md §6: the paper's τ (Tulu3-8B, quadratic + sampler + LCM) at k = 1, 2, 4, 8.
PAPER_K = (1, 2, 4, 8)
PAPER_TAU = {"GSM8K (math)": (1.84, 2.58, 3.75, 5.22), "HumanEval (code)": (1.86, 2.63, 3.87, 5.35),
             "AlpacaEval (chat)": (1.61, 1.97, 2.31, 2.52), "MMLU (knowledge)": (1.54, 1.87, 2.18, 2.38),
             "average of 13": (1.67, 2.14, 2.69, 3.17)}
# Our eval domains -> the closest benchmark of the paper's Table 1.
PAPER_ROW = {"math": "GSM8K (math)", "code": "HumanEval (code)", "instructions": "AlpacaEval (chat)",
             "knowledge": "MMLU (knowledge)", "all": "average of 13"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(report: dict) -> str:
    """results.md: identity, the Table-1 layout of τ, speed tables, cost curve and chosen defaults."""
    settings, summary = report["settings"], report["summary"]
    domains = list(summary)
    machine = report["machine"]
    total_runs = sum(len(e["runs"]) for e in report["prompts"])
    counts = ", ".join(f"{d} {summary[d][BASELINE]['prompts']}" for d in domains[:-1])
    parts = [
        "# MTP benchmark", "",
        f"Command: `{report['command']}`  ", f"Date: {report['created']}  ",
        f"Model: {report['model']['name']}, checkpoint: {report['model']['checkpoint'] or 'none (fresh adapter)'} "
        f"(k={report['model']['k']}, sampler {'on' if settings['use_sampler'] else 'off'}"
        f"{', quadratic groups ' + ','.join(map(str, settings['groups'])) if settings['groups'] else ''})  ",
        f"Machine: {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, device {machine['device']}"
        f"{', CPU linear kernel ' + machine.get('cpu_linear', 'torch') if machine['device'] == 'cpu' else ''}), "
        "load average at start "
        f"{machine['load_average']}  ",
        f"Prompts: {len(report['prompts'])} ({counts}),"
        f" {settings['max_new_tokens']} new tokens max, chat template {'on' if settings['chat_template'] else 'off'}.",
        "", "τ = new tokens ÷ forward passes; tokens/s and speedups are ratios of sums over a domain's prompts; "
        f"the baseline is transformers `generate(do_sample=False)`, prompt lookup uses "
        f"`prompt_lookup_num_tokens={settings['prompt_lookup_tokens']}`, both timed in the same run, "
        "interleaved per prompt.", "", "## Greedy token identity", "",
    ]
    bad = report["mismatches"]
    if bad:
        parts.append(f"**{len(bad)} of {total_runs} runs differ from `generate`:**")
        parts += [f"- {m['source']} ({m['domain']}): {run_name(run_of(m))}, first at token "
                  f"{m['first_mismatch_at']}" for m in bad]
    elif total_runs:
        parts.append(f"All {total_runs} greedy runs are token-identical to `generate` (0 mismatches).")
    else:
        parts.append("No decoded run to compare (`--methods none`): τ below is replayed from the teacher-forced table.")
    for family, runs in _families(report).items():
        parts += ["", f"## τ (tokens per step), {run_name(family)}", ""]
        rows = [[d] + [_fmt(summary[d]["runs"][run_name(run)]["tokens_per_step"]) for run in runs] for d in domains]
        parts.append(_table(["domain"] + [f"k={run.k}" for run in runs], rows))
    if "prompt_lookup" in settings["methods"]:
        parts += ["", "Prompt lookup τ: " + ", ".join(
            f"{d} {_fmt(summary[d]['runs']['prompt_lookup']['tokens_per_step'])}" for d in domains)]
    parts += ["", "Paper (Tulu3-8B, quadratic + sampler + LCM, docs/design.md §6), for comparison:", "",
              _table(["benchmark"] + [f"k={k}" for k in PAPER_K],
                     [[name] + [f"{v:.2f}" for v in values] for name, values in PAPER_TAU.items()])]
    if settings.get("tau_table_k"):
        parts += _tau_table_markdown(summary, settings)
    names = list(summary["all"]["runs"])
    parts += ["", "## Tokens per second", ""]
    rows = [[BASELINE] + [_fmt(summary[d][BASELINE]["tokens_per_second"], 1) for d in domains]]
    rows += [[n] + [_fmt(summary[d]["runs"][n]["tokens_per_second"], 1) for d in domains] for n in names]
    parts.append(_table(["run"] + domains, rows))
    for key, title in (("speedup_vs_generate", "Wall-clock speedup vs `generate`"),
                       ("speedup_vs_prompt_lookup", "Wall-clock speedup vs prompt lookup")):
        if not names or (key == "speedup_vs_prompt_lookup" and "prompt_lookup" not in settings["methods"]):
            continue  # nothing decoded (--methods none), or no prompt-lookup baseline
        parts += ["", f"## {title}", ""]
        parts.append(_table(["run"] + domains,
                            [[n] + [_fmt(summary[d]["runs"][n][key], 2, "×") for d in domains] for n in names]))
    curve = report.get("cost_curve")
    if curve:
        parts += ["", f"## Cost curve (warm cache of {curve['cache_tokens']} tokens, median of {curve['repeats']})",
                  "", _table(["input tokens"] + [str(n) for n in curve["backbone_seconds"]],
                             [["backbone ms"] + [f"{1e3 * s:.1f}" for s in curve["backbone_seconds"].values()]]),
                  "", _table(["lm_head rows"] + [str(r) for r in curve["lm_head_seconds"]],
                             [["ms"] + [f"{1e3 * s:.1f}" for s in curve["lm_head_seconds"].values()]]),
                  "", "Decoding passes as `decoding.verify` makes them (logits of the verified rows and the surviving "
                  "mask group included) + drafting (the draft chain on those logits):", ""]
        rows = [[str(k), name, str(v["input_length"]), f"{1e3 * v['seconds']:.1f}",
                 f"{1e3 * curve['drafting_seconds'][k]:.1f}"]
                for k, shapes in curve["step_seconds"].items() for name, v in shapes.items()]
        parts.append(_table(["k", "pass", "input tokens", "pass ms", "drafting ms"], rows))
    ranked = report.get("predictions")
    if ranked:
        parts += ["", "## Predicted best settings (cost curve × replayed passes, all prompts)", ""]
        parts.append(_table(["method", "k", "groups", "lookup", "tree", "τ", "tokens/s", "vs autoregressive"],
                            [[c["method"], str(c["k"] or "–"), str(c["groups"] or "–"), str(c["lookup"] or "–"),
                              str(c.get("tree_budget") or "–"),
                              _fmt(c["tokens_per_step"]),
                              _fmt(c["predicted_tokens_per_second"], 1),
                              _fmt(c["predicted_speedup_vs_autoregressive"], 2, "×")] for c in ranked[:10]]))
    best = report.get("defaults")
    if best:
        predicted = "predicted_speedup_vs_autoregressive" in best
        speedup = best["predicted_speedup_vs_autoregressive" if predicted else "speedup_vs_generate"]
        verdict = "faster" if speedup > 1 else "not faster"
        parts += ["", f"Chosen defaults, the fastest MTP setting {'predicted' if predicted else 'decoded'} (written "
                      f"to `{DEFAULTS_FILE}`): method {best['method']}, k {best['k']}, groups {best['groups'] or '–'}, "
                      f"lookup drafts {best['lookup'] or 'off'}, draft tree {best.get('tree_budget') or 'off (a chain)'}"
                      f"{', cost-aware' if best['cost_aware'] else ''}"
                      f"{', datastore drafts from ' + ', '.join(best['datastore']) if best.get('datastore') else ''}; "
                      f"{'predicted ' if predicted else ''}"
                      f"{speedup:.2f}× {'autoregressive' if predicted else '`generate`'}, so {verdict} than plain "
                      "decoding on this device."]
    return "\n".join(parts) + "\n"


def _tau_table_markdown(summary: dict, settings: dict) -> list[str]:
    """The teacher-forced τ tables (k = 1..K per method and drafter) and the replay check."""
    domains = list(summary)
    ks = range(1, settings["tau_table_k"] + 1)
    paper_cols = [f"paper k={k}" for k in PAPER_K]
    parts = ["", f"## τ at k = 1…{ks[-1]}, replayed from teacher-forced drafts", "",
             "One pass per prompt runs every mask group over the greedy output (`mtp.acceptance`); replaying "
             "linear and quadratic decoding on the match lengths gives their pass counts exactly "
             "(paper rows: the closest benchmark of its Table 1, Tulu3-8B)."]
    for drafter, label in (("sampler", "sampler drafts"), ("lm_head", "lm_head drafts (no sampler)")):
        for method in DRAFTING_METHODS:
            with_paper = (method, drafter) == ("quadratic", "sampler")
            rows = []
            for d in domains:
                row = [d] + [_fmt(v) for v in summary[d]["tau_table"]["tau"][drafter][method]]
                if with_paper:
                    paper = PAPER_TAU.get(PAPER_ROW.get(d, ""))
                    row += [f"{v:.2f}" for v in paper] if paper else ["–"] * len(PAPER_K)
                rows.append(row)
            parts += ["", f"**{method}, {label}**", "",
                      _table(["domain"] + [f"k={k}" for k in ks] + (paper_cols if with_paper else []), rows)]
    for name in summary["all"]["tau_table"].get("trees", {}):
        for method in DRAFTING_METHODS:
            ks_tree = list(summary["all"]["tau_table"]["trees"][name][method])
            rows = [[d] + [_fmt(summary[d]["tau_table"]["trees"][name][method][k]) for k in ks_tree] for d in domains]
            groups = "k+1 groups first in the tree's group order" if method == "quadratic" else "one group"
            parts += ["", f"**{method}, sampler draft {name} nodes ({groups}, docs/design.md §7)**", "",
                      _table(["domain"] + [f"k={k}" for k in ks_tree], rows)]
    for name, by_k in summary["all"]["tau_table"].get("tree_groups", {}).items():
        for k, by_groups in by_k.items():
            counts = list(by_groups)
            rows = [[d] + [_fmt(summary[d]["tau_table"]["tree_groups"][name][k][g]) for g in counts] for d in domains]
            parts += ["", f"**quadratic, sampler draft {name} nodes, k={k}, by mask groups G (a pass carries "
                          f"{k} masks per group; G={counts[-1]}: a group after every node)**", "",
                      _table(["domain"] + [f"G={g}" for g in counts], rows)]
    agreement = summary["all"]["tau_table"]["replay_agreement"]
    if agreement:
        parts += ["", "Replay vs decoding (same pass count per prompt): " + ", ".join(
            f"{name} {a['same_passes']}/{a['prompts']}" for name, a in agreement.items()) + "."]
    return parts


def _families(report: dict) -> dict[Run, list[Run]]:
    """The decoded linear/quadratic runs, measuring order, by everything but k (the run with k=None)."""
    families: dict[Run, list[Run]] = {}
    for run in dict.fromkeys(run_of(r) for e in report["prompts"] for r in e["runs"]):
        if run.method in DRAFTING_METHODS:
            families.setdefault(run._replace(k=None), []).append(run)
    return families


def figures(report: dict) -> dict[str, go.Figure]:
    """τ vs k per domain (one panel per method), speedup per run and domain, and the cost curve."""
    settings, summary = report["settings"], report["summary"]
    domains = list(summary)
    out = {}
    table_k = settings.get("tau_table_k", 0)
    # τ vs k from the τ table (every k, replayed) when there is one, else from the decoded runs.
    # Without the table: each method's first family of decoded runs (e.g. quadratic G=1 + lookup).
    firsts = {}
    for runs in _families(report).values():
        firsts.setdefault(runs[0].method, runs)
    methods = list(DRAFTING_METHODS) if table_k else list(firsts)

    def ks(method: str) -> list[int]:
        return list(range(1, table_k + 1)) if table_k else [run.k for run in firsts[method]]

    def taus(domain: str, method: str) -> list[float]:
        if table_k:
            return summary[domain]["tau_table"]["tau"]["sampler"][method]
        return [summary[domain]["runs"][run_name(run)]["tokens_per_step"] for run in firsts[method]]
    if methods:
        fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
        for col, method in enumerate(methods, start=1):
            for i, domain in enumerate(domains):
                fig.add_trace(go.Scatter(
                    x=ks(method), y=taus(domain, method), mode="lines+markers", name=domain, legendgroup=domain,
                    showlegend=col == 1, line={"color": _color(i), "dash": "dot" if domain == "all" else None}),
                    row=1, col=col)
            fig.update_xaxes(title_text="k (masks)", row=1, col=col)
        fig.update_yaxes(title_text="τ (tokens per forward pass)", row=1, col=1)
        fig.update_layout(title="Tokens per step vs k, per domain", template="plotly_white")
        out["tau_vs_k"] = fig
    names = list(summary["all"]["runs"])
    fig = go.Figure([go.Bar(name=d, x=names, y=[summary[d]["runs"][n]["speedup_vs_generate"] for n in names],
                            marker_color=_color(i)) for i, d in enumerate(domains)])
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="transformers generate")
    fig.update_layout(title="Wall-clock speedup vs transformers generate (greedy, KV cache)", barmode="group",
                      yaxis_title="speedup (×)", template="plotly_white")
    out["speedup"] = fig
    curve = report.get("cost_curve")
    if curve:
        fig = make_subplots(rows=1, cols=2, subplot_titles=["backbone pass", "lm_head"])
        fig.add_trace(go.Scatter(x=list(curve["backbone_seconds"]), y=[1e3 * s for s in curve["backbone_seconds"].values()],
                                 mode="lines+markers", name="backbone (real tokens)"), row=1, col=1)
        for i, (k, shapes) in enumerate(curve["step_seconds"].items()):
            fig.add_trace(go.Scatter(x=[v["input_length"] for v in shapes.values()],
                                     y=[1e3 * v["seconds"] for v in shapes.values()], mode="markers",
                                     text=list(shapes), name=f"decoding passes k={k}", marker_color=_color(i + 1)),
                          row=1, col=1)
        fig.add_trace(go.Scatter(x=list(curve["lm_head_seconds"]), y=[1e3 * s for s in curve["lm_head_seconds"].values()],
                                 mode="lines+markers", name="lm_head"), row=1, col=2)
        fig.update_xaxes(title_text="input tokens", row=1, col=1)
        fig.update_xaxes(title_text="rows", row=1, col=2)
        fig.update_yaxes(title_text="ms (median)", row=1, col=1)
        fig.update_layout(title=f"Forward-pass cost on a warm cache of {curve['cache_tokens']} tokens",
                          template="plotly_white")
        out["cost_curve"] = fig
    return out


def _color(i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    return palette[i % len(palette)]


def _kaleido_available() -> bool:
    try:
        import kaleido  # noqa: F401  (optional: PNGs only where it is installed)
    except ImportError:
        return False
    return True


def report_json(report: dict) -> str:
    """A (non-empty) report as JSON, one prompt's entry per line: indenting the per-index match lists of 40
    prompts per set line by line would make a page's bench.json ~4x larger for no reader's gain."""
    head = json.dumps({key: value for key, value in report.items() if key != "prompts"}, indent=1)
    prompts = ",\n".join("  " + json.dumps(entry, separators=(",", ":")) for entry in report.get("prompts", []))
    return head[:-2] + f',\n "prompts": [\n{prompts}\n ]\n}}\n'


def write_outputs(report: dict, out_dir: str | Path) -> list[Path]:
    """bench.json, results.md, one HTML (+PNG with kaleido) per figure, defaults.json when defaults were chosen."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / RESULTS_FILE, out_dir / "results.md"]
    write_atomic(written[0], report_json(report))
    write_atomic(written[1], markdown(report))
    png = _kaleido_available()
    for name, fig in figures(report).items():
        # plotly.js from its CDN keeps each page small; the numbers are all in bench.json.
        path = out_dir / f"{name}.html"
        fig.write_html(path, include_plotlyjs="cdn")
        written.append(path)
        if png:
            fig.write_image(out_dir / f"{name}.png")
            written.append(out_dir / f"{name}.png")
    if report.get("defaults"):
        written.append(out_dir / DEFAULTS_FILE)
        write_atomic(written[-1], json.dumps(report["defaults"], indent=1) + "\n")
    return written
