"""Fixtures for the benchmarks in ``bench/``.

The command-line options, collection rules and pytest-benchmark hooks live in
``bench/pytest_plugin.py`` (loaded through pyproject.toml's addopts, so the options work without
naming this folder); the grids and the benchmark itself in ``bench/test_benchmarks.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import pytest_plugin


@pytest.fixture
def slowdown_s(request: pytest.FixtureRequest, point: dict[str, Any]) -> float:
    """Seconds of deliberate sleep per timed call for this point's implementation (``--tlstm-slowdown``)."""
    return pytest_plugin.slowdown_for(request.config, point["impl"])
