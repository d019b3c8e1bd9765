"""The issue-7 figures: microseconds per timestep, forward and training, of ``tlstm_fused``,
``tlstm_naive`` and ``lstm_cudnn`` (8 layers) at B=16 and B=1, M=64, P=8, T=1024.

    python bench/gpu_figures.py --out DIR            # on a GPU: the figures, a table, DIR/gpu_figures.json
    python bench/gpu_figures.py --tiny --out DIR     # on a CPU, tiny sizes: exercises this script's logic

Timing on CUDA: CUDA events around ``inner`` back-to-back calls after ``warmup`` calls, synchronized
after every measured window; the median over ``repeats`` windows, divided by ``inner`` and by T. On a
CPU, ``time.perf_counter`` around the same windows. Each implementation is first checked against
``tlstm_naive`` / ``nn.LSTM`` semantics only through the test suite; here the fused output is also
compared with the naive one on the timed input (max |difference| recorded), so a wrong kernel cannot
hide behind a fast number.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import implementations

IMPLEMENTATIONS = ("tlstm_naive", "tlstm_fused", "lstm_cudnn")  # naive first: the fused run reuses its weights
MODES = ("forward", "training")
# The targets for the fused kernels, microseconds per timestep at B=16, M=64, P=8, T=1024.
TARGET_US = {"forward": 3.0, "training": 8.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for gpu_figures.json")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 1], help="batch sizes (default 16 1)")
    parser.add_argument("--channels", type=int, default=64, help="M (default 64)")
    parser.add_argument("--tensor-size", type=int, default=8, help="P; with K=3 the depth L = P (default 8)")
    parser.add_argument("--kernel-size", type=int, default=3, help="K (default 3)")
    parser.add_argument("--input-size", type=int, default=64, help="R (default 64)")
    parser.add_argument("--seq-len", type=int, default=1024, help="T (default 1024)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (compilation, cuDNN plans)")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported")
    parser.add_argument("--inner", type=int, default=3, help="calls per timed window")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes (B 2 1, M 8, P 3, T 8, R 4, one call per window) to check the script on a CPU")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.channels, args.tensor_size, args.input_size, args.seq_len = [2, 1], 8, 3, 4, 8
        args.warmup, args.repeats, args.inner = 1, 2, 1
    for name in ("channels", "tensor_size", "input_size", "seq_len", "warmup", "repeats", "inner"):
        minimum = 0 if name == "warmup" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    if any(b < 1 for b in args.batch):
        parser.error(f"--batch values must be >= 1, got {args.batch}")
    return args


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int, inner: int) -> list[float]:
    """Seconds per call, one value per timed window of ``inner`` calls."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    return samples


def make_call(model: torch.nn.Module, x: torch.Tensor, mode: str, channels: int) -> Callable[[], None]:
    if mode == "forward":
        def call() -> None:
            with torch.no_grad():
                model(x)
        return call
    weights = torch.randn(x.shape[0], x.shape[1], channels, device=x.device, dtype=x.dtype)  # [B, T, M]

    def call() -> None:  # one training step without the optimizer: forward, loss, backward
        for p in model.parameters():
            p.grad = None
        y, _ = model(x)
        (y * weights).sum().backward()
    return call


