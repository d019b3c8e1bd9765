"""The ``tlstm-bench`` commands: list, run's report step and summary table, report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import implementations
from bench import cli, results
from bench.sweep import shipped_sweeps
from tests.conftest import tiny_sweep_text


def test_list_shows_every_implementation_and_sweep(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in implementations.names():
        assert f"  {name} " in out
    for name in shipped_sweeps():
        assert f"  {name} " in out
    assert "cuda: no (no CUDA GPU is available)" in out or "cuda: yes" in out
    assert "points" in out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real tiny sweep (4 points), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("tiny")
    sweep = tmp / "tiny.toml"
    sweep.write_text(tiny_sweep_text(["tlstm_naive", "lstm_cudnn"], axes={"seq_len": [3]}))
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


def _timing_rows(**vary) -> pd.DataFrame:
    """Hand-built ok timing points, tlstm_naive and lstm_cudnn at P = 1, 2, one per combination of the
    ``vary`` values; time per step = 1 ms * P * 2 ** (index of each varied value), so every point's
    figure is distinct and a median of two of them would show."""
    import itertools

    base = dict(device="cpu", dtype="float32", mode="training", kernel_size=3, mem_conv=True, norm=None, dims=2,
                batch=4, seq_len=8, input_size=3, repeats=2, warmup=0, seed=0, train=None, status="ok")
    rows = []
    for impl, family in (("tlstm_naive", "tlstm"), ("lstm_cudnn", "lstm")):
        for combo in itertools.product(*(list(enumerate(v)) for v in vary.values())):
            for p in (1, 2):
                scale = 2 ** sum(i for i, _ in combo)
                rows.append({**base, **{name: value for name, (_, value) in zip(vary, combo)}, "impl": impl,
                             "family": family, "tensor_size": p, "depth": p,
                             # a stacked LSTM's width is paired with each P: it varies along the columns only
                             "channels": 4 if family == "tlstm" else 3 + p,
                             "time_per_step_s": 1e-3 * p * scale})
    return pd.DataFrame(rows)


def _table_rows(table: str) -> dict[str, list[str]]:
    """The summary table's rows: name -> the figures of its cells."""
    import re

    lines = table.splitlines()[1:]
    return {parts[0]: parts[1:] for parts in (re.split(r"\s{2,}", line.strip()) for line in lines)}


def test_summary_table_gives_each_configuration_its_own_row():
    # one dtype, one batch: a row per implementation and mode, as before
    rows = _table_rows(cli.summary_table(_timing_rows()))
    assert rows == {"lstm_cudnn training": ["1 ms", "2 ms"], "tlstm_naive training": ["1 ms", "2 ms"]}
    # --set dtype=float32,bfloat16: a row per dtype, not their median
    rows = _table_rows(cli.summary_table(_timing_rows(dtype=["float32", "bfloat16"])))
    assert rows["tlstm_naive training, float32"] == ["1 ms", "2 ms"]
    assert rows["tlstm_naive training, bfloat16"] == ["2 ms", "4 ms"]
    assert rows["lstm_cudnn training, bfloat16"] == ["2 ms", "4 ms"] and len(rows) == 4
    # any other axis the run varies too (device, batch, seq_len, ...), rows in the order of its values
    rows = _table_rows(cli.summary_table(_timing_rows(device=["cpu", "cuda"], batch=[16, 2], seq_len=[8, 32])))
    assert len(rows) == 2 * 2 * 2 * 2
    assert rows["lstm_cudnn training, cuda, B=2, T=32"] == ["8 ms", "16 ms"]
    names = [name for name in rows if name.startswith("tlstm_naive training, cpu, ")]
    assert names == [f"tlstm_naive training, cpu, B={b}, T={t}" for b in (2, 16) for t in (8, 32)]
