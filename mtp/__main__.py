"""CLI: python -m mtp {generate,distill,train,bench} ... (each command lives in mtp/commands/)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .options import OptionError

COMMANDS = {
    "generate": "generate text with autoregressive / linear / quadratic decoding",
    "distill": "self-distil training data: the base model's own greedy responses",
    "train": "train an MTP adapter (accelerate: one CPU up to many GPUs)",
    "bench": "benchmark tokens per step and speed against transformers generate",
}


class UsageError(Exception):
    """Bad input from the command line: reported as one message, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m mtp", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    # Import only the chosen command: torch/transformers imports are slow.
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(f"mtp.commands.{name}").add_arguments(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(importlib.import_module(f"mtp.commands.{args.command}").run(args) or 0)
    except (UsageError, OptionError) as error:  # an option the engine refuses is bad input too
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Under `python -m mtp` this file runs as module "__main__", while commands import
    # "mtp.__main__": dispatch through the latter so both share one UsageError class.
    from mtp.__main__ import main as _main
    sys.exit(_main())
