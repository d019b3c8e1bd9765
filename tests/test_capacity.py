"""Capacity (training) runs: the task generators, the task head, training sweeps, refusals, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import implementations
from bench import cli, results, train
from bench.contract import Point, TrainSpec
from bench.sweep import Sweep, SweepError, load_sweep
from bench.tasks import TaskError, batch, make_task
from implementations.tlstm_naive import MEM_SELF_LOGIT

CLI = Path(sys.executable).parent / "tlstm-bench"
FAKES = Path(__file__).resolve().parent / "fake_impls.py"


# ---------------------------------------------------------------------------------------------------
# the tasks


@pytest.mark.parametrize("digits", [1, 2, 3, 7, 18])
def test_every_addition_target_is_pythons_integer_sum(digits):
    inputs, targets, mask = batch("addition", 500, seed=digits, digits=digits)
    task = make_task("addition", digits=digits)
    assert inputs.shape == targets.shape == mask.shape == (500, 3 * digits + 3) == (500, task.seq_len)
    assert int(inputs.max()) <= 11 and int(targets.max()) <= 9
    for row_in, row_target, row_mask in zip(inputs.tolist(), targets.tolist(), mask.tolist()):
        a = int("".join(map(str, row_in[:digits])))
        assert row_in[digits] == 10 and row_in[2 * digits + 1] == 10  # the delimiters
        b = int("".join(map(str, row_in[digits + 1: 2 * digits + 1])))
        assert row_in[2 * digits + 2:] == [11] * (digits + 1)  # blanks while the answer is read
        assert row_mask == [False] * (2 * digits + 2) + [True] * (digits + 1)
        scored = [t for t, m in zip(row_target, row_mask) if m]
        assert int("".join(map(str, scored))) == a + b and len(scored) == digits + 1


@pytest.mark.parametrize(("length", "alphabet"), [(1, 2), (5, 3), (20, 65)])
def test_every_memorization_target_is_its_input(length, alphabet):
    inputs, targets, mask = batch("memorization", 300, seed=length, length=length, alphabet=alphabet)
    assert inputs.shape == (300, 2 * length + 1) and mask.sum(1).eq(length).all()
    assert (inputs[:, length] == alphabet).all() and (inputs[:, length + 1:] == alphabet + 1).all()
    assert (inputs[:, :length] < alphabet).all()
    assert torch.equal(targets[mask].view(300, length), inputs[:, :length])
    assert len(set(map(tuple, inputs[:, :length].tolist()))) > 1  # not one sample repeated


def test_batches_are_seeded_and_generators_advance():
    task = make_task("memorization", length=6, alphabet=4)
    assert all(torch.equal(a, b) for a, b in zip(task.batch(8, seed=3), task.batch(8, seed=3)))
    assert not torch.equal(task.batch(8, seed=3)[0], task.batch(8, seed=4)[0])
    generator = torch.Generator().manual_seed(0)
    assert not torch.equal(task.batch(8, generator=generator)[0], task.batch(8, generator=generator)[0])
    assert task.render(*(t[0] for t in task.batch(1, seed=0))).count("_") == 6


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": "sorting"}, "task"),
    ({"name": "addition", "digits": 0}, "digits"),
    ({"name": "addition", "digits": 19}, "digits"),
    ({"name": "memorization", "length": 5, "alphabet": 1}, "alphabet"),
    ({"name": "memorization", "length": 0, "alphabet": 4}, "length"),
    ({"name": "addition", "digits": 2, "alphabet": 4}, "alphabet"),
])
def test_bad_task_sizes_name_the_field(kwargs, field):
    with pytest.raises(TaskError, match=field):
        make_task(kwargs.pop("name"), **kwargs)


# ---------------------------------------------------------------------------------------------------
# training sweeps: expansion and refusals


def _write(tmp_path: Path, text: str, name: str = "train.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


TRAIN_SWEEP = """
implementations = ["tlstm_fused", "lstm_cudnn", "lstm_shared"]
[train]
task = "memorization"
length = 3
alphabet = 3
seeds = [0, 1]
[axes]
depth = [1, 4]
params = [3000]
variant = ["tLSTM", "tLSTM-M"]
"""


def test_params_pairing_picks_the_width_closest_to_the_budget(tmp_path):
    points = load_sweep(str(_write(tmp_path, TRAIN_SWEEP))).points()
    # 2 variants x 2 depths x 2 seeds tLSTMs; the stacked LSTMs once per depth and seed (no variants)
    assert len(points) == 8 + 8 and len({p.key for p in points}) == 16
    task = make_task("memorization", length=3, alphabet=3)
    for p in points:
        assert p.train.params_budget == 3000 and p.input_size == task.input_symbols and p.seq_len == task.seq_len

        def total(width: int, p=p) -> int:
            config = dataclasses.replace(p, channels=width).model_config()
            return implementations.param_count(p.impl, config) + task.head_params(width)

        gap = abs(total(p.channels) - 3000)
        assert gap <= abs(total(p.channels - 1) - 3000) and gap <= abs(total(p.channels + 1) - 3000), p
    widths = {(p.impl, p.mem_conv, p.depth): p.channels for p in points}
    assert widths[("tlstm_fused", True, 1)] == widths[("tlstm_fused", True, 4)]  # tLSTM params do not grow with L
    assert widths[("lstm_shared", True, 1)] == widths[("lstm_shared", True, 4)]
    assert widths[("lstm_cudnn", True, 4)] < widths[("lstm_cudnn", True, 1)]  # the unshared one must narrow


def test_training_sweep_round_trips_through_sweep_json(tmp_path):
    sweep = load_sweep(str(_write(tmp_path, TRAIN_SWEEP)))
    again = Sweep.from_json(json.loads(json.dumps(sweep.as_dict())))
    assert [p.key for p in again.points()] == [p.key for p in sweep.points()]
    point = sweep.points()[0]
    assert Point.from_dict(json.loads(json.dumps(point.as_dict()))) == point


def test_timing_point_keys_did_not_change():
    # the key of a timing point is the hash it had before training points existed (resume of old results)
    point = Point(impl="tlstm_naive", family="tlstm", tensor_size=2, depth=2, seq_len=16, batch=4, channels=8,
                  input_size=8, kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training",
                  device="cpu", repeats=5, warmup=1, seed=0)
    assert "train" in point.as_dict() and point.key == "357e7297e0da34bd"


@pytest.mark.parametrize(("change", "field", "words"), [
    (('task = "memorization"', 'task = "sorting"'), "train.task", "addition, memorization"),
    (("length = 3", "length = 0"), "train.length", ">= 1"),
    (("alphabet = 3", "alphabet = 1"), "train.alphabet", ">= 2"),
    (("alphabet = 3", "alphabet = 3\ndigits = 3"), "train.digits", "not a size"),
    (("length = 3", "digits = 3"), "train.length", "required by task 'memorization'"),
    (("params = [3000]", "params = [50]"), "axes.params", "below the smallest"),
    (("params = [3000]", "params = [9000000000]"), "axes", "make params or train.batch smaller"),
    (("[axes]", "[axes]\nseq_len = [16]"), "axes.seq_len", "only for timing sweeps"),
    (("[axes]", "[budget]\nrepeats = 3\n[axes]"), "budget.repeats", "only for timing sweeps"),
    (("params = [3000]", "channels = [16]"), "axes.params", "needs the parameter budget"),
    (("[axes]", "[axes]\nkernel_size = [2]"), "axes.kernel_size", "not both"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), "train.seeds", "twice"),
    (("seeds = [0, 1]", "optimizer = \"sgd\""), "train.optimizer", "adam"),
    (("seeds = [0, 1]", "seeds = [0, 1]\nmem_self_logit = -1.0"), "train.mem_self_logit", "0"),
])
def test_bad_training_sweeps_are_refused_naming_file_and_field(tmp_path, capsys, change, field, words):
    path = _write(tmp_path, TRAIN_SWEEP.replace(*change))
    with pytest.raises(SweepError) as info:
        load_sweep(str(path)).points()
    assert info.value.field_name == field and words in str(info.value) and str(path) in str(info.value)
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert field in err and words in err and not (tmp_path / "out" / "results.jsonl").exists()


def test_timing_sweeps_refuse_training_fields(tmp_path):
    timing = 'implementations = ["lstm_cudnn"]\n[axes]\ndepth = [1]\nparams = [1000]\n'
    with pytest.raises(SweepError, match="axes.params: only for training sweeps"):
        load_sweep(str(_write(tmp_path, timing)))
    with pytest.raises(SweepError, match="train.lr"):
        load_sweep("quick", ["train.lr=0.1"])
    with pytest.raises(SweepError, match="seq_len: only for timing sweeps"):
        load_sweep("capacity", ["seq_len=32"])


def test_set_switches_the_task_whatever_the_order():
    for overrides in (["train.task=addition", "train.digits=2"], ["train.digits=2", "train.task=addition"]):
        sweep = load_sweep("capacity", [*overrides, "train.seeds=0"])
        assert sweep.train["task"] == "addition" and sweep.train["digits"] == 2 and sweep.train["length"] is None
        assert {p.seq_len for p in sweep.points()} == {9}
    with pytest.raises(SweepError, match="train.digits: required by task 'addition'"):
        load_sweep("capacity", ["train.task=addition"])


def test_shipped_capacity_sweeps_expand():
    quick = load_sweep("capacity").points()
    assert len(quick) == 120 and {p.depth for p in quick} == {1, 2, 4, 8} and {p.seed for p in quick} == set(range(5))
    assert {p.impl for p in quick} == {"tlstm_fused", "lstm_cudnn", "lstm_shared"}
    assert {(p.kernel_size, p.mem_conv, p.norm) for p in quick if p.family == "tlstm"} == {
        (3, True, None), (3, False, None), (2, True, None), (3, True, "cn")}
    paper = load_sweep("capacity-paper").points(cuda_available=True)
    assert {p.train.digits for p in paper} == {15} and {p.depth for p in paper} == {1, 4, 7, 10}
    long = load_sweep("capacity-long").points()
    assert len(long) == 120 and "3D tLSTM+CN" in {p.variant() for p in long}
    assert {p.train.mem_self_logit for p in long} == {3.0} and {p.seed for p in long} == set(range(5))


# ---------------------------------------------------------------------------------------------------
# training


def _point(impl: str = "tlstm_fused", *, depth: int = 2, channels: int = 16, length: int = 3, alphabet: int = 3,
           max_samples: int = 40_000, lr: float = 0.01, eval_every: int = 1024, stop: bool = True,
           seed: int = 0) -> Point:
    family = implementations.get(impl).family
    task = make_task("memorization", length=length, alphabet=alphabet)
    spec = TrainSpec.from_dict({"task": "memorization", "length": length, "alphabet": alphabet, "optimizer": "adam",
                                "lr": lr, "clip": 1.0, "eval_every": eval_every, "eval_samples": 512,
                                "max_samples": max_samples, "max_time_s": 120.0, "solve_at": 0.99,
                                "stop_when_solved": stop, "params_budget": None})
    return Point(impl=impl, family=family, tensor_size=depth if family == "tlstm" else None, depth=depth,
                 seq_len=task.seq_len, batch=32, channels=channels, input_size=task.input_symbols, kernel_size=3,
                 mem_conv=True, norm=None, dtype="float32", mode="training", device="cpu", repeats=0, warmup=0,
                 seed=seed, train=spec)


def test_the_memory_kernel_start_is_a_training_setting():
    old = _point()  # a train dict written before the setting existed: None, and the module's own start
    assert old.train.mem_self_logit is None and old.train.as_dict()["mem_self_logit"] is None
    model, _ = train.build_task_model(old)
    assert model.core.bias_h[4 * 16 + 1].item() == MEM_SELF_LOGIT
    averaged = dataclasses.replace(old, train=dataclasses.replace(old.train, mem_self_logit=0.0))
    model, _ = train.build_task_model(averaged)
    assert torch.equal(model.core.bias_h[4 * 16:].detach(), torch.zeros(3))
    assert averaged.key != old.key  # a different start is a different point
    assert {p.train.mem_self_logit for p in load_sweep("capacity").points()} == {MEM_SELF_LOGIT}
    assert {p.train.mem_self_logit for p in load_sweep("capacity", ["train.mem_self_logit=0"]).points()} == {0.0}


def test_the_head_is_counted_apart_from_the_core():
    point = _point("lstm_shared", channels=10)
    model, task = train.build_task_model(point)
    core, head = model.param_counts()
    assert head == task.head_params(10) == 10 * 3 + 3
    assert core == implementations.param_count("lstm_shared", point.model_config())
    logits = model(task.batch(5, seed=0)[0])
    assert logits.shape == (5, task.seq_len, task.output_symbols)


def test_a_small_tlstm_solves_a_tiny_memorization_task():
    torch.set_num_threads(1)
    result = train.train_point(_point(), log=lambda line: None)
    metrics = result["metrics"]
    assert result["status"] == "ok", result["message"]
    assert metrics["solved"] and metrics["stop_reason"] == "solved", metrics["best_symbol_acc"]
    assert metrics["final_symbol_acc"] >= 0.99 and metrics["samples_to_solve"] == metrics["samples_seen"] <= 40_000
    curve = metrics["curve"]
    assert [c["samples"] for c in curve] == sorted({c["samples"] for c in curve})
    assert curve[-1]["symbol_acc"] >= 0.99 > curve[0]["symbol_acc"] and metrics["time_to_solve_s"] > 0
    assert metrics["params"] == metrics["core_params"] + metrics["head_params"]


def test_an_unsolved_run_says_so_and_keeps_its_curve():
    result = train.train_point(_point(max_samples=1024, eval_every=512), log=lambda line: None)
    metrics = result["metrics"]
    assert result["status"] == "ok" and not metrics["solved"] and metrics["samples_to_solve"] is None
    assert metrics["stop_reason"] == "max_samples" and metrics["samples_seen"] == 1024
    assert [c["samples"] for c in metrics["curve"]] == [512, 1024] and "not solved within budget" in result["message"]


def test_checkpoint_resumes_where_it_stopped(tmp_path):
    checkpoint = tmp_path / "run.pt"
    first = train.train_point(_point(max_samples=1024, eval_every=512, stop=False), checkpoint, log=lambda line: None)
    assert checkpoint.exists() and first["metrics"]["samples_seen"] == 1024
    # the same point again: continues from the checkpoint, counting samples up from where it was
    again = train.train_point(_point(max_samples=1024, eval_every=512, stop=False), checkpoint, log=lambda line: None)
    assert again["metrics"]["resumed"] == 1 and again["metrics"]["samples_seen"] == 1024
    assert again["metrics"]["curve"] == first["metrics"]["curve"]
    # another point never reads it
    other = train.train_point(_point(max_samples=512, eval_every=512, seed=1), checkpoint, log=lambda line: None)
    assert other["metrics"]["resumed"] == 0


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_training_sweep):
    out = tmp_path / "out"
    # the tiny training sweep (tests/conftest.py): memorization of 2 symbols, 512 samples, L = 1, M = 8
    sweep = tiny_training_sweep(["fake_nan", "lstm_shared"], plugins=[str(FAKES)])
    # as a user runs it (and so the fakes register in the CLI's process, not this one)
    run = subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    df = results.load(out).set_index("impl")
    assert df.loc["fake_nan", "status"] == "diverged" and "NaN or infinite" in df.loc["fake_nan", "message"]
    assert df.loc["fake_nan", "samples_seen"] >= 32 and df.loc["fake_nan", "stop_reason"] == "diverged"
    assert df.loc["lstm_shared", "status"] == "ok" and df.loc["lstm_shared", "samples_seen"] == 512
    assert (out / "report.html").exists() and not list((out / "checkpoints").glob("*.pt"))


RESUME_SWEEP = """
implementations = ["tlstm_fused"]
pair = "depth"
[train]
task = "memorization"
length = 3
alphabet = 3
batch = 16
eval_every = 256
eval_samples = 64
max_samples = 6144
stop_when_solved = false
[budget]
threads = 1
[axes]
depth = [2]
channels = [16]
"""


def test_kill_9_mid_training_then_resume_continues_from_the_checkpoint(tmp_path):
    sweep, out = _write(tmp_path, RESUME_SWEEP), tmp_path / "out"
    runner = subprocess.Popen([str(CLI), "run", str(sweep), "--out", str(out), "--quiet", "--no-report"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    checkpoints = out / "checkpoints"
    deadline = time.monotonic() + 120
    seen = 0
    while time.monotonic() < deadline and runner.poll() is None:
        found = list(checkpoints.glob("*.pt")) if checkpoints.exists() else []
        if found:
            try:
                seen = torch.load(found[0], weights_only=True)["state"]["samples"]
            except Exception:  # caught mid-replace: look again
                seen = 0
            if seen >= 1024:
                break
        time.sleep(0.1)
    assert runner.poll() is None and seen >= 1024, f"no checkpoint in time: {runner.stderr.read().decode()[-2000:]}"
    os.kill(runner.pid, signal.SIGKILL)  # the runner; its worker notices and stops within a second
    runner.wait()
    runner.stderr.close()
    time.sleep(1.5)
    assert results.read_records(out / "results.jsonl") == []  # nothing was recorded for the killed run
    resumed = subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--resume", "--quiet", "--no-report"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (row,) = results.load(out).to_dict("records")
    assert row["status"] == "ok" and row["resumed"] == 1 and row["samples_seen"] == 6144
    samples = [c["samples"] for c in row["curve"]]
    assert samples == list(range(256, 6144 + 1, 256))  # one evaluation every 256 samples, none lost or repeated
    assert not list(checkpoints.glob("*.pt"))
