"""python -m mtp bench: τ, tokens/s and speedup vs transformers generate and prompt lookup, per domain."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
from pathlib import Path

from ..__main__ import UsageError
from ..options import OptionError, check_decoding
from . import add_cpu_linear_argument

log = logging.getLogger("mtp.bench")
DEFAULT_K_LIST = (1, 2, 4, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", nargs="+", required=True, metavar="FILE",
                        help="prompt files (.jsonl/.json); the domain comes from a `domain` field or the file name")
    parser.add_argument("--limit", type=int, default=None, help="at most N prompts per domain")
    parser.add_argument("--k-list", default=None, help="comma-separated k values (default 1,2,4,8 up to the checkpoint's k)")
    parser.add_argument("--methods", default="autoregressive,linear,quadratic,prompt_lookup",
                        help="comma-separated: autoregressive, linear, quadratic, prompt_lookup; or none "
                             "(only the `generate` baseline, e.g. with --tau-table)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", default="docs/bench", help="output directory (default docs/bench)")
    parser.add_argument("--model", default=None, help="embedded model name, model directory or Hub id")
    parser.add_argument("--checkpoint", default=None, help="MTP checkpoint directory (default: the shipped one)")
    parser.add_argument("--groups", default=None, metavar="G,G",
                        help="quadratic: mask groups after the first G tokens (capped at k+1; default k+1); "
                             "several: a run for each")
    parser.add_argument("--no-sampler", action="store_true", help="draft with lm_head at the masks, not the sampler")
    parser.add_argument("--tree-budget", default="0", metavar="N,N",
                        help="decoded linear/quadratic runs draft trees of at most N nodes (0: chains, the default); "
                             "several: a run for each")
    parser.add_argument("--tau-trees", default=None, metavar="N,N",
                        help="draft-tree budgets to replay at each k of --k-list: τ table rows and, with "
                             "--cost-curve, candidates for the defaults (implies --tau-table)")
    parser.add_argument("--prompt-lookup-tokens", type=int, default=10,
                        help="drafts per pass of prompt lookup: transformers' prompt_lookup_num_tokens and the "
                             "engine's --lookup (default 10)")
    parser.add_argument("--lookup", choices=("off", "on", "both"), default="off",
                        help="linear/quadratic runs with prompt-lookup drafts (decoding's lookup option): off "
                             "(default), on, or both (each run measured with and without)")
    parser.add_argument("--cost-aware", choices=("off", "on", "both"), default="off",
                        help="linear/quadratic runs that feed mask groups only while they pay (decoding's "
                             "cost_aware option): off (default), on, or both (each run measured with and without)")
    parser.add_argument("--datastore", choices=("off", "on", "both"), default="off",
                        help="linear/quadratic runs with datastore drafts from --datastore-files: off (default), on, "
                             "or both (each run measured with and without)")
    parser.add_argument("--datastore-files", default=None, metavar="FILE[,FILE...]",
                        help="self-distilled data (`mtp distill` output) the --datastore runs draft from")
    parser.add_argument("--only", action="append", default=None, metavar="RUN",
                        help="measure only this run of all the combinations the other options make, named as in the "
                             "report (e.g. 'quadratic k=4 G=1 tree 8 + lookup cost-aware'); repeat for several")
    parser.add_argument("--no-chat-template", action="store_true", help="feed prompts raw, without the chat template")
    parser.add_argument("--tau-table", action="store_true",
                        help="also τ of linear and quadratic at every k up to the checkpoint's, with and without the "
                             "sampler, replayed from one teacher-forced pass over each greedy output (exact for "
                             "greedy decoding; checked against the decoded runs)")
    parser.add_argument("--cost-curve", action="store_true",
                        help="also time forward passes vs input length and predict the fastest setting for this "
                             "device from them and the τ table (implies --tau-table)")
    parser.add_argument("--save-defaults", action="store_true",
                        help="store the fastest MTP setting as this device's default in the checkpoint's "
                             "decoding_defaults.json (what `mtp generate` then uses): predicted with --cost-curve, "
                             "else the fastest decoded linear/quadratic run")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from OUT/partial.jsonl (same options) instead of starting afresh")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    add_cpu_linear_argument(parser)


def _int_list(text: str, name: str, minimum: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"{name} must be comma-separated integers, got '{text}'") from None
    if not values or any(v < minimum for v in values):
        raise UsageError(f"{name} values must be at least {minimum}, got '{text}'")
    if len(set(values)) != len(values):
        raise UsageError(f"{name} repeats a value: '{text}'")
    return tuple(sorted(values))


def _command_line(args: argparse.Namespace) -> str:
    """The run as a reproducible command, every option spelled out."""
    parts = ["python", "-m", "mtp", "bench"]
    for key, value in vars(args).items():
        if key == "command" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from .. import bench  # torch / transformers: imported only once the arguments are read
    from ..config import DEFAULTS_FIELDS, CheckpointError, write_decoding_defaults

    names = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    methods = () if names == ("none",) else names
    unknown = [m for m in methods if m not in bench.METHODS]
    if unknown or not names:
        raise UsageError(f"unknown method(s) {unknown or [args.methods]}: choose from {', '.join(bench.METHODS)}, "
                         "or none")
    if not methods and not (args.tau_table or args.cost_curve or args.tau_trees):
        raise UsageError("--methods none measures nothing but the baseline: add --tau-table (or --cost-curve), "
                         "or name methods")
    k_list = _int_list(args.k_list, "--k-list") if args.k_list is not None else None
    tau_trees = _int_list(args.tau_trees, "--tau-trees") if args.tau_trees is not None else ()
    groups = _int_list(args.groups, "--groups") if args.groups is not None else ()
    tree_budgets = _int_list(args.tree_budget, "--tree-budget", minimum=0)
    try:
        for budget in (*tree_budgets, *tau_trees):
            check_decoding(tree_budget=budget)
    except OptionError as error:
        raise UsageError(f"--tree-budget/--tau-trees: {error}") from None
    if any(tree_budgets) and not {"linear", "quadratic"} & set(methods):
        raise UsageError("--tree-budget applies to the linear and quadratic methods, and --methods has neither")
    for name in ("limit", "max_new_tokens", "prompt_lookup_tokens", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    datastore_files = tuple(path for path in (args.datastore_files or "").split(",") if path)
    if (args.datastore != "off") != bool(datastore_files):
        raise UsageError("--datastore on/both needs --datastore-files FILE[,FILE...], and the files need it")
    missing = [path for path in datastore_files if not Path(path).is_file()]
    if missing:
        raise UsageError(f"--datastore-files: not found: {', '.join(missing)}")
    for flag, value in (("--lookup", args.lookup), ("--cost-aware", args.cost_aware), ("--datastore", args.datastore)):
        if value != "off" and not {"linear", "quadratic"} & set(methods):
            raise UsageError(f"{flag} applies to the linear and quadratic methods, and --methods has neither")
    if args.groups is not None and "quadratic" not in methods:
        raise UsageError("--groups applies to the quadratic method, which is not in --methods")
    if args.save_defaults and not args.cost_curve and not {"linear", "quadratic"} & set(methods):
        raise UsageError("--save-defaults needs --cost-curve (defaults predicted from the cost curve) or decoded "
                         "linear/quadratic runs in --methods (the fastest becomes the defaults)")
    missing = [p for p in args.prompts if not Path(p).is_file()]
    if missing:
        raise UsageError(f"prompt file(s) not found: {', '.join(missing)}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise UsageError(f"checkpoint directory {args.checkpoint} does not exist")
    partial = Path(args.out) / bench.PARTIAL_FILE
    if partial.exists() and not args.resume:
        raise UsageError(f"{partial} holds an unfinished run: pass --resume to continue it, or delete it")

    import torch

    from ..api import chosen_checkpoint, load_datastore, load_mtp
    from ..datastore import DatastoreError
    from ..data import read_prompt_files
    from ..models import EMBEDDED_NAME, ModelSourceError

    try:
        records = read_prompt_files(args.prompts)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if not records:
        raise UsageError(f"no prompts found in {', '.join(args.prompts)}")
    if args.limit is not None:
        records = bench.limit_per_domain(records, args.limit)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    checkpoint = chosen_checkpoint(args.model, args.checkpoint)
    if args.save_defaults and checkpoint is None:
        raise UsageError("--save-defaults needs a checkpoint to save them in: pass --checkpoint DIR")
    try:
        model, tokenizer = load_mtp(args.model, checkpoint, k=max(k_list or DEFAULT_K_LIST),
                                    cpu_linear=args.cpu_linear)
    except (CheckpointError, ModelSourceError) as error:
        raise UsageError(str(error)) from None
    if k_list is None:
        k_list = tuple(sorted({k for k in DEFAULT_K_LIST if k <= model.k} | {model.k}))
    if max(k_list) > model.k:
        raise UsageError(f"--k-list asks for k={max(k_list)} but the checkpoint has k={model.k}")
    settings = bench.Settings(methods=methods, k_list=k_list, max_new_tokens=args.max_new_tokens,
                              groups=groups, use_sampler=not args.no_sampler,
                              prompt_lookup_tokens=args.prompt_lookup_tokens, lookup=args.lookup,
                              chat_template=not args.no_chat_template,
                              tau_table_k=model.k if args.tau_table or args.cost_curve or tau_trees else 0,
                              tree_budgets=tree_budgets, tau_trees=tau_trees, cost_aware=args.cost_aware,
                              datastore=args.datastore, datastore_files=datastore_files)
    if args.only:
        offered = {bench.run_name(run): run for run in bench.runs_of(settings)}
        unknown = [name for name in args.only if name not in offered]
        if unknown:
            raise UsageError(f"--only: no run named {', '.join(map(repr, unknown))}; the options give: "
                             f"{', '.join(map(repr, offered))}")
        kept = {offered[name].method for name in args.only}  # a method none of whose runs is kept is not measured
        settings = dataclasses.replace(settings, only=tuple(args.only),
                                       methods=tuple(m for m in settings.methods if m in kept))
    try:
        load_datastore(model, datastore_files)  # refuse unusable files before measuring anything
    except DatastoreError as error:
        raise UsageError(f"--datastore-files: {error}") from None
    domains = sorted({r.domain for r in records})
    log.info("%d prompts (%s), runs per prompt: %s", len(records), ", ".join(domains),
             ", ".join(bench.run_name(run) for run in bench.runs_of(settings)))
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = bench.benchmark(model, tokenizer, records, settings, model_name=args.model or EMBEDDED_NAME,
                                 checkpoint=None if checkpoint is None else str(checkpoint),
                                 command=_command_line(args), with_cost_curve=args.cost_curve,
                                 partial=partial, resume=args.resume, decoded_defaults=args.save_defaults)
    except bench.PartialMismatch as error:
        raise UsageError(str(error)) from None
    for path in bench.write_outputs(report, args.out):
        log.info("wrote %s", path)
    partial.unlink()  # everything it held is in bench.json now
    bad = report["mismatches"]
    log.info("greedy token identity: %d mismatches", len(bad))
    for m in bad:
        log.warning("mismatch: %s %s first at token %s", m["source"], bench.run_name(bench.run_of(m)),
                    m["first_mismatch_at"])
    if args.save_defaults:
        best = report.get("defaults")
        if best is None:
            log.error("no MTP setting could be priced (no step verified k drafts) or decoded identically to "
                      "`generate`: no defaults saved")
            return 1
        device_type = model.mask_embeddings.device.type
        entry = {name: best[name] for name in DEFAULTS_FIELDS if name in best}
        if "datastore" in entry:  # the checkpoint's entry names its files relative to the checkpoint
            entry["datastore"] = [os.path.relpath(Path(path).resolve(), Path(checkpoint).resolve())
                                  for path in entry["datastore"]]
        path = write_decoding_defaults(checkpoint, device_type, entry)
        log.info("saved the %s defaults (%s k=%d, groups %s, lookup %s, tree %s%s) in %s", device_type, best["method"],
                 best["k"], best["groups"], best["lookup"] or "off", best["tree_budget"] or "off",
                 ", cost-aware" if best["cost_aware"] else "", path)
    return 1 if bad else 0  # results are written either way; a mismatch is a failed identity assertion
