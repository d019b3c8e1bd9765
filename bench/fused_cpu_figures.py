"""Figures for the fused C++ tLSTM (issue 6): speed-ups over ``tlstm_naive``, matrix-product
efficiency against ``torch.mm``, bfloat16 against float32, depth scaling against ``nn.LSTM``, the
build and load times of the operator, and ``tlstm_compiled`` at one size. Not a test: it prints.

    flock /tmp/tlstm-timing.lock python -m bench.fused_cpu_figures [--repeats 5] [--skip bf16,compiled]

Implementations that are compared run interleaved in one process (A, B, A, B, ...) after a warm-up,
and each figure is the median over repeats of the per-repeat ratio, so slow drifts of a shared
machine cancel. Every figure is printed with its target and whether it was met.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import torch

import implementations
from implementations import fused_cpu, tlstm_depth

FIGURES = ("speedup_small", "speedup_medium", "gemm_efficiency", "bf16", "depth", "compiled", "build")


def build(name: str, dtype: torch.dtype = torch.float32, **sizes) -> torch.nn.Module:
    model = implementations.create(name, dtype=dtype, **sizes)
    return model


def training_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of a sum over the outputs, gradients cleared first."""

    def run() -> None:
        for p in model.parameters():
            p.grad = None
        y, (h, c) = model(x)
        (y.float().sum() + h.float().sum()).backward()

    return run


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, calls interleaved round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def report(label: str, value: float, target: str, met: bool | None, detail: str = "") -> None:
    verdict = "n/a" if met is None else ("met" if met else "NOT met")
    print(f"{label:<58} {value:>10.3g}   target {target:<10} {verdict:<8} {detail}", flush=True)


def tlstm_sizes(batch: int, channels: int, tensor_size: int, kernel_size: int = 3) -> dict:
    return dict(input_size=channels, channels=channels, tensor_size=tensor_size, kernel_size=kernel_size,
                mem_conv=True, norm=None)


def speedup(batch: int, channels: int, tensor_size: int, seq_len: int, target: float, repeats: int,
            with_compiled: bool = False) -> None:
    sizes = tlstm_sizes(batch, channels, tensor_size)
    x = torch.randn(batch, seq_len, channels)
    naive = build("tlstm_naive", **sizes)
    fused = build("tlstm_fused", **sizes)
    fused.load_state_dict(naive.state_dict())
    fns = {"naive": training_step(naive, x), "fused": training_step(fused, x)}
    if with_compiled:
        compiled = build("tlstm_compiled", **sizes)
        compiled.load_state_dict(naive.state_dict())
        start = time.perf_counter()
        training_step(compiled, x)()  # compiles forward and backward of the step
        print(f"  tlstm_compiled: first training step (compiling) {time.perf_counter() - start:.1f} s", flush=True)
        fns["compiled"] = training_step(compiled, x)
    times = interleaved(fns, repeats)
    shape = f"B={batch} M={channels} P={tensor_size} K=3 T={seq_len}"
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    detail = ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
    if with_compiled:
        report(f"tlstm_compiled / fused training time, {shape}", median_ratio(times["compiled"], times["fused"]),
               "(info)", None, detail)
        report(f"naive / tlstm_compiled training time, {shape}", median_ratio(times["naive"], times["compiled"]),
               "(info)", None)
    else:
        ratio = median_ratio(times["naive"], times["fused"])
        report(f"naive / fused training time, {shape}", ratio, f">= {target:g}x", ratio >= target, detail)


