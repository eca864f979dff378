"""Training engine: both layouts agree, losses are what docs/design.md §4 says, the trainer learns, resumes
exactly, starts from committed weights, refuses bad configs, and runs as 2 processes under accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from mtp import adapter
from mtp.__main__ import main as cli
from mtp.layouts import IGNORE, interleaved_layout
from mtp.losses import LossWeights
from mtp.train import (EVAL_LOG_FILE, LOG_FILE, STATE_DIR, Sequence, TrainConfig, TrainError, full_forward,
                       heldout_tau, load_sequences, lr_at, prefix_cache_forward, read_log, train)
from tests.conftest import randomize_lora
from tests.train_helpers import tiny_loaded, tiny_model_dir, write_data

ROOT = Path(__file__).resolve().parent.parent


def tiny_mtp(family: str = "llama", k: int = 3) -> adapter.MTPModel:
    loaded = tiny_loaded(family)
    model = adapter.create(loaded.model, loaded.identity, k=k, lora_rank=4)
    randomize_lora(model, std=0.1)
    torch.nn.init.normal_(model.sampler.out.weight, std=0.05)  # a non-trivial sampler
    return model


def two_sequences() -> tuple[list[Sequence], list[list[int]]]:
    generator = torch.Generator().manual_seed(0)
    seqs = [Sequence(torch.randint(0, 128, (20,), generator=generator).tolist(), 5),
            Sequence(torch.randint(0, 128, (13,), generator=generator).tolist(), 3)]
    return seqs, [[4, 7, 8, 15], [2, 5, 9]]


def losses_and_grads(model, forward, seqs, anchors):
    model.zero_grad()
    loss, stats = forward(model, seqs, anchors, LossWeights(1.0, 1.0, 0.5))
    loss.backward()
    return stats, [p.grad.clone() for p in model.trainable_parameters()]


def test_prefix_cache_equals_full_layout(tiny_family):
    model = tiny_mtp(tiny_family)
    seqs, anchors = two_sequences()
    cached_stats, cached_grads = losses_and_grads(model, prefix_cache_forward, seqs, anchors)
    full_stats, full_grads = losses_and_grads(model, full_forward, seqs, anchors)
    for name in ("loss", "loss_base", "loss_sampler", "loss_lcm"):
        assert abs(cached_stats[name].item() - full_stats[name].item()) <= 1e-5, name
    assert cached_stats["loss_lcm"].item() > 0.1  # all three terms are really there
    # 4 + 3 blocks of 3 masks, minus the one whose label lies past the end (x13 of a 13-token sequence).
    assert len(cached_stats["offsets"]) == len(full_stats["offsets"]) == 20
    scale = max(g.abs().max().item() for g in full_grads)
    worst = max((a - b).abs().max().item() for a, b in zip(cached_grads, full_grads))
    assert scale > 1.0 and worst <= 1e-5 * scale


def test_sampler_is_teacher_forced_and_lcm_targets_the_real_token_at_the_same_position():
    model = tiny_mtp("llama", k=2)
    seqs, anchors = two_sequences()
    seqs, anchors = seqs[:1], anchors[:1]
    seen = []
    real_sampler_logits = model.sampler_logits
    model.sampler_logits = lambda hidden, prev: seen.append(prev) or real_sampler_logits(hidden, prev)
    _, stats = prefix_cache_forward(model, seqs, anchors, LossWeights())
    ids = seqs[0].ids
    # Mask i after x_j sits at position j+i, predicts x_{j+i+1}; the token before it is x_{j+i}.
    assert seen[0].tolist() == [ids[j + i] for j in anchors[0] for i in (1, 2)]
    # LCM by hand: mask hidden vs the plain base model's hidden at the same position.
    layout = interleaved_layout(ids, 2, seqs[0].prompt_len, anchors[0])
    with torch.no_grad():
        hidden = model(layout.input_ids[None], layout.position_ids[None], layout.attention[None]).hidden[0]
        plain = model.base.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    rows = (layout.input_ids < 0) & (layout.labels != IGNORE) & (layout.same_position_real >= 0)
    expected = F.mse_loss(hidden[rows], plain[layout.position_ids[rows]])
    assert abs(stats["loss_lcm"].item() - expected.item()) <= 1e-5
    assert expected.item() > 0.1


def test_lr_schedule():
    config = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(config, 0) == pytest.approx(1e-4)
    assert lr_at(config, 9) == pytest.approx(1e-3)
    assert lr_at(config, 60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(config, 110) == pytest.approx(1e-4)
    assert lr_at(TrainConfig(lr=1e-3, warmup_steps=10, steps=110), 100) == pytest.approx(1e-3)


def config_for(tmp_path: Path, name: str, **overrides) -> TrainConfig:
    fields = dict(data=str(write_data(tmp_path / "data.jsonl")), out=str(tmp_path / name), k=2, lora_rank=8,
                  anchors_per_seq=0, warmup_steps=5, lr=1e-2, batch_size=4, steps=60, save_every=1000)
    return TrainConfig(**{**fields, **overrides})


@pytest.mark.slow
def test_tiny_model_overfits_tiny_dataset(tmp_path):
    records = []
    out = train(config_for(tmp_path, "run"), on_log=records.append, loaded=tiny_loaded(), progress=False)
    first, last = records[0], records[-1]
    # Measured: sampler CE 4.86 -> 0.13, base top-1 accuracy 0.0 -> 0.89, total 10.8 -> 5.0.
    assert first["loss_sampler"] / last["loss_sampler"] >= 10
    assert first["acc_base"] <= 0.05 and last["acc_base"] >= 0.6
    assert first["loss"] / last["loss"] >= 1.8
    assert len(read_log(out / LOG_FILE)) == 60
    assert (out / "train_curves.html").exists() and (out / STATE_DIR / "state.json").exists()
    saved = json.loads((out / adapter.CONFIG_FILE).read_text())
    assert saved["k"] == 2 and saved["extra"]["training"]["step"] == 60


def test_heldout_tau_is_logged_and_reproducible(tmp_path):
    heldout = write_data(tmp_path / "heldout.jsonl", num=3, seed=7)
    out = train(config_for(tmp_path, "run", eval_data=str(heldout), eval_every=25, eval_sequences=2, steps=60),
                loaded=tiny_loaded(), progress=False)
    records = read_log(out / EVAL_LOG_FILE)
    assert [r["step"] for r in records] == [25, 50, 60]  # every 25 steps and at the end
    for record in records:
        assert record["sequences"] == 2 and record["tokens"] == 40 and record["k"] == 2
        for name in ("tau_quadratic", "tau_linear", "tau_quadratic_lm_head"):
            assert 1.0 <= record[name] <= 3.0
        assert record["match_by_offset"][0] >= record["match_by_offset"][1]
    # The logged numbers are those of the saved weights on the same sequences.
    model = adapter.load(out, tiny_loaded().model, tiny_loaded().identity)
    again = heldout_tau(model, load_sequences(heldout, 768)[:2], 2)
    assert again == {n: v for n, v in records[-1].items() if n != "step"}


def test_heldout_data_must_not_be_trained_on(tmp_path):
    config = config_for(tmp_path, "run", steps=2)
    config.eval_data = config.data
    with pytest.raises(TrainError, match="3 of the 3 held-out prompts .* are also in the training data"):
        train(replace(config, eval_sequences=3), loaded=tiny_loaded(), progress=False)
    assert not (tmp_path / "run").exists()


class Crash(Exception):
    pass


@pytest.mark.slow
def test_crash_then_resume_equals_uninterrupted_run(tmp_path):
    settings = dict(steps=12, save_every=4, anchors_per_seq=6, batch_size=2, grad_accum=2, schedule="cosine",
                    warmup_steps=3, lr=3e-3)
    whole = train(config_for(tmp_path, "whole", **settings), loaded=tiny_loaded(), progress=False)

    def crash_at_step_6(record):
        if record["step"] == 6:
            raise Crash  # the process dies two steps after its last checkpoint (step 4)

    interrupted = config_for(tmp_path, "interrupted", **settings)
    with pytest.raises(Crash):
        train(interrupted, on_log=crash_at_step_6, loaded=tiny_loaded(), progress=False)
    assert json.loads((tmp_path / "interrupted" / STATE_DIR / "state.json").read_text())["step"] == 4
    train(interrupted, resume=True, loaded=tiny_loaded(), progress=False)
    expected, resumed = read_log(whole / LOG_FILE), read_log(tmp_path / "interrupted" / LOG_FILE)
    assert [r["step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(expected, resumed):
        for name in ("loss", "loss_base", "loss_sampler", "loss_lcm", "lr", "acc_base"):
            assert a[name] == b[name], (a["step"], name)
    weights_a = adapter.load(whole, tiny_loaded().model, tiny_loaded().identity).trainable_state_dict()
    weights_b = adapter.load(tmp_path / "interrupted", tiny_loaded().model, tiny_loaded().identity).trainable_state_dict()
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)


@pytest.mark.slow
def test_init_from_continues_from_committed_weights(tmp_path):
    first = []
    trained = train(config_for(tmp_path, "first", steps=40), on_log=first.append, loaded=tiny_loaded(), progress=False)
    # A fresh clone has the adapter only: no train_state, no log.
    committed = tmp_path / "committed"
    committed.mkdir()
    for name in (adapter.WEIGHTS_FILE, adapter.CONFIG_FILE):
        (committed / name).write_bytes((trained / name).read_bytes())
    second = []
    train(config_for(tmp_path, "second", steps=10), on_log=second.append, init_from=committed,
          loaded=tiny_loaded(), progress=False)
    # It starts where the first run ended, not from scratch, and keeps improving.
    assert second[0]["loss_sampler"] <= 1.5 * first[-1]["loss_sampler"]
    assert second[0]["loss_sampler"] < 0.5 * first[0]["loss_sampler"]
    assert min(r["loss_sampler"] for r in second[1:]) < second[0]["loss_sampler"]
    bad = config_for(tmp_path, "bad", k=3)
    with pytest.raises(TrainError, match="k: checkpoint 2, config 3"):
        train(bad, init_from=committed, loaded=tiny_loaded(), progress=False)
    assert not (tmp_path / "bad").exists()


def write_config(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.mark.parametrize("fields, message", [
    ({"lerning_rate": 1e-3}, "unknown key(s) ['lerning_rate']"),
    ({"steps": "many"}, "steps must be a int"),
    ({"layout": "diagonal"}, "layout must be prefix_cache or full"),
    ({"data": "no/such/file.jsonl"}, "data file no/such/file.jsonl does not exist"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"weight_lcm": float("inf")}, "weight_lcm must be a finite number, got inf"),
    ({"beta1": 1.5}, "beta1 and beta2 must be in [0, 1)"),
    ({"min_lr_ratio": True}, "min_lr_ratio must be a float, got True"),
    ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
])
def test_bad_config_is_refused_and_nothing_written(tmp_path, capsys, fields, message):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", **{"out": str(out), **fields})
    assert cli(["train", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_exponent_without_a_dot_reads_as_a_float(tmp_path):
    # YAML 1.1 reads 5e-4 as a string; a learning rate written that way must still work.
    from mtp.commands.train import parse_overrides
    config = TrainConfig.from_yaml(write_config(tmp_path / "c.yaml", out=str(tmp_path / "out")),
                                   parse_overrides(["lr=5e-4", "weight_lcm=2"]))
    assert config.lr == 5e-4 and config.weight_lcm == 2.0
    with pytest.raises(TrainError, match="lr must be a float, got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})


@pytest.mark.slow
def test_resume_warns_when_the_continuation_is_not_exact(tmp_path, caplog):
    for schedule, warned in (("constant", False), ("cosine", True)):
        train(config_for(tmp_path, schedule, steps=2, schedule=schedule), loaded=tiny_loaded(), progress=False)
        caplog.clear()
        with caplog.at_level("WARNING", logger="mtp.train"):
            train(config_for(tmp_path, schedule, steps=3, schedule=schedule), resume=True, loaded=tiny_loaded(),
                  progress=False)
        assert ("resuming with changed settings {'steps': (2, 3)}" in caplog.text) == warned, caplog.text


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path):
    config = config_for(tmp_path, "run", steps=2)
    train(config, loaded=tiny_loaded(), progress=False)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(TrainError, match="already holds a training run: pass --resume"):
        train(config, loaded=tiny_loaded(), progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    with pytest.raises(TrainError, match="nothing to resume"):
        train(config_for(tmp_path, "none"), resume=True, loaded=tiny_loaded(), progress=False)
    with pytest.raises(TrainError, match="changed the adapter"):
        train(config_for(tmp_path, "run", lora_rank=4), resume=True, loaded=tiny_loaded(), progress=False)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_cpu_run_through_accelerate(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "tiny-model")
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", model=str(model_dir), data=str(write_data(tmp_path / "d.jsonl", num=6)),
                          out=str(out), k=2, lora_rank=4, anchors_per_seq=4, steps=3, save_every=100, warmup_steps=1)
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # --multi_gpu picks accelerate's torchrun launcher; without a GPU the trainer runs it as MULTI_CPU (gloo).
    # (`--cpu --num_processes 2` would start ONE process: accelerate's multi-CPU path needs mpirun.)
    result = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mtp", "train",
                             "--config", str(config), "--no-progress"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_log(out / LOG_FILE)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert result.stdout.count("checkpoint:") == 1
    # Each process trains its own sequence of a step (process p of step s takes sequence 2s + p): the log
    # counts both, exactly as one process with batch_size 2 sees the same two sequences.
    single = train(TrainConfig.from_yaml(config, {"out": str(tmp_path / "single"), "batch_size": 2}), progress=False)
    expected = [r["supervised_masks"] for r in read_log(single / LOG_FILE)]
    assert [r["supervised_masks"] for r in records] == expected
    assert max(expected) > 8  # more than one process alone can supervise (1 sequence x 4 anchors x k=2)
    assert json.loads((out / STATE_DIR / "state.json").read_text())["step"] == 3
    loaded = tiny_loaded()
    assert adapter.load(out, loaded.model, loaded.identity).k == 2
