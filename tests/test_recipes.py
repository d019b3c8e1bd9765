"""The contributors' recipes (CONTRIBUTING.md, "Where does my change go"), each done from inside this file.

Each test makes one kind of change the way the recipe says, in one place, and checks that the rest of
the suite picks it up untouched: a new implementation (registered in a plugin and swept), a new axis (one
entry in ``bench.axes.AXES``), a new metric (one entry in ``bench.metrics.METRICS``), a new figure (one
function in ``reports.figures.TIMING_FIGURES``) and a new training task (one class with ``@task``, trained
through a one-point sweep).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

import reports
from bench import cli, results

# A toy implementation, registered the way a new one is: one decorated builder (here: the reference tLSTM
# under a new name, with its own style). Written to a plugin file so that the CLI and every worker import it.
TOY_IMPLEMENTATION = '''
import implementations
from implementations.tlstm_naive import TLSTMNaive


@implementations.register("toy_tlstm", family="tlstm", description="the reference tLSTM under a new name",
                          style=("#8c564b", "X"))
def build_toy(config, *, device, dtype):
    return TLSTMNaive.from_config(config, device=device, dtype=dtype)
'''

# A toy task, registered the way a new one is: one class with @task. Each step's target is its input
# symbol (so T = S, every step scored), over an alphabet of 2.
TOY_TASK = '''
from bench.tasks import Task, task


@task("echo", sizes={"length": ("S", 1, 64)})
class Echo(Task):
    input_symbols = property(lambda self: 2)
    output_symbols = property(lambda self: 2)
    seq_len = property(lambda self: self.length)
    scored_steps = property(lambda self: self.length)

    def generate(self, n, generator):
        import torch

        inputs = torch.randint(0, 2, (n, self.length), generator=generator)
        return inputs, inputs.clone(), torch.ones_like(inputs, dtype=torch.bool)
'''

TIMING_SWEEP = """
implementations = {impls}
plugins = {plugins}
[budget]
repeats = 3
warmup = 1
energy = false
timeout_s = 120
[axes]
mode = ["inference"]
tensor_size = [1, 2]
seq_len = [4]
batch = [1]
channels = [4]
input_size = [3]
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _run(tmp_path: Path, sweep: Path, *extra: str) -> tuple[pd.DataFrame, Path]:
    out = tmp_path / "out"
    assert cli.main(["run", str(sweep), "--out", str(out), *extra]) == 0
    return results.load(out / "results.jsonl"), out


def test_recipe_new_implementation_is_registered_and_swept(tmp_path):
    plugin = _write(tmp_path / "toy_impl.py", TOY_IMPLEMENTATION)
    sweep = _write(tmp_path / "toy.toml", TIMING_SWEEP.format(impls=json.dumps(["toy_tlstm", "tlstm_naive"]),
                                                             plugins=json.dumps([str(plugin)])))
    df, out = _run(tmp_path, sweep)
    toy = df[df["impl"] == "toy_tlstm"]
    assert list(toy["status"]) == ["ok", "ok"] and set(toy["tensor_size"]) == {1, 2}
    assert (toy["params"] == df[df["impl"] == "tlstm_naive"]["params"].to_numpy()).all()
    assert "toy_tlstm" in (out / "report.html").read_text()
    speedups = reports.matched_speedups(reports.normalize(df))
    toy_over = speedups[speedups["impl"] == "toy_tlstm"]
    assert set(toy_over["reference"]) == {"tlstm_naive"}  # its speedup over the family's reference


