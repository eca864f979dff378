"""The Gradio demo, one module per job (`app.py` at the repository top is its entry point).

    store.py     which (model, checkpoint) pairs the server offers, loaded on demand
    checks.py    input limits and checks, one clear message per user error
    handlers.py  the tabs' event handlers (Future heatmap, Accepted vs rejected, Lossless, Train)
    race.py      the Race tab: lanes timed undisturbed, one race at a time, then replayed at their pace
    speed.py     why MTP is faster: predicted tokens/s against k from the measured cost curve
    training.py  the one training run the server allows at a time
    texts.py     the page's explanations
    layout.py    the page (gr.Blocks) and its wiring
    server.py    command line and launch

UI only: every number shown comes from mtp.probe results, decoding Traces, the bench's cost model or
training log records, turned into figures and tables by mtp.viz.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
