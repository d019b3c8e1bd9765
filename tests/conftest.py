"""Shared test helpers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


# ---- tiny sweeps ------------------------------------------------------------------------------------
# The sweep files the end-to-end tests run: a few points of milliseconds each. tiny_sweep_text and
# tiny_training_sweep_text give the text (for module-level constants and module-scoped fixtures:
# ``from tests.conftest import tiny_sweep_text``); the fixtures tiny_sweep and tiny_training_sweep write
# it into the test's tmp_path.

TINY_BUDGET = {"repeats": 2, "warmup": 0, "energy": False, "threads": 1}
TINY_AXES = {"tensor_size": [1, 2], "seq_len": [4], "batch": [2], "channels": [4], "input_size": [3],
             "mode": ["training"], "device": ["cpu"]}
TINY_TRAIN = {"task": "memorization", "length": 2, "alphabet": 2, "max_samples": 512, "eval_every": 256,
              "eval_samples": 64}
TINY_TRAIN_AXES = {"depth": [1], "channels": [8]}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # numbers; strings as TOML basic strings


def _merged(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``defaults`` with ``overrides`` on top; an override of None drops the field. Giving ``depth`` drops
    the default ``tensor_size`` (a sweep has exactly one size axis)."""
    overrides = overrides or {}
    merged = dict(defaults)
    if "depth" in overrides and "tensor_size" not in overrides:
        merged.pop("tensor_size", None)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _sweep_text(top: dict[str, Any], tables: dict[str, dict[str, Any]]) -> str:
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items() if value is not None]
    for table, fields in tables.items():
        if fields:
            lines += [f"[{table}]", *(f"{key} = {_toml_value(value)}" for key, value in fields.items())]
    return "\n".join(lines) + "\n"


def tiny_sweep_text(implementations: Sequence[str] = ("tlstm_naive", "lstm_cudnn"), *,
                    budget: dict[str, Any] | None = None, axes: dict[str, Any] | None = None, **top: Any) -> str:
    """A tiny timing sweep: ``TINY_BUDGET`` and ``TINY_AXES`` (P = 1, 2; T = 4, B = 2, M = 4, R = 3; training
    on the CPU) with ``budget`` and ``axes`` overriding fields (None drops one; ``depth`` replaces
    ``tensor_size``), and top-level fields (``plugins``, ``seed``, ``pair``, ``name``, ...) from ``top``.
    One ``key = value`` line per field, under ``[budget]`` and ``[axes]``, so that tests can edit the text."""
    return _sweep_text({"implementations": list(implementations), **top},
                       {"budget": _merged(TINY_BUDGET, budget), "axes": _merged(TINY_AXES, axes)})


def tiny_training_sweep_text(implementations: Sequence[str] = ("tlstm_naive", "lstm_cudnn"), *,
                             train: dict[str, Any] | None = None, axes: dict[str, Any] | None = None,
                             budget: dict[str, Any] | None = None, pair: str = "depth", **top: Any) -> str:
    """A tiny training sweep: memorization of S = 2 symbols of V = 2, 512 samples, evaluated every 256 on
    64 held-out sequences (``TINY_TRAIN``), at L = 1 and M = 8 (``TINY_TRAIN_AXES``), widths as given
    (pair = "depth"); ``train``, ``axes`` and ``budget`` (none by default) override fields as in
    tiny_sweep_text."""
    return _sweep_text({"implementations": list(implementations), "pair": pair, **top},
                       {"train": _merged(TINY_TRAIN, train), "budget": _merged({}, budget),
                        "axes": _merged(TINY_TRAIN_AXES, axes)})


@pytest.fixture
def tiny_sweep(tmp_path: Path) -> Callable[..., Path]:
    """Writes a tiny timing sweep into tmp_path and returns its path:
    ``tiny_sweep(implementations, name="tiny.toml", budget=..., axes=..., **top)`` (see tiny_sweep_text)."""

    def write(*args: Any, name: str = "tiny.toml", **fields: Any) -> Path:
        path = tmp_path / name
        path.write_text(tiny_sweep_text(*args, **fields))
        return path

    return write


@pytest.fixture
def tiny_training_sweep(tmp_path: Path) -> Callable[..., Path]:
    """Writes a tiny training sweep into tmp_path and returns its path:
    ``tiny_training_sweep(implementations, name="train.toml", train=..., axes=..., **top)``."""

    def write(*args: Any, name: str = "train.toml", **fields: Any) -> Path:
        path = tmp_path / name
        path.write_text(tiny_training_sweep_text(*args, **fields))
        return path

    return write


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM cluster (tests/slurm_cluster.py) for the whole session, its SLURM_CONF exported
    to every command the tests start; skipped, with the install command, where slurm-wlm and munge are absent
    or the tests do not run as root."""
    from tests.slurm_cluster import Cluster, unavailable

    why = unavailable()
    if why:
        pytest.skip(why)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster):
    """The session's SLURM cluster, with every job a test left cancelled after it."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
