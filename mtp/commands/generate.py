"""python -m mtp generate: one prompt or a prompts file through autoregressive / linear / quadratic decoding.

Text streams to stdout with a one-line summary on stderr; with --json, exactly one JSON object per
prompt goes to stdout (in input order) and everything else to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..__main__ import UsageError
from ..options import METHODS, OptionError, check_decoding, cli_flag, eos_token_ids
from . import add_cpu_linear_argument

log = logging.getLogger("mtp.generate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompts-file", metavar="FILE.jsonl",
                        help="one JSON object per line with a `prompt` field; other fields are passed through")
    parser.add_argument("--model", default=None, help="embedded model name, model directory or Hub id (default: embedded SmolLM2)")
    parser.add_argument("--checkpoint", default=None, help="MTP checkpoint directory (default: the shipped one, if present)")
    parser.add_argument("--method", default=None,
                        help=f"{' | '.join(METHODS)} (default: the checkpoint's measured best for this "
                             "device, else quadratic)")
    parser.add_argument("--k", type=int, default=None,
                        help="masks per step, 1..the checkpoint's k (default: the measured best, else the "
                             "checkpoint's k)")
    parser.add_argument("--groups", type=int, default=None,
                        help="quadratic: mask groups after the first G of the k+1 tokens "
                             "(default: the measured best, else k+1, the paper's layout)")
    parser.add_argument("--lookup", type=int, default=None, metavar="N",
                        help="linear/quadratic: up to N prompt-lookup drafts replace the masks' chain (join their "
                             "tree as one more branch) when the text's last words occurred before; 0 = off "
                             "(default: the measured best, else off)")
    parser.add_argument("--tree-budget", type=int, default=None, metavar="N",
                        help="linear/quadratic: verify a tree of up to N of the masks' candidates per pass instead "
                             "of one chain; 0 = a chain (default: the measured best, else 0)")
    parser.add_argument("--cost-aware", action=argparse.BooleanOptionalAction, default=None,
                        help="linear/quadratic: feed mask groups only while they produce more tokens per second "
                             "than passes without them, measured as it decodes (same output; default: the "
                             "measured best, else off)")
    parser.add_argument("--datastore", default=None, metavar="FILE[,FILE...]|none",
                        help="linear/quadratic: self-distilled data (`mtp distill` output) whose datastore drafts "
                             "what the model wrote after the same few tokens, as one more branch; none = off "
                             "(default: the measured best, else off)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible runs)")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the prompt raw, without the chat template")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt on stdout")
    add_cpu_linear_argument(parser)


def _check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be refused before the model loads (the default method is known only then)."""
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("the prompt is empty")
    try:
        check_decoding(method=args.method, k=args.k, groups=args.groups, lookup=args.lookup,
                       tree_budget=args.tree_budget, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       max_new_tokens=args.max_new_tokens, spell=cli_flag)
    except OptionError as error:
        raise UsageError(str(error)) from None
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise UsageError(f"checkpoint directory {args.checkpoint} does not exist")
    for path in _datastore_files(args) or ():
        if not Path(path).is_file():
            raise UsageError(f"--datastore: {path} is not a file")
    if args.datastore not in (None, "none") and args.method == "autoregressive":
        raise UsageError("--datastore needs a drafting method (linear or quadratic), not autoregressive")


def _datastore_files(args: argparse.Namespace) -> list[str] | None:
    """--datastore as files ([] for none, None when not given)."""
    if args.datastore is None:
        return None
    return [] if args.datastore == "none" else [path for path in args.datastore.split(",") if path]


