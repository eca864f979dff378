"""What the measurements add up to: per domain and over all prompts, τ, tokens/s and speedups of each
run (ratios of sums over a domain's prompts: τ = Σ new tokens ÷ Σ forward passes, tokens/s =
Σ new tokens ÷ Σ seconds, speedup = tokens/s ÷ baseline tokens/s), the greedy identity mismatches,
and the τ tables replayed from each prompt's teacher-forced draft matches (mtp.acceptance)."""

from __future__ import annotations

from .. import acceptance
from ..options import DRAFTING_METHODS
from .runs import BASELINE, Settings, run_name, run_of, runs_of, tree_configs


def _offset_acceptance(runs: list[dict], k: int) -> list[float]:
    """Per offset i: accepted ≥ i ÷ proposed ≥ i over all steps of these runs (trace convention)."""
    rates = []
    for offset in range(1, k + 1):
        pairs = [(a, p) for run in runs for a, p in zip(run["accept_counts"], run["proposed_counts"]) if p >= offset]
        rates.append(sum(a >= offset for a, _ in pairs) / len(pairs) if pairs else 0.0)
    return rates


def _aggregate(runs: list[dict]) -> dict:
    tokens = sum(run["new_tokens"] for run in runs)
    steps = sum(run["steps"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    return {"prompts": len(runs), "new_tokens": tokens, "steps": steps, "seconds": seconds,
            "tokens_per_step": tokens / steps if steps else 0.0,
            "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}


def summarize(results: list[dict], settings: Settings) -> dict:
    """Per domain and over all prompts ("all"): baseline and each run's τ, tokens/s and speedups."""
    domains = list(dict.fromkeys(entry["domain"] for entry in results)) + ["all"]
    summary = {}
    for domain in domains:
        entries = [e for e in results if domain in ("all", e["domain"])]
        baseline = _aggregate([e["baseline"] for e in entries])
        block = {BASELINE: baseline, "runs": {}}
        lookup = None
        for name in runs_of(settings):
            runs = [run for e in entries for run in e["runs"] if run_of(run) == name]
            stats = _aggregate(runs)
            stats.update(method=name.method, k=name.k, lookup=name.lookup, cost_aware=name.cost_aware,
                         datastore=name.datastore,
                         mismatches=sum(run["mismatch_at"] is not None for run in runs))
            stats["speedup_vs_generate"] = stats["tokens_per_second"] / baseline["tokens_per_second"]
            if name.k is not None:
                stats["per_offset_acceptance"] = _offset_acceptance(runs, name.k)
            if name.method == "prompt_lookup":
                lookup = stats
            block["runs"][run_name(name)] = stats
        for stats in block["runs"].values():
            stats["speedup_vs_prompt_lookup"] = (
                stats["tokens_per_second"] / lookup["tokens_per_second"] if lookup else None)
        if settings.tau_table_k:
            block["tau_table"] = tau_table(entries, settings)
        summary[domain] = block
    return summary


def _replayed(entries: list[dict], drafter: str, method: str, k: int, groups: int | None = None) -> float:
    # A prompt that generated nothing has no draft matches: its one pass is the prefill.
    return acceptance.tokens_per_step([e.get("draft_matches", {}).get(drafter, []) for e in entries],
                                      [e["baseline"]["new_tokens"] for e in entries], method, k, groups,
                                      leftover=[leftover_of(e, drafter) for e in entries])


def leftover_of(entry: dict, drafter: str) -> list | None:
    """The entry's leftover-mask matches of `drafter` (None in results measured before they existed)."""
    return entry.get("draft_matches", {}).get(acceptance.leftover_key(drafter))


def tau_table(entries: list[dict], settings: Settings) -> dict:
    """{drafter: {method: [τ at k = 1..tau_table_k]}} replayed from the teacher-forced match lengths,
    {"tree B": {method: {k: τ}}} for the draft trees (groups k+1, as the paper's chain layout), and,
    per decoded linear/quadratic run, on how many prompts the replay gives its exact pass count."""
    table = {drafter: {method: [_replayed(entries, drafter, method, k) for k in range(1, settings.tau_table_k + 1)]
                       for method in DRAFTING_METHODS}
             for drafter in acceptance.DRAFTERS}
    budgets = sorted({budget for _, budget in tree_configs(settings)})
    trees = {f"tree {budget}": {method: {str(k): _replayed(entries, acceptance.tree_key(k, budget), method, k)
                                         for k in settings.k_list}
                                for method in DRAFTING_METHODS}
             for budget in budgets}
    # Quadratic trees by mask groups: the draft after a pass exists only if the accepted path ended at a
    # node with a group, so τ grows with G (up to a group after every node) while the pass grows by k per group.
    tree_groups = {f"tree {budget}": {str(k): {str(g): _replayed(entries, acceptance.tree_key(k, budget), "quadratic", k, g)
                                               for g in tree_group_sweep(k, budget)}
                                      for k in settings.k_list}
                   for budget in budgets}
    chain_drafter = acceptance.DRAFTERS[0] if settings.use_sampler else acceptance.DRAFTERS[1]
    agreement = {}
    for name in runs_of(settings):
        if name.method not in DRAFTING_METHODS or name.cost_aware or name.datastore:
            continue  # cost-aware runs depend on timing, and the replay has no datastore drafts
        drafter, grafted = acceptance.replayed_drafter(chain_drafter, name.k, name.tree_budget,
                                                       settings.prompt_lookup_tokens if name.lookup else 0)
        # One prompt's replayed τ equals its decoded τ exactly when the pass counts are equal.
        pairs = [(run["steps"], len(acceptance.replay(e.get("draft_matches", {}).get(drafter, []), name.method, name.k,
                                                      e["baseline"]["new_tokens"], name.groups,
                                                      e.get("lookup_matches") if name.lookup else None,
                                                      leftover_of(e, drafter), grafted)))
                 for e in entries for run in e["runs"] if run_of(run) == name and drafter in e.get("draft_matches", {})]
        agreement[run_name(name)] = {"prompts": len(pairs), "same_passes": sum(a == b for a, b in pairs)}
    return {"tau": table, "trees": trees, "tree_groups": tree_groups, "replay_agreement": agreement}


def tree_group_sweep(k: int, budget: int) -> list[int]:
    """Mask-group counts the τ table replays for a quadratic tree: 1, 2, 4, k+1 (the paper's chain
    layout's count), 2(k+1), 4(k+1) and one after every node (budget+1, t_0 included)."""
    return sorted({g for g in (1, 2, 4, k + 1, 2 * (k + 1), 4 * (k + 1)) if g <= budget} | {budget + 1})


def mismatches(results: list[dict]) -> list[dict]:
    """Every decoded run whose greedy output differs from the baseline's, with where it first does."""
    return [{"domain": e["domain"], "source": e["source"], "method": run["method"], "k": run["k"],
             "lookup": run.get("lookup", False), "first_mismatch_at": run["mismatch_at"]}
            for e in results for run in e["runs"] if run["mismatch_at"] is not None]

