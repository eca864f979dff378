"""The benchmark end to end on a tiny random model: outputs, identity check, cost model, bad input."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import randomize_lora, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mtp import acceptance, adapter, bench, decoding
from mtp.bench import measure
from mtp.__main__ import main
from mtp.config import DEFAULTS_FIELDS, read_decoding_defaults

WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(125)]  # 128 = the tiny vocabulary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Llama + word-level tokenizer, a k=4 checkpoint with random LoRA, three prompt files."""
    root = tmp_path_factory.mktemp("bench")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    base = tiny_model("llama")
    base.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    model = adapter.create(base, adapter.identity_of(base, "tiny"), k=4)
    randomize_lora(model)
    model.save(root / "ckpt")
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(125)}" for _ in range(n))
    # Repeated words give prompt lookup something to find.
    (root / "gsm8k.jsonl").write_text("".join(json.dumps({"turns": [words(10) * 2]}) + "\n" for _ in range(3)))
    (root / "humaneval.jsonl").write_text("".join(json.dumps({"turns": [words(12)]}) + "\n" for _ in range(2)))
    (root / "mixed.jsonl").write_text(json.dumps({"prompt": words(8), "domain": "chat"}) + "\n")
    return root


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def bench_args(root, out, *extra: str) -> list[str]:
    return ["bench", "--prompts", str(root / "gsm8k.jsonl"), str(root / "humaneval.jsonl"), str(root / "mixed.jsonl"),
            "--model", str(root / "model"), "--checkpoint", str(root / "ckpt"), "--out", str(out),
            "--threads", "1", *extra]


def test_bench_end_to_end(tiny, tmp_path):
    out = tmp_path / "out"
    checkpoint = shutil.copytree(tiny / "ckpt", tmp_path / "ckpt")  # --save-defaults writes into it
    rc = main(bench_args(tiny, out, "--limit", "2", "--k-list", "1,2,4", "--max-new-tokens", "12", "--cost-curve",
                         "--checkpoint", str(checkpoint), "--save-defaults"))
    assert rc == 0
    for name in ("bench.json", "results.md", "tau_vs_k.html", "speedup.html", "cost_curve.html", "defaults.json"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "bench.json").read_text())
    assert {"command", "argv", "created", "machine", "model", "settings", "prompts", "summary", "mismatches",
            "cost_curve", "predictions", "defaults"} <= set(report)
    assert report["command"].startswith("python -m mtp bench --prompts ") and "--limit 2" in report["command"]
    assert report["machine"]["torch_threads"] == 1 and report["model"]["k"] == 4
    assert report["machine"]["cpu_linear"] == "onednn"  # load_model's CPU default
    # --limit 2 per domain: 2 math + 2 code + 1 chat (domain field), in file order.
    assert [e["domain"] for e in report["prompts"]] == ["math", "math", "code", "code", "chat"]
    assert [e["source"] for e in report["prompts"]][:2] == ["gsm8k.jsonl:1", "gsm8k.jsonl:2"]
    assert report["mismatches"] == []
    for entry in report["prompts"]:
        baseline = entry["baseline"]
        assert 1 <= baseline["new_tokens"] <= 12 and baseline["steps"] == baseline["new_tokens"]  # generate: τ = 1
        assert len(entry["runs"]) == 8  # autoregressive, linear ×3, quadratic ×3, prompt_lookup
        for run in entry["runs"]:
            assert run["mismatch_at"] is None and run["new_tokens"] == baseline["new_tokens"]
            assert 1 <= run["new_tokens"] / run["steps"] <= (run["k"] or 10) + 1
    summary = report["summary"]
    assert list(summary) == ["math", "code", "chat", "all"]
    everything = summary["all"]
    assert everything["generate"]["prompts"] == 5
    assert everything["runs"]["autoregressive"]["tokens_per_step"] == 1.0
    for name, stats in everything["runs"].items():
        assert stats["speedup_vs_generate"] == pytest.approx(
            stats["tokens_per_second"] / everything["generate"]["tokens_per_second"])
        assert stats["mismatches"] == 0
    quad = everything["runs"]["quadratic k=4"]
    assert len(quad["per_offset_acceptance"]) == 4 and all(0 <= r <= 1 for r in quad["per_offset_acceptance"])
    assert quad["tokens_per_step"] == pytest.approx(quad["new_tokens"] / quad["steps"])
    curve = report["cost_curve"]
    assert set(curve["step_seconds"]) == {"1", "2", "3", "4"}  # every k of the τ table --cost-curve implies
    assert all("draft_matches" in e for e in report["prompts"])
    assert curve["step_seconds"]["4"]["quadratic g=5"]["input_length"] == 25  # (k+1)^2
    assert curve["step_seconds"]["4"]["linear"]["input_length"] == 9  # 2k+1
    assert all(s > 0 for s in curve["backbone_seconds"].values())
    defaults = json.loads((out / "defaults.json").read_text())
    assert defaults == report["defaults"]
    assert report["predictions"][0]["predicted_tokens_per_second"] == max(
        c["predicted_tokens_per_second"] for c in report["predictions"])
    # The default is the fastest MTP setting, whether or not it beats autoregressive.
    mtp_ranked = [c for c in report["predictions"] if c["method"] != "autoregressive"]
    assert (defaults["method"], defaults["k"], defaults["groups"]) == (
        mtp_ranked[0]["method"], mtp_ranked[0]["k"], mtp_ranked[0]["groups"])
    assert read_decoding_defaults(checkpoint, "cpu") == {name: defaults[name] for name in DEFAULTS_FIELDS
                                                         if name in defaults}
    assert "--save-defaults" in defaults["command"] and defaults["cpu_linear"] == "onednn"
    markdown = (out / "results.md").read_text()
    assert "1 threads, device cpu, CPU linear kernel onednn)" in markdown
    assert "0 mismatches" in markdown and "| domain | k=1 | k=2 | k=4 |" in markdown
    assert "| quadratic k=4 |" in markdown and "Cost curve" in markdown
    assert "than plain decoding on this device" in markdown
    assert "plotly" in (out / "tau_vs_k.html").read_text()