def _step_product_rates(prof, shapes: set[tuple[int, int]], step_flops: float) -> list[float]:
    """GFLOP/s of each step's product, from the profiler's aten::mm events whose first operand has
    one of ``shapes``: a step split between threads runs one product per thread at the same time, so
    events that overlap in time are one step, timed from the first start to the last end."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.name == "aten::mm" and e.input_shapes and tuple(e.input_shapes[0]) in shapes)
    groups: list[list[float]] = []
    for start, end in spans:
        if groups and start < groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], end)
        else:
            groups.append([start, end])
    return [step_flops / ((end - start) * 1e-6) / 1e9 for start, end in groups]


def gemm_efficiency(repeats: int) -> None:
    """GFLOP/s of the fused operator's per-step convolution product (read from the profiler) against
    torch.mm alone on the same [B*P, K*M] x [K*M, G] shape, interleaved. The operator splits each
    step's rows between the threads, one product per thread; torch.mm threads the whole product."""
    batch, channels, tensor_size, seq_len, k = 64, 256, 8, 64, 3
    sizes = tlstm_sizes(batch, channels, tensor_size)
    g = 4 * channels + k
    rows, inner = batch * tensor_size, k * channels
    threads = torch.get_num_threads()
    blocks = {-(-rows // threads), rows // threads}  # rows per thread
    flops = 2 * rows * inner * g
    fused = build("tlstm_fused", **sizes)
    x = torch.randn(batch, seq_len, channels)
    step = training_step(fused, x)
    a, b = torch.randn(rows, inner), torch.randn(inner, g)
    out = torch.empty(rows, g)
    step()  # warm-up
    fused_fwd, fused_bwd, alone, step_times = [], [], [], []
    for _ in range(repeats):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            step()
            step_times.append(time.perf_counter() - start)
        fused_fwd.append(statistics.median(_step_product_rates(prof, {(n, inner) for n in blocks}, flops)))
        fused_bwd.append(statistics.median(_step_product_rates(prof, {(n, g) for n in blocks}, flops)))
        calls = []
        for _ in range(seq_len):  # as many products as one forward does, back to back
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            calls.append(time.perf_counter() - start)
        alone.append(flops / statistics.median(calls) / 1e9)
    shape = f"[{rows}, {inner}] x [{inner}, {g}]"
    ratio = statistics.median(f / m for f, m in zip(fused_fwd, alone))
    report(f"fused conv GFLOP/s / torch.mm GFLOP/s, {shape}", ratio, ">= 0.6", ratio >= 0.6,
           f"fused fwd {statistics.median(fused_fwd):.0f}, bwd dX {statistics.median(fused_bwd):.0f}, "
           f"torch.mm {statistics.median(alone):.0f} GFLOP/s ({threads} threads); "
           f"training step {statistics.median(step_times):.2f} s")


def bf16_vs_fp32(repeats: int, seq_len: int) -> None:
    batch, channels, tensor_size = 64, 256, 8
    sizes = tlstm_sizes(batch, channels, tensor_size)
    fp32 = build("tlstm_fused", **sizes)
    bf16 = build("tlstm_fused", dtype=torch.bfloat16, **sizes)
    bf16.load_state_dict(fp32.state_dict())
    x = torch.randn(batch, seq_len, channels)
    with torch.no_grad():
        y32 = fp32(x)[0]
        y16 = bf16(x.bfloat16())[0].float()
    error = ((y16 - y32).norm() / y32.norm()).item()
    rows, inner, g = batch * tensor_size, 3 * channels, 4 * channels + 3
    mm = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(rows, inner).to(dtype), torch.randn(inner, g).to(dtype)
        torch.mm(a, b)
        start = time.perf_counter()
        torch.mm(a, b)
        mm[dtype] = 2 * rows * inner * g / (time.perf_counter() - start) / 1e9
    times = interleaved({"fp32": training_step(fp32, x), "bf16": training_step(bf16, x.bfloat16())}, repeats, warmup=0)
    ratio = median_ratio(times["fp32"], times["bf16"])
    shape = f"B={batch} M={channels} P={tensor_size} T={seq_len}"
    report(f"fused fp32 / fused bf16 training time, {shape}", ratio, ">= 3x", ratio >= 3,
           f"fp32 {statistics.median(times['fp32']):.2f} s, bf16 {statistics.median(times['bf16']):.2f} s; "
           f"torch.mm on the conv shape: fp32 {mm[torch.float32]:.0f}, bf16 {mm[torch.bfloat16]:.1f} GFLOP/s")
    report(f"bf16 output relative error vs fp32, {shape}", error, "<= 2e-2", error <= 2e-2)


def depth(repeats: int) -> None:
    batch, channels, seq_len = 1, 64, 256
    x = torch.randn(batch, seq_len, channels)
    fns = {}
    for tensor_size in (1, 16):
        fns[f"fused P={tensor_size}"] = training_step(build("tlstm_fused", **tlstm_sizes(batch, channels, tensor_size)), x)
        layers = tlstm_depth(tensor_size, 3)
        lstm = build("lstm_cudnn", input_size=channels, channels=channels, depth=layers)
        fns[f"lstm L={layers}"] = training_step(lstm, x)
    times = interleaved(fns, repeats)
    fused_ratio = median_ratio(times["fused P=16"], times["fused P=1"])
    lstm_ratio = median_ratio(times["lstm L=16"], times["lstm L=1"])
    detail = ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in times.items())
    report(f"fused training time P=16 / P=1, B={batch} M={channels} K=3 T={seq_len}", fused_ratio, "<= 2.5x",
           fused_ratio <= 2.5, detail)
    report("lstm_cudnn (oneDNN) training time 16 / 1 layers, same sizes", lstm_ratio, "(compare)", None)


def build_times() -> None:
    """Build into an empty cache in a fresh process, then load it in a second fresh process."""
    # torch and the package are imported before the clock starts: this times the build or the load.
    code = ("import time, torch; from implementations import fused_cpu; t = time.perf_counter(); "
            "fused_cpu.load_extension(); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=cache)
        results = []
        for _ in range(2):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            results.append((float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start))
    report("first use: build the operator (s, in-process)", results[0][0], "< 120 s", results[0][0] < 120,
           f"whole process {results[0][1]:.1f} s")
    report("second process: load the cached build (s, in-process)", results[1][0], "< 3 s", results[1][0] < 3,
           f"whole process incl. starting Python and importing torch {results[1][1]:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per figure (median reported)")
    parser.add_argument("--bf16-seq-len", type=int, default=16,
                        help="T for the bf16 figure (64 in the issue; bf16 products are slow on CPUs without AMX)")
    parser.add_argument("--skip", default="", help=f"comma-separated figures to skip, of {','.join(FIGURES)}")
    parser.add_argument("--only", default="", help="comma-separated figures to run (default: all)")
    args = parser.parse_args(argv)
    chosen = [f for f in (args.only.split(",") if args.only else FIGURES) if f and f not in args.skip.split(",")]
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {list(FIGURES)}")
    reason = fused_cpu.unavailable_reason("cpu")
    if reason is not None:
        sys.exit(f"tlstm_fused (cpp) is unavailable: {reason}")
    fused_cpu.load_extension()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    torch.manual_seed(0)
    if "build" in chosen:
        build_times()
    if "speedup_small" in chosen:
        speedup(1, 32, 8, 256, 25, args.repeats)
    if "speedup_medium" in chosen:
        speedup(16, 128, 8, 128, 2, args.repeats)
    if "gemm_efficiency" in chosen:
        gemm_efficiency(max(3, args.repeats // 2))
    if "depth" in chosen:
        depth(args.repeats)
    if "bf16" in chosen:
        bf16_vs_fp32(max(1, args.repeats // 3), args.bf16_seq_len)
    if "compiled" in chosen:
        speedup(16, 128, 8, 128, 0, max(3, args.repeats // 2), with_compiled=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
