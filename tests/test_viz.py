"""Figure / table / HTML builders on recorded (hand-built) traces, probe results and training logs."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import NamedTuple

import pytest

from mtp import viz
from mtp.probe import LosslessResult, ProbeResult, ProbeView
from mtp.trace import Step, Trace
from tests.app_helpers import LetterTokenizer, autoregressive_trace, recorded_trace


class Element(NamedTuple):
    tag: str
    classes: list[str]
    attrs: dict[str, str]
    text: str  # the element's own text and its children's


def elements(page: str) -> list[Element]:
    """Every element of an HTML fragment, in document order, with its (unescaped) text."""
    found, open_ = [], []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = {k: v or "" for k, v in attrs}
            record = [tag, attrs.get("class", "").split(), attrs, ""]
            found.append(record)
            if tag != "br":  # a void element: no end tag
                open_.append(record)

        def handle_data(self, data):
            for record in open_:
                record[3] += data

        def handle_endtag(self, tag):
            if tag != "br":
                open_.pop()

    Parser(convert_charrefs=True).feed(page)
    return [Element(*record) for record in found]


def spans(page: str, kind: str) -> list[str]:
    """Texts of the output's tokens of one kind (accepted, rejected, bonus), in order."""
    output = page[page.index('class="mtp-output"'):]
    return [e.text for e in elements("<div " + output) if f"mtp-{kind}" in e.classes]


def status_numbers(page: str) -> list[int]:
    """The numbers of the status line: step, of steps, tokens, accepted, proposed[, lookup steps]."""
    status = next(e.text for e in elements(page) if "mtp-status" in e.classes)
    return [int(n) for n in re.findall(r"\d+", status)]


def test_step_tokens_order_and_stop_cut():
    trace = recorded_trace()
    assert viz.step_tokens(trace.steps[2]) == [("accepted", 26), ("rejected", 22), ("rejected", 9), ("bonus", 14)]
    # The last step was cut by max_new_tokens after 2 tokens: no bonus reached the output.
    assert viz.step_tokens(trace.steps[3]) == [("accepted", 17), ("accepted", 11), ("rejected", 3)]
    assert viz.output_tokens(trace.steps) == trace.token_ids


def test_accept_reject_html_full_and_replay():
    trace, tok = recorded_trace(), LetterTokenizer()
    page = viz.accept_reject_html(trace, tok)
    assert spans(page, "accepted") == ["e", "l", "l", " ", "r", "l"]
    assert spans(page, "rejected") == ["w", "j", "d"]
    assert spans(page, "bonus") == ["h", "o", "o"]
    assert status_numbers(page) == [4, 4, 9, 6, 9, 1]  # step 4 of 4, 9 tokens, 6 of 9 accepted, 1 looked up
    rejected = [e for e in elements(page) if "mtp-rejected" in e.classes]
    assert all("line-through" in e.attrs["style"] for e in rejected)
    # Step 4's drafts came from prompt lookup: marked, and its tooltip counts its accepted drafts.
    steps = [e for e in elements(page) if "mtp-step" in e.classes]
    assert [e.attrs["data-step"] for e in steps] == ["1", "2", "3", "4"]
    assert ["mtp-lookup" in e.classes for e in steps] == [False, False, False, True]
    assert re.search(r"\b2/3\b", steps[3].attrs["title"]) and "lookup" in steps[3].attrs["title"]
    for kind in ("accepted", "rejected", "bonus"):  # legend present with the same colours
        assert viz.COLORS[kind] in viz.legend_html()
    replay = viz.accept_reject_html(trace, tok, upto_step=2)
    assert spans(replay, "accepted") == ["e", "l", "l"] and spans(replay, "bonus") == ["h", "o"]
    assert spans(replay, "rejected") == [] and status_numbers(replay) == [2, 4, 5, 3, 3]
    assert not any("mtp-lookup" in e.classes for e in elements(replay))
    assert status_numbers(viz.accept_reject_html(trace, tok, upto_step=0)) == [0, 4, 0, 0, 0]


