"""python -m mtp train --config FILE.yaml [--resume | --init-from DIR] [--set key=value ...]

Several processes: `accelerate launch --multi_gpu --num_processes N -m mtp train --config FILE.yaml`
(DDP on GPUs; without GPUs the same launch runs as multi-CPU over gloo).
Ctrl-C or SIGTERM ends the run after the current step, with a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal

import yaml

from mtp.__main__ import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config (YAML); see configs/")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in the config's out dir exactly")
    start.add_argument("--init-from", metavar="DIR", help="start from a checkpoint's adapter weights (fresh optimizer)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config key (value parsed as YAML), e.g. --set steps=50 --set out=runs/x")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--benchmark-steps", type=int, metavar="N",
                        help="instead of training: time N steps of each layout (full, prefix_cache) on the "
                             "same data and print supervised mask tokens/s; writes nothing")


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise UsageError(f"--set {item!r}: value is not valid YAML ({error})") from error
    return overrides


def run(args: argparse.Namespace) -> int:
    from mtp.train import TrainConfig, TrainError, train

    try:
        config = TrainConfig.from_yaml(args.config, parse_overrides(args.set))
    except TrainError as error:
        raise UsageError(str(error)) from error
    if args.benchmark_steps is not None:
        return run_benchmark(config, args.benchmark_steps)
    stop_requested = []

    def request_stop(signum, frame):
        if stop_requested:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        stop_requested.append(signum)
        print("\nstopping after this step (a checkpoint will be saved); signal again to abort", flush=True)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        out = train(config, should_stop=lambda: bool(stop_requested), resume=args.resume,
                    init_from=args.init_from, progress=not args.no_progress)
    except TrainError as error:
        raise UsageError(str(error)) from error
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process of a distributed launch
        print(f"checkpoint: {out}")
    return 0


def run_benchmark(config, steps: int) -> int:
    from mtp.train import TrainError, benchmark

    if steps < 1:
        raise UsageError(f"--benchmark-steps must be at least 1, got {steps}")
    try:
        results = benchmark(config, steps)
    except TrainError as error:
        raise UsageError(str(error)) from error
    print(f"| layout | s/step | supervised masks/step | supervised mask tokens/s | tokens/s (real + mask) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['seconds_per_step']} | {r['supervised_masks_per_step']:.0f} | "
              f"{r['mask_tokens_per_s']} | {r['tokens_per_s']} |")
    return 0