def _read_prompts(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(prompt, passthrough fields) in input order."""
    if args.prompt is not None:
        return [(args.prompt, {})]
    try:  # refuse a missing or unreadable file before the slow imports
        Path(args.prompts_file).open("rb").close()
    except OSError as error:
        raise UsageError(f"cannot read prompts file {args.prompts_file}: {error.strerror or error}") from None
    from ..data import read_prompts
    try:
        records = read_prompts(args.prompts_file)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"cannot read prompts file {args.prompts_file}: {error}") from None
    if not records:
        raise UsageError(f"prompts file {args.prompts_file} holds no prompts (one JSON object with a `prompt` field per line)")
    return [(r.prompt, {key: value for key, value in r.fields.items() if key != "prompt"}) for r in records]


class _Streamer:
    """Writes decoded text as chunks arrive; holds back an incomplete multi-byte character."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.tokens, self.shown = tokenizer, [], 0

    def __call__(self, chunk: list[int]) -> None:
        self.tokens += chunk
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[self.shown:])
        sys.stdout.flush()
        self.shown = len(text)

    def finish(self, text: str) -> None:
        sys.stdout.write(text[self.shown:] + "\n")
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    prompts = _read_prompts(args)
    # torch / transformers: imported only once the arguments are read
    from ..api import EXPLICIT, chosen_checkpoint, decoding_settings, load_datastore, load_mtp
    from ..config import CheckpointError
    from ..datastore import DatastoreError
    from ..decoding import generate
    from ..models import ModelSourceError, encode_prompt

    checkpoint = chosen_checkpoint(args.model, args.checkpoint)
    try:
        model, tokenizer = load_mtp(args.model, checkpoint, k=args.k or 8, cpu_linear=args.cpu_linear)
        method, k, groups, lookup, tree_budget, cost_aware, source, files = decoding_settings(
            model, checkpoint, args.method, args.k, args.groups, args.lookup, args.tree_budget, args.cost_aware,
            _datastore_files(args))
    except (CheckpointError, ModelSourceError) as error:
        raise UsageError(str(error)) from None
    try:
        datastore = None if method == "autoregressive" else load_datastore(model, files, args.datastore is not None)
    except DatastoreError as error:
        raise UsageError(f"--datastore: {error}") from None
    if checkpoint is None:
        log.warning("no checkpoint: a fresh, untrained adapter drafts (output stays exact, drafts are poor)")
    try:  # the settings as completed from the checkpoint's measured defaults
        check_decoding(method=method, k=k, max_k=model.k, groups=groups, lookup=lookup, tree_budget=tree_budget,
                       spell=cli_flag)
    except OptionError as error:
        raise UsageError(f"{error} (the checkpoint's k is {model.k}; settings: {source})") from None
    window = getattr(model.base.config, "max_position_embeddings", None)
    encoded = [encode_prompt(tokenizer, text, chat_template=not args.no_chat_template) for text, _ in prompts]
    for ids, (text, _) in zip(encoded, prompts):
        if not ids:
            raise UsageError("the prompt is empty after tokenization")
        if window and len(ids) >= window:
            raise UsageError(f"the prompt has {len(ids)} tokens, more than the model's context window of {window}"
                             + (f": '{text[:40]}...'" if len(prompts) > 1 else ""))
    eos_ids = eos_token_ids(tokenizer, model.base.generation_config)

    for ids, (_, passthrough) in zip(encoded, prompts):
        max_new = args.max_new_tokens if not window else min(args.max_new_tokens, window - len(ids))
        streamer = None if args.json else _Streamer(tokenizer)
        trace = generate(model, ids, method=method, k=k, max_new_tokens=max_new,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                         eos_token_ids=eos_ids, tokenizer=tokenizer, groups=groups, on_chunk=streamer,
                         lookup=lookup, tree_budget=tree_budget, cost_aware=cost_aware, datastore=datastore)
        metrics = trace.metrics()
        if args.json:
            record = {**passthrough, "text": trace.text, "token_ids": trace.token_ids, **metrics,
                      "prompt_tokens": len(ids), "temperature": args.temperature, "defaults_source": source}
            if method == "quadratic":
                record["groups"] = groups or k + 1
            if method != "autoregressive":
                record["lookup"], record["tree_budget"] = lookup, tree_budget
                record["cost_aware"] = cost_aware
                record["datastore"] = datastore.source if datastore is not None else None
            print(json.dumps(record), flush=True)
        else:
            streamer.finish(trace.text)
            print(f"{method} k={trace.k}{'' if groups is None else f' groups={groups}'}"
                  f"{f' lookup={lookup}' if lookup else ''}{f' tree={tree_budget}' if tree_budget else ''}"
                  f"{' cost-aware' if cost_aware and method != 'autoregressive' else ''}"
                  f"{' + datastore' if datastore is not None else ''}: "
                  f"{trace.new_tokens} tokens "
                  f"in {trace.forward_passes} passes (τ {trace.tokens_per_step:.2f}, draft acceptance "
                  f"{trace.draft_acceptance_rate:.2f}), {trace.seconds:.2f} s, {trace.tokens_per_second:.1f} tokens/s, "
                  f"stop: {trace.stop_reason}" + ("" if source == EXPLICIT else f"; defaults: {source}"),
                  file=sys.stderr)
    return 0
