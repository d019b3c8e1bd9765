"""Measuring one point, in-process: build, correctness gate, timing, FLOPs, memory, energy, environment.

The sweep runner calls :func:`measure_point` inside a worker process; the pytest-benchmark suite can
use the pieces directly::

    model, x = build_point(point)                      # seeded weights and input
    ok, max_err, message = check_correctness(point, model, x)
    fn = make_call(model, x, point.mode, point.device)   # synchronizes the device inside
    mem = memory(model, x, point.mode, point.device)     # a separate, untimed pass
    samples = time_calls(fn, repeats=5, warmup=2, device=point.device)
    row = metrics(point, samples, model=model, x=x, memory_stats=mem)

``point`` is a ``bench.contract.Point`` (see ``bench.sweep.Sweep.points``). Sizes: B batch, T sequence
length, R input size, M channels, P tensor size, K kernel size, L depth, G gate channels.
"""

from __future__ import annotations

import math
import platform
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from glob import glob
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

import implementations

from .contract import Point, point_timing_metrics

TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Gate tolerance per dtype, on max|got - ref| / (1 + max|ref|) per compared tensor, against a float64
# reference on a short sequence. Low-precision formats round every intermediate, hence the wide bounds.
GATE_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
# TF32 keeps a 10-bit mantissa, so float32 on a GPU with TF32 allowed is judged as such.
TF32_TOLERANCE = 2e-3
GATE_MAX_SEQ_LEN = 16  # the gate needs every output to see the full depth, not a long sequence
ENERGY_WINDOW_S = 1.0


def unavailable_reason(point: Point) -> str | None:
    """None if the point's implementation can run on its device and dtype, else why not."""
    impl = implementations.get(point.impl)
    reason = impl.unavailable_reason(point.device)
    if reason is None and not impl.supports_dtype(TORCH_DTYPES[point.dtype]):
        allowed = ", ".join(str(d).removeprefix("torch.") for d in impl.dtypes)
        reason = f"dtype {point.dtype} is not supported by {point.impl}; allowed: {allowed}"
    return reason


