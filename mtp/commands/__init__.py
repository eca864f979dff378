"""Command-line commands; each module has add_arguments(parser) and run(args) -> exit code."""

from __future__ import annotations

import argparse


def add_cpu_linear_argument(parser: argparse.ArgumentParser) -> None:
    """--cpu-linear, shared by generate and bench. The choices are models.CPU_LINEAR_KERNELS, spelled
    out because importing mtp.models (torch) here would slow every command's argument parsing."""
    parser.add_argument("--cpu-linear", choices=("onednn", "torch"), default="onednn",
                        help="how the model's linear layers run on CPU: oneDNN's fp32 matmul (default; cheaper for "
                             "multi-token passes) or torch's default kernel")
