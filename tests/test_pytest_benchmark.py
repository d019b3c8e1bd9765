"""The pytest-benchmark benchmarks in ``bench/``: collection rules, a tiny real run, its JSON, the
regression check, and ``bench.pytest_benchmark_file.load`` on hand-made files.

The real runs are subprocesses (``pytest bench ...``) on the ``tiny`` sweep with the two built-in
implementations that need no compiler: each takes seconds, most of it starting Python and torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import implementations
from bench import pytest_benchmark_file, pytest_plugin
from bench.contract import COLUMNS, CONFIG_FIELDS, ENV_FIELDS, Point, point_timing_metrics
from bench.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
FAST_IMPLS = "tlstm_naive,lstm_cudnn"
EXTRA_INFO_FIELDS = (
    "config", "model_config", "key", "gate", "params", "hidden_units", "backend", "flops", "gflops",
    "time_per_step_s", "peak_mem_bytes", "saved_bytes", "rss_peak_bytes", "max_abs_err",
)  # fmt: skip
MACHINE_INFO_FIELDS = (
    "torch", "cuda", "cudnn", "gpu_model", "cpu_model", "threads", "cudnn_allow_tf32", "matmul_allow_tf32",
    "cudnn_benchmark",
)  # fmt: skip


def run_pytest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m pytest ARGS`` from the repository root (so pyproject.toml's settings apply)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def collected_ids(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if "::" in line]


# --- collection --------------------------------------------------------------------------------


def test_benchmarks_are_the_points_of_the_sweep():
    result = run_pytest("bench", "--collect-only", "-q", "--tlstm-sweep", "quick")
    assert result.returncode == 0, result.stdout + result.stderr
    ids = [i for i in collected_ids(result) if "::test_benchmark[" in i]
    steps = [i for i in collected_ids(result) if "::test_training_step[" in i]
    # and one training-step benchmark per implementation, on the capacity sweep's task
    assert sorted(i.split("[", 1)[1].split("-L4-")[0] for i in steps) == implementations.names()
    for name in implementations.names():
        for mode in ("inference", "training"):
            assert any(f"[{name}-" in i and i.endswith(f"-{mode}]") for i in ids), (name, mode, ids)
    # one benchmark per point of the quick sweep, which has every implementation: one source of points
    points = load_sweep("quick").points()
    assert len(ids) == len(points) == 16 * len(implementations.names())
    from bench.test_benchmarks import point_id

    assert [i.split("[", 1)[1].rstrip("]") for i in ids] == [point_id(p) for p in points]


def test_plain_pytest_does_not_run_benchmarks_and_benchmark_only_runs_only_them():
    # The rules key on paths coming from `testpaths`; a narrower testpaths keeps this collection short.
    testpaths = ["-o", "testpaths=tests/test_config.py bench"]
    plain = run_pytest(*testpaths, "--collect-only", "-q")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    plain_ids = collected_ids(plain)
    assert plain_ids and all(i.startswith("tests/test_config.py::") for i in plain_ids)
    # the quick sweep's benchmarks and one training-step benchmark per implementation
    assert f"{17 * len(implementations.names())} deselected" in plain.stdout

    only = run_pytest(*testpaths, "--collect-only", "-q", "--benchmark-only", "--tlstm-grid", "tiny",
                      "--tlstm-impl", FAST_IMPLS)  # fmt: skip
    assert only.returncode == 0, only.stdout + only.stderr
    only_ids = collected_ids(only)
    assert len(only_ids) == 2 * 2 + 2 and all(i.startswith("bench/test_benchmarks.py::") for i in only_ids)
    assert f"{len(plain_ids)} deselected" in only.stdout


def test_bad_options_are_refused_before_collection():
    result = run_pytest("bench", "--collect-only", "-q", "--tlstm-impl", "tlstm_naive,tlstm_nope*")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "'tlstm_nope*' matches no registered implementation; registered: " in output
    assert all(name in output for name in implementations.names())
    sweep = run_pytest("bench", "--collect-only", "--tlstm-grid", "huge")
    assert sweep.returncode == pytest.ExitCode.USAGE_ERROR
    assert all(word in sweep.stderr for word in ("--tlstm-sweep huge", "tiny", "quick", "depth", "paper"))


class _Options:
    """Stands in for pytest.Config: the option readers only call getoption."""

    def __init__(self, **values) -> None:
        self.values = {"tlstm_sweep": "tiny", "tlstm_set": [], "tlstm_impl": [], "tlstm_device": None,
                       "tlstm_dtype": None, "tlstm_slowdown": [], "tlstm_threads": None, **values}

    def getoption(self, name: str):
        return self.values[name]


def test_option_readers():
    points = pytest_plugin.selected_points(_Options())
    assert points == load_sweep("tiny").points()
    assert {p.impl for p in pytest_plugin.selected_points(_Options(tlstm_impl=["lstm_*", "tlstm_naive"]))} == {
        "lstm_cudnn", "lstm_shared", "tlstm_naive"}
    narrowed = pytest_plugin.selected_points(_Options(tlstm_dtype="float64", tlstm_set=["batch=[1,3]"]))
    assert {p.dtype for p in narrowed} == {"float64"} and {p.batch for p in narrowed} == {1, 3}
    assert pytest_plugin.benchmark_threads(_Options()) == 1  # the tiny sweep's budget.threads
    assert pytest_plugin.benchmark_threads(_Options(tlstm_threads="2")) == 2
    slow = _Options(tlstm_slowdown=["tlstm_*=0.5", "lstm_cudnn=0.25,tlstm_naive=1"])
    assert pytest_plugin.slowdowns(slow) == {"tlstm_*": 0.5, "lstm_cudnn": 0.25, "tlstm_naive": 1.0}
    assert pytest_plugin.slowdown_for(slow, "tlstm_naive") == 1.5 and pytest_plugin.slowdown_for(slow, "x") == 0
    for bad in ("lstm_cudnn", "=1", "lstm_cudnn=-1", "lstm_cudnn=soon", "lstm_cudnn=nan", "lstm_cudnn=inf"):
        with pytest.raises(pytest.UsageError,
                           match=f"--tlstm-slowdown must be GLOB=SECONDS with SECONDS >= 0, got '{bad}'"):
            pytest_plugin.slowdowns(_Options(tlstm_slowdown=[bad]))
    for bad in ("two", "-1"):
        with pytest.raises(pytest.UsageError, match="budget.threads: must be an integer >= 0"):
            pytest_plugin.selected_points(_Options(tlstm_threads=bad))


# --- a tiny real run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("pb") / "tiny.json"
    result = run_pytest(
        "bench", "--benchmark-only", "--tlstm-grid", "tiny", "--tlstm-impl", FAST_IMPLS, "--tlstm-threads", "1",
        f"--benchmark-json={out}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_tiny_run_groups_implementations_side_by_side(tiny_run):
    path, result = tiny_run
    data = json.loads(path.read_text())
    groups: dict[str, set[str]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], set()).add(bench["extra_info"]["config"]["impl"])
    steps = groups.pop("training step: memorization S=6 V=4, L=4, budget 6,000")
    assert steps == {"lstm_cudnn", "tlstm_naive"}  # and the training step of each, side by side
    assert len(groups) == 2  # one size, two modes
    assert all(impls == {"tlstm_naive", "lstm_cudnn"} for impls in groups.values())
    for group in groups:
        assert f"benchmark '{group}'" in result.stdout  # the terminal table, one per group


def test_tiny_run_training_steps_carry_sizes_and_time_per_step(tiny_run):
    path, _ = tiny_run
    steps = [b for b in json.loads(path.read_text())["benchmarks"] if b["name"].startswith("test_training_step[")]
    assert steps
    for bench in steps:
        extra, config = bench["extra_info"], bench["extra_info"]["config"]
        assert extra["params"] == extra["core_params"] + extra["head_params"] and extra["core_params"] > 0
        assert extra["width"] == config["channels"] and extra["depth"] == config["depth"]
        assert extra["time_per_step_s"] == pytest.approx(bench["stats"]["median"] / config["seq_len"])
        assert extra["time_median_s"] == pytest.approx(bench["stats"]["median"])


def test_tiny_run_extra_info_and_machine_info(tiny_run):
    path, _ = tiny_run
    data = json.loads(path.read_text())
    data["benchmarks"] = [b for b in data["benchmarks"] if b["name"].startswith("test_benchmark[")]
    assert len(data["benchmarks"]) == 4
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        missing = [f for f in EXTRA_INFO_FIELDS if f not in extra]
        assert not missing, (bench["name"], missing)
        config = extra["config"]
        assert set(CONFIG_FIELDS) == set(config)
        assert extra["params"] > 0 and extra["flops"] > 0 and extra["gflops"] > 0
        assert extra["time_per_step_s"] == pytest.approx(bench["stats"]["median"] / config["seq_len"])
        assert extra["backend"] == ("eager" if config["impl"] == "tlstm_naive" else "mkldnn")
        assert bench["stats"]["rounds"] == config["repeats"]
        assert extra["gate"].startswith("gate vs ") and extra["max_abs_err"] < 1e-3
        assert extra["peak_mem_bytes"] is None  # the CUDA allocator's peak: none on the CPU
        if config["mode"] == "training":
            assert extra["saved_bytes"] > 0  # bytes saved for backward, measured in the separate pass
        else:
            assert extra["saved_bytes"] is None
    machine = data["machine_info"]
    assert all(f in machine for f in MACHINE_INFO_FIELDS), machine.keys()
    assert machine["threads"] == 1 and machine["torch"]  # --tlstm-threads 1, applied before anything ran


def test_tiny_run_loads_into_the_results_contract_and_the_report(tiny_run, tmp_path):
    path, _ = tiny_run
    df = pytest_benchmark_file.load(path)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert df["message"].str.startswith("gate vs ").all()
    assert (df["time_median_s"] > 0).all() and (df["gflops"] > 0).all()
    assert all(len(s) == r for s, r in zip(df["samples_s"], df["repeats"]))
    assert df["key"].is_unique
    assert df.attrs["env"]["torch"] and df.attrs["env"]["threads"] >= 1
    assert "--tlstm-grid tiny" in df.attrs["sweep"]["command"]
    import reports

    if not hasattr(reports, "build_report"):
        pytest.skip("reports.build_report does not exist yet")
    html = reports.build_report(df, tmp_path / "report.html")
    assert Path(html).is_file()


def test_compare_fail_catches_an_implementation_made_slower(tmp_path):
    # The honest way to make it slower: --tlstm-slowdown sleeps inside each timed call. 0.5 s against a
    # call of about 1 ms (250 ms seen when other work oversubscribes the cores) is far beyond the 5%
    # threshold and beyond the noise of a shared machine.
    common = ["bench", "--benchmark-only", "--tlstm-grid", "tiny", "--tlstm-impl", "lstm_cudnn", "-k", "inference",
              f"--benchmark-storage=file://{tmp_path}"]  # fmt: skip
    saved = run_pytest(*common, "--benchmark-save=base")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    slower_json = tmp_path / "slower.json"
    slower = run_pytest(*common, "--benchmark-compare=0001", "--benchmark-compare-fail=median:5%",
                        "--tlstm-slowdown", "lstm_cudnn=0.5", f"--benchmark-json={slower_json}")  # fmt: skip
    output = slower.stdout + slower.stderr
    assert slower.returncode != 0
    assert "Performance has regressed" in output
    assert "test_benchmark[lstm_cudnn-P2-T4-B2-M8-float32-inference] (0001_base) - Field 'median' has failed" in output
    # the sleep is inside every timed round, and recorded
    (bench,) = json.loads(slower_json.read_text())["benchmarks"]
    assert bench["extra_info"]["slowdown_s"] == 0.5
    assert min(bench["stats"]["data"]) >= 0.5


WRONG_TLSTM = """
import implementations
from implementations.tlstm_naive import TLSTMNaive


