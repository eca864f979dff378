"""Which n-grams should prompt lookup match? Replayed on a bench run's greedy outputs (no decoding).

    python docs/lookup/ngram_choice.py docs/bench/step4619_defaults/bench.json

For each prompt of the run (it needs --tau-table: the masks' match lengths), quadratic decoding is
replayed exactly (mtp.acceptance) with the masks' drafts only, and with prompt-lookup drafts for
several n-gram choices, then priced by the run's cost curve like `bench --cost-curve` does.
"""
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mtp import bench  # noqa: E402
from mtp.acceptance import lookup_matches  # noqa: E402
from mtp.api import load_mtp  # noqa: E402
from mtp.data import read_prompts  # noqa: E402
from mtp.models import encode_prompt  # noqa: E402

CHOICES = {"masks only": None, "3,2,1-gram": (3, 2, 1), "3,2-gram (shipped)": (3, 2), "2-gram": (2,),
           "4,3-gram": (4, 3), "3-gram": (3,)}

report = json.loads(Path(sys.argv[1]).read_text())
settings = bench.Settings(**{**report["settings"], "methods": tuple(report["settings"]["methods"]),
                             "k_list": tuple(report["settings"]["k_list"])})
_, tokenizer = load_mtp()
files = itertools.takewhile(lambda arg: not arg.startswith("--"), report["argv"][report["argv"].index("--prompts") + 1:])
records = {bench._prompt_key(r): r for f in files for r in read_prompts(f)}
prompt_ids = {e["key"]: encode_prompt(tokenizer, records[e["key"]].prompt, settings.chat_template)
              for e in report["prompts"]}
rows = []
for name, ngrams in CHOICES.items():
    entries = [dict(e, lookup_matches=lookup_matches(prompt_ids[e["key"]], e["baseline"]["token_ids"],
                                                     settings.prompt_lookup_tokens, ngrams or (3, 2)))
               for e in report["prompts"]]
    for domain in sorted({e["domain"] for e in entries}) + ["all"]:
        chosen = [e for e in entries if domain in ("all", e["domain"])]
        ranked = bench.predict(chosen, report["cost_curve"], settings)
        best = {(c["method"], c["k"], c["groups"], c["lookup"]): c for c in ranked}
        for k, groups in ((3, 4), (8, 9)):
            c = best[("quadratic", k, groups, settings.prompt_lookup_tokens if ngrams else 0)]
            rows.append((name, domain, k, groups, c["tokens_per_step"], c["predicted_speedup_vs_autoregressive"]))
print("| lookup | domain | k | groups | τ | predicted speedup vs 1-token passes |\n|---|---|---|---|---|---|")
for name, domain, k, groups, tau, speedup in rows:
    print(f"| {name} | {domain} | {k} | {groups} | {tau:.2f} | {speedup:.2f}× |")
