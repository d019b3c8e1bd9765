"""Where the time goes: one profiled pass of a point (never a timed one), its trace, and its time split
into a small fixed set of categories.

    breakdown = profile_call(call, point, trace_path)    # after the timed calls, on the same model

The split is taken on the thread that issued the call, which runs every operator or waits for it (an
operator that splits its rows between threads, as the fused C++ operator does, runs one share on this
thread and waits for the others at the end of each step): each operator's *self* time on that thread
goes to the category of its name, and the rest of the profiled wall time, spent outside any operator
(Python, autograd bookkeeping, dispatch between operators), is *framework overhead*. So the categories
add up to the profiled wall time. On a GPU the kernels are split the same way by their names, with the
idle time between them and the number of launches.

The fused operators name their phases (``tlstm_fused::forward_product``, ``..._pointwise``, the same for
the backward) so the split sees inside them; the Triton kernels appear by their own names.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from .contract import Point

PRODUCTS = "matrix products"
POINTWISE = "pointwise and reductions"
MEMORY = "memory copies and allocation"
RNN_LIBRARY = "fused RNN library kernels"
OTHER = "other operators"
OVERHEAD = "framework overhead"
CATEGORIES = (PRODUCTS, POINTWISE, MEMORY, RNN_LIBRARY, OTHER, OVERHEAD)
TOP_OPERATORS = 8

# Operator (or kernel) names by category: a name belongs to the first category one of whose words it
# contains. The fused operators' phase ranges carry "product" and "pointwise" in their names.
_WORDS = (
    (RNN_LIBRARY, ("rnn", "aten::lstm", "cudnn")),
    (PRODUCTS, ("::mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "addmv", "::mv", "::dot", "conv",
                "product", "gemm", "cublas", "cutlass", "sgemm", "hgemm", "wgmma", "xmma", "dot_kernel")),
    (MEMORY, ("copy", "::to", "clone", "contiguous", "empty", "zeros", "ones", "zero_", "fill", "::cat",
              "stack", "pad", "unfold", "memset", "memcpy", "index", "gather", "scatter", "flip", "roll",
              "resize", "new_", "full")),
    (POINTWISE, ("sigmoid", "tanh", "mul", "add", "sub", "div", "softmax", "exp", "log", "neg", "relu",
                 "clamp", "where", "sum", "mean", "var", "std", "norm", "rsqrt", "sqrt", "pow", "max", "min",
                 "pointwise", "elementwise", "reduce", "addcmul", "addcdiv", "lerp", "threshold", "_backward")),
)
# Views move no data: their time is dispatch, and so is the self time of the autograd wrappers.
_VIEWS = {"view", "reshape", "_reshape_alias", "view_as", "transpose", "t", "numpy_T", "permute", "select",
          "slice", "narrow", "expand", "expand_as", "as_strided", "unsqueeze", "squeeze", "detach", "alias",
          "unbind", "split", "split_with_sizes", "chunk", "lift_fresh", "unflatten", "flatten", "movedim",
          "resolve_conj", "resolve_neg", "set_"}


def category(name: str) -> str:
    """The category of an operator or kernel name."""
    if name.startswith("autograd::") or name[:1].isupper():  # autograd nodes, Python autograd Functions
        return OVERHEAD
    if name.rsplit("::", 1)[-1] in _VIEWS:
        return OVERHEAD
    lowered = name.lower()
    for cat, words in _WORDS:
        if any(word in lowered for word in words):
            return cat
    return OTHER


def _shapes(event: Any) -> str:
    shapes = [s for s in (getattr(event, "input_shapes", None) or []) if s]
    return " x ".join(str(list(s)) for s in shapes[:3])


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -float("inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _write_trace(prof: Any, trace_path: Path) -> None:
    """The profiler's Chrome trace, gzipped (opens in Perfetto and chrome://tracing)."""
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(suffix=".json", dir=trace_path.parent)
    os.close(fd)
    tmp = trace_path.with_name(trace_path.name + ".tmp")
    try:
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, trace_path)
    finally:  # nothing half-written stays behind (a full disk, a kill between the steps)
        for leftover in (Path(raw), Path(raw + ".tmp"), tmp):
            leftover.unlink(missing_ok=True)


