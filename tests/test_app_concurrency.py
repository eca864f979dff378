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
from tests.app_helpers import ROOT, free_port, start_app, stop_app

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


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    port = free_port()
    proc = start_app(port, ["--concurrency", "4", "--runs-dir", str(tmp_path_factory.mktemp("runs"))])
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        stop_app(proc)


def comparable(api: str, result: tuple):
    """What must not depend on other requests: tokens, accept counts, HTML, ranks, deltas (not timings)."""
    if api == "/generate":
        trace = json.loads(result[5])["trace"]
        return result[0], trace["token_ids"], [(s["drafts"], s["accepted"], s["bonus"]) for s in trace["steps"]]
    if api == "/probe":
        return result[1]["data"], result[2]
    return result[0]["data"], result[1]


def test_simultaneous_requests_match_sequential(client):
    sequential = [comparable(api, client.predict(*args, api_name=api)) for api, args in JOBS]
    jobs = [client.submit(*args, api_name=api) for api, args in JOBS]
    simultaneous = [comparable(api, job.result(timeout=900)) for (api, _), job in zip(JOBS, jobs)]
    for (api, args), one, other in zip(JOBS, sequential, simultaneous):
        assert one == other, f"{api} {args[0][:30]!r} differs when run alongside the others"
    assert len(sequential[0][1]) == 16 and len(sequential[2][1]) == 16
    assert sequential[0][1] != sequential[2][1]  # really different requests
    assert sequential[3][0][0][1] == 0  # the gated LoRA leaves real tokens exact even under load


def test_bad_input_is_refused_and_server_survives(client):
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