def test_html_escapes_token_text():
    trace = Trace(method="linear", k=1, prompt_ids=[0], token_ids=[27, 28, 29],
                  steps=[Step([], 0, 27, 0.1, 2, 1), Step([28], 1, 29, 0.1, 3, 2)])
    page = viz.accept_reject_html(trace, LetterTokenizer())
    assert spans(page, "bonus") == ["<", "↵"] and spans(page, "accepted") == ["&"]


def test_steps_table():
    table = viz.steps_table(recorded_trace(), LetterTokenizer())
    assert list(table["accepted"]) == [0, 3, 1, 2] and list(table["of"]) == [0, 3, 3, 3]
    assert list(table["new tokens"]) == [1, 4, 2, 2] and sum(table["new tokens"]) == 9
    assert table.loc[2, "rejected"] == "w | j" and table.loc[2, "bonus"] == "o"
    assert table.loc[2, "drafts"] == "␣ | w | j"
    assert list(table["ms"]) == [200.0, 100.0, 100.0, 100.0]
    assert list(table["drafts from"]) == ["–", "masks", "masks", "prompt lookup"]
    grafted = Step([3, 4, 5], 1, 6, 0.1, 5, 2, looked_up=True, parents=[-1, -1, 1], path=[1])
    assert viz.draft_source(grafted) == "masks + prompt lookup"  # a lookup chain grafted onto the masks' tree


def test_datastore_drafts_are_named_and_underlined():
    """A step whose draft holds the datastore's chain says so (tooltip, table, status) and is underlined
    like prompt-lookup drafts."""
    retrieved = Step([3, 4, 5], 1, 6, 0.1, 5, 2, parents=[-1, -1, 1], path=[1], sources=["masks", "datastore"])
    trace = Trace(method="quadratic", k=2, prompt_ids=[1], token_ids=[2, 4, 6],
                  steps=[Step([], 0, 2, 0.1, 1, 1), retrieved])
    assert viz.draft_source(retrieved) == "masks + datastore"
    assert list(viz.steps_table(trace, LetterTokenizer())["drafts from"]) == ["–", "masks + datastore"]
    page = viz.accept_reject_html(trace, LetterTokenizer())
    step = [e for e in elements(page) if "mtp-step" in e.classes][1]
    assert "mtp-lookup" in step.classes and "from masks + datastore" in step.attrs["title"]
    assert "datastore drafts in 1 of them (dashed underline)" in page and "prompt-lookup drafts in" not in page


def test_offset_acceptance_figure():
    fig = viz.offset_acceptance_figure(recorded_trace())
    bar = fig.data[0]
    assert list(bar.x) == ["+1", "+2", "+3"]
    assert list(bar.y) == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert list(bar.text) == ["3/3", "2/3", "1/3"]


def tree_trace() -> Trace:
    """A prefill, then one tree pass: t0 → {10, 11}, 10 → {12, 13}, 12 → {14}; accepted path 10, 12 (then
    the bonus 15, where 14 was drafted)."""
    tree = Step([10, 11, 12, 13, 14], 2, 15, 0.1, 9, 3, parents=[-1, -1, 0, 0, 2], path=[0, 2])
    return Trace(method="quadratic", k=3, prompt_ids=[1], token_ids=[20, 10, 12, 15], tree_budget=5,
                 steps=[Step([], 0, 20, 0.2, 1, 1), tree])


def test_tree_step_shows_its_path_and_counts_the_rest():
    trace, tok = tree_trace(), LetterTokenizer()
    assert viz.step_tokens(trace.steps[1]) == [("accepted", 10), ("accepted", 12), ("rejected", 11),
                                               ("rejected", 13), ("rejected", 14), ("bonus", 15)]
    assert viz.output_tokens(trace.steps) == trace.token_ids
    page = viz.accept_reject_html(trace, tok)
    assert spans(page, "accepted") == [tok.decode([10]), tok.decode([12])] and spans(page, "rejected") == []
    badge = next(e for e in elements(page) if "mtp-tree" in e.classes)
    assert badge.text == "✗3" and "5-node draft tree" in badge.attrs["title"]
    assert status_numbers(page) == [2, 2, 4, 2, 5]
    fig = viz.offset_acceptance_figure(trace)  # offsets by depth: 3 deep, not 5 wide
    assert list(fig.data[0].text) == ["1/1", "1/1", "0/1"]