def _product_rate(events: list[Any], dtype: str) -> tuple[float | None, list[int] | None, float | None]:
    """GFLOP/s of the profiled matrix products that report FLOPs, the shape that took longest, and the
    machine's torch.mm rate on that shape and dtype (timed here, outside the profiler)."""
    counted = [e for e in events if getattr(e, "flops", 0) and e.self_cpu_time_total > 0]
    if not counted:
        return None, None, None
    rate = sum(e.flops for e in counted) / sum(e.self_cpu_time_total * 1e-6 for e in counted) / 1e9
    longest = max(counted, key=lambda e: e.self_cpu_time_total)
    shapes = [list(s) for s in (longest.input_shapes or []) if s]
    if len(shapes) < 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2 or shapes[0][1] != shapes[1][0]:
        return rate, None, None
    torch_dtype = getattr(torch, dtype)
    a, b = torch.randn(*shapes[0]).to(torch_dtype), torch.randn(*shapes[1]).to(torch_dtype)
    torch.mm(a, b)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < 0.05:
        torch.mm(a, b)
        calls += 1
    mm_rate = 2 * shapes[0][0] * shapes[0][1] * shapes[1][1] * calls / (time.perf_counter() - start) / 1e9
    return rate, [shapes[0][0], shapes[0][1], shapes[1][1]], mm_rate


def profile_call(call: Callable[[], None], point: Point, trace_path: Path, *,
                 energy_read: Callable[[], float] | None = None, energy_note: str = "") -> dict[str, Any]:
    """Profile one call (it synchronizes the device itself), write its trace to ``trace_path`` and
    return the breakdown stored in the point's results line (``metrics["profile"]``)."""
    cuda = torch.device(point.device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    call()  # the profiler's own first-use costs stay out of the profiled call
    start_j = energy_read() if energy_read else None
    with profile(activities=activities, record_shapes=True, with_flops=True) as prof:
        started = time.perf_counter()
        call()
        wall = time.perf_counter() - started
    used_j = energy_read() - start_j if energy_read and start_j is not None else None
    _write_trace(prof, trace_path)

    events = list(prof.events())
    cpu_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    by_thread: dict[int, float] = {}
    for e in cpu_events:
        by_thread[e.thread] = by_thread.get(e.thread, 0.0) + e.self_cpu_time_total
    caller = max(by_thread, key=by_thread.get) if by_thread else None
    categories = dict.fromkeys(CATEGORIES, 0.0)
    for e in cpu_events:
        if e.thread == caller:
            categories[category(e.name)] += e.self_cpu_time_total * 1e-6
    inside = sum(categories.values())
    categories[OVERHEAD] += max(wall - inside, 0.0)  # outside any operator: Python, autograd, dispatch

    top = sorted((e for e in prof.key_averages(group_by_input_shape=True)), key=lambda e: -e.self_cpu_time_total)
    top_ops = [{"name": e.key, "shapes": _shapes(e), "self_s": e.self_cpu_time_total * 1e-6, "calls": e.count,
                "category": category(e.key)} for e in top[:TOP_OPERATORS]]
    # the products' rate from their CPU time: on a GPU that is launch time, so only on the CPU, and only
    # where products are a real share of the call (else a few tiny products give a meaningless rate)
    if not cuda and categories[PRODUCTS] >= 0.05 * wall:
        rate, shape, mm_rate = _product_rate([e for e in cpu_events if e.thread == caller], point.dtype)
    else:
        rate = shape = mm_rate = None
    result: dict[str, Any] = {
        "wall_s": wall,
        "categories_s": categories,
        "counted_s": inside,  # operator self time on the calling thread; over wall_s only by timer jitter
        "threads_seen": len(by_thread),
        "top_ops": top_ops,
        "trace": str(trace_path.name),
        "product_gflops": rate,
        "product_shape": shape,
        "mm_gflops_same_shape": mm_rate,
        "energy_j_per_step": used_j / point.recurrent_steps if used_j is not None and used_j > 0 else None,
        "energy_note": energy_note if used_j is not None else (energy_note or "not measured"),
    }
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        spans = [(e.time_range.start * 1e-6, e.time_range.end * 1e-6) for e in kernels]
        gpu = dict.fromkeys(CATEGORIES[:-1], 0.0)
        for e in kernels:
            gpu[category(e.name)] += e.device_time_total * 1e-6 if hasattr(e, "device_time_total") else 0.0
        busy = _union_length(spans)
        result["gpu"] = {"kernels_s": gpu, "busy_s": busy, "idle_s": max(wall - busy, 0.0), "launches": len(kernels)}
    return result
