"""pytest plugin for the benchmarks in ``bench/``: command-line options, collection rules, machine_info.

Loaded for every run in this repository through ``addopts = "-p bench.pytest_plugin"`` in
pyproject.toml, not from ``bench/conftest.py``: pytest reads the options of a sub-folder's conftest
only when that folder is named on the command line, so ``pytest --benchmark-only --tlstm-sweep paper``
would otherwise stop with "unrecognized arguments".

    pytest --benchmark-only                         # the quick sweep's points, every implementation
    pytest --benchmark-only --tlstm-sweep depth --tlstm-impl 'tlstm_*' --tlstm-impl lstm_cudnn
    pytest --benchmark-only --benchmark-save=base   # later: --benchmark-compare --benchmark-compare-fail=median:5%

Collection rules (CI runs plain ``pytest`` and must not spend minutes timing):
- plain ``pytest`` (paths from ``testpaths``, no ``--benchmark-only``) deselects the benchmarks in bench/;
- ``pytest --benchmark-only`` runs only tests that use the ``benchmark`` fixture (pytest-benchmark
  would skip the others one by one; deselecting keeps the summary readable);
- naming the folder (``pytest bench ...``) runs them: timed, or once each with ``--benchmark-disable``.
"""

from __future__ import annotations

import functools
import math
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.contract import DTYPES, Point
from bench.sweep import Sweep, SweepError, load_sweep, shipped_sweeps

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_SWEEP = "quick"
# The training-step benchmarks: the capacity sweep's task and budget, one point per implementation.
TRAINING_STEP_SWEEP = "capacity"
TRAINING_STEP_OVERRIDES = ("depth=4", "variant=tLSTM", "train.seeds=0")
DEVICES = ("auto", "cpu", "cuda")
# Environment fields that change from run to run; kept out of machine_info, which pytest-benchmark
# compares between runs and warns about on any difference.
UNSTABLE_ENV_FIELDS = ("matmul_gflops", "git_commit")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tlstm-bench", "tlstm-bench benchmarks (bench/)")
    group.addoption(
        "--tlstm-sweep",
        "--tlstm-grid",
        dest="tlstm_sweep",
        default=DEFAULT_SWEEP,
        metavar="SWEEP",
        help=f"the sweep whose points are benchmarked: a shipped sweep ({', '.join(shipped_sweeps())}) or a "
        f"path to a .toml file (default {DEFAULT_SWEEP}; tiny is CI's smoke run, seconds)",
    )
    group.addoption(
        "--tlstm-set",
        action="append",
        default=[],
        metavar="AXIS=VALUES",
        help="override an axis or setting of the sweep, as `tlstm-bench run --set` (repeatable)",
    )
    group.addoption(
        "--tlstm-impl",
        action="append",
        default=[],
        metavar="NAME_OR_GLOB",
        help="benchmark only these registered implementations (repeatable, or a comma list; globs allowed)",
    )
    group.addoption("--tlstm-device", default=None, choices=DEVICES, help="override the sweep's device axis")
    group.addoption("--tlstm-dtype", default=None, choices=DTYPES, help="override the sweep's dtype axis")
    group.addoption(
        "--tlstm-threads",
        default=None,
        metavar="N",
        help="torch CPU threads while benchmarking (default: the sweep's budget.threads; 0 = torch's own "
        "choice). On a machine shared with other work, 1 gives far steadier CPU timings",
    )
    group.addoption(
        "--tlstm-profile",
        default=None,
        metavar="DIR",
        help="after timing each benchmark, profile one more call (bench.profile): its trace goes to "
        "DIR/traces/<point key>.json.gz and its breakdown by category to extra_info['profile']",
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


def _overrides(config: pytest.Config) -> list[str]:
    """The --tlstm-* options as the sweep's ``--set`` overrides."""
    overrides = list(config.getoption("tlstm_set"))
    patterns = [p.strip() for value in config.getoption("tlstm_impl") for p in value.split(",") if p.strip()]
    if patterns:
        overrides.append("implementations=" + ",".join(patterns))
    for option, axis in (("tlstm_device", "device"), ("tlstm_dtype", "dtype")):
        if config.getoption(option) is not None:
            overrides.append(f"{axis}={config.getoption(option)}")
    threads = config.getoption("tlstm_threads")
    if threads is not None:
        overrides.append(f"threads={threads}")
    return overrides


@functools.cache
def _sweep(name: str, overrides: tuple[str, ...]) -> Sweep:
    try:
        return load_sweep(name, list(overrides))
    except SweepError as exc:
        raise pytest.UsageError(f"--tlstm-sweep {name}: {exc}") from None


def selected_sweep(config: pytest.Config) -> Sweep:
    """The sweep named by ``--tlstm-sweep`` with the other ``--tlstm-*`` options applied."""
    return _sweep(config.getoption("tlstm_sweep"), tuple(_overrides(config)))


def selected_points(config: pytest.Config) -> list[Point]:
    """The benchmarks' points: the selected sweep's, expanded as ``tlstm-bench run`` expands them."""
    return selected_sweep(config).points()


def training_step_sweep(config: pytest.Config) -> Sweep:
    """The training-step benchmarks' sweep: the shipped capacity sweep's task and budget at L = 4, the
    tLSTM variant, seed 0, every implementation (``--tlstm-impl`` selects; ``--tlstm-device``,
    ``--tlstm-dtype`` and ``--tlstm-threads`` apply). One point per implementation."""
    applied = ("implementations", "device", "dtype", "threads")
    overrides = ["implementations=*", *TRAINING_STEP_OVERRIDES,
                 *(o for o in _overrides(config) if o.split("=")[0] in applied)]
    return _sweep(TRAINING_STEP_SWEEP, tuple(overrides))


def benchmark_threads(config: pytest.Config) -> int:
    """torch intra-op threads while benchmarking: the sweep's budget.threads, 0 = torch's default."""
    return selected_sweep(config).budget["threads"]


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
    import fnmatch

    return sum(seconds for pattern, seconds in slowdowns(config).items() if fnmatch.fnmatchcase(impl, pattern))


def _timing_sweeps() -> list[str]:
    import tomllib

    return [name for name, path in shipped_sweeps().items() if "train" not in tomllib.loads(path.read_text())]


def pytest_configure(config: pytest.Config) -> None:
    # A bad option fails here, before collection, with the allowed values.
    if selected_sweep(config).train is not None:
        raise pytest.UsageError(
            f"--tlstm-sweep {config.getoption('tlstm_sweep')}: a training sweep (it trains models to measure what "
            "they buy: run it with `tlstm-bench run`); the benchmarks time calls, so they take a timing sweep "
            f"({', '.join(_timing_sweeps())} or a .toml path); the training step itself is benchmarked by "
            f"test_training_step on the {TRAINING_STEP_SWEEP} sweep's task")
    slowdowns(config)
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
def _environment(devices: tuple[str, ...], dtypes: tuple[str, ...], threads: int) -> dict[str, Any]:
    from bench import measure  # imported late: plain CI runs never need it

    with measure.torch_threads(threads):
        return measure.environment(list(devices), list(dtypes))


def run_environment(config: pytest.Config) -> dict[str, Any]:
    """The results contract's ``env`` for this run (``bench.measure.environment``, matmul rate measured
    once, with the threads the benchmarks use)."""
    points = selected_points(config)
    return _environment(tuple(sorted({p.device for p in points})), tuple(sorted({p.dtype for p in points})),
                        benchmark_threads(config))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    env = run_environment(config)
    machine_info.update({k: v for k, v in env.items() if k not in UNSTABLE_ENV_FIELDS})


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict[str, Any]) -> None:
    # bench.pytest_benchmark_file reads this section: the reproducing command, the sweep and the full environment.
    output_json["tlstm_bench"] = {
        "command": shlex.join(["pytest", *config.invocation_params.args]),
        "sweep": selected_sweep(config).as_dict(),
        "slowdown": slowdowns(config),
        "env": run_environment(config),
    }
