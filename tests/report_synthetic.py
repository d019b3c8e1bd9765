"""Fabricated results frames in the results contract's shape, for the report's tests and timing.

``make_results`` builds a frame as ``bench.results.load`` returns it: one row per point, config fields,
status, metrics, raw samples, ``attrs["env"]`` and ``attrs["sweep"]``. Times follow a simple model
(time per step grows with depth by a chosen fraction per extra layer) so a test can decide whether the
Faster claim should hold. Parameter counts follow the README's formulas exactly.

Run as a script to time ``reports.build_report`` on a 200-point frame:

    python -m tests.report_synthetic --out /tmp/synthetic-report/report.html
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from bench.contract import METRIC_FIELDS, recurrent_steps, timing_metrics

ENV = {
    "torch": "2.13.0+cpu", "cuda": None, "cudnn": None, "cpu_model": "Synthetic Xeon (2 cores)",
    "gpu_model": None, "threads": 2, "git_commit": "0123abc", "python": "3.11.2", "platform": "Linux-x86_64",
    "hostname": "synthetic", "matmul_gflops": 250.0, "cudnn_allow_tf32": True, "matmul_allow_tf32": False,
    "cudnn_benchmark": False,
}


def tlstm_params(input_size: int, channels: int, kernel_size: int = 3, mem_conv: bool = True) -> int:
    """The tLSTM's parameter count (README): R*M + M + K*M*G + G, G = 4M + K (4M without mem-conv)."""
    gates = 4 * channels + (kernel_size if mem_conv else 0)
    return input_size * channels + channels + kernel_size * channels * gates + gates


def lstm_params(input_size: int, channels: int, depth: int) -> int:
    """nn.LSTM's parameter count (README): 4M(R+M) + 8M + (L-1)(8M^2 + 8M)."""
    return 4 * channels * (input_size + channels) + 8 * channels + (depth - 1) * (8 * channels**2 + 8 * channels)


def _growth(growth: float | dict[int, float], batch: int) -> float:
    if isinstance(growth, dict):
        return growth.get(batch, max(growth.values()))  # failed points use sizes outside the grid
    return growth


