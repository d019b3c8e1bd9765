"""Fixtures for the benchmarks in ``bench/``.

The command-line options, collection rules and pytest-benchmark hooks live in
``bench/pytest_plugin.py`` (loaded through pyproject.toml's addopts, so the options work without
naming this folder); the grids and the benchmark itself in ``bench/test_benchmarks.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import measure, pytest_plugin
from bench.contract import Point


@pytest.fixture
def slowdown_s(request: pytest.FixtureRequest, point: Point) -> float:
    """Seconds of deliberate sleep per timed call for this point's implementation (``--tlstm-slowdown``)."""
    return pytest_plugin.slowdown_for(request.config, point.impl)


@pytest.fixture
def benchmark_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """torch's intra-op threads set to the sweep's budget.threads for one benchmark, restored after."""
    threads = pytest_plugin.benchmark_threads(request.config)
    with measure.torch_threads(threads):
        yield threads