def test_tree_layout_gives_each_subtree_its_own_band():
    heights = viz.tree_layout([-1, -1, 0, 0, 2])  # nodes 0..4, then the root
    assert heights[2] == heights[4] == 0.0 and heights[3] == 1.0 and heights[1] == 2.0
    assert heights[0] == 0.5 and heights[5] == 1.25  # parents at their children's mean
    assert viz.tree_layout([-1, 0, 1]) == [0.0] * 4  # a chain is a straight line


def test_tree_figure_colours_path_rejections_and_bonus():
    trace, tok = tree_trace(), LetterTokenizer()
    fig = viz.tree_figure(trace.steps[1], tok, 2)
    nodes = {t.name: t for t in fig.data if t.mode == "markers+text"}
    assert list(nodes["accepted"].x) == [1, 2] and list(nodes["rejected"].x) == [1, 2, 3]
    assert list(nodes["bonus"].x) == [3] and list(nodes["bonus"].text) == [viz.token_label(tok.decode([15]))]
    assert list(nodes["context"].x) == [0]
    assert fig.layout.title.text == "Step 2: 5 drafts, 2 accepted (a tree)"
    chain = viz.tree_figure(Step([10, 11], 1, 15, 0.1, 4, 2), tok)
    titled = viz.tree_figure(trace.steps[1], tok, title="The draft tree the masks propose")
    assert titled.layout.title.text == "The draft tree the masks propose: 5 drafts, 2 accepted (a tree)"
    assert "(a chain)" in chain.layout.title.text and list(next(t for t in chain.data if t.name == "bonus").y) == [-1.0]
    assert list(next(t for t in chain.data if t.name == "accepted").y) == [0.0]  # a chain: one straight row


def test_race_points_and_figure():
    trace = recorded_trace()
    points = viz.trace_points(trace)
    assert [n for _, n in points] == [0, 1, 5, 7, 9]
    assert [round(t, 3) for t, _ in points] == [0.0, 0.2, 0.3, 0.4, 0.5]
    auto = autoregressive_trace(trace.token_ids)
    fig = viz.race_figure({"autoregressive": viz.trace_points(auto), "quadratic": points})
    assert [d.name for d in fig.data] == ["autoregressive", "quadratic"]
    assert fig.data[0].y[-1] == fig.data[1].y[-1] == 9
    table = viz.race_table({"autoregressive": auto, "quadratic": trace})
    assert list(table["forward passes"]) == [9, 4]
    assert list(table["τ (tokens per step)"]) == [1.0, 2.25]


def probe_result() -> ProbeResult:
    views = {
        "base_probe": ProbeView("base_probe", [[5, 6], [8, 5]], [[0.5, 0.2], [0.4, 0.1]], [2, 9], [0.2, 0.01]),
        "mask_path": ProbeView("mask_path", [[6, 5], [9, 7]], [[0.9, 0.05], [0.6, 0.3]], [1, 2], [0.9, 0.3]),
        "sampler_chain": ProbeView("sampler_chain", [[6, 5], [7, 9]], [[0.95, 0.01], [0.8, 0.1]], [1, 1],
                                   [0.95, 0.8], chain_ids=[6, 7]),
    }
    return ProbeResult(k=2, top_n=2, prompt_ids=[1, 2], placeholder_id=0, greedy_ids=[4, 6, 7, 8], views=views,
                       texts={5: "f", 6: " g", 7: "h", 8: "i", 9: "j"})