def test_broken_method_is_reported(tiny, tmp_path, monkeypatch, caplog):
    real = decoding.generate

    def broken(model, prompt_ids, **kwargs):
        trace = real(model, prompt_ids, **kwargs)
        if kwargs["method"] == "linear" and len(trace.token_ids) > 2:
            trace.token_ids[2] = (trace.token_ids[2] + 1) % 128
        return trace
    monkeypatch.setattr(decoding, "generate", broken)
    out = tmp_path / "out"
    rc = main(bench_args(tiny, out, "--limit", "1", "--k-list", "1,2", "--methods", "linear,quadratic",
                         "--max-new-tokens", "8"))
    assert rc == 1
    report = json.loads((out / "bench.json").read_text())
    lengths = [e["baseline"]["new_tokens"] for e in report["prompts"]]
    expected = 2 * sum(n > 2 for n in lengths)  # every linear run long enough to be broken, k = 1 and 2
    assert expected > 0
    assert len(report["mismatches"]) == expected
    assert {(m["method"], m["first_mismatch_at"]) for m in report["mismatches"]} == {("linear", 2)}
    assert report["summary"]["all"]["runs"]["quadratic k=2"]["mismatches"] == 0
    assert report["summary"]["all"]["runs"]["linear k=1"]["mismatches"] == expected // 2
    assert f"**{expected} of {2 * 2 * len(lengths)} runs differ" in (out / "results.md").read_text()
    assert "mismatch: gsm8k.jsonl:1 linear k=1 first at token 2" in caplog.text


def test_first_mismatch():
    assert bench.first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert bench.first_mismatch([1, 5, 3], [1, 2, 3]) == 1
    assert bench.first_mismatch([1, 2], [1, 2, 3]) == 2


