"""Read a pytest-benchmark JSON file into the suite's results table.

``pytest bench --benchmark-only --benchmark-json=run.json`` (or ``--benchmark-save``) writes one
entry per benchmark; the benchmarks in ``bench/`` put the point's configuration and metrics into each
entry's ``extra_info`` and the run's environment into a ``tlstm_bench`` section of the file. This
module turns such a file into the same DataFrame ``bench.results.load`` returns for a sweep, so the
report code has one input format:

    df = bench.pbjson.load("run.json")      # one row per benchmark, status "ok"
    df.attrs["env"], df.attrs["sweep"]       # environment; {"name", "command", "source", ...}

Timing metrics are recomputed from pytest-benchmark's own statistics (median, quartiles, and the raw
rounds when the file holds them), so a file edited or merged by pytest-benchmark's tools still reads
consistently. Entries written by other benchmark suites (without the suite's ``extra_info``) are
rejected with a message naming the entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.results import CONFIG_FIELDS, METRIC_FIELDS
from bench.sweep import point_key  # the sweeps' key: the same configuration gets the same key

ENV_FIELDS = (
    "torch", "cuda", "cudnn", "cpu_model", "gpu_model", "threads", "git_commit", "python", "platform",
    "hostname", "matmul_gflops", "cudnn_allow_tf32", "matmul_allow_tf32", "cudnn_benchmark",
)  # fmt: skip
# The columns of bench.results.load, in its order.
COLUMNS = (*CONFIG_FIELDS, "status", "message", *METRIC_FIELDS, "samples_s", "key", "sweep", "index", "started_at")

# The top-level section bench/pytest_plugin.py adds to the JSON file (pytest_benchmark_update_json).
SECTION = "tlstm_bench"
SWEEP_NAME = "pytest-benchmark"
NOISY_IQR_OVER_MEDIAN = 0.10


class PytestBenchmarkFileError(ValueError):
    """The file is not a pytest-benchmark JSON file written by this suite's benchmarks."""


def _env_from_machine_info(machine_info: dict[str, Any], commit_info: dict[str, Any]) -> dict[str, Any]:
    """The results contract's env dict, from pytest-benchmark's machine_info (extended by our hook)."""
    cpu = machine_info.get("cpu") or {}
    env: dict[str, Any] = {field: machine_info.get(field) for field in ENV_FIELDS}
    env["cpu_model"] = env["cpu_model"] or cpu.get("brand_raw")
    env["python"] = env["python"] or machine_info.get("python_version")
    env["hostname"] = env["hostname"] or machine_info.get("node")
    env["platform"] = env["platform"] or " ".join(
        str(machine_info[k]) for k in ("system", "release", "machine") if machine_info.get(k)
    ) or None
    env["git_commit"] = env["git_commit"] or commit_info.get("id")
    return env


def _row(entry: dict[str, Any], index: int, source: str, started_at: str | None) -> dict[str, Any]:
    extra = entry.get("extra_info") or {}
    if "config" not in extra:
        raise PytestBenchmarkFileError(
            f"{source}: benchmark {entry.get('fullname', entry.get('name'))!r} has no extra_info['config']; "
            "only files written by the benchmarks in bench/ can be read"
        )
    config = {field: extra["config"].get(field) for field in CONFIG_FIELDS}
    stats = entry.get("stats") or {}
    median = stats.get("median")
    samples = list(stats.get("data") or [])
    metrics: dict[str, Any] = {field: extra.get(field) for field in METRIC_FIELDS}
    if median:
        q1, q3 = stats.get("q1"), stats.get("q3")
        iqr = stats.get("iqr", (q3 - q1) if q1 is not None and q3 is not None else None)
        seq_len, batch, flops = config["seq_len"], config["batch"], metrics.get("flops")
        metrics.update(
            time_median_s=median,
            time_q1_s=q1,
            time_q3_s=q3,
            time_iqr_s=iqr,
            noisy=bool(iqr is not None and iqr / median > NOISY_IQR_OVER_MEDIAN),
            time_per_step_s=median / seq_len if seq_len else None,
            throughput_tokens_s=batch * seq_len / median if seq_len and batch else None,
            gflops=flops / median / 1e9 if flops else None,
        )
    row: dict[str, Any] = {**config, "status": "ok", "message": extra.get("gate", ""), **metrics}
    row["samples_s"] = samples
    row["key"] = extra.get("key") or point_key(config)
    row["sweep"] = SWEEP_NAME
    row["index"] = index
    row["started_at"] = started_at
    return row


def load(path: str | Path) -> pd.DataFrame:
    """Read a pytest-benchmark JSON file written by ``pytest bench`` into the results DataFrame.

    Args:
        path: a file from ``--benchmark-json=FILE`` or ``--benchmark-save=NAME`` (the latter holds the
            raw samples only with ``--benchmark-save-data``; ``samples_s`` is then empty).

    Returns:
        One row per benchmark, columns ``COLUMNS`` (those of ``bench.results.load``), status "ok"
        (pytest-benchmark writes only benchmarks that finished). ``df.attrs["env"]`` holds the
        environment, ``df.attrs["sweep"]`` the run's description with the reproducing command.

    Raises:
        FileNotFoundError: no such file.
        PytestBenchmarkFileError: not JSON, not pytest-benchmark's format, or not from this suite.
    """
    path = Path(path)
    source = str(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PytestBenchmarkFileError(f"{source} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise PytestBenchmarkFileError(
            f"{source} is not a pytest-benchmark file: expected a JSON object with a 'benchmarks' list"
        )
    rows = [_row(entry, i, source, data.get("datetime")) for i, entry in enumerate(data["benchmarks"])]
    df = pd.DataFrame(rows, columns=list(COLUMNS))

    section = data.get(SECTION) or {}
    env = _env_from_machine_info(data.get("machine_info") or {}, data.get("commit_info") or {})
    env.update({k: v for k, v in (section.get("env") or {}).items() if v is not None or k not in env})
    df.attrs["env"] = env
    df.attrs["sweep"] = {
        "name": SWEEP_NAME,
        "description": f"pytest-benchmark run, grid {section.get('grid')!r}",
        "source": source,
        "command": section.get("command"),
        "grid": section.get("grid"),
        "datetime": data.get("datetime"),
        "pytest_benchmark_version": data.get("version"),
    }
    return df
