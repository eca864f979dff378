"""The demo end to end in real headless Chromium, on the real embedded model (no test-only set-up).

Starts `python app.py` on a free port, then for each tab types a prompt, runs it and checks what the
page shows. Screenshots go to test-artifacts/. Needs Debian chromium (`make test` installs it).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page

from mtp.api import DEFAULT_CHECKPOINT
from mtp.config import read_decoding_defaults
from mtp.demo.race import SLOTS
from tests.app_helpers import demo_page, set_number, shot, table_records, table_rows, table_size, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]  # Chromium, and the app as a server process

PROMPT = "Write a Python function that returns the factorial of n."
K = 4
MAX_NEW = 24


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with demo_page(tmp_path_factory.mktemp("runs"), K, MAX_NEW) as page:
        yield page


def open_tab(page: Page, name: str, prompt: str = PROMPT) -> None:
    page.get_by_role("tab", name=name).click()
    page.fill("#prompt textarea", prompt)


def test_future_heatmap(page: Page):
    open_tab(page, "Future heatmap")
    page.click("#probe-run")
    wait_text(page, "#probe-summary", "\\S")
    page.wait_for_selector("#probe-plot g.hm", state="attached")
    views = []  # per subplot (y, y2, y3 axes): its row labels, top row first
    for axis in ("y", "y2", "y3"):
        labels = page.locator(f"#probe-plot g.{axis}tick text").all_text_contents()
        views.append(sorted(labels, key=lambda label: int(re.match(r"\+(\d+) ", label).group(1))))
    for labels in views:  # k rows each
        assert [re.match(r"\+(\d+) · rank \d+$", r).group(1) for r in labels] == [str(i) for i in range(1, K + 1)]
    assert page.locator("#probe-plot g.hm").count() == 3
    table = table_rows(page, "#probe-table")
    assert [row[0] for row in table] == [f"+{i}" for i in range(1, K + 1)]
    # The ranks in the row labels are the table's ranks (columns 3, 5, 7: base probe, masks, sampler).
    for labels, column in zip(views, (2, 4, 6)):
        assert [re.search(r"rank (\d+)", r).group(1) for r in labels] == [row[column] for row in table]
    # The draft tree the masks propose: 4 nodes per mask, the path greedy would accept counted in the summary.
    page.wait_for_selector("#probe-tree .scatterlayer .trace", state="attached")
    kept = re.search(r"keep (\d+) of the sampler chain's \d+ and (\d+) along the best path of a (\d+)-node",
                     page.inner_text("#probe-summary"))
    assert kept and int(kept.group(3)) == 4 * K, page.inner_text("#probe-summary")
    assert page.locator("#probe-tree .legendtext", has_text="accepted").count() == (1 if int(kept.group(2)) else 0)
    shot(page, "heatmap")


def test_status_names_the_decoding_defaults(page: Page):
    # The shipped checkpoint carries measured CPU defaults; the status says what decoding will use.
    status = page.inner_text("#model-status")
    assert re.search(r"decoding defaults: (quadratic|linear), k = \d", status) and "(measured on " in status, status


def test_accepted_vs_rejected(page: Page):
    # Worked arithmetic: the trained checkpoint accepts every draft of the factorial code at k=4, and
    # this tab must show rejections too (and the README's screenshot a prompt where drafts often pass).
    open_tab(page, "Accepted vs rejected", "What is 15% of 240? Show your working.")
    page.click("#gen-run")
    status = wait_text(page, "#gen-html .mtp-status", r"step (\d+) of \1 ")
    steps, tokens = map(int, re.search(r"step (\d+) of \d+ · (\d+) tokens", status).groups())
    assert tokens == MAX_NEW and 1 <= steps <= MAX_NEW
    output = page.locator("#gen-html .mtp-output")
    accepted, rejected, bonus = (output.locator(f".mtp-{kind}") for kind in ("accepted", "rejected", "bonus"))
    assert accepted.count() >= 1 and rejected.count() >= 1
    assert steps - 1 <= bonus.count() <= steps  # a bonus per pass; the last one may be cut by max new tokens
    assert accepted.count() + bonus.count() == MAX_NEW
    style = lambda loc, prop: loc.first.evaluate(f"e => getComputedStyle(e).{prop}")  # noqa: E731
    assert style(accepted, "color") == "rgb(27, 122, 54)" and style(bonus, "color") == "rgb(31, 95, 191)"
    assert style(rejected, "color") == "rgb(192, 57, 43)" and "line-through" in style(rejected, "textDecorationLine")
    assert page.locator("#gen-html .mtp-legend .mtp-tok").count() == 3
    assert table_size(page, "#gen-table") == steps
    first = table_rows(page, "#gen-table")[0]  # the prefill: no drafts, one new token
    assert first[0] == "1" and first[1] == "–" and first[3:5] == ["0", "0"] and first[7] == "1"
    page.wait_for_selector("#gen-chart g.bars", state="attached")
    assert re.search(rf"\*?{MAX_NEW} tokens · {steps} forward passes", page.inner_text("#gen-metrics"))
    shot(page, "accepted")
    set_number(page, "#gen-step", 1)  # replay: only the first pass (the prefill: one bonus token)
    wait_text(page, "#gen-html .mtp-status", rf"step 1 of {steps} · 1 tokens")
    assert output.locator(".mtp-tok").count() == 1 and output.locator(".mtp-bonus").count() == 1
    # A draft tree: each step's rejected nodes are counted, not struck through; the step's tree is drawn.
    set_number(page, "#gen-tree", 16)
    page.click("#gen-run")
    wait_text(page, "#gen-html .mtp-status", r"step (\d+) of \1 ")
    assert output.locator(".mtp-tree").count() >= 1 and output.locator(".mtp-rejected").count() == 0
    assert output.locator(".mtp-accepted").count() + output.locator(".mtp-bonus").count() == MAX_NEW
    page.wait_for_selector("#gen-tree-plot .scatterlayer .trace", state="attached")
    assert "(a tree)" in page.inner_text("#gen-tree-plot")
    shot(page, "tree")


def test_race_lanes_identical_with_their_settings(page: Page):
    open_tab(page, "Race")
    page.click("#race-run")
    wait_text(page, "#race-verdict", "Timing", timeout=60_000)  # nothing else is drawn while lanes are timed
    verdict = wait_text(page, "#race-verdict", "identical|differ")
    assert "identical" in verdict and "differ" not in verdict
    texts = [page.input_value(f"#race-text-{slot} textarea") for slot in SLOTS]
    assert texts[0] and all(text == texts[0] for text in texts) and "factorial" in texts[0]
    # Each lane names its settings: the paper's layout has all k+1 groups, the shipped default its own.
    labels = {slot: page.inner_text(f"#race-text-{slot} [data-testid=block-info]") for slot in SLOTS}
    assert f"k = {K}" in labels["linear"] and f"{K + 1} mask groups" in labels["quadratic"]
    assert re.search(r"measured default: quadratic · k = \d · \d mask group", labels["default"])
    assert f"a draft tree of up to {4 * K} nodes" in labels["tree"] and f"{K + 1} mask groups" in labels["tree"]
    # The final frame's figure may still be drawing when the verdict shows (plotly renders asynchronously).
    page.wait_for_function(f"document.querySelectorAll('#race-plot .scatterlayer .trace').length == {len(SLOTS)}")
    table = table_records(page, "#race-table", ("lane", "tree", "method", "new tokens", "forward passes"))
    assert [row["lane"] for row in table] == ["autoregressive", "linear", "quadratic, the paper's layout",
                                              "quadratic with a draft tree", "measured default"]
    shipped = read_decoding_defaults(DEFAULT_CHECKPOINT, "cpu")
    assert [row["tree"] for row in table] == ["–", "–", "–", str(4 * K), str(shipped.get("tree_budget") or "–")]
    assert ("mask groups only while they pay" in labels["default"]) == shipped.get("cost_aware", False)
    assert [row["method"] for row in table] == ["autoregressive", "linear", "quadratic", "quadratic", "quadratic"]
    assert [row["new tokens"] for row in table] == [str(MAX_NEW)] * len(SLOTS)
    assert table[0]["forward passes"] == str(MAX_NEW)  # autoregressive: one forward pass per token
    # Why it is faster: predicted lines on two panels, the race's measured points as stars.
    page.wait_for_selector("#race-speed .scatterlayer .trace", state="attached")
    assert page.locator("#race-speed .infolayer .g-gtitle, #race-speed .annotation").count() >= 2
    shot(page, "race")


def test_lossless_check(page: Page):
    open_tab(page, "Lossless check")
    page.click("#lossless-run")
    wait_text(page, "#lossless-verdict", "Δ")
    table = table_rows(page, "#lossless-table")
    assert table[0][1] == "0" and float(table[1][1]) < 1e-4
    shot(page, "lossless")


def test_train_and_use_checkpoint(page: Page):
    page.get_by_role("tab", name="Train").click()
    set_number(page, "#train-k", 2)
    set_number(page, "#train-steps", 2)
    set_number(page, "#train-prompts", 2)
    page.click("#train-run")
    status = wait_text(page, "#train-status", "finished|failed|stopped")
    assert status.startswith("✅") and "step 2/2" in status, status
    page.wait_for_selector("#train-plot .scatterlayer .trace", state="attached")
    names = page.locator("#train-plot .legendtext").all_text_contents()
    assert {"loss", "loss_base", "loss_sampler", "loss_lcm"} <= set(names)
    shot(page, "train")
    # The new checkpoint appears in Settings; use it in the lossless tab.
    new = re.search(r"checkpoint (\S+) — pick it", status).group(1)
    page.click("#checkpoint input")
    page.get_by_role("option", name=new).click()
    wait_text(page, "#model-status", rf"Ready: .*{re.escape(new.split('/')[-1])}.*\(k = 2\)")
    page.get_by_role("tab", name="Lossless check").click()
    page.click("#lossless-run")
    verdict = wait_text(page, "#lossless-verdict", r"with 2 masks|With 2 masks")
    table = table_rows(page, "#lossless-table")
    assert table[0][1] == "0" and float(table[2][1]) > 0  # trained LoRA: the forced-open gate moves logits
    assert "untrained" not in verdict