def test_predict_prices_replayed_passes():
    """Match lengths 2, 0, 0, ... on 6 new tokens, k=2 (5 priced: the prefill yields the first).
    quadratic g=3: passes accepting 2, 0, 0 (each with drafts). g=1: accepting 2 leaves no group, so
    a draftless pass follows, then one with drafts. linear: 2 (= all k), 0, then a draftless pass."""
    settings = bench.Settings(methods=(), k_list=(2,), tau_table_k=2)
    results = [{"baseline": {"new_tokens": 6}, "draft_matches": {"sampler": [2, 0, 0, 0, 0, 0], "lm_head": [0] * 6}},
               {"baseline": {"new_tokens": 0}, "runs": []}]  # nothing generated: nothing to replay
    curve = {"step_seconds": {2: {"autoregressive": {"seconds": 0.1}, "draftless": {"seconds": 0.12},
                                  "linear": {"seconds": 0.14}, "quadratic g=1": {"seconds": 0.15},
                                  "quadratic g=2": {"seconds": 0.18}, "quadratic g=3": {"seconds": 0.2}}},
             "drafting_seconds": {2: 0.01}}
    ranked = {(c["method"], c["groups"]): c for c in bench.predict(results, curve, settings)}
    assert ranked[("autoregressive", None)]["predicted_tokens_per_second"] == pytest.approx(10.0)
    g3 = ranked[("quadratic", 3)]
    assert g3["tokens_per_step"] == pytest.approx(5 / 3)
    assert g3["predicted_tokens_per_second"] == pytest.approx(5 / (3 * 0.21))
    assert g3["predicted_speedup_vs_autoregressive"] == pytest.approx(5 / 0.63 / 10.0)
    g1 = ranked[("quadratic", 1)]
    assert g1["predicted_tokens_per_second"] == pytest.approx(5 / (0.16 + 0.13 + 0.16))
    linear = ranked[("linear", None)]
    assert linear["predicted_tokens_per_second"] == pytest.approx(5 / (0.15 + 0.15 + 0.13))
    no_sampler = bench.predict(results, curve, bench.Settings(methods=(), k_list=(2,), tau_table_k=2, use_sampler=False))
    assert {c["tokens_per_step"] for c in no_sampler} == {1.0}


def test_predict_prices_lookup_passes():
    """k=2, 6 new tokens; the masks never match, prompt lookup proposes 3 right drafts after 2 tokens.
    A lookup pass costs the shape with the same groups + the backbone's cost of its extra tokens."""
    settings = bench.Settings(methods=(), k_list=(2,), tau_table_k=2)
    results = [{"baseline": {"new_tokens": 6}, "draft_matches": {"sampler": [0] * 6, "lm_head": [0] * 6},
                "lookup_matches": [(0, 0), (3, 3), (0, 0), (0, 0), (0, 0)]}]
    shape = lambda seconds, length: {"seconds": seconds, "input_length": length}  # noqa: E731
    curve = {"step_seconds": {2: {"autoregressive": shape(0.1, 1), "draftless": shape(0.12, 3),
                                  "linear": shape(0.14, 5), "quadratic g=1": shape(0.15, 5),
                                  "quadratic g=2": shape(0.18, 7), "quadratic g=3": shape(0.2, 9)}},
             "drafting_seconds": {2: 0.01}, "backbone_seconds": {1: 0.05, 8: 0.06, 16: 0.08}}
    ranked = {(c["method"], c["groups"], c["lookup"]): c for c in bench.predict(results, curve, settings)}
    assert ranked[("quadratic", 3, 0)]["predicted_tokens_per_second"] == pytest.approx(5 / (5 * 0.21))
    with_lookup = ranked[("quadratic", 3, 10)]  # the masks' pass (accepts 0), then 3 lookup drafts + 3 groups
    assert with_lookup["tokens_per_step"] == pytest.approx(5 / 2)
    assert with_lookup["predicted_tokens_per_second"] == pytest.approx(5 / (0.21 + 0.2 + 0.0025 + 0.01))
    linear = ranked[("linear", None, 10)]  # a rejection, then lookup drafts with one group after them
    assert linear["predicted_tokens_per_second"] == pytest.approx(5 / (0.15 + 0.14 + 0.01 / 7 + 0.01))


