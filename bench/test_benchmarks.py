"""Every registered implementation under pytest-benchmark, on a declared grid of sizes.

    pytest --benchmark-only                               # quick grid, all implementations
    pytest --benchmark-only --tlstm-grid paper --tlstm-impl tlstm_fused,lstm_cudnn

One benchmark = one implementation at one point: tensor size P (a stacked LSTM takes the depth L a
tLSTM of that size has), sequence length T, batch B, mode. One timed call = one whole sequence: a
forward pass under no_grad (inference) or forward + backward (training), the device synchronized
inside the call. Benchmarks of the same sizes and mode share a group, so the table pytest-benchmark
prints compares the implementations side by side.

The measurement pieces are the sweeps' own (``bench.measure``): the same model and input for a
point, the same correctness gate (output, state and every gradient against a float64 reference),
run once before timing and failing the benchmark when it fails; the same FLOP formulas; the same
memory pass, run after timing and never inside the timed rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

import implementations
from bench import measure
from bench import pytest_plugin as plugin
from bench.sweep import point_key
from implementations import tlstm_depth

MODES = ("inference", "training")


@dataclass(frozen=True)
class Grid:
    """Axes of a benchmark grid, declared as data, and how many rounds each benchmark is timed."""

    tensor_sizes: tuple[int, ...]  # P; a stacked LSTM gets the paired depth L = ceil(P / (K // 2))
    seq_lens: tuple[int, ...]  # T
    batches: tuple[int, ...]  # B
    channels: int  # M
    input_size: int  # R
    rounds: int
    warmup_rounds: int
    modes: tuple[str, ...] = MODES
    kernel_size: int = 3  # K


GRIDS: dict[str, Grid] = {
    # CI's smoke run: seconds in all, just enough to exercise every path.
    "tiny": Grid(tensor_sizes=(2,), seq_lens=(4,), batches=(2,), channels=8, input_size=8, rounds=3, warmup_rounds=1),
    # Under 5 minutes on 2 CPU cores with every implementation, torch.compile'd ones included.
    "quick": Grid(tensor_sizes=(2, 4), seq_lens=(32,), batches=(8,), channels=32, input_size=32, rounds=9, warmup_rounds=2),
    "default": Grid(
        tensor_sizes=(1, 2, 4, 8), seq_lens=(32, 128), batches=(1, 16), channels=64, input_size=64, rounds=15, warmup_rounds=3
    ),
    # The paper's timing figure: one sequence (B = 1) and a batch, depths L in {1, 4, 7, 10}.
    "paper": Grid(
        tensor_sizes=(1, 4, 7, 10), seq_lens=(100,), batches=(1, 16), channels=128, input_size=128, rounds=20, warmup_rounds=3
    ),
}


def grid_points(grid: Grid, impls: list[str], device: str, dtype: str) -> list[dict[str, Any]]:
    """The grid crossed with the implementations, as results-contract ``config`` dicts.

    The implementation varies fastest, so one group's benchmarks run next to each other in time.
    """
    points = []
    for tensor_size in grid.tensor_sizes:
        for seq_len in grid.seq_lens:
            for batch in grid.batches:
                for mode in grid.modes:
                    for name in impls:
                        points.append({
                            "impl": name,
                            "family": implementations.get(name).family,
                            "tensor_size": tensor_size,  # kept for a stacked LSTM: it is paired by this P
                            "depth": tlstm_depth(tensor_size, grid.kernel_size),
                            "seq_len": seq_len,
                            "batch": batch,
                            "channels": grid.channels,
                            "input_size": grid.input_size,
                            "kernel_size": grid.kernel_size,
                            "mem_conv": True,
                            "norm": None,
                            "dtype": dtype,
                            "mode": mode,
                            "device": device,
                            "repeats": grid.rounds,
                            "warmup": grid.warmup_rounds,
                            "seed": 0,
                        })  # fmt: skip
    return points


def point_id(point: dict[str, Any]) -> str:
    return f"{point['impl']}-P{point['tensor_size']}-T{point['seq_len']}-B{point['batch']}-{point['mode']}"


def point_group(point: dict[str, Any]) -> str:
    """Same sizes and mode, every implementation: one table that answers "which is faster here"."""
    return (
        f"P={point['tensor_size']} L={point['depth']} T={point['seq_len']} B={point['batch']} "
        f"M={point['channels']} {point['dtype']} {point['mode']} {point['device']}"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "point" not in metafunc.fixturenames:
        return
    config = metafunc.config
    points = grid_points(
        GRIDS[config.getoption("tlstm_grid")],
        plugin.selected_implementations(config),
        plugin.selected_device(config).type,
        config.getoption("tlstm_dtype"),
    )
    metafunc.parametrize("point", points, ids=[point_id(p) for p in points])


def skip_if_unsupported(point: dict[str, Any]) -> None:
    # Checked when the benchmark runs, not at collection: availability may mean building an extension.
    impl = implementations.get(point["impl"])
    reason = impl.unavailable_reason(point["device"])
    if reason is not None:
        pytest.skip(f"{point['impl']} unavailable on {point['device']}: {reason}")
    if not impl.supports_dtype(measure.DTYPES[point["dtype"]]):
        allowed = ", ".join(str(d).removeprefix("torch.") for d in impl.dtypes)
        pytest.skip(f"{point['impl']} does not support {point['dtype']} (supports {allowed})")


def with_slowdown(call: Callable[[], None], seconds: float) -> Callable[[], None]:
    """``call`` followed by a sleep: an honest, visible way to make an implementation slower on purpose."""
    if not seconds:
        return call

    def slower() -> None:
        call()
        time.sleep(seconds)

    return slower


def test_benchmark(benchmark, point: dict[str, Any], slowdown_s: float) -> None:
    skip_if_unsupported(point)
    model, x = measure.build_point(point)  # x: [B, T, R]

    ok, max_abs_err, message = measure.check_correctness(point, model, x)
    if not ok:
        pytest.fail(f"correctness gate failed, so {point_id(point)} is not timed: {message}", pytrace=False)

    benchmark.group = point_group(point)
    benchmark.extra_info.update(
        config=point,
        model_config=measure.model_config(point).as_dict(),
        key=point_key(point),
        gate=message,
        slowdown_s=slowdown_s,
    )

    call = measure.make_call(model, x, point["mode"], point["device"])  # synchronizes the device inside

    def setup() -> None:
        # Free the previous round's gradients outside the timed call (the call also sets them to None,
        # so gradients never accumulate even without this).
        model.zero_grad(set_to_none=True)

    benchmark.pedantic(
        with_slowdown(call, slowdown_s), setup=setup, rounds=point["repeats"], warmup_rounds=point["warmup"]
    )

    # A separate, untimed pass for memory; then the suite's metrics from pytest-benchmark's own samples.
    memory_stats = measure.memory(model, x, point["mode"], point["device"])
    samples = list(benchmark.stats.stats.data) if benchmark.stats is not None else []  # none with --benchmark-disable
    benchmark.extra_info.update(
        measure.metrics(
            point,
            samples,
            model=model,
            x=x,
            memory_stats=memory_stats,
            energy_note="not measured under pytest-benchmark (the sweeps measure energy)",
            max_abs_err=max_abs_err,
        )
    )
