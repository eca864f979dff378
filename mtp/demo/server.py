"""The demo's command line: load the default model in the background, build the page, launch."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

import gradio as gr

from ..api import default_checkpoint
from ..models import EMBEDDED_NAME
from .handlers import Demo
from .layout import build
from .store import DEVICE, FRESH, RUNS, ModelStore, checkpoint_label

log = logging.getLogger("mtp.app")


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--model", action="append", default=[],
                        help="extra model to offer (local directory or Hub id); the embedded one is always there")
    parser.add_argument("--checkpoint", help="checkpoint directory to select at start")
    parser.add_argument("--concurrency", type=int, default=2, help="requests served at once (the rest queue)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="where the Train tab writes data and checkpoints")
    return parser


def main(description: str = __doc__) -> None:
    parser = argument_parser(description)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    extra = [str(Path(args.checkpoint).resolve())] if args.checkpoint else []
    store = ModelStore(DEVICE)
    demo_state = Demo(store, [EMBEDDED_NAME, *args.model], extra, args.runs_dir.resolve())
    shipped = default_checkpoint()
    start_checkpoint = checkpoint_label(shipped) if shipped else FRESH
    if args.checkpoint:
        start_checkpoint = checkpoint_label(Path(extra[0]))
        if start_checkpoint not in demo_state.checkpoints(EMBEDDED_NAME):
            parser.error(f"{args.checkpoint} is not an mtp checkpoint for {EMBEDDED_NAME}")

    def warm() -> None:  # load the default model once, in the background; the page shows progress
        try:
            store.get(EMBEDDED_NAME, start_checkpoint)
        except Exception:
            log.exception("could not load the default model")

    threading.Thread(target=warm, daemon=True, name="warm").start()
    page = build(demo_state, EMBEDDED_NAME, start_checkpoint)
    page.queue(default_concurrency_limit=args.concurrency, max_size=64)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    page.launch(server_name=args.host, server_port=args.port, theme=theme, ssr_mode=False, show_error=True,
                footer_links=["api"])
