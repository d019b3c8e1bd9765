"""Every registered implementation under pytest-benchmark, at the points of a sweep.

    pytest --benchmark-only                               # the quick sweep, all implementations
    pytest --benchmark-only --tlstm-sweep paper --tlstm-impl tlstm_fused,lstm_cudnn

The benchmarks' points come from a sweep file (``--tlstm-sweep``, shipped name or path; ``--tlstm-grid``
is the same option under its old name), expanded by the same ``bench.sweep.Sweep.points`` as
``tlstm-bench run``: a sweep and a benchmark run of the same file measure the same points, with the
same keys. One benchmark = one point. One timed round = one whole sequence: a forward pass under
no_grad (inference) or forward + backward (training), the device synchronized inside the call;
``repeats`` rounds after ``warmup`` rounds (the sweep's ``min_time_s`` is the sweep runner's, not
used here). Benchmarks that differ only in the implementation share a group, so the table
pytest-benchmark prints compares the implementations side by side.

The measurement pieces are the sweeps' own (``bench.measure``): the same model and input for a
point, the same correctness gate (output, state and every gradient against a float64 reference),
run once before timing and failing the benchmark when it fails; the same metrics from the same
function; the same memory pass, run after timing and never inside the timed rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench import axes, measure, train
from bench import pytest_plugin as plugin
from bench.contract import SCHEMA_VERSION, Point, point_timing_metrics
from bench.profile import profile_call
from bench.runner import TRACES_DIR


def _switches(point: Point) -> str:
    """The tLSTM switches away from the default (K = 3, memory-cell convolution, no CN, 2D), e.g. "-3D-K2+CN"."""
    return axes.switch_id(point) if point.family == "tlstm" else ""


def point_id(point: Point) -> str:
    size = f"P{point.tensor_size}" if point.tensor_size is not None else f"L{point.depth}"
    return (f"{point.impl}{_switches(point)}-{size}-T{point.seq_len}-B{point.batch}-M{point.channels}-{point.dtype}-"
            f"{point.mode}")


def point_group(point: Point) -> str:
    """Same sizes and mode, every implementation (and variant): one table that answers "which is faster here"."""
    size = f"P={point.tensor_size} " if point.tensor_size is not None else ""
    return size + axes.labels({name: getattr(point, name) for name in axes.names(axes.GROUP)}, skip=axes.names(
        axes.SWITCH)).replace(", ", " ")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "point" in metafunc.fixturenames:
        points = plugin.selected_points(metafunc.config)
        metafunc.parametrize("point", points, ids=[point_id(p) for p in points])
    if "train_point" in metafunc.fixturenames:
        points = plugin.training_step_sweep(metafunc.config).points()
        metafunc.parametrize("train_point", points,
                             ids=[f"{p.impl}-L{p.depth}-M{p.channels}-{p.dtype}-{p.device}" for p in points])


def with_slowdown(call: Callable[[], None], seconds: float) -> Callable[[], None]:
    """``call`` followed by a sleep: an honest, visible way to make an implementation slower on purpose."""
    if not seconds:
        return call

    def slower() -> None:
        call()
        time.sleep(seconds)

    return slower


def test_benchmark(benchmark, point: Point, slowdown_s: float, benchmark_threads: int,
                   request: pytest.FixtureRequest) -> None:
    # Checked when the benchmark runs, not at collection: availability may mean building an extension.
    reason = measure.unavailable_reason(point)
    if reason is not None:
        pytest.skip(f"{point.impl} on {point.device}: {reason}")
    model, x = measure.build_point(point)  # x: [B, T, R]

    ok, max_abs_err, message = measure.check_correctness(point, model, x)
    if not ok:
        pytest.fail(f"correctness gate failed, so {point_id(point)} is not timed: {message}", pytrace=False)

    benchmark.group = point_group(point)
    benchmark.extra_info.update(
        schema=SCHEMA_VERSION,
        config=point.as_dict(),
        model_config=point.model_config().as_dict(),
        key=point.key,
        gate=message,
        slowdown_s=slowdown_s,
        threads=torch.get_num_threads(),
    )

    call = measure.make_call(model, x, point.mode, point.device)  # synchronizes the device inside

    def setup() -> None:
        # Free the previous round's gradients outside the timed call (the call also sets them to None,
        # so gradients never accumulate even without this).
        model.zero_grad(set_to_none=True)

    benchmark.pedantic(with_slowdown(call, slowdown_s), setup=setup, rounds=point.repeats, warmup_rounds=point.warmup)

    # A separate, untimed pass for memory; then the suite's metrics from pytest-benchmark's own samples.
    memory_stats = measure.memory(model, x, point.mode, point.device)
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
    profile_dir = request.config.getoption("tlstm_profile")
    if profile_dir:  # one more call, profiled, never one of the timed rounds
        trace = Path(profile_dir) / TRACES_DIR / f"{point.key}.json.gz"
        benchmark.extra_info["profile"] = profile_call(call, point, trace)


TRAINING_STEP_BATCHES = 8  # drawn before timing and cycled through, so data generation is not timed


def test_training_step(benchmark, train_point: Point, request: pytest.FixtureRequest) -> None:
    """One training step of the task head + core (``bench.train.training_step``: forward, loss on the
    scored steps, backward, clipping, Adam) on the capacity sweep's task, per implementation."""
    point = train_point
    reason = measure.unavailable_reason(point)
    if reason is not None:
        pytest.skip(f"{point.impl} on {point.device}: {reason}")
    ok, max_abs_err, message = train.gate(point)
    if not ok:
        pytest.fail(f"correctness gate failed, so {point.impl}'s training step is not timed: {message}", pytrace=False)
    with measure.torch_threads(plugin.training_step_sweep(request.config).budget["threads"]):
        model, task = train.build_task_model(point)
        optimizer = torch.optim.Adam(model.parameters(), lr=point.train.lr)
        generator = torch.Generator().manual_seed(point.seed)
        batches = [tuple(t.to(point.device) for t in task.batch(point.batch, generator=generator))
                   for _ in range(TRAINING_STEP_BATCHES)]
        turn = iter(range(1 << 62))

        def step() -> None:
            if train.training_step(model, optimizer, batches[next(turn) % len(batches)], point.train.clip) is None:
                raise RuntimeError("the training loss became NaN or infinite")

        core_params, head_params = model.param_counts()
        benchmark.group = f"training step: {task.label()}, L={point.depth}, budget {point.train.params_budget:,}"
        benchmark.extra_info.update(schema=SCHEMA_VERSION, config=point.as_dict(), key=point.key, gate=message,
                                    max_abs_err=max_abs_err, params=core_params + head_params,
                                    core_params=core_params, head_params=head_params, width=point.channels,
                                    depth=point.depth, hidden_units=point.hidden_units,
                                    threads=torch.get_num_threads())
        benchmark.pedantic(step, rounds=20, warmup_rounds=3)
    # the timing metrics of one step (a batch of whole sequences) from pytest-benchmark's own samples, as the
    # timing benchmarks record them: time per sequence step is the step's time over T
    samples = list(benchmark.stats.stats.data) if benchmark.stats is not None else []  # none with --benchmark-disable
    benchmark.extra_info.update(point_timing_metrics(point, samples))
