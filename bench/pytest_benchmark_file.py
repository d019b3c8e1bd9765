"""Read a pytest-benchmark JSON file into the suite's results table.

``pytest bench --benchmark-only --benchmark-json=run.json`` (or ``--benchmark-save``) writes one
entry per benchmark; the benchmarks in ``bench/`` put the point's configuration and metrics into each
entry's ``extra_info`` and the run's environment into a ``tlstm_bench`` section of the file. This
module turns such a file into the same DataFrame ``bench.results.load`` returns for a sweep, so the
report code has one input format:

    df = bench.pytest_benchmark_file.load("run.json")   # one row per benchmark, status "ok"
    df.attrs["env"], df.attrs["sweep"]                   # environment; {"name", "command", "source", ...}

Timing metrics are recomputed from the raw rounds by the contract's one function
(``bench.contract.timing_metrics``), with pytest-benchmark's median and quartiles standing in where a
file holds no rounds, so a file edited or merged by pytest-benchmark's tools still reads consistently.
Entries written by other benchmark suites (without the suite's ``extra_info``) are
rejected with a message naming the entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .contract import ENV_FIELDS, TIMING_FIELDS, Point, record_row, results_frame, timing_metrics

# The top-level section bench/pytest_plugin.py adds to the JSON file (pytest_benchmark_update_json).
SECTION = "tlstm_bench"
SWEEP_NAME = "pytest-benchmark"


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
    name = entry.get("fullname", entry.get("name"))
    if "config" not in extra:
        raise PytestBenchmarkFileError(
            f"{source}: benchmark {name!r} has no extra_info['config']; "
            "only files written by the benchmarks in bench/ can be read"
        )
    try:
        point = Point.from_dict(extra["config"])
    except (ValueError, TypeError) as exc:
        raise PytestBenchmarkFileError(f"{source}: benchmark {name!r}: extra_info['config']: {exc}") from None
    stats = entry.get("stats") or {}
    samples = list(stats.get("data") or [])
    # the rest of extra_info as the metrics (record_row keeps the contract's, after upgrading old names)
    metrics = {field: value for field, value in extra.items() if field not in TIMING_FIELDS}
    # Recomputed from the raw rounds, so that these agree with the sweeps' metrics to the definition;
    # pytest-benchmark's own median and quartiles stand in only for a file saved without its data.
    quartiles = (stats.get("median"), stats.get("q1"), stats.get("q3"))
    metrics.update(timing_metrics(samples, seq_len=point.seq_len, recurrent_steps=point.recurrent_steps,
                                  batch=point.batch, flops=extra.get("flops", point.flops()), quartiles=quartiles))
    record = {"config": point.as_dict(), "status": "ok", "message": extra.get("gate", ""), "samples_s": samples,
              "metrics": metrics, "key": extra.get("key") or point.key, "sweep": SWEEP_NAME, "index": index,
              "started_at": started_at, "schema": extra.get("schema", 1)}
    return record_row(record)


def load(path: str | Path) -> pd.DataFrame:
    """Read a pytest-benchmark JSON file written by ``pytest bench`` into the results DataFrame.

    Args:
        path: a file from ``--benchmark-json=FILE`` or ``--benchmark-save=NAME`` (the latter holds the
            raw samples only with ``--benchmark-save-data``; ``samples_s`` is then empty).

    Returns:
        One row per benchmark, columns ``bench.contract.COLUMNS`` (as ``bench.results.load``), status "ok"
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
    # The training-step benchmarks (test_training_step) time one step of a training run: not a sweep point.
    def timing(entry: Any) -> bool:
        return not isinstance(entry, dict) or ((entry.get("extra_info") or {}).get("config") or {}).get("train") is None

    rows = [_row(entry, i, source, data.get("datetime")) for i, entry in enumerate(data["benchmarks"]) if timing(entry)]
    section = data.get(SECTION) or {}
    env = _env_from_machine_info(data.get("machine_info") or {}, data.get("commit_info") or {})
    env.update({k: v for k, v in (section.get("env") or {}).items() if v is not None or k not in env})
    sweep = section.get("sweep") or {}
    description = {
        "name": SWEEP_NAME,
        "description": f"pytest-benchmark run of sweep {sweep.get('name', section.get('grid'))!r}",
        "source": source,
        "command": section.get("command"),
        "sweep": sweep,
        "datetime": data.get("datetime"),
        "pytest_benchmark_version": data.get("version"),
    }
    return results_frame(rows, env, description)
