"""Sweeps you can trust: faults become rows and the sweep goes on; kill -9 and --resume lose nothing.

The fake implementations live in ``tests/fake_impls.py`` and are loaded as a sweep plugin, so the
worker processes register them too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import implementations
from bench import cli, results
from bench.contract import COLUMNS, RECORD_FIELDS, SCHEMA_VERSION, Point
from tests.conftest import tiny_sweep_text

REPO = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fake_impls.py"


def _write_sweep(path: Path, impls: list[str], tensor_sizes: list[int], timeout_s: float = 60.0) -> Path:
    path.write_text(tiny_sweep_text(impls, plugins=[str(FAKES)], seed=3, budget={"timeout_s": timeout_s},
                                    axes={"tensor_size": tensor_sizes}))
    return path


@pytest.fixture
def fakes_cleanup():
    """The plugin registers fakes in this process too (the CLI validates names): remove them after."""
    yield
    for name in implementations.names("fake_*"):
        implementations.unregister(name)
    for module in [m for m in sys.modules if m.startswith("tlstm_plugin_")]:
        del sys.modules[module]


def test_faults_become_rows_and_the_sweep_goes_on(tmp_path, fakes_cleanup, capsys):
    impls = ["fake_ok", "fake_oom", "fake_abort", "fake_hang", "fake_wrong", "fake_error", "fake_unavailable",
             "lstm_cudnn"]
    sweep = _write_sweep(tmp_path / "faults.toml", impls, [2], timeout_s=5.0)
    out = tmp_path / "out"
    code = cli.main(["run", str(sweep), "--out", str(out), "--no-report", "--quiet"])
    assert code == 0
    df = results.load(out)
    status = dict(zip(df["impl"], df["status"]))
    assert status == {
        "fake_ok": "ok",
        "fake_oom": "oom",
        "fake_abort": "crashed",
        "fake_hang": "timeout",
        "fake_wrong": "incorrect",
        "fake_error": "error",
        "fake_unavailable": "unavailable",
        "lstm_cudnn": "ok",
    }
    message = dict(zip(df["impl"], df["message"]))
    assert "SIGABRT" in message["fake_abort"]
    assert "timeout_s = 5" in message["fake_hang"]
    assert "out of memory" in message["fake_oom"]
    assert "needs hardware this machine lacks" in message["fake_unavailable"]
    assert "ValueError" in message["fake_error"] and "rejected its arguments" in message["fake_error"]
    assert "tolerance" in message["fake_wrong"]
    # an incorrect point is not timed; an ok one has its samples and metrics
    wrong = df[df["impl"] == "fake_wrong"].iloc[0]
    assert len(wrong["samples_s"]) == 0 and wrong["max_abs_err"] > 0.05
    ok = df[df["impl"] == "fake_ok"].iloc[0]
    assert len(ok["samples_s"]) == 2 and ok["time_median_s"] > 0 and ok["max_abs_err"] < 1e-5
    assert ok["saved_bytes"] > 0 and ok["params"] == implementations.tlstm_param_count(
        implementations.ModelConfig(3, 4, 2))
    # the points after the crash and the hang were measured by a fresh worker
    assert df["index"].tolist() == list(range(len(impls)))
    assert list(df.columns) == list(COLUMNS)
    assert set(results.read_records(out)[0]) == set(RECORD_FIELDS) and (df["schema"] == SCHEMA_VERSION).all()
    assert df.attrs["env"]["threads"] == 1 and df.attrs["sweep"]["plugins"] == [str(FAKES)]
    captured = capsys.readouterr()
    assert "results:" in captured.out and "crashed 1" in captured.out


def _keys(path: Path) -> list[str]:
    return [r["key"] for r in map(json.loads, path.read_text().splitlines()) if "key" in r]  # not env lines


def test_sigkill_halfway_then_resume_has_every_point_once(tmp_path):
    sweep = _write_sweep(tmp_path / "slow.toml", ["fake_slow"], [1, 2, 3, 4, 5, 6, 7, 8])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.cli", "run", str(sweep), "--out", str(out), "--no-report", "--quiet"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(results.read_records(path)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _keys(path)
    assert 3 <= len(done_before) < 8
    with open(path, "a") as f:  # what a kill in the middle of a write leaves behind
        f.write('{"key": "torn-line", "sweep": "slow", "sta')
    assert len(results.read_records(path)) == len(done_before)  # readers ignore a torn last line

    resumed = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    keys = _keys(path)  # every line parses: the torn one was cut off, not left in the middle
    assert len(keys) == len(set(keys)) == 8
    assert keys[: len(done_before)] == done_before
    df = results.load(out)
    assert sorted(df["index"]) == list(range(8)) and (df["status"] == "ok").all()
    assert sorted(df["tensor_size"]) == list(range(1, 9))
    assert f"{len(done_before)} already done" in resumed.stdout
    sweep_json = json.loads((out / "sweep.json").read_text())
    assert sweep_json["command"].startswith("tlstm-bench run") and "--resume" in sweep_json["resumed_with"][0]


def test_load_repairs_and_keys(tmp_path):
    path = tmp_path / "results.jsonl"
    point = Point(impl="x", family="tlstm", tensor_size=2, depth=2, seq_len=4, batch=1, channels=3, input_size=2,
                  kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training", device="cpu", repeats=2,
                  warmup=0, seed=0)
    config = point.as_dict()
    record = {"key": point.key, "sweep": "s", "index": 0, "config": config, "status": "ok",
              "message": "", "samples_s": [0.1, 0.2], "metrics": {"time_median_s": 0.15}, "env": {"torch": "t"}}
    results.append(path, record)
    results.append(path, {**record, "index": 1, "key": "other", "status": "timeout", "metrics": {}})
    with open(path, "a") as f:
        f.write('{"key": "half')
    df = results.load(path)
    assert len(df) == 2 and df.attrs["env"] == {"torch": "t"} and df.attrs["sweep"] == {}
    assert list(df.loc[0, "samples_s"]) == pytest.approx([0.1, 0.2]) and pd.isna(df.loc[1, "time_median_s"])
    assert pd.isna(df.loc[1, "gflops"]) and df.loc[0, "tensor_size"] == 2
    kept = results.repair(path)
    assert len(kept) == 2 and path.read_text().endswith("}\n")
    # the key is a function of the configuration only, order-independent
    assert Point.from_dict(dict(reversed(list(config.items())))).key == point.key
    assert Point.from_dict({**config, "depth": 3}).key != point.key


def test_ctrl_c_stops_worker_and_says_how_to_resume(tmp_path):
    sweep = _write_sweep(tmp_path / "slow.toml", ["fake_slow"], [1, 2, 3, 4, 5, 6, 7, 8])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.cli", "run", str(sweep), "--out", str(out), "--no-report", "--quiet",
               "--set", "repeats=3"]
    # a shell starts background jobs with SIGINT ignored; a user's Ctrl-C is not
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    path = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    err = proc.stderr.read()
    assert "interrupted" in err and "--resume" in err and "--set repeats=3" in err and str(out) in err
    assert 1 <= len(results.read_records(path)) < 8


def test_processes_interleave_rounds_and_merge_into_one_row(tmp_path, fakes_cleanup, capsys):
    sweep = _write_sweep(tmp_path / "p.toml", ["fake_ok", "lstm_cudnn"], [1, 2])
    out = tmp_path / "out"
    argv = ["run", str(sweep), "--out", str(out), "--no-report", "--quiet", "--set", "processes=3"]
    assert cli.main(argv) == 0
    records = results.read_records(out)
    # per comparison group (one tensor size): round 0 of both implementations, then round 1, then round 2
    order = [(r["config"]["tensor_size"], r["process"], r["config"]["impl"]) for r in records]
    assert order == [(p, r, i) for p in (1, 2) for r in range(3) for i in ("fake_ok", "lstm_cudnn")]
    df = results.load(out)
    assert len(df) == 4 and (df["processes"] == 3).all()
    for _, row in df.iterrows():
        assert sorted(set(row["sample_processes"])) == [0, 1, 2] and len(row["samples_s"]) == 3 * 2
        assert row["process_spread"] >= 0 and isinstance(row["processes_disagree"], bool)
    # a process killed before its record: --resume measures only what is missing
    kept = [line for line in (out / "results.jsonl").read_text().splitlines()
            if json.loads(line).get("process") != 2]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    assert cli.main(argv + ["--resume"]) == 0
    again = results.read_records(out)
    assert len(again) == 12 and sorted(r["process"] for r in again[8:]) == [2, 2, 2, 2]
    assert "8 already done, 4 run" in capsys.readouterr().out  # 8 of the 12 measurements were kept
