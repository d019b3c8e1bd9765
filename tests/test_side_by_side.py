"""Training runs side by side (``budget.workers``): the same runs and curves as one at a time, each line once;
refused where it cannot work; interrupted, the runs in flight go on from their checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import results
from bench.sweep import SweepError, load_sweep
from tests.conftest import tiny_sweep_text, tiny_training_sweep_text
from tests.test_capacity import RESUME_SWEEP

CLI = Path(sys.executable).parent / "tlstm-bench"
TWO_CORES = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="runs side by side need 2 cores")


def _run(sweep: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--quiet", "--no-report", *extra],
                          capture_output=True, text=True, timeout=600)


def _curves(out: Path) -> dict[str, list]:
    """Each run's curve without its times: samples, loss and accuracies per evaluation."""
    return {r["key"]: [{k: v for k, v in c.items() if k != "wall_s"} for c in r["metrics"]["curve"]]
            for r in results.read_records(out)}


@TWO_CORES
def test_runs_side_by_side_give_the_same_runs_as_one_at_a_time(tmp_path):
    text = tiny_training_sweep_text(["tlstm_naive", "lstm_shared"], train={"seeds": [0, 1]}, budget={"threads": 1})
    (tmp_path / "one.toml").write_text(text)
    (tmp_path / "two.toml").write_text(text.replace("threads = 1", "threads = 1\nworkers = 2"))
    one, two = _run(tmp_path / "one.toml", tmp_path / "one"), _run(tmp_path / "two.toml", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    records = results.read_records(tmp_path / "two")
    assert len(records) == len({r["key"] for r in records}) == 4
    assert {r["metrics"].get("side_by_side") for r in records} == {2}
    assert (results.load(tmp_path / "two")["side_by_side"] == 2).all()  # a column the report reads
    assert _curves(tmp_path / "one") == _curves(tmp_path / "two")  # seeded, one thread each: the same runs
    assert (tmp_path / "two" / "worker-1.log").exists()


def test_runs_side_by_side_are_refused_where_they_cannot_work(tmp_path):
    timing = tmp_path / "timing.toml"
    timing.write_text(tiny_sweep_text(budget={"workers": 2}))
    with pytest.raises(SweepError, match=r"budget\.workers.*only for training sweeps"):
        load_sweep(str(timing))
    timing.write_text(tiny_sweep_text())
    with pytest.raises(SweepError, match="workers.*only for training sweeps"):
        load_sweep(str(timing), ["workers=2"])
    training = tmp_path / "train.toml"
    training.write_text(tiny_training_sweep_text(budget={"workers": 2}))
    with pytest.raises(SweepError, match=r"budget\.workers.*budget\.threads = 1"):
        load_sweep(str(training))  # threads = 0: each run would take every core
    training.write_text(tiny_training_sweep_text(budget={"threads": 1}))
    with pytest.raises(SweepError, match="workers"):
        load_sweep(str(training), ["workers=0"])
    assert load_sweep(str(training), ["workers=2"]).budget["workers"] == 2


# test_capacity's resumable run, from two seeds side by side, long enough to be caught with both in flight
LONG = (RESUME_SWEEP.replace("eval_every = 256", "seeds = [0, 1]\neval_every = 1024")
        .replace("max_samples = 6144", "max_samples = 49152").replace("threads = 1", "threads = 1\nworkers = 2"))


@TWO_CORES
def test_interrupted_runs_side_by_side_go_on_from_their_checkpoints(tmp_path):
    sweep, out = tmp_path / "long.toml", tmp_path / "out"
    sweep.write_text(LONG)
    runner = subprocess.Popen([str(CLI), "run", str(sweep), "--out", str(out), "--quiet", "--no-report"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list((out / "checkpoints").glob("*.pt"))) < 2:
        time.sleep(0.05)
    assert len(list((out / "checkpoints").glob("*.pt"))) == 2, "both runs in flight"
    runner.send_signal(signal.SIGTERM)  # as Ctrl-C: the runs in flight are dropped, their checkpoints kept
    _, err = runner.communicate(timeout=60)
    assert runner.returncode != 0 and "interrupted" in err, err
    assert results.read_records(out / "results.jsonl") == []
    resumed = _run(sweep, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    rows = results.load(out).to_dict("records")
    assert len(rows) == 2 and all(r["status"] == "ok" and r["resumed"] == 1 for r in rows)
    for row in rows:
        assert [c["samples"] for c in row["curve"]] == list(range(1024, 49152 + 1, 1024))  # none lost or twice
    assert json.loads((out / "sweep.json").read_text())["budget"]["workers"] == 2
