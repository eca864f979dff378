"""Input limits and checks of the demo, and how a failure reaches the page and the server log.

The engine checks its arguments again (mtp.options, ValueError); here each bad input gets one clear
message in the page and one line in the log, and no request can take the server down.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Callable

import gradio as gr
import torch

from ..config import CheckpointError
from ..models import ModelSourceError, encode_prompt
from ..options import check_decoding

log = logging.getLogger("mtp.app")

MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 512
MAX_NEW_TOKENS = 256
MAX_TOP_N = 10
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**31 - 1
MAX_TREE_NODES = 64  # draft-tree nodes per pass the Accepted vs rejected tab offers (EAGLE-2 uses 60)
LOOKUP_DRAFTS = 10  # prompt-lookup drafts per pass when the visitor mixes them in and nothing was measured
USER_ERRORS = (ValueError, CheckpointError, ModelSourceError)  # OptionError is a ValueError


def check_prompt(tokenizer, prompt: str | None) -> list[int]:
    """The prompt's token ids (chat template applied; the text verbatim, as `mtp generate` takes it), or a
    message saying what is wrong with it."""
    prompt = prompt or ""
    if not prompt.strip():
        raise gr.Error("Type a prompt first (or click one of the examples).")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt has {len(prompt)} characters; this demo accepts up to {MAX_PROMPT_CHARS}.")
    ids = encode_prompt(tokenizer, prompt)
    if len(ids) > MAX_PROMPT_TOKENS:
        raise gr.Error(f"The prompt is {len(ids)} tokens long; this demo accepts up to {MAX_PROMPT_TOKENS}.")
    return ids


def check_int(value, name: str, low: int, high: int) -> int:
    """A whole number in low..high from a slider or an API client (which may send 4.0 or "4")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value}")
    return int(number)


def check_temperature(value) -> float:
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"temperature must be a number, got {value!r}") from None
    check_decoding(temperature=temperature)
    if temperature > MAX_TEMPERATURE:
        raise gr.Error(f"temperature must be between 0 and {MAX_TEMPERATURE}, got {value}")
    return temperature


def ui_error(error: Exception) -> gr.Error:
    """One clear message in the page for any failure: user errors are logged as one line,
    unexpected ones in full."""
    if isinstance(error, gr.Error):
        log.info("refused: %s", error.message)
        error.print_exception = False  # Gradio would print a traceback for it otherwise
        return error
    if isinstance(error, USER_ERRORS):
        log.info("refused: %s", error)
        return gr.Error(str(error), print_exception=False)
    if isinstance(error, torch.OutOfMemoryError):
        log.warning("out of memory: %s", error)
        return gr.Error("out of memory: try a shorter prompt, fewer new tokens or a smaller k")
    log.error("request failed", exc_info=error)
    return gr.Error(f"internal error ({type(error).__name__}): {error}")


def quiet_refusals(page: gr.Blocks) -> None:
    """Make Gradio's own refusals of a value (out of a slider's range, not among a dropdown's choices,
    sent by an API client) one log line like ours, not a traceback."""
    for block in page.blocks.values():
        if isinstance(block, gr.components.Component):
            block.preprocess = _quiet(block.preprocess)


def _quiet(preprocess: Callable) -> Callable:
    @functools.wraps(preprocess)
    def wrapper(payload):
        try:
            return preprocess(payload)
        except gr.Error as error:
            raise ui_error(error) from None
    return wrapper


def friendly(function: Callable) -> Callable:
    """Wrap an event handler (plain or generator) so every failure becomes one message in the page."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                raise ui_error(error) from None
    else:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as error:
                raise ui_error(error) from None
    return wrapper