def test_heatmap_figure_rows_and_marks():
    fig = viz.heatmap_figure(probe_result())
    assert len(fig.data) == 3
    base, mask, sampler = fig.data
    assert list(base.y) == ["+1 · rank 2", "+2 · rank 9"] and len(mask.y) == 2
    assert [list(r) for r in mask.text] == [["␣g", "f"], ["j", "h"]]
    assert [list(r) for r in sampler.z] == [[0.95, 0.01], [0.8, 0.1]]
    # Boxes around the greedy token where it is in the top N: base row 1 col 2, mask (1,1) (2,2), sampler (1,1) (2,1).
    boxes = [(s.xref, s.x0 + 0.5, s.y0 + 0.5) for s in fig.layout.shapes]
    assert boxes == [("x", 1, 0), ("x2", 0, 0), ("x2", 1, 1), ("x3", 0, 0), ("x3", 0, 1)]


def test_probe_table():
    table = viz.probe_table(probe_result())
    assert list(table["greedy token"]) == ["␣g", "h"]
    assert list(table["base_probe rank"]) == [2, 9] and list(table["sampler_chain rank"]) == [1, 1]


def test_lossless_table():
    table = viz.lossless_table(LosslessResult(10, 4, 0.0, 2e-7, 3.5, True, False))
    assert list(table.iloc[:, 1]) == [0.0, 2e-7, 3.5]
    assert list(table.iloc[:, 2]) == [True, True, False]


def test_training_figure_each_term_in_its_panel():
    records = [{"step": 1, "loss": 9.0, "loss_base": 5.0, "loss_sampler": 3.5, "loss_lcm": 0.5, "acc_base": 0.1, "lr": 1e-4},
               {"step": 2, "loss": 8.0, "loss_base": 4.5, "loss_sampler": 3.0, "loss_lcm": 0.5, "acc_base": 0.2, "lr": 2e-4},
               {"step": 3, "event": "checkpoint"}]
    fig = viz.training_figure(records)
    assert [(d.name, d.xaxis) for d in fig.data] == [("loss", "x"), ("loss_base", "x"), ("loss_sampler", "x"),
                                                     ("loss_lcm", "x"), ("acc_base", "x2"), ("lr", "x3")]
    assert list(fig.data[1].x) == [1, 2] and list(fig.data[1].y) == [5.0, 4.5]
    assert viz.training_figure([]).data == ()


def test_token_texts_from_mapping():
    trace = recorded_trace()
    texts = {t: LetterTokenizer().decode([t]) for s in trace.steps for t in s.drafts + [s.bonus]}
    assert viz.accept_reject_html(trace, texts) == viz.accept_reject_html(trace, LetterTokenizer())
    assert viz.token_decoder({})(5) == "<5>" and viz.token_decoder(None)(5) == "<5>"


def test_race_table_names_each_lanes_settings():
    trace = recorded_trace()
    table = viz.race_table({"paper": trace}, {"paper": {"lane": "paper", "groups": "4", "lookup": 0}})
    assert list(table.columns[:4]) == ["lane", "groups", "lookup", "method"]
    assert table.loc[0, "groups"] == "4" and table.loc[0, "new tokens"] == 9
    assert "9 tokens · 4 forward passes" in viz.trace_markdown(trace)


def test_speed_figure_lines_per_panel_and_measured_stars():
    panels = {"here": {"autoregressive": 30.0, "linear": [(1, 35.0), (2, 38.0)]},
              "gpu": {"autoregressive": 30.0, "linear": [(1, 55.0), (2, 70.0)]}}
    fig = viz.speed_figure(panels, {"autoregressive": (0, 29.0), "linear": (2, 37.0)},
                           {"autoregressive": "#777", "linear": "#f80"})
    names = [(d.name, d.xaxis) for d in fig.data]
    assert names == [("autoregressive (predicted)", "x"), ("linear (predicted)", "x"),
                     ("autoregressive (measured here)", "x"), ("linear (measured here)", "x"),
                     ("autoregressive (predicted)", "x2"), ("linear (predicted)", "x2")]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [30.0] * 3  # flat: no masks
    assert list(fig.data[5].y) == [55.0, 70.0] and fig.data[3].marker.symbol == "star"
    assert [a.text for a in fig.layout.annotations] == ["here", "gpu"]
