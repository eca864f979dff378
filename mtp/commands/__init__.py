"""Command-line commands; each module has add_arguments(parser) and run(args) -> exit code."""

from __future__ import annotations

import argparse

from ..options import CPU_LINEAR_KERNELS


def add_cpu_linear_argument(parser: argparse.ArgumentParser) -> None:
    """--cpu-linear, shared by generate and bench."""
    parser.add_argument("--cpu-linear", choices=CPU_LINEAR_KERNELS, default=CPU_LINEAR_KERNELS[0],
                        help="how the model's linear layers run on CPU: oneDNN's fp32 matmul (default; cheaper for "
                             "multi-token passes) or torch's default kernel")