def build(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    if name == "lstm_cudnn":
        depth = implementations.tlstm_depth(args.tensor_size, args.kernel_size)
        return implementations.create(name, input_size=args.input_size, channels=args.channels, depth=depth,
                                      device=device, dtype=dtype)
    return implementations.create(name, input_size=args.input_size, channels=args.channels,
                                  tensor_size=args.tensor_size, kernel_size=args.kernel_size, device=device, dtype=dtype)


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    depth = implementations.tlstm_depth(args.tensor_size, args.kernel_size)
    rows = []
    for batch in args.batch:
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, args.seq_len, args.input_size, generator=gen).to(device, dtype)
        naive_y, reference_state = None, None
        for name in IMPLEMENTATIONS:
            impl = implementations.get(name)
            row = dict(implementation=name, batch=batch, seq_len=args.seq_len, channels=args.channels,
                       tensor_size=args.tensor_size, kernel_size=args.kernel_size, depth=depth,
                       input_size=args.input_size, dtype=args.dtype)
            reason = impl.unavailable_reason(device.type)
            if reason is None and not impl.supports_dtype(dtype):
                reason = f"dtype {args.dtype} not supported"
            if reason is not None:
                rows.append(row | dict(status=f"unavailable: {reason}"))
                print(f"  {name} B={batch}: unavailable: {reason}", flush=True)
                continue
            torch.manual_seed(0)
            model = build(name, args, device, dtype)
            row["backend"] = implementations.backend_name(model, x)
            if name in ("tlstm_naive", "tlstm_fused"):
                if name == "tlstm_naive":
                    reference_state = model.state_dict()
                elif reference_state is not None:
                    # the same weights as the naive model, so the outputs can be compared
                    model.load_state_dict(reference_state)
                with torch.no_grad():
                    y, _ = model(x)
                if name == "tlstm_naive":
                    naive_y = y.float()
                elif naive_y is not None:
                    row["max_abs_diff_vs_naive"] = (y.float() - naive_y).abs().max().item()
            try:
                for mode in MODES:
                    t0 = time.perf_counter()
                    samples = time_per_call(make_call(model, x, mode, args.channels), device, args.warmup, args.repeats, args.inner)
                    seconds = statistics.median(samples)
                    row[f"{mode}_us_per_step"] = seconds / args.seq_len * 1e6
                    row[f"{mode}_samples_s"] = samples
                    print(f"  {name} B={batch} {mode}: {row[f'{mode}_us_per_step']:.2f} us/step "
                          f"({time.perf_counter() - t0:.1f} s incl. warm-up)", flush=True)
                row["status"] = "ok"
            except RuntimeError as error:  # e.g. out of memory: recorded, the other rows still run
                row["status"] = f"error: {error}"
                print(f"  {name} B={batch}: error: {error}", flush=True)
            if device.type == "cuda":
                row["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            rows.append(row)
            del model
    return dict(environment=environment(device), settings=vars(args), rows=rows)


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [f"{'implementation':<14} {'B':>4} {'forward us/step':>16} {'training us/step':>17} {'fwd vs cuDNN':>13} "
             f"{'train vs cuDNN':>15}  backend"]
    cudnn = {r["batch"]: r for r in rows if r["implementation"] == "lstm_cudnn" and r.get("status") == "ok"}
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['implementation']:<14} {r['batch']:>4}  {r.get('status')}")
            continue
        ratios = []
        for mode in MODES:
            base = cudnn.get(r["batch"], {}).get(f"{mode}_us_per_step")
            ratios.append(f"{r[f'{mode}_us_per_step'] / base:.2f}x" if base else "n/a")
        lines.append(f"{r['implementation']:<14} {r['batch']:>4} {r['forward_us_per_step']:>16.2f} "
                     f"{r['training_us_per_step']:>17.2f} {ratios[0]:>13} {ratios[1]:>15}  {r.get('backend', '')}")
    return "\n".join(lines)


def verdicts(result: dict) -> list[str]:
    """The issue's targets for tlstm_fused, stated as measured (only meaningful on a GPU)."""
    out = []
    by_key = {(r["implementation"], r["batch"]): r for r in result["rows"] if r.get("status") == "ok"}
    for batch in sorted({r["batch"] for r in result["rows"]}):
        fused, cudnn = by_key.get(("tlstm_fused", batch)), by_key.get(("lstm_cudnn", batch))
        if fused is None:
            out.append(f"B={batch}: tlstm_fused not measured")
            continue
        for mode in MODES:
            value = fused[f"{mode}_us_per_step"]
            parts = [f"B={batch} {mode}: fused {value:.2f} us/step"]
            if batch == 16:
                parts.append(f"target <= {TARGET_US[mode]} us: {'met' if value <= TARGET_US[mode] else 'NOT met'}")
            if cudnn is not None:
                base = cudnn[f"{mode}_us_per_step"]
                parts.append(f"cuDNN {base:.2f} us/step: fused is {'faster' if value < base else 'NOT faster'}")
            out.append("; ".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_figures: device={args.device} dtype={args.dtype} M={args.channels} P={args.tensor_size} "
          f"K={args.kernel_size} T={args.seq_len} batches={args.batch}", flush=True)
    result = run(args)
    result["verdicts"] = verdicts(result)
    (out / "gpu_figures.json").write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    print("\n".join(result["verdicts"]))
    print(f"wrote {out / 'gpu_figures.json'}")
    failed = [r for r in result["rows"] if str(r.get("status", "")).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
