"""Several simultaneous requests through the Gradio API return exactly what sequential ones return.

The gate is a per-call value: a lossless check forcing the gate open must not leak into a generation
running at the same time, and each seeded sampling run keeps its own generator.
"""

from __future__ import annotations

import json

import pytest
from gradio_client import Client

from mtp.api import default_checkpoint
from mtp.models import EMBEDDED_NAME
from mtp.demo.race import SLOTS
from tests.app_helpers import ARTIFACTS, ROOT, free_port, start_app, stop_app
from tests.test_demo import fake_checkpoint

pytestmark = pytest.mark.multiprocess  # the app runs as a server process

PROMPTS = json.loads((ROOT / "assets" / "examples.json").read_text())
SHIPPED = default_checkpoint()
CHECKPOINT = str(SHIPPED.relative_to(ROOT)) if SHIPPED else "fresh adapter (untrained)"
JOBS = [
    ("/generate", (PROMPTS["math"][1], EMBEDDED_NAME, CHECKPOINT, "quadratic", 4, 0, 16, 0)),
    ("/generate", (PROMPTS["code"][0], EMBEDDED_NAME, CHECKPOINT, "linear", 3, 0, 16, 0)),
    ("/generate", (PROMPTS["chat"][0], EMBEDDED_NAME, CHECKPOINT, "quadratic", 4, 0.8, 16, 7)),
    ("/lossless", (PROMPTS["chat"][1], EMBEDDED_NAME, CHECKPOINT, 4)),
    ("/probe", (PROMPTS["math"][0], EMBEDDED_NAME, CHECKPOINT, 4, 5)),
]


RACE_VERDICT = 2 * len(SLOTS) + 1  # the race's outputs: text and stats per lane, plot, verdict, table, speed plot


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(client, server log, runs dir) of one app process."""
    port, runs = free_port(), tmp_path_factory.mktemp("runs")
    proc = start_app(port, ["--concurrency", "4", "--runs-dir", str(runs)])
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), ARTIFACTS / f"app-{port}.log", runs
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def client(server):
    return server[0]


def comparable(api: str, result: tuple):
    """What must not depend on other requests: tokens, accept counts, HTML, ranks, deltas (not timings)."""
    if api == "/generate":
        trace = json.loads(result[5])["trace"]
        return result[0], trace["token_ids"], [(s["drafts"], s["accepted"], s["bonus"]) for s in trace["steps"]]
    if api == "/probe":
        return result[1]["data"], result[2]
    return result[0]["data"], result[1]


@pytest.mark.slow
def test_simultaneous_requests_match_sequential(client):
    sequential = [comparable(api, client.predict(*args, api_name=api)) for api, args in JOBS]
    jobs = [client.submit(*args, api_name=api) for api, args in JOBS]
    simultaneous = [comparable(api, job.result(timeout=900)) for (api, _), job in zip(JOBS, jobs)]
    for (api, args), one, other in zip(JOBS, sequential, simultaneous):
        assert one == other, f"{api} {args[0][:30]!r} differs when run alongside the others"
    assert len(sequential[0][1]) == 16 and len(sequential[2][1]) == 16
    assert sequential[0][1] != sequential[2][1]  # really different requests
    assert sequential[3][0][0][1] == 0  # the gated LoRA leaves real tokens exact even under load


def test_bad_input_is_refused_and_server_survives(server):
    client, log, _ = server
    bad = [
        ("/generate", ("", EMBEDDED_NAME, CHECKPOINT, "quadratic", 4, 0, 16, 0), "Type a prompt"),
        ("/generate", ("x" * 5000, EMBEDDED_NAME, CHECKPOINT, "quadratic", 4, 0, 16, 0), "4000"),
        ("/generate", ("hi", EMBEDDED_NAME, CHECKPOINT, "sideways", 4, 0, 16, 0), "list of choices"),
        ("/generate", ("hi", EMBEDDED_NAME, CHECKPOINT, "quadratic", 4, 0, 10_000, 0), "maximum|max new tokens"),
        ("/probe", ("hi", EMBEDDED_NAME, "no/such/checkpoint", 4, 5), "checkpoint"),
        ("/lossless", ("hi", "org/unknown-model", CHECKPOINT, 4), "model"),
    ]
    for api, args, message in bad:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name=api)
    # Still serving, with the same answer as before.
    assert comparable("/probe", client.predict(*JOBS[4][1], api_name="/probe"))[0]
    # Each refusal is one line in the server log, never a traceback.
    assert "Traceback" not in log.read_text()


def test_a_checkpoint_trained_after_start_can_be_chosen_by_api_clients(server):
    client, _, runs = server
    trained = fake_checkpoint(runs / "ui-later")  # as the Train tab leaves one
    table, _ = client.predict(PROMPTS["chat"][1], EMBEDDED_NAME, str(trained), 4, api_name="/lossless")
    assert table["data"][0][1] == 0


@pytest.mark.slow
def test_two_races_take_turns_on_the_machine(client):
    args = (PROMPTS["code"][1], EMBEDDED_NAME, CHECKPOINT, 2, 6)
    jobs = [client.submit(*args, api_name="/race") for _ in range(2)]
    results = [job.result(timeout=900) for job in jobs]
    assert all("identical" in result[RACE_VERDICT] for result in results)
    verdicts = [output[RACE_VERDICT] for job in jobs for output in job.outputs()]
    assert any("Waiting for the machine" in verdict for verdict in verdicts), verdicts