def make_results(
    *,
    impls: Iterable[str] = ("tlstm_naive", "tlstm_fused", "lstm_cudnn"),
    depths: Iterable[int] = (1, 2, 4, 8),
    batches: Iterable[int] = (1, 16),
    modes: Iterable[str] = ("inference", "training"),
    seq_lens: Iterable[int] = (100,),
    channels: Iterable[int] = (64,),
    input_size: int = 32,
    kernel_size: int = 3,
    device: str = "cpu",
    tlstm_growth: float | dict[int, float] = 0.05,
    lstm_growth: float | dict[int, float] = 1.0,
    failed: bool | int = True,
    noisy_every: int = 7,
    drop_metrics: Iterable[str] = (),
    sweep: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """A results frame over the product of the given axes, plus failed points: one of each failing
    status with ``failed=True``, none with False, that many (cycling through the statuses) with an int.

    Time per step = base * (1 + growth * (L - 1)) * (1 + B/32) * (2.5 in training), with growth
    ``tlstm_growth`` for tLSTMs and ``lstm_growth`` for stacked LSTMs (a dict maps batch -> growth).
    For tLSTMs, depth = tensor size (K = 3). Every ``noisy_every``-th point gets a wide spread.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for impl in impls:
        family = "tlstm" if impl.startswith("tlstm") else "lstm"
        for m in channels:
            for depth in depths:
                for batch in batches:
                    for seq_len in seq_lens:
                        for mode in modes:
                            rows.append(_point(rng, len(rows), impl, family, depth, batch, seq_len, m, input_size,
                                               kernel_size, mode, device, tlstm_growth, lstm_growth,
                                               noisy=noisy_every > 0 and len(rows) % noisy_every == 3))
    failures = (
        ("oom", "lstm_cudnn", "torch.OutOfMemoryError: tried to allocate 12.0 GiB"),
        ("crashed", "tlstm_fused", "worker exited with signal 6 (SIGABRT)"),
        ("timeout", "tlstm_naive", "no result after 600 s"),
        ("incorrect", "tlstm_fused", "grad weight_h: max abs err 3.1e-02 > tol 1e-04 <vs tlstm_naive>"),
        ("unavailable", "tlstm_fused", "triton: no CUDA device"),
    )
    n_failed = len(failures) if failed is True else int(failed)
    if n_failed:
        first_m = next(iter(channels))
        for i in range(n_failed):
            status, impl, message = failures[i % len(failures)]
            big_depth = 16 * (1 + i // len(failures))  # distinct configurations, distinct keys
            row = _point(rng, len(rows), impl, "tlstm" if impl.startswith("tlstm") else "lstm", big_depth, 256, 100,
                         first_m, input_size, kernel_size, "training", device, tlstm_growth, lstm_growth, noisy=False)
            for name in list(row):
                if name in METRIC_NAMES and name not in ("params", "hidden_units"):
                    row[name] = None
            row.update(status=status, message=message, samples_s=[])
            if status == "incorrect":
                row["max_abs_err"] = 3.1e-2
            rows.append(row)
    df = pd.DataFrame(rows)
    for name in drop_metrics:
        df[name] = np.nan
    df.attrs["env"] = dict(ENV, gpu_model="Synthetic GPU" if device == "cuda" else None)
    if sweep:
        df.attrs["sweep"] = {
            "name": "synthetic", "command": "tlstm-bench run synthetic --out /tmp/synthetic",
            "axes": {"impl": list(impls), "depth": list(depths), "batch": list(batches), "mode": list(modes),
                     "seq_len": list(seq_lens), "channels": list(channels)},
            "repeats": 10, "warmup": 2, "seed": seed,
        }
    return df


METRIC_NAMES = METRIC_FIELDS


def _point(rng: np.random.Generator, index: int, impl: str, family: str, depth: int, batch: int, seq_len: int,
           m: int, r: int, k: int, mode: str, device: str, tlstm_growth: Any, lstm_growth: Any,
           noisy: bool) -> dict[str, Any]:
    config = {
        "impl": impl, "family": family, "tensor_size": depth if family == "tlstm" else None, "depth": depth,
        "seq_len": seq_len, "batch": batch, "channels": m, "input_size": r,
        "kernel_size": k if family == "tlstm" else None, "mem_conv": True if family == "tlstm" else None,
        "norm": None, "dtype": "float32", "mode": mode, "device": device, "repeats": 10, "warmup": 2, "seed": 0,
    }
    growth = _growth(tlstm_growth if family == "tlstm" else lstm_growth, batch)
    base = {"tlstm_naive": 400e-6, "tlstm_fused": 60e-6}.get(impl, 30e-6)
    per_step = base * (1 + growth * (depth - 1)) * (1 + batch / 32) * (2.5 if mode == "training" else 1.0)
    median = per_step * seq_len
    spread = 0.3 if noisy else 0.02
    samples = list(median * np.exp(rng.normal(0.0, spread, size=10)))
    if family == "tlstm":
        params = tlstm_params(r, m, k)
        hidden = depth * m
        gates = 4 * m + k
        steps = seq_len + depth - 1
        flops = batch * (2 * r * m * seq_len + 2 * depth * k * m * gates * steps)
    else:
        params = lstm_params(r, m, depth)
        hidden = depth * m
        flops = batch * seq_len * (2 * 4 * m * (r + m) + (depth - 1) * 2 * 4 * m * 2 * m)
    if mode == "training":
        flops *= 3
    # a made-up activation model: the naive reference keeps every step's intermediates
    activation = 4 * batch * seq_len * depth * m * {"tlstm_naive": 14, "tlstm_fused": 6}.get(impl, 10)
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "key": key, "sweep": "synthetic", "index": index, **config, "status": "ok", "message": "",
        "samples_s": samples, "params": params, "hidden_units": hidden,
        "backend": {"tlstm_naive": "eager", "tlstm_fused": "cpp"}.get(impl, "mkldnn"),
        **timing_metrics(samples, seq_len=seq_len, recurrent_steps=recurrent_steps(family, seq_len, depth),
                         batch=batch, flops=flops),
        "flops": flops,
        "peak_mem_bytes": activation * 1.5 if device == "cuda" else None,
        "saved_bytes": activation if mode == "training" else None,
        "rss_peak_bytes": 300e6 + activation * (1.2 if mode == "training" else 0.1) if device == "cpu" else None,
        "energy_j": None, "energy_note": "RAPL not readable", "max_abs_err": 1e-6 if impl != "lstm_cudnn" else None,
        "started_at": "2026-11-26T12:00:00",
    }


def pytest_benchmark_like(df: pd.DataFrame) -> pd.DataFrame:
    """The same points as a pytest-benchmark conversion would give them: timings only, no memory,
    FLOPs, parameter counts or gate, and no sweep definition in attrs."""
    keep = ["impl", "family", "tensor_size", "depth", "seq_len", "batch", "channels", "input_size",
            "kernel_size", "dtype", "mode", "device", "status", "message", "time_median_s", "time_q1_s",
            "time_q3_s", "samples_s"]
    out = df[df["status"] == "ok"][keep].copy()
    out.attrs = {"env": {"torch": "2.13.0+cpu", "python": "3.11.2"}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Time reports.build_report on a synthetic 200-point frame.")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/synthetic-report/report.html"))
    args = parser.parse_args()
    import reports

    # 3 impls x 4 depths x 2 batches x 2 modes x 2 T x 2 M = 192 timed points, plus 8 failed ones
    df = make_results(seq_lens=(50, 100), channels=(32, 64), tlstm_growth={1: 0.05, 16: 0.6}, failed=8)
    start, cpu_start = time.perf_counter(), time.process_time()
    path = reports.build_report(df, args.out)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    figures = sorted(path.parent.glob(f"{path.stem}_figures/*.png"))
    print(f"{len(df)} points -> {path} ({path.stat().st_size / 1e6:.2f} MB, {len(figures)} PNGs) "
          f"in {elapsed:.2f} s wall, {cpu:.2f} s CPU")


if __name__ == "__main__":
    main()
