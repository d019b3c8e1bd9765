"""What is read from disk passes as data only when it is data, and a run ended by SIGTERM can be resumed: each
test is a failing reproduction of a defect a hostile probe found (issue 23), then the behaviour that replaced it.

- impossible timings (NaN, inf, negative, zero, 1e308) in ``samples_s`` passed as data: the report said
  "no, 34.8x less growth [0, 0]" and ``compare`` "same 1.000 [nan, nan]" and exited 0;
- ``report`` of an empty file, of /dev/null (it wrote /dev/report.html) or of a sweep.json (after 68 warning
  lines) did not refuse in one line;
- ``compare`` of two training folders said "no point is ok in both runs";
- SIGTERM ended a run silently with exit 143, without the line saying how to continue it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench import cli, results
from tests.test_capacity import CLI

EXAMPLES = Path(__file__).resolve().parent.parent / "reports" / "examples"


def _copy(example: str, into: Path) -> Path:
    out = into / example
    out.mkdir(parents=True)
    for name in ("results.jsonl", "sweep.json"):
        shutil.copy(EXAMPLES / example / name, out / name)
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e-3, 0.0, 1e308])
def test_a_line_with_impossible_timings_is_skipped_with_its_number(tmp_path, value):
    out = _copy("cpu-quick", tmp_path)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["samples_s"][0] = value
    lines[2] = json.dumps(record) + "\n"
    (out / "results.jsonl").write_text("".join(lines))
    with pytest.warns(results.ResultsWarning, match="line 3 skipped: 'samples_s' holds"):
        df = results.load(out)
    # the example measured each point in 3 worker processes: the point keeps the other two's samples
    (row,) = df[df["key"] == record["key"]].itertuples()
    assert row.processes == 2 and record["process"] not in row.sample_processes and row.time_median_s > 0


def test_a_stored_median_that_is_not_its_samples_median_is_skipped(tmp_path):
    out = _copy("cpu-quick", tmp_path)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["metrics"]["time_median_s"] *= 3
    lines[0] = json.dumps(record) + "\n"
    (out / "results.jsonl").write_text("".join(lines))
    with pytest.warns(results.ResultsWarning, match="line 1 skipped: metric 'time_median_s'"):
        df = results.load(out)
    assert df[df["key"] == record["key"]]["processes"].tolist() == [2]


@pytest.mark.parametrize("what", ["an empty file", "a device", "a sweep.json"])
def test_report_refuses_what_is_not_results_in_one_line_and_writes_nothing(tmp_path, capfd, what):
    if what == "an empty file":
        target = tmp_path / "results.jsonl"
        target.write_text("")
    elif what == "a device":
        target = Path(os.devnull)
    else:
        target = _copy("cpu-quick", tmp_path) / "sweep.json"
    before = set(target.parent.iterdir()) if target.parent != Path("/dev") else None
    assert cli.main(["report", str(target)]) == cli.EXIT_USAGE
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(target) in err, err
    assert not Path("/dev/report.html").exists()
    if before is not None:
        assert set(target.parent.iterdir()) == before


def test_compare_of_training_runs_says_it_compares_timing_runs(tmp_path, capfd):
    out = _copy("cpu-capacity", tmp_path)
    assert cli.main(["compare", str(out), str(out)]) == cli.EXIT_USAGE
    err = capfd.readouterr().err
    assert "compares timing runs" in err and "BASE and NEW hold(s) training runs only" in err


def test_sigterm_ends_a_run_like_ctrl_c_with_the_line_that_continues_it(tmp_path, tiny_sweep):
    sweep, out = tiny_sweep(["fake_slow", "tlstm_naive"], plugins=[str(Path(__file__).parent / "fake_impls.py")],
                            budget={"repeats": 40}, axes={"tensor_size": [1, 2, 3]}), tmp_path / "out"
    run = subprocess.Popen([str(CLI), "run", str(sweep), "--out", str(out), "--no-report", "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not results.read_records(out / "results.jsonl"):
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == cli.EXIT_TERMINATED, err
    assert "interrupted; finished points are in" in err and "--resume" in err
    done = len(results.read_records(out / "results.jsonl"))
    assert 1 <= done < 6
    resumed = subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--resume", "--no-report", "--quiet"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    df = results.load(out)
    assert len(df) == 6 and set(df["status"]) == {"ok"}
