"""The race, watched in Chromium on this machine, reports each lane at the engine's own speed.

Done-when test of the undisturbed race: each lane's tokens/s in the page is at least 0.85 × what
`python -m mtp generate --json` reports for the same prompt, method and settings, measured in the same
test, and the lanes' outputs are identical (to each other and to the CLI's). Both sides are warmed the
same way (one full decode of the same prompt first: one race before the measured ones, one prompt before
the measured one in each CLI process); they alternate, and each side keeps its best of up to three tries,
because the machine is shared and noisy. Ratios are written to test-artifacts/race_speed.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from playwright.sync_api import Page

from mtp.demo.race import SLOTS
from tests.app_helpers import ARTIFACTS, ROOT, demo_page, table_records, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]  # Chromium, the app server and CLI processes

PROMPT = "Write a Python function that checks whether a string is a palindrome."
K = 4
MAX_NEW = 24
THRESHOLD = 0.85
TRIES = 3


@pytest.fixture(scope="module")
def race_page(tmp_path_factory):
    with demo_page(tmp_path_factory.mktemp("runs"), K, MAX_NEW) as page:
        page.get_by_role("tab", name="Race").click()
        page.fill("#prompt textarea", PROMPT)
        yield page


def race(page: Page) -> dict[str, dict]:
    """Run one race in the page; its lanes."""
    page.click("#race-run")
    wait_text(page, "#race-verdict", "Timing|Waiting|Replaying", timeout=120_000)
    verdict = wait_text(page, "#race-verdict", "identical|differ")
    assert "identical" in verdict and "differ" not in verdict, verdict
    return shown_lanes(page)


def shown_lanes(page: Page) -> dict[str, dict]:
    """Per lane of the race shown now: its settings, new tokens, tokens/s and text."""
    texts = {slot: page.input_value(f"#race-text-{slot} textarea") for slot in SLOTS}
    lanes = {}
    columns = ("lane", "method", "k", "groups", "lookup", "tree", "new tokens", "tokens/s")
    for slot, row in zip(SLOTS, table_records(page, "#race-table", columns)):
        lanes[slot] = {"lane": row["lane"], "method": row["method"], "k": int(row["k"]),
                       "groups": None if row["groups"] == "–" else int(row["groups"]), "lookup": int(row["lookup"]),
                       "tree_budget": 0 if row["tree"] == "–" else int(row["tree"]),
                       "new_tokens": int(row["new tokens"]), "tokens_per_second": float(row["tokens/s"]),
                       "text": texts[slot]}
    return lanes


def cli(lane: dict, prompts_file) -> dict:
    """`python -m mtp generate --json` with the lane's settings; the second prompt's record (the first warms)."""
    command = [sys.executable, "-m", "mtp", "generate", "--prompts-file", str(prompts_file), "--json",
               "--method", lane["method"], "--max-new-tokens", str(MAX_NEW)]
    if lane["method"] != "autoregressive":
        command += ["--k", str(lane["k"]), "--lookup", str(lane["lookup"])]
    if lane["method"] == "quadratic":
        command += ["--groups", str(lane["groups"]), "--tree-budget", str(lane["tree_budget"])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    warm, measured = [json.loads(line) for line in done.stdout.splitlines()]
    assert warm["token_ids"] == measured["token_ids"]
    return measured


def test_race_lanes_run_at_the_engines_speed(race_page: Page, tmp_path):
    prompts_file = tmp_path / "prompt.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": PROMPT}) + "\n" for _ in range(2)))
    race(race_page)  # warm-up, as the CLI's first prompt
    best_race: dict[str, float] = {}
    best_cli: dict[str, float] = {}
    tries = []
    for attempt in range(TRIES):
        lanes = None
        cli_speeds = {}
        for side in (("race", "cli") if attempt % 2 == 0 else ("cli", "race")):
            if side == "race":
                lanes = race(race_page)
            else:
                for slot, lane in (lanes or shown_lanes(race_page)).items():
                    record = cli(lane, prompts_file)
                    assert record["text"] == lane["text"], f"{slot}: the CLI wrote other text than the race"
                    cli_speeds[slot] = record["tokens_per_second"]
        for slot in lanes:
            best_race[slot] = max(best_race.get(slot, 0.0), lanes[slot]["tokens_per_second"])
            best_cli[slot] = max(best_cli.get(slot, 0.0), cli_speeds[slot])
        ratios = {slot: best_race[slot] / best_cli[slot] for slot in best_race}
        tries.append({"race": {s: lane["tokens_per_second"] for s, lane in lanes.items()}, "cli": cli_speeds,
                      "best_ratio_so_far": ratios})
        if attempt >= 1 and min(ratios.values()) >= THRESHOLD:
            break
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "race_speed.json").write_text(json.dumps({"tries": tries, "ratios": ratios}, indent=1))
    print("race ÷ CLI tokens/s per lane:", {s: round(r, 3) for s, r in ratios.items()})
    assert set(ratios) == set(SLOTS)
    for slot, ratio in ratios.items():
        assert ratio >= THRESHOLD, f"{slot}: race {best_race[slot]:.2f} vs CLI {best_cli[slot]:.2f} tokens/s"
