"""The ``tlstm-bench`` commands: list, run's report step and summary table, report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import implementations
from bench import cli, results
from bench.sweep import shipped_sweeps


def test_list_shows_every_implementation_and_sweep(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in implementations.names():
        assert f"  {name} " in out
    for name in shipped_sweeps():
        assert f"  {name} " in out
    assert "cuda: no (no CUDA GPU is available)" in out or "cuda: yes" in out
    assert "points" in out


TINY = """
implementations = ["tlstm_naive", "lstm_cudnn"]
[budget]
repeats = 2
warmup = 0
energy = false
threads = 1
[axes]
tensor_size = [1, 2]
seq_len = [3]
batch = [2]
channels = [4]
input_size = [3]
device = ["cpu"]
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real tiny sweep (4 points), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("tiny")
    sweep = tmp / "tiny.toml"
    sweep.write_text(TINY)
    out = tmp / "out"
    code = cli.main(["run", str(sweep), "--out", str(out), "--no-report", "--quiet"])
    return code, out


def test_run_writes_results_sweep_json_and_table(tiny_run, capsys):
    code, out = tiny_run
    assert code == 0
    df = results.load(out)
    assert len(df) == 4 and (df["status"] == "ok").all(), df[["impl", "status", "message"]]
    assert set(df["backend"]) == {"eager", "mkldnn"}
    assert (df["time_per_step_s"] > 0).all() and (df["flops"] > 0).all()
    assert df.attrs["sweep"]["command"].startswith("tlstm-bench run") and df.attrs["sweep"]["name"] == "tiny"
    assert df.attrs["env"]["matmul_gflops"]["cpu:float32"] > 0
    table = cli.summary_table(df)
    assert "P=1" in table and "P=2" in table and "tlstm_naive training" in table and "lstm_cudnn training" in table


def test_report_failure_keeps_results_and_exits_nonzero(tiny_run, monkeypatch, capsys, tmp_path):
    _, out = tiny_run
    import reports

    def broken(df, path):
        raise RuntimeError("no plotting today")

    monkeypatch.setattr(reports, "build_report", broken, raising=False)
    assert cli.main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "report was not built" in err and "no plotting today" in err and "results are kept" in err
    assert (out / "results.jsonl").exists()


def test_report_passes_the_loaded_frame(tiny_run, monkeypatch, capsys, tmp_path):
    _, out = tiny_run
    import reports

    seen = {}

    def fake_build(df: pd.DataFrame, path: Path) -> Path:
        seen["df"], seen["path"] = df, path
        path.write_text("<html></html>")
        return path

    monkeypatch.setattr(reports, "build_report", fake_build, raising=False)
    assert cli.main(["report", str(out / "results.jsonl")]) == 0
    assert seen["path"] == out / "report.html" and len(seen["df"]) == 4
    assert seen["df"].attrs["sweep"]["name"] == "tiny"
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


def test_report_refuses_missing_results(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "no results file" in capsys.readouterr().err
    assert cli.main(["report"]) == 2
    assert "give RESULTS" in capsys.readouterr().err


def test_resume_of_a_finished_run_runs_nothing(tiny_run, capsys):
    _, out = tiny_run
    before = (out / "results.jsonl").read_text()
    sweep = Path(json.loads((out / "sweep.json").read_text())["source"])
    assert cli.main(["run", str(sweep), "--out", str(out), "--resume", "--no-report", "--quiet"]) == 0
    assert (out / "results.jsonl").read_text() == before
    assert "4 already done, 0 run" in capsys.readouterr().out