def build_point(point: Point) -> tuple[nn.Module, torch.Tensor]:
    """The point's model and input x [B, T, R], both drawn from ``point.seed``."""
    device, dtype = torch.device(point.device), TORCH_DTYPES[point.dtype]
    torch.manual_seed(point.seed)
    model = implementations.build(point.impl, point.model_config(), device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(point.seed + 1)
    x = torch.randn(point.batch, point.seq_len, point.input_size, generator=generator)  # [B, T, R]
    return model, x.to(device=device, dtype=dtype)


def _grad_output(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed random upstream gradient dL/dy, so that every output element matters to the backward."""
    generator = torch.Generator().manual_seed(seed + 2)
    return torch.randn(y.shape, generator=generator, dtype=torch.float64).to(device=y.device, dtype=y.dtype)


@contextmanager
def torch_threads(threads: int):
    """torch's intra-op thread count set to ``threads`` (0: left as it is) inside the block, restored after."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sync(device: torch.device | str) -> Callable[[], None]:
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


# ---------------------------------------------------------------------------------------------------
# correctness gate


def gate_tolerance(dtype: str, device: str) -> tuple[float, str]:
    """The gate's tolerance for a dtype on a device, and a note when TF32 widened it."""
    tol = GATE_TOLERANCE[dtype]
    if dtype == "float32" and torch.device(device).type == "cuda":
        if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32:
            return max(tol, TF32_TOLERANCE), " (TF32 allowed on this GPU)"
    return tol, ""


@contextmanager
def _native_lstm():
    """oneDNN off, so nn.LSTM runs PyTorch's own per-step kernels: an independent reference."""
    with warnings.catch_warnings():
        # flags() re-applies every oneDNN setting, and the TF32 one warns on builds without Intel GPUs
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _reference(point: Point, model: nn.Module) -> tuple[nn.Module, torch.device, Any]:
    """A float64 reference with the model's weights: the one the implementation registered (on the point's
    device) if any, else the family's reference implementation for tLSTMs (on the point's device), the
    native (non-oneDNN, non-cuDNN) torch.nn.LSTM on the CPU for stacked LSTMs."""
    config = point.model_config()
    registered = implementations.get(point.impl).reference
    if registered is not None:
        device = torch.device(point.device)
        reference = registered(config, device)
        context = nullcontext()
    elif point.family == "tlstm":
        device = torch.device(point.device)
        reference = implementations.build(implementations.family_reference("tlstm"), config, device=device,
                                          dtype=torch.float64)
        context = nullcontext()
    else:
        device = torch.device("cpu")
        reference = nn.LSTM(config.input_size, config.channels, num_layers=config.layers, batch_first=True,
                            dtype=torch.float64)
        context = _native_lstm()
    state = {k: v.detach().to(device=device, dtype=torch.float64) for k, v in model.state_dict().items()}
    reference.load_state_dict(state)
    return reference, device, context


def check_correctness(
    point: Point, model: nn.Module | None = None, x: torch.Tensor | None = None
) -> tuple[bool, float, str]:
    """Compare the point's implementation with a float64 reference on the same weights.

    Output y and final state (h, c) always; in training mode also the gradient of a fixed random
    projection of y with respect to x and every parameter. Uses the point's batch and at most
    ``GATE_MAX_SEQ_LEN`` steps. Returns (ok, max_abs_err, message).
    """
    if model is None or x is None:
        model, x = build_point(point)
    training = point.mode == "training"
    x = x[:, :GATE_MAX_SEQ_LEN].detach()  # [B, T', R]
    reference, ref_device, context = _reference(point, model)
    x_ref = x.to(device=ref_device, dtype=torch.float64)

    def run(module: nn.Module, inputs: torch.Tensor, ctx) -> dict[str, torch.Tensor]:
        inputs = inputs.clone().requires_grad_(training)
        with ctx, torch.set_grad_enabled(training):
            y, (h, c) = module(inputs)
            out = {"y": y, "h": h, "c": c}
            if training:
                params = dict(module.named_parameters())
                grads = torch.autograd.grad((y * _grad_output(y, point.seed)).sum(), [inputs, *params.values()])
                out["grad x"] = grads[0]
                out.update({f"grad {name}": g for name, g in zip(params, grads[1:])})
        return {k: v.detach() for k, v in out.items()}

    got = run(model, x, nullcontext())
    want = run(reference, x_ref, context)
    model.zero_grad(set_to_none=True)
    tol, note = gate_tolerance(point.dtype, point.device)
    missing = sorted(set(want) - set(got))
    if missing:
        return False, math.nan, f"gate: the implementation has no {missing} to compare with the reference"
    worst_name, worst_ratio, max_err = "", 0.0, 0.0
    for name, ref in want.items():
        out = got[name].to(device=ref.device, dtype=torch.float64)
        if out.shape != ref.shape:
            return False, math.nan, f"gate: {name} has shape {list(out.shape)}, the reference {list(ref.shape)}"
        if not torch.isfinite(out).all():
            return False, math.inf, f"gate: {name} has non-finite values"
        err = (out - ref).abs().max().item() if ref.numel() else 0.0
        ratio = err / (1.0 + ref.abs().max().item()) if ref.numel() else 0.0
        max_err = max(max_err, err)
        if ratio >= worst_ratio:
            worst_name, worst_ratio = name, ratio
    reference_name = (f"{type(reference).__name__} float64" if implementations.get(point.impl).reference is not None
                      else f"{implementations.family_reference('tlstm')} float64" if point.family == "tlstm"
                      else "native nn.LSTM float64")
    summary = (f"gate vs {reference_name}: worst {worst_name}, max|err|/(1+max|ref|) = {worst_ratio:.3g}, "
               f"tolerance {tol:g}{note}")
    return worst_ratio <= tol, max_err, summary


# ---------------------------------------------------------------------------------------------------
# timing


def make_call(model: nn.Module, x: torch.Tensor, mode: str, device: torch.device | str) -> Callable[[], None]:
    """One call = one whole sequence: forward under no_grad (inference) or forward + backward (training),
    with the device synchronized before returning so asynchronous work is inside the timing."""
    sync = _sync(device)
    if mode == "inference":

        def call() -> None:
            with torch.no_grad():
                model(x)
            sync()

        return call
    if mode != "training":
        raise ValueError(f"mode must be 'inference' or 'training', got {mode!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    grad_y: list[torch.Tensor] = []  # made on the first call, which knows y's shape; reused after

    def call() -> None:
        for p in params:  # gradients from the previous call must not accumulate (or cost an add)
            p.grad = None
        y, _ = model(x)
        if not grad_y:
            grad_y.append(_grad_output(y, 0))
        y.backward(grad_y[0])
        sync()

    return call


def time_calls(
    fn: Callable[[], None], repeats: int, warmup: int, device: torch.device | str, min_time_s: float = 0.0
) -> list[float]:
    """Raw seconds per call: ``warmup`` untimed calls, then ``repeats`` timed ones, and more until the
    timed calls add up to ``min_time_s`` (so that a short call's median spans more than a burst of
    other work on a shared machine).

    On CUDA each call is timed with CUDA events around it (and ``fn`` synchronizes inside); on the CPU
    with ``time.perf_counter``.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []

    def more() -> bool:
        return len(samples) < repeats or sum(samples) < min_time_s

    if torch.device(device).type == "cuda":
        while more():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0)
    else:
        while more():
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


# ---------------------------------------------------------------------------------------------------
# cost, memory, energy


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so it covers one point, not the worker's lifetime."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_field(path: str, name: str) -> str | None:
    """The value of the first ``name: value`` line of a /proc file (None where it is absent or unreadable)."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size (VmHWM; getrusage's ru_maxrss where /proc is missing)."""
    vm_hwm = proc_field("/proc/self/status", "VmHWM")  # "123456 kB"
    if vm_hwm is not None:
        return int(vm_hwm.split()[0]) * 1024
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None


def memory(model: nn.Module, x: torch.Tensor, mode: str, device: torch.device | str) -> dict[str, Any]:
    """One untimed call measuring memory: the CUDA allocator's peak (GPU), the bytes of activations saved
    for backward (training; parameters excluded, each storage counted once), the peak RSS and how far
    the call raised it above the RSS before it (None where the peak mark cannot be reset)."""
    device = torch.device(device)
    fn = make_call(model, x, mode, device)
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if mode == "training" else nullcontext()
    # the peak mark starts at the current RSS, so the delta is what this call added, whatever ran before
    reset = _reset_peak_rss()
    rss_before = proc_field("/proc/self/status", "VmRSS")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with hooks:
        fn()
    peak = peak_rss_bytes()
    return {
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "saved_bytes": sum(saved.values()) if mode == "training" else None,
        "rss_peak_bytes": peak,
        "rss_delta_bytes": peak - int(rss_before.split()[0]) * 1024 if reset and rss_before and peak else None,
    }


def _rapl_files() -> list[str]:
    # package domains only (intel-rapl:0), not their sub-domains (intel-rapl:0:0), which they include
    return [f for f in glob("/sys/class/powercap/intel-rapl:*/energy_uj") if f.count(":") == 1]


def energy_probe(device: torch.device | str) -> tuple[Callable[[], float] | None, str]:
    """A function returning a cumulative energy counter in joules for the device, or None and why not."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = None
            try:
                uuid = str(torch.cuda.get_device_properties(device).uuid)
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            except Exception:
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises NVMLError_NotSupported where absent
            return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0), "NVML total-energy counter"
        except Exception as exc:
            return None, f"NVML energy counter not readable: {exc!r}"
    files = _rapl_files()
    if not files:
        return None, "RAPL not present (/sys/class/powercap/intel-rapl:* missing, usual in virtual machines)"
    try:
        for f in files:
            Path(f).read_text()
    except OSError as exc:
        return None, f"RAPL not readable ({exc.strerror}; recent kernels allow root only)"

    def read() -> float:
        return sum(int(Path(f).read_text()) for f in files) / 1e6

    return read, "RAPL package counters (whole CPU package, other processes included)"


def energy(fn: Callable[[], None], device: torch.device | str,
           window_s: float = ENERGY_WINDOW_S) -> tuple[float | None, str]:
    """Joules per call, from the energy counter over a window of at least ``window_s`` seconds of calls."""
    read, note = energy_probe(device)
    if read is None:
        return None, note
    calls, start_j, t0 = 0, read(), time.perf_counter()
    while calls == 0 or time.perf_counter() - t0 < window_s:
        fn()
        calls += 1
    used = read() - start_j
    if used <= 0:  # a wrapped or frozen counter: say so rather than report nonsense
        return None, f"{note}: counter did not advance over {calls} calls"
    return used / calls, f"{note}, {calls} calls over {time.perf_counter() - t0:.2f} s"


# ---------------------------------------------------------------------------------------------------
# metrics and the whole point


def metrics(
    point: Point,
    samples: list[float],
    *,
    model: nn.Module | None = None,
    x: torch.Tensor | None = None,
    memory_stats: dict[str, Any] | None = None,
    energy_j: float | None = None,
    energy_note: str = "not measured",
    max_abs_err: float | None = None,
) -> dict[str, Any]:
    """The results contract's ``metrics`` for a point from its raw samples (seconds per call)."""
    row: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()) if model is not None else None,
        "hidden_units": point.hidden_units,
        "backend": implementations.backend_name(model, x) if model is not None and x is not None else None,
        "flops": point.flops(),
        "max_abs_err": max_abs_err,
        "energy_j": energy_j,
        "energy_note": energy_note,
        "peak_mem_bytes": None,
        "saved_bytes": None,
        "rss_peak_bytes": None,
        "rss_delta_bytes": None,
    }
    row.update(memory_stats or {})
    row.update(point_timing_metrics(point, samples))
    return row


def measure_point(
    point: Point, *, energy_window_s: float | None = ENERGY_WINDOW_S, min_time_s: float = 0.0,
    trace_path: Path | None = None,
) -> dict[str, Any]:
    """Gate, memory pass, warm-up, timing (``point.repeats`` calls at least, ``min_time_s`` of timed
    calls at least) and energy for one point; with ``trace_path``, then one profiled call whose breakdown
    goes to ``metrics["profile"]`` and whose trace is written there.

    Returns {"status": "ok" | "incorrect", "message", "samples_s", "metrics"}. Errors (out of memory,
    unavailable, anything else) propagate for the caller to classify.
    """
    device = point.device
    model, x = build_point(point)
    ok, max_err, message = check_correctness(point, model, x)
    if not ok:
        return {"status": "incorrect", "message": message, "samples_s": [],
                "metrics": metrics(point, [], model=model, x=x, max_abs_err=max_err)}
    fn = make_call(model, x, point.mode, device)
    memory_stats = memory(model, x, point.mode, device)  # also the first warm-up call
    samples = time_calls(fn, point.repeats, point.warmup, device, min_time_s)
    if energy_window_s:
        energy_j, energy_note = energy(fn, device, energy_window_s)
    else:
        energy_j, energy_note = None, "energy not measured (budget.energy = false)"
    result = metrics(point, samples, model=model, x=x, memory_stats=memory_stats, energy_j=energy_j,
                     energy_note=energy_note, max_abs_err=max_err)
    if trace_path is not None:  # a separate, profiled call after the timed ones (bench.profile)
        from .profile import profile_call

        read, note = energy_probe(device)
        result["profile"] = profile_call(fn, point, trace_path, energy_read=read, energy_note=note)
    return {"status": "ok", "message": message, "samples_s": samples, "metrics": result}


# ---------------------------------------------------------------------------------------------------
# environment


def matmul_gflops(device: torch.device | str, dtypes: list[str], seconds_per_shape: float = 0.05) -> dict[str, float]:
    """This machine's torch.mm rate, best over a few square shapes, keyed "<device>:<dtype>"."""
    device = torch.device(device)
    sync = _sync(device)
    sizes = (1024, 2048, 4096) if device.type == "cuda" else (128, 512, 1024)
    rates: dict[str, float] = {}
    for name in dict.fromkeys(["float32", *dtypes]):
        best = 0.0
        for n in sizes:
            a = torch.randn(n, n, device=device).to(TORCH_DTYPES[name])
            b = torch.randn(n, n, device=device).to(TORCH_DTYPES[name])
            torch.mm(a, b)
            sync()
            calls, t0 = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - t0 < seconds_per_shape:
                torch.mm(a, b)
                calls += 1
            sync()
            best = max(best, 2 * n**3 * calls / (time.perf_counter() - t0) / 1e9)
        rates[f"{device.type}:{name}"] = round(best, 1)
    return rates


# The instruction sets that decide which CPU kernels run (oneDNN, MKL, the fused operator's own).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str] | None:
    """Which of ``CPU_FLAGS`` this CPU reports (None where /proc/cpuinfo cannot be read)."""
    flags = proc_field("/proc/cpuinfo", "flags")
    if flags is None:
        return None
    present = set(flags.split())
    return [flag for flag in CPU_FLAGS if flag in present]


def _gpu_model() -> str | None:
    if not torch.cuda.is_available():
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else name
    except Exception:
        return torch.cuda.get_device_name(0)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """HEAD of the checkout this package runs from, with "+dirty" when tracked files are modified."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(devices: list[str], dtypes: list[str]) -> dict[str, Any]:
    """The results contract's ``env``: versions, machine, flags and the measured matmul rate."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    rates: dict[str, float] = {}
    for device in dict.fromkeys(devices):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        rates.update(matmul_gflops(device, dtypes))
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "triton": _version("triton"),
        "cpu_model": proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu_model": _gpu_model(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "matmul_gflops": rates,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
