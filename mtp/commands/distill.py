"""python -m mtp distill --prompts FILE [FILE...] --out OUT.jsonl [--limit N] [--per-domain math=900,code=900] ...

The base model's own greedy responses to the prompts (docs/design.md §4: self-distillation). Re-running the
same command skips prompts already in OUT (resumable); malformed prompt lines are reported as
file:line and skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtp.__main__ import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", nargs="+", metavar="FILE",
                        help="prompt files (JSONL with prompt/question/turns/instruction, or a JSON array); "
                             "default: the bundled training prompt sets")
    parser.add_argument("--out", required=True, help="output JSONL (appended to; finished prompts are skipped)")
    parser.add_argument("--limit", type=int, help="at most N prompts (a seeded, deterministic selection)")
    parser.add_argument("--per-domain", metavar="DOMAIN=N,...", help="cap prompts per domain, e.g. math=900,code=900")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-prompt-tokens", type=int, default=512, help="skip longer prompts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt selection order")
    parser.add_argument("--model", help="base model: embedded (default), a directory or a Hub id")
    parser.add_argument("--no-chat-template", action="store_true", help="encode prompts as plain text")


def parse_per_domain(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    caps = {}
    for item in text.split(","):
        name, sep, count = item.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit():
            raise UsageError(f"--per-domain expects DOMAIN=N[,DOMAIN=N...], got {item!r}")
        caps[name.strip()] = int(count)
    return caps


def run(args: argparse.Namespace) -> int:
    from mtp.atomic import writable_problem
    from mtp.data import BUNDLED_TRAIN, distill
    from mtp.models import ModelSourceError

    for name in ("limit", "max_new_tokens", "batch_size", "max_prompt_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    prompts = [Path(p) for p in args.prompts] if args.prompts else BUNDLED_TRAIN
    missing = [str(p) for p in prompts if not p.is_file()]
    if missing:
        raise UsageError(f"prompt file(s) not found: {', '.join(missing)}")
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a directory: give the output JSONL file's path")
    problem = writable_problem(args.out)  # before the model and the prompts load
    if problem:
        raise UsageError(f"cannot write --out {args.out}: {problem}")
    try:
        out = distill(prompts, args.out, model_source=args.model, max_new_tokens=args.max_new_tokens,
                      batch_size=args.batch_size, limit=args.limit, seed=args.seed,
                      per_domain=parse_per_domain(args.per_domain), max_prompt_tokens=args.max_prompt_tokens,
                      chat_template=not args.no_chat_template)
    except (ValueError, ModelSourceError) as error:  # no prompts, a whole file that is not valid JSON, a bad model
        raise UsageError(str(error)) from None
    print(f"distilled data: {out}")
    return 0