def _python(tmp_path: Path, script: str) -> str:
    """Run ``script`` in a fresh interpreter (a change to a table must come before the modules that read it)."""
    path = _write(tmp_path / "script.py", script)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_recipe_new_axis_is_one_entry_in_the_table(tmp_path):
    # a timing axis that splits comparison groups and report slices: nothing but the table entry is added
    out = _python(tmp_path, """
        import json
        from bench import axes
        axes.AXES.insert(3, axes.Axis("toy_axis", "int", (1, 8), (1,), frozenset({"timing", "group", "slice",
                                                                                "match"}), "Y", absent=1))
        from bench import contract, results, runner
        from bench.sweep import Sweep
        from reports import claims, data, figures

        sweep = Sweep.from_dict({"implementations": ["tlstm_naive", "lstm_cudnn"],
                                 "axes": {"tensor_size": [1], "toy_axis": [1, 2]}}, name="toy", source="toy.toml")
        points = sweep.points(cuda_available=False)
        assert [p.toy_axis for p in points] == [1, 1, 2, 2], points
        groups = runner.comparison_groups(points)
        assert [[p.impl for _, p in g] for g in groups] == [["tlstm_naive", "lstm_cudnn"]] * 2
        default = next(p for p in points if p.toy_axis == 1)
        assert default.key == contract.Point.from_dict({k: v for k, v in default.as_dict().items()
                                                         if k != "toy_axis"}).key  # older keys hold
        assert "Y=2" in points[2].describe()
        with open("results.jsonl", "w") as f:
            for i, p in enumerate(points):
                f.write(json.dumps(contract.make_record(p, status="ok", message="", samples_s=[1e-3, 1.1e-3],
                                                        metrics={}, env={}, sweep="toy", index=i,
                                                        started_at=None)) + "\\n")
        df = data.normalize(results.load("results.jsonl"))
        assert sorted(df["toy_axis"]) == [1, 1, 2, 2] and df["toy_axis"].dtype == float
        assert "toy_axis" in claims.SLICE_FIELDS and "toy_axis" in figures.MATCH_KEYS
        print("ok")
    """)
    assert out.strip() == "ok"


def test_recipe_new_metric_is_one_entry_in_the_table(tmp_path):
    out = _python(tmp_path, """
        import json
        from bench import metrics
        metrics.METRICS["toy_metric_s"] = "number"
        from bench import contract, results
        from bench.sweep import Sweep

        point = Sweep.from_dict({"implementations": ["tlstm_naive"], "axes": {"tensor_size": [1]}}, name="toy",
                                source="toy.toml").points(cuda_available=False)[0]
        record = contract.make_record(point, status="ok", message="", samples_s=[1e-3], sweep="toy", index=0,
                                      metrics={"toy_metric_s": 2}, env={}, started_at=None)
        with open("results.jsonl", "w") as f:
            f.write(json.dumps(record) + "\\n")
        df = results.load("results.jsonl")
        assert df["toy_metric_s"].tolist() == [2.0] and "toy_metric_s" in contract.NUMERIC_COLUMNS
        print("ok")
    """)
    assert out.strip() == "ok"


def test_recipe_new_figure_is_one_function_in_the_list(tmp_path, monkeypatch):
    from reports import figures, html
    from tests.report_synthetic import make_results

    def fig_toy(ok: pd.DataFrame, env: dict) -> figures.Figure:
        return figures.Figure("toy", "A toy figure", f"{len(ok)} timed points",
                              figures.png(figures.plt.figure(figsize=(2, 2))))

    monkeypatch.setattr(figures, "TIMING_FIGURES", [*figures.TIMING_FIGURES, fig_toy])
    report = tmp_path / "report.html"
    html.build_report(make_results(), report)
    text = report.read_text()
    assert "A toy figure" in text and len(list((tmp_path / "report_figures").glob("*_toy.png"))) == 1


def test_recipe_new_task_is_registered_and_trained_through_a_one_point_sweep(tmp_path, capsys):
    plugin = _write(tmp_path / "toy_task.py", TOY_TASK)
    sweep = _write(tmp_path / "echo.toml", f"""
        implementations = ["tlstm_naive"]
        plugins = [{json.dumps(str(plugin))}]
        pair = "depth"
        [train]
        task = "echo"
        length = 3
        seeds = [0]
        batch = 16
        lr = 0.01
        eval_every = 128
        eval_samples = 64
        max_samples = 256
        [axes]
        depth = [1]
        channels = [4]
    """)
    df, out = _run(tmp_path, sweep)
    (row,) = df.itertuples()
    assert row.status == "ok" and row.train["task"] == "echo" and row.train["length"] == 3
    assert row.seq_len == 3 and row.input_size == 2 and row.samples_seen >= 256
    assert "echo S=3" in capsys.readouterr().err  # the progress line
    assert "echo S=3" in (out / "report.html").read_text()
