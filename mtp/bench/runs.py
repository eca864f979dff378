"""What the bench measures: its settings, the runs (method, k, lookup, tree) decoded per prompt, and
which prompts of each domain are kept. Every other bench module speaks in these terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..data import PromptRecord

METHODS = ("autoregressive", "linear", "quadratic", "prompt_lookup")
BASELINE = "generate"
LOOKUP_RUNS = {"off": (False,), "on": (True,), "both": (False, True)}  # Settings.lookup / cost_aware / datastore -> Run values


@dataclass
class Settings:
    """What one benchmark measures (python -m mtp bench's options)."""

    methods: tuple[str, ...] = METHODS
    k_list: tuple[int, ...] = (1, 2, 4, 8)
    max_new_tokens: int = 128
    groups: tuple[int, ...] = ()  # quadratic mask-group counts, each a run, capped at k+1 (none: k+1, the paper's)
    use_sampler: bool = True
    prompt_lookup_tokens: int = 10  # drafts per pass of prompt lookup: transformers' and the engine's
    lookup: str = "off"  # linear/quadratic runs with prompt-lookup drafts: off, on, or both (each run twice)
    chat_template: bool = True
    # τ of linear/quadratic at k = 1..tau_table_k (0: no table), with and without the sampler,
    # replayed from one teacher-forced pass over each greedy output (mtp.acceptance).
    tau_table_k: int = 0
    tree_budgets: tuple[int, ...] = (0,)  # decoded linear/quadratic runs, one per tree budget (0: chains)
    # Draft-tree budgets replayed too: τ table rows at each k of k_list, and autotuning candidates.
    tau_trees: tuple[int, ...] = ()
    cost_aware: str = "off"  # linear/quadratic runs with decoding's cost_aware option: off, on, or both
    datastore: str = "off"  # linear/quadratic runs with datastore drafts: off, on, or both
    datastore_files: tuple[str, ...] = ()  # the self-distilled data they draft from (api.load_datastore)
    # Of all those combinations, only the runs with these names (run_name); empty: all of them.
    only: tuple[str, ...] = ()


class Run(NamedTuple):
    """One measured way of decoding."""

    method: str
    k: int | None = None  # None where it does not apply
    lookup: bool = False  # linear/quadratic with prompt-lookup drafts (decoding's lookup option)
    tree_budget: int = 0  # linear/quadratic drafting trees of this many nodes (0: chains)
    groups: int | None = None  # quadratic mask groups (None: k+1, the paper's layout)
    cost_aware: bool = False  # mask groups only while they pay (decoding's cost_aware option)
    datastore: bool = False  # with datastore drafts (decoding's datastore option)


def runs_of(settings: Settings) -> list[Run]:
    """The runs measured per prompt."""
    runs = []
    for method in settings.methods:
        if method in ("autoregressive", "prompt_lookup"):
            runs.append(Run(method))
        else:
            runs.extend(Run(method, k, lookup, budget, groups, aware, store)
                        for k in settings.k_list for groups in groups_of(settings, method, k)
                        for budget in settings.tree_budgets for lookup in LOOKUP_RUNS[settings.lookup]
                        for aware in LOOKUP_RUNS[settings.cost_aware] for store in LOOKUP_RUNS[settings.datastore])
    return [run for run in runs if run_name(run) in settings.only] if settings.only else runs


def run_of(result: dict) -> Run:
    """The Run a measured result belongs to (results written before lookup existed have none)."""
    return Run(result["method"], result["k"], result.get("lookup", False), result.get("tree_budget", 0),
               result.get("groups"), result.get("cost_aware", False), result.get("datastore", False))


def run_name(run: Run) -> str:
    """The run's label in the report, e.g. `quadratic k=4 G=1 tree 6 + lookup`."""
    return (run.method + ("" if run.k is None else f" k={run.k}") + ("" if run.groups is None else f" G={run.groups}")
            + (f" tree {run.tree_budget}" if run.tree_budget else "") + (" + lookup" if run.lookup else "")
            + (" + datastore" if run.datastore else "") + (" cost-aware" if run.cost_aware else ""))


def tree_configs(settings: Settings) -> list[tuple[int, int]]:
    """(k, budget) of every draft tree replayed from the teacher-forced pass: --tau-trees' budgets and
    those of the decoded runs (so each decoded tree run is checked against its replay)."""
    budgets = sorted(set(settings.tau_trees) | {b for b in settings.tree_budgets if b})
    return [(k, budget) for budget in budgets for k in settings.k_list]


def limit_per_domain(records: list[PromptRecord], limit: int) -> list[PromptRecord]:
    """The first `limit` prompts of each domain, in file order."""
    seen: dict[str, int] = {}
    kept = []
    for record in records:
        seen[record.domain] = seen.get(record.domain, 0) + 1
        if seen[record.domain] <= limit:
            kept.append(record)
    return kept


def groups_of(settings: Settings, method: str, k: int) -> list[int | None]:
    """The quadratic group counts measured at this k (None: k+1, the paper's layout)."""
    if method != "quadratic" or not settings.groups:
        return [None]
    return sorted({min(groups, k + 1) for groups in settings.groups})

