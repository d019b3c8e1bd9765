"""Shared test helpers."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors under Triton's interpreter, which is chosen when a
# kernel is defined: set the variable before any test imports triton. GPU runs compile for real.
if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def rng_seed() -> int:
    """A fresh seed per test run, printed on failure so a failing draw can be replayed."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"seed={seed}")
    return seed