def test_predict_prices_lookup_passes_of_trees_grafted_or_with_more_groups_than_a_chain_has():
    """k=2 trees with 4 groups (TREE_GROUPS). Where the masks have a tree, lookup drafts are grafted onto
    it: priced as the tree's pass plus the backbone's extra tokens. Where they have none, a 3-draft
    lookup chain carries 4 groups, one more than any chain shape the curve timed (k+1 = 3): priced
    as g=3 plus the backbone's extra tokens."""
    settings = bench.Settings(methods=(), k_list=(2,), tau_table_k=2, tau_trees=(3,))
    tree, grafted = acceptance.tree_key(2, 3), acceptance.graft_key(2, 3, settings.prompt_lookup_tokens)
    at_root = [0, [[0], True]]  # the tree accepts nothing; its path ends at t_0, which has a group
    results = [{"baseline": {"new_tokens": 9},
                "draft_matches": {"sampler": [0] * 9, "lm_head": [0] * 9, tree: [at_root] * 9,
                                  grafted: [at_root, [3, [[0, 5, 6, 7], False]]] + [at_root] * 7},
                "lookup_matches": [(0, 0), (3, 3), (0, 0), (0, 0), (0, 0), (3, 3), (0, 0), (0, 0)]}]
    shape = lambda seconds, length: {"seconds": seconds, "input_length": length}  # noqa: E731
    steps = {"autoregressive": shape(0.1, 1), "draftless": shape(0.12, 3), "linear": shape(0.14, 5),
             "quadratic g=1": shape(0.15, 5), "quadratic g=2": shape(0.18, 7), "quadratic g=3": shape(0.2, 9)}
    steps.update({f"tree 3 g={g}": shape(0.3, 4 + 2 * g) for g in bench.TREE_GROUPS})
    curve = {"step_seconds": {2: steps}, "drafting_seconds": {2: 0.01}, "tree_drafting_seconds": {2: {"3": 0.02}},
             "backbone_seconds": {1: 0.05, 8: 0.06, 16: 0.08}}
    ranked = {(c["groups"], c["lookup"], c["tree_budget"]): c for c in bench.predict(results, curve, settings)
              if c["method"] == "quadratic"}
    # The tree's pass; the tree with 3 lookup drafts grafted on, accepting them along the lookup branch
    # (ending 3 past t_0, the one node of the path with a group: 12 tokens -> 15, past t_0's group's
    # k = 2 masks); then no masks, so a lookup chain: 3 drafts +
    # 4 groups, 12 tokens, priced from g=3's 9.
    grafted_pass = 0.3 + (0.0775 - 0.07)
    lookup_pass = 0.2 + (0.07 - 0.0625)
    with_lookup = ranked[(4, 10, 3)]
    assert with_lookup["tokens_per_step"] == pytest.approx(8 / 3)
    assert with_lookup["predicted_tokens_per_second"] == pytest.approx(8 / (0.3 + grafted_pass + lookup_pass + 3 * 0.02))


