"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def rng_seed() -> int:
    """A fresh seed per test run, printed on failure so a failing draw can be replayed."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"seed={seed}")
    return seed