class TLSTMWrong(TLSTMNaive):
    def forward(self, x, state=None):
        y, (h, c) = super().forward(x, state)
        return y * 1.01, (h, c)  # a 1% error: far outside the float32 gate tolerance


@implementations.register("tlstm_wrong", family="tlstm", description="test-only: a wrong tLSTM")
def build(config, *, device, dtype):
    return TLSTMWrong(config.input_size, config.channels, config.tensor_size, config.kernel_size,
                      config.mem_conv, config.norm, device=device, dtype=dtype)
"""


def test_a_failing_gate_fails_the_benchmark_with_the_reason(tmp_path):
    (tmp_path / "wrong_tlstm_plugin.py").write_text(WRONG_TLSTM)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "wrong_tlstm_plugin", "bench",
         "--benchmark-only", "--tlstm-grid", "tiny", "--tlstm-impl", "tlstm_wrong", "-k", "inference"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed" in output and "skipped" not in output
    assert ("correctness gate failed, so tlstm_wrong-P2-T4-B2-M8-float32-inference is not timed: "
            "gate vs tlstm_naive") in output


# --- the converter on hand-made files ----------------------------------------------------------


def _hand_made(tmp_path: Path, **overrides) -> Path:
    config = dict(impl="tlstm_naive", family="tlstm", tensor_size=4, depth=4, seq_len=10, batch=2, channels=8,
                  input_size=8, kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training",
                  device="cpu", repeats=4, warmup=1, seed=0)  # fmt: skip
    bench = {
        "group": "P=4 L=4 T=10 B=2 M=8 training cpu",
        "name": "test_benchmark[tlstm_naive-P4-T10-B2-training]",
        "fullname": "bench/test_benchmarks.py::test_benchmark[tlstm_naive-P4-T10-B2-training]",
        "params": {},
        "extra_info": {"config": config, "params": 947, "hidden_size": 32, "backend": "eager", "flops": 4e6,
                       "saved_bytes": 1000, "peak_mem_bytes": None, "max_abs_err": 0.0},  # fmt: skip
        "stats": {"min": 0.01, "max": 0.04, "median": 0.02, "q1": 0.015, "q3": 0.025, "iqr": 0.01,
                  "rounds": 4, "data": [0.01, 0.015, 0.025, 0.04]},  # fmt: skip
    }
    data = {
        "machine_info": {"node": "box", "python_version": "3.11.7", "system": "Linux", "release": "6.1",
                         "machine": "x86_64", "cpu": {"brand_raw": "Some CPU"}, "torch": "2.13.0",
                         "cuda": None, "cudnn": None, "gpu_model": None, "threads": 2},  # fmt: skip
        "commit_info": {"id": "abc123"},
        "benchmarks": [bench],
        "datetime": "2026-11-26T12:00:00+00:00",
        "version": "5.3.1",
        "tlstm_bench": {"command": "pytest --benchmark-only", "grid": "quick", "env": {"threads": 2}},
    }
    for key, value in overrides.items():
        data[key] = value
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(data))
    return path


def test_load_hand_made_file(tmp_path):
    # a file from before the schema had a version: "hidden_size" is read as "hidden_units"
    df = pytest_benchmark_file.load(_hand_made(tmp_path))
    assert list(df.columns) == list(COLUMNS)
    row = df.iloc[0]
    assert row["impl"] == "tlstm_naive" and row["status"] == "ok" and row["sweep"] == "pytest-benchmark"
    assert row["hidden_units"] == 32
    # quartiles recomputed from the raw rounds as the sweeps compute them, not pytest-benchmark's (0.015, 0.025)
    assert row["time_median_s"] == 0.02 and row["time_q1_s"] == pytest.approx(0.01375)
    assert row["time_iqr_s"] == pytest.approx(0.015)
    point = Point.from_dict({name: row[name] for name in CONFIG_FIELDS})
    sweep_metrics = point_timing_metrics(point, row["samples_s"])
    sweep_metrics.pop("gflops")  # the file's own FLOP count (4e6) stands in for the formula's here
    assert {k: row[k] for k in sweep_metrics} == pytest.approx(sweep_metrics)
    assert row["time_per_step_s"] == pytest.approx(0.02 / 10)
    assert row["throughput_tokens_s"] == pytest.approx(2 * 10 / 0.02)
    assert row["gflops"] == pytest.approx(4e6 / 0.02 / 1e9)
    assert row["noisy"]  # IQR / median = 0.5 > 0.10
    assert list(row["samples_s"]) == [0.01, 0.015, 0.025, 0.04]
    assert pd.isna(row["energy_j"]) and row["params"] == 947
    env = df.attrs["env"]
    assert env["cpu_model"] == "Some CPU" and env["hostname"] == "box" and env["git_commit"] == "abc123"
    assert env["platform"] == "Linux 6.1 x86_64" and set(ENV_FIELDS) <= set(env)
    assert df.attrs["sweep"]["command"] == "pytest --benchmark-only" and "'quick'" in df.attrs["sweep"]["description"]


def test_load_saved_file_without_raw_samples(tmp_path):
    # --benchmark-save keeps the raw rounds only with --benchmark-save-data; the statistics suffice
    data = json.loads(_hand_made(tmp_path).read_text())
    del data["benchmarks"][0]["stats"]["data"]
    del data["tlstm_bench"]
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(data))
    row = pytest_benchmark_file.load(path).iloc[0]
    assert len(row["samples_s"]) == 0 and row["time_median_s"] == 0.02 and row["time_iqr_s"] == pytest.approx(0.01)
    assert pytest_benchmark_file.load(path).attrs["env"]["threads"] == 2  # from machine_info alone


def test_load_refuses_files_that_are_not_ours(tmp_path):
    not_json = tmp_path / "x.json"
    not_json.write_text("{nope")
    with pytest.raises(pytest_benchmark_file.PytestBenchmarkFileError, match="is not JSON"):
        pytest_benchmark_file.load(not_json)
    with pytest.raises(pytest_benchmark_file.PytestBenchmarkFileError,
                       match="expected a JSON object with a 'benchmarks' list"):
        pytest_benchmark_file.load(_hand_made(tmp_path, benchmarks=None))
    foreign = [{"name": "test_sort", "fullname": "tests/test_x.py::test_sort", "extra_info": {},
                "stats": {"median": 1.0}}]
    with pytest.raises(pytest_benchmark_file.PytestBenchmarkFileError,
                       match="'tests/test_x.py::test_sort' has no extra_info"):
        pytest_benchmark_file.load(_hand_made(tmp_path, benchmarks=foreign))
    with pytest.raises(FileNotFoundError):
        pytest_benchmark_file.load(tmp_path / "missing.json")


def test_tlstm_profile_saves_a_trace_and_a_breakdown_per_benchmark(tmp_path):
    out = tmp_path / "pb.json"
    result = run_pytest("bench", "--benchmark-only", "--tlstm-grid", "tiny", "--tlstm-impl", "lstm_cudnn",
                        "--tlstm-profile", str(tmp_path / "prof"), f"--benchmark-json={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    for bench in json.loads(out.read_text())["benchmarks"]:
        if bench["name"].startswith("test_training_step["):  # the training step is timed, not profiled
            continue
        profile = bench["extra_info"]["profile"]
        assert (tmp_path / "prof" / "traces" / profile["trace"]).is_file()
        assert sum(profile["categories_s"].values()) == pytest.approx(profile["wall_s"], rel=0.02)