@pytest.mark.parametrize("extra, message", [
    (["--methods", "linear,beam"], "unknown method"),
    (["--methods", "autoregressive", "--lookup", "on"], "--lookup applies to the linear and quadratic"),
    (["--methods", "autoregressive", "--cost-aware", "on"], "--cost-aware applies to the linear and quadratic"),
    (["--k-list", "1,x"], "comma-separated integers"),
    (["--k-list", "0,2"], "at least 1"),
    (["--k-list", "2,2"], "repeats"),
    (["--k-list", "8"], "checkpoint has k=4"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--methods", "linear", "--groups", "2"], "--groups applies to the quadratic"),
    (["--checkpoint", "/nonexistent/ckpt"], "does not exist"),
    (["--methods", "prompt_lookup", "--save-defaults"], "--save-defaults needs --cost-curve"),
    (["--methods", "quadratic", "--datastore", "on"], "--datastore on/both needs --datastore-files"),
    (["--methods", "quadratic", "--datastore-files", "x.jsonl"], "--datastore on/both needs --datastore-files"),
    (["--methods", "quadratic", "--datastore", "on", "--datastore-files", "/no/x.jsonl"], "not found: /no/x.jsonl"),
    (["--methods", "autoregressive", "--datastore", "on", "--datastore-files", __file__],
     "--datastore applies to the linear and quadratic"),
    (["--methods", "quadratic", "--datastore", "on", "--datastore-files", __file__], "--datastore-files: "),
    (["--methods", "quadratic", "--k-list", "2", "--groups", "1", "--only", "quadratic k=2 G=1 + lookup"],
     "--only: no run named 'quadratic k=2 G=1 + lookup'; the options give: 'quadratic k=2 G=1'"),
])
def test_bad_input_exits_2(tiny, tmp_path, capsys, extra, message):
    assert main(bench_args(tiny, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tau_table(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(bench_args(tiny, out, "--limit", "1", "--k-list", "1,3", "--max-new-tokens", "10",
                           "--methods", "linear,quadratic", "--tau-table")) == 0
    report = json.loads((out / "bench.json").read_text())
    assert all(len(e["draft_matches"]["sampler"]) == e["baseline"]["new_tokens"] for e in report["prompts"])
    table = report["summary"]["all"]["tau_table"]
    for drafter in ("sampler", "lm_head"):
        for method in ("linear", "quadratic"):
            taus = table["tau"][drafter][method]
            assert len(taus) == 4 and all(1.0 <= t <= k + 1 for k, t in enumerate(taus, start=1))  # k=1..4
    # The replayed τ is the decoded τ wherever both exist.
    for method in ("linear", "quadratic"):
        for k in (1, 3):
            assert table["tau"]["sampler"][method][k - 1] == pytest.approx(
                report["summary"]["all"]["runs"][f"{method} k={k}"]["tokens_per_step"])
    assert all(a["same_passes"] == a["prompts"] == 3 for a in table["replay_agreement"].values())
    markdown = (out / "results.md").read_text()
    assert "replayed from teacher-forced drafts" in markdown and "| domain | k=1 | k=2 | k=3 | k=4 |" in markdown
    assert "paper k=8" in markdown and "Replay vs decoding" in markdown
    # With prompt-lookup drafts (the repeated words of the math prompts find some), the replay still
    # gives every decoded pass count and the output stays the baseline's.
    out3 = tmp_path / "out3"
    assert main(bench_args(tiny, out3, "--limit", "1", "--k-list", "2", "--max-new-tokens", "12",
                           "--methods", "linear,quadratic", "--tau-table", "--lookup", "both")) == 0
    report = json.loads((out3 / "bench.json").read_text())
    assert report["mismatches"] == []
    assert sum(any(r["looked_up"]) for e in report["prompts"] for r in e["runs"] if r["lookup"]) >= 2
    assert not any(any(r["looked_up"]) for e in report["prompts"] for r in e["runs"] if not r["lookup"])
    agreement = report["summary"]["all"]["tau_table"]["replay_agreement"]
    assert sorted(agreement) == ["linear k=2", "linear k=2 + lookup", "quadratic k=2", "quadratic k=2 + lookup"]
    assert all(a["same_passes"] == a["prompts"] == 3 for a in agreement.values())
    assert "## τ (tokens per step), quadratic + lookup" in (out3 / "results.md").read_text()
    out4 = tmp_path / "out4"  # lookup only
    assert main(bench_args(tiny, out4, "--limit", "1", "--k-list", "2", "--max-new-tokens", "6",
                           "--methods", "quadratic", "--lookup", "on")) == 0
    report = json.loads((out4 / "bench.json").read_text())
    assert list(report["summary"]["all"]["runs"]) == ["quadratic k=2 + lookup"] and report["mismatches"] == []
    # Only the baseline and the table: the cheap way to get τ for every k.
    out2 = tmp_path / "out2"
    assert main(bench_args(tiny, out2, "--limit", "1", "--k-list", "2", "--max-new-tokens", "6", "--methods", "none",
                           "--tau-table")) == 0
    report = json.loads((out2 / "bench.json").read_text())
    assert (out2 / "tau_vs_k.html").exists()  # drawn from the table: no decoded run needed
    assert report["prompts"][0]["runs"] == [] and len(report["summary"]["all"]["tau_table"]["tau"]["sampler"]["quadratic"]) == 4
    page = (out2 / "results.md").read_text()
    assert "No decoded run to compare" in page and "## Wall-clock speedup" not in page  # no empty tables


def test_methods_none_needs_tau_table(tiny, tmp_path, capsys):
    assert main(bench_args(tiny, tmp_path / "out", "--methods", "none")) == 2
    assert "add --tau-table" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_save_defaults_needs_a_checkpoint(tiny, tmp_path, capsys):
    args = ["bench", "--prompts", str(tiny / "mixed.jsonl"), "--model", str(tiny / "model"), "--out",
            str(tmp_path / "out"), "--cost-curve", "--save-defaults"]
    assert main(args) == 2
    assert "--save-defaults needs a checkpoint" in capsys.readouterr().err


def test_missing_prompt_file_exits_2(tiny, tmp_path, capsys):
    assert main(["bench", "--prompts", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "prompt file(s) not found" in capsys.readouterr().err


def test_interrupted_run_resumes(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = bench_args(tiny, out, "--k-list", "2", "--methods", "quadratic", "--max-new-tokens", "6")
    real, real_prompt = measure.measure_run, measure.measure_prompt
    calls = []

    def interrupted(model, prompt_ids, *rest):
        calls.append(tuple(prompt_ids))
        if len(calls) == 2 + 2 * 2 + 1:  # warm-up (2 runs), two whole prompts (2 runs each), then stop
            raise KeyboardInterrupt
        return real(model, prompt_ids, *rest)
    monkeypatch.setattr(measure, "measure_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    partial = out / bench.PARTIAL_FILE
    lines = partial.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[1])["source"] == "gsm8k.jsonl:1"
    assert main(args) == 2  # not silently overwritten
    assert main(args[:-1] + ["7", "--resume"]) == 2  # other settings: refused
    monkeypatch.setattr(measure, "measure_run", real)
    measured = []
    monkeypatch.setattr(measure, "measure_prompt", lambda model, record, *rest: measured.append(record.source)
                        or real_prompt(model, record, *rest))
    assert main(args + ["--resume"]) == 0
    assert measured == ["gsm8k.jsonl:3", "humaneval.jsonl:1", "humaneval.jsonl:2", "mixed.jsonl:1"]
    report = json.loads((out / "bench.json").read_text())
    assert [e["source"] for e in report["prompts"]][:2] == ["gsm8k.jsonl:1", "gsm8k.jsonl:2"]
    assert report["prompts"][0] == json.loads(lines[1]) and report["mismatches"] == []
    assert not partial.exists()



def test_draft_trees_decoded_replayed_and_priced(tiny, tmp_path):
    """--tree-budget decodes with trees (identical output, replay = decoded passes); --tau-trees adds
    tree rows to the τ table and tree candidates to the predicted defaults."""
    out = tmp_path / "out"
    assert main(bench_args(tiny, out, "--limit", "1", "--k-list", "2,4", "--max-new-tokens", "12",
                           "--methods", "linear,quadratic", "--tree-budget", "6", "--tau-trees", "3,6",
                           "--cost-curve")) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["mismatches"] == []
    assert sorted(report["summary"]["all"]["runs"]) == ["linear k=2 tree 6", "linear k=4 tree 6",
                                                        "quadratic k=2 tree 6", "quadratic k=4 tree 6"]
    table = report["summary"]["all"]["tau_table"]
    assert sorted(table["trees"]) == ["tree 3", "tree 6"]
    assert all(1.0 <= tau <= int(k) + 1 for rows in table["trees"].values() for method in rows.values()
               for k, tau in method.items())
    # The decoded tree runs are replayed pass for pass (groups k+1: the τ table's tree rows).
    assert all(a["same_passes"] == a["prompts"] == 3 for a in table["replay_agreement"].values())
    for method in ("linear", "quadratic"):
        for k in ("2", "4"):
            assert table["trees"]["tree 6"][method][k] == pytest.approx(
                report["summary"]["all"]["runs"][f"{method} k={k} tree 6"]["tokens_per_step"])
    # τ by mask groups: G = k+1 is the tree row above.
    groups = table["tree_groups"]["tree 6"]
    assert list(groups["2"]) == ["1", "2", "3", "4", "6", "7"] and list(groups["4"]) == ["1", "2", "4", "5", "7"]
    for k in ("2", "4"):
        assert groups[k][str(int(k) + 1)] == table["trees"]["tree 6"]["quadratic"][k]
    assert "tree 6 nodes, k=4, by mask groups" in (out / "results.md").read_text()
    shapes = report["cost_curve"]["step_seconds"]["4"]
    assert {f"tree {b} g={g}" for b in (3, 6) for g in bench.TREE_GROUPS} <= set(shapes)
    assert set(report["cost_curve"]["tree_drafting_seconds"]["4"]) == {"3", "6"}
    assert {c["tree_budget"] for c in report["predictions"]} == {0, 3, 6}
    assert "tree_budget" in report["defaults"]
    page = (out / "results.md").read_text()
    assert "sampler draft tree 6 nodes" in page and "| tree |" in page


def test_several_group_counts_are_runs_of_their_own() -> None:
    settings = bench.Settings(methods=("quadratic", "linear"), k_list=(1, 4), groups=(1, 2, 9), lookup="on")
    names = [bench.run_name(run) for run in bench.runs_of(settings)]
    # G is capped at k+1: at k=1, 2 and 9 are both the paper's layout, measured once.
    assert names == ["quadratic k=1 G=1 + lookup", "quadratic k=1 G=2 + lookup", "quadratic k=4 G=1 + lookup",
                     "quadratic k=4 G=2 + lookup", "quadratic k=4 G=5 + lookup", "linear k=1 + lookup",
                     "linear k=4 + lookup"]
    # A measured result names its run, groups included.
    run = bench.runs_of(settings)[1]
    assert bench.run_of({"method": "quadratic", "k": 1, "lookup": True, "tree_budget": 0, "groups": 2}) == run


def test_cost_aware_runs_are_measured_beside_the_others_and_not_replayed(tiny, tmp_path):
    """--cost-aware both: each linear/quadratic run also decoded with CostAware, named, identical to
    `generate`, left out of the replay check (its passes depend on timing)."""
    out = tmp_path / "out"
    assert main(bench_args(tiny, out, "--limit", "1", "--k-list", "2", "--max-new-tokens", "12", "--methods",
                           "quadratic", "--groups", "1", "--cost-aware", "both", "--tau-table")) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["mismatches"] == []
    assert sorted(report["summary"]["all"]["runs"]) == ["quadratic k=2 G=1", "quadratic k=2 G=1 cost-aware"]
    assert list(report["summary"]["all"]["tau_table"]["replay_agreement"]) == ["quadratic k=2 G=1"]
    assert {run["cost_aware"] for entry in report["prompts"] for run in entry["runs"]} == {False, True}
    assert "## τ (tokens per step), quadratic G=1 cost-aware\n" in (out / "results.md").read_text()


def test_save_defaults_from_decoded_runs(tiny, tmp_path):
    """--save-defaults without --cost-curve: the fastest decoded linear/quadratic run, cost-aware
    ones included, becomes the device's defaults, with what it measured."""
    out = tmp_path / "out"
    checkpoint = shutil.copytree(tiny / "ckpt", tmp_path / "ckpt")
    assert main(bench_args(tiny, out, "--limit", "1", "--k-list", "2", "--max-new-tokens", "12", "--methods",
                           "quadratic,prompt_lookup", "--groups", "1", "--lookup", "on", "--cost-aware", "both",
                           "--checkpoint", str(checkpoint), "--save-defaults")) == 0
    report = json.loads((out / "bench.json").read_text())
    runs = {name: stats for name, stats in report["summary"]["all"]["runs"].items() if name.startswith("quadratic")}
    fastest = max(runs, key=lambda name: runs[name]["tokens_per_second"])
    saved = read_decoding_defaults(checkpoint, "cpu")
    assert saved == {name: report["defaults"][name] for name in DEFAULTS_FIELDS if name in report["defaults"]}
    assert (saved["method"], saved["k"], saved["groups"], saved["lookup"]) == ("quadratic", 2, 1, 10)
    assert saved["cost_aware"] == fastest.endswith(" cost-aware")
    assert saved["tokens_per_second"] == runs[fastest]["tokens_per_second"]
    assert saved["speedup_vs_generate"] == runs[fastest]["speedup_vs_generate"]
    assert "predicted_tokens_per_second" not in saved and "decoded" in saved["basis"]
    assert "Chosen defaults, the fastest MTP setting decoded" in (out / "results.md").read_text()
    assert json.loads((out / "defaults.json").read_text()) == report["defaults"]


def test_group_counts_and_tree_budgets_side_by_side(tiny, tmp_path):
    """--groups G,G and --tree-budget N,N: a decoded run per combination, each named, replayed pass for
    pass (1 group: quadratic drafts from leftover masks) and given its τ table in results.md."""
    out = tmp_path / "out"
    assert main(bench_args(tiny, out, "--limit", "1", "--k-list", "2", "--max-new-tokens", "12", "--methods",
                           "quadratic", "--groups", "1,3", "--tree-budget", "0,4", "--lookup", "both",
                           "--tau-table")) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["mismatches"] == []
    names = [f"quadratic k=2 G={g}{tree}{lookup}" for g in (1, 3) for tree in ("", " tree 4") for lookup in ("", " + lookup")]
    assert sorted(report["summary"]["all"]["runs"]) == sorted(names)
    agreement = report["summary"]["all"]["tau_table"]["replay_agreement"]
    assert sorted(agreement) == sorted(names) and all(a["same_passes"] == a["prompts"] == 3 for a in agreement.values())
    page = (out / "results.md").read_text()
    assert all(f"## τ (tokens per step), {name.replace(' k=2', '')}\n" in page for name in names)


def test_only_the_named_runs_of_the_combinations(tiny, tmp_path):
    """--only RUN (repeated): of the combinations --tree-budget / --lookup make, just those runs."""
    out = tmp_path / "out"
    wanted = ["quadratic k=2 G=1 + lookup", "quadratic k=2 G=1 tree 4"]
    assert main(bench_args(tiny, out, "--limit", "1", "--k-list", "2", "--max-new-tokens", "12", "--methods",
                           "quadratic,prompt_lookup", "--groups", "1", "--tree-budget", "0,4", "--lookup", "both",
                           *(arg for name in wanted for arg in ("--only", name)))) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["mismatches"] == []
    assert sorted(report["summary"]["all"]["runs"]) == wanted
    assert all(len(entry["runs"]) == 2 for entry in report["prompts"])


def test_datastore_runs_are_measured_beside_the_others_and_saved_relative_to_the_checkpoint(tiny, tmp_path,
                                                                                            monkeypatch):
    """--datastore both: each run also decoded with datastore drafts, named, identical to `generate`, left
    out of the replay check; saved as the defaults, its files are named relative to the checkpoint."""
    out, data = tmp_path / "out", tmp_path / "data" / "own.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"prompt_ids": [5, 6, 7], "response_ids": list(range(8, 40))}) + "\n"
                            for _ in range(2)))
    checkpoint = shutil.copytree(tiny / "ckpt", tmp_path / "ckpt")
    choose = bench.choose_decoded_defaults

    def datastore_fastest(report: dict, settings: bench.Settings) -> dict | None:
        report["summary"]["all"]["runs"]["quadratic k=2 G=1 tree 4 + datastore"]["tokens_per_second"] = 1e9
        return choose(report, settings)
    monkeypatch.setattr(bench, "choose_decoded_defaults", datastore_fastest)
    assert main(bench_args(tiny, out, "--limit", "1", "--k-list", "2", "--max-new-tokens", "12", "--methods",
                           "quadratic", "--groups", "1", "--tree-budget", "4", "--datastore", "both",
                           "--datastore-files", str(data), "--tau-table", "--checkpoint", str(checkpoint),
                           "--save-defaults")) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["mismatches"] == []
    assert sorted(report["summary"]["all"]["runs"]) == ["quadratic k=2 G=1 tree 4", "quadratic k=2 G=1 tree 4 + datastore"]
    assert list(report["summary"]["all"]["tau_table"]["replay_agreement"]) == ["quadratic k=2 G=1 tree 4"]
    assert {run["datastore"] for entry in report["prompts"] for run in entry["runs"]} == {False, True}
    assert report["defaults"]["datastore"] == [str(data)]
    assert read_decoding_defaults(checkpoint, "cpu")["datastore"] == ["../data/own.jsonl"]
    assert f"datastore drafts from {data}" in (out / "results.md").read_text()
