"""pytest plugin for the benchmarks in ``bench/``: command-line options, collection rules, machine_info.

Loaded for every run in this repository through ``addopts = "-p bench.pytest_plugin"`` in
pyproject.toml, not from ``bench/conftest.py``: pytest reads the options of a sub-folder's conftest
only when that folder is named on the command line, so ``pytest --benchmark-only --tlstm-grid paper``
would otherwise stop with "unrecognized arguments".

    pytest --benchmark-only                         # every registered implementation, quick grid
    pytest --benchmark-only --tlstm-grid default --tlstm-impl 'tlstm_*' --tlstm-impl lstm_cudnn
    pytest --benchmark-only --benchmark-save=base   # later: --benchmark-compare --benchmark-compare-fail=median:5%

Collection rules (CI runs plain ``pytest`` and must not spend minutes timing):
- plain ``pytest`` (paths from ``testpaths``, no ``--benchmark-only``) deselects the benchmarks in bench/;
- ``pytest --benchmark-only`` runs only tests that use the ``benchmark`` fixture (pytest-benchmark
  would skip the others one by one; deselecting keeps the summary readable);
- naming the folder (``pytest bench ...``) runs them: timed, or once each with ``--benchmark-disable``.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

import implementations

BENCH_DIR = Path(__file__).resolve().parent
GRID_NAMES = ("tiny", "quick", "default", "paper")  # the grids themselves: bench/test_benchmarks.py
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64", "bfloat16", "float16")
# Environment fields that change from run to run; kept out of machine_info, which pytest-benchmark
# compares between runs and warns about on any difference.
UNSTABLE_ENV_FIELDS = ("matmul_gflops", "git_commit")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tlstm-bench", "tlstm-bench benchmarks (bench/)")
    group.addoption(
        "--tlstm-grid",
        default="quick",
        choices=GRID_NAMES,
        help="size grid: tiny (CI smoke run, seconds), quick (default; under 5 minutes on 2 CPU cores), "
        "default, paper (depths 1, 4, 7, 10 as in the paper)",
    )
    group.addoption(
        "--tlstm-impl",
        action="append",
        default=[],
        metavar="NAME_OR_GLOB",
        help="benchmark only these registered implementations (repeatable, or a comma list; globs allowed)",
    )
    group.addoption("--tlstm-device", default="auto", choices=DEVICES, help="auto: cuda if available, else cpu")
    group.addoption("--tlstm-dtype", default="float32", choices=DTYPES, help="parameter and input dtype")
    group.addoption(
        "--tlstm-threads",
        default=None,
        metavar="N",
        help="torch CPU threads (torch.set_num_threads); default: torch's own choice. On a machine shared "
        "with other work, 1 gives far steadier CPU timings (oneDNN's thread pool stalls when oversubscribed)",
    )
    group.addoption(
        "--tlstm-slowdown",
        action="append",
        default=[],
        metavar="GLOB=SECONDS",
        help="make the matching implementations slower on purpose (to check --benchmark-compare-fail): "
        "sleep SECONDS inside every timed call; recorded in extra_info['slowdown_s']",
    )


# --- options, validated where they enter ---------------------------------------------------------


def selected_implementations(config: pytest.Config) -> list[str]:
    """Registered names matching ``--tlstm-impl`` (all when not given); a pattern matching nothing is an error."""
    patterns = [p.strip() for value in config.getoption("tlstm_impl") for p in value.split(",") if p.strip()]
    known = implementations.names()
    if not patterns:
        return known
    for pattern in patterns:
        if not fnmatch.filter(known, pattern):
            raise pytest.UsageError(
                f"--tlstm-impl {pattern!r} matches no registered implementation; registered: {', '.join(known)}"
            )
    return implementations.names(patterns)


def selected_device(config: pytest.Config) -> torch.device:
    choice = config.getoption("tlstm_device")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def slowdowns(config: pytest.Config) -> dict[str, float]:
    """``--tlstm-slowdown GLOB=SECONDS`` as {glob: seconds}."""
    result: dict[str, float] = {}
    for value in config.getoption("tlstm_slowdown"):
        for item in filter(None, (v.strip() for v in value.split(","))):
            pattern, sep, seconds = item.partition("=")
            try:
                delay = float(seconds)
            except ValueError:
                delay = -1.0
            if not sep or not pattern or not 0 <= delay < math.inf:
                raise pytest.UsageError(f"--tlstm-slowdown must be GLOB=SECONDS with SECONDS >= 0, got {item!r}")
            result[pattern] = delay
    return result


def slowdown_for(config: pytest.Config, impl: str) -> float:
    """Seconds of deliberate sleep per timed call for ``impl`` (0 unless ``--tlstm-slowdown`` matches it)."""
    return sum(seconds for pattern, seconds in slowdowns(config).items() if fnmatch.fnmatchcase(impl, pattern))


def cpu_threads(config: pytest.Config) -> int | None:
    """``--tlstm-threads`` as an integer >= 1, or None when not given."""
    value = config.getoption("tlstm_threads")
    if value is None:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise pytest.UsageError(f"--tlstm-threads must be an integer >= 1, got {value!r}")
    return threads


def pytest_configure(config: pytest.Config) -> None:
    # A bad option fails here, before collection, with the allowed values.
    selected_implementations(config)
    slowdowns(config)
    threads = cpu_threads(config)
    if threads is not None:
        torch.set_num_threads(threads)  # before anything runs, so machine_info records it
    if config.getoption("tlstm_device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--tlstm-device cuda: no CUDA GPU is available here; allowed here: auto, cpu")


# --- collection ----------------------------------------------------------------------------------

_DESELECTED_BENCHMARKS = pytest.StashKey[int]()


def _in_bench_dir(item: pytest.Item) -> bool:
    return BENCH_DIR in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("benchmark_only", default=False):
        keep = [item for item in items if "benchmark" in getattr(item, "fixturenames", ())]
    elif config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        keep = [item for item in items if not _in_bench_dir(item)]
    else:
        return
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        config.stash[_DESELECTED_BENCHMARKS] = sum(_in_bench_dir(item) for item in dropped)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    count = config.stash.get(_DESELECTED_BENCHMARKS, 0)
    if count:
        terminalreporter.write_line(
            f"tlstm-bench: {count} benchmarks in bench/ were not run; time them with `pytest --benchmark-only`"
        )


# --- machine_info and the JSON file --------------------------------------------------------------


@functools.cache
def _environment(device_type: str, dtype: str) -> dict[str, Any]:
    from bench import measure  # imported late: plain CI runs never need it

    return measure.environment([device_type], [dtype])


def run_environment(config: pytest.Config) -> dict[str, Any]:
    """The results contract's ``env`` for this run (``bench.measure.environment``, matmul rate measured once)."""
    return _environment(selected_device(config).type, config.getoption("tlstm_dtype"))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    env = run_environment(config)
    machine_info.update({k: v for k, v in env.items() if k not in UNSTABLE_ENV_FIELDS})


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict[str, Any]) -> None:
    # bench.pbjson reads this section: the reproducing command, the grid and the full environment.
    output_json["tlstm_bench"] = {
        "command": shlex.join(["pytest", *config.invocation_params.args]),
        "grid": config.getoption("tlstm_grid"),
        "implementations": selected_implementations(config),
        "device": str(selected_device(config)),
        "dtype": config.getoption("tlstm_dtype"),
        "slowdown": slowdowns(config),
        "env": run_environment(config),
    }
