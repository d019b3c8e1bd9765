"""The ``cpp`` backend of ``tlstm_fused``: one C++ operator for the whole tLSTM sequence on the CPU.

The operator (``csrc/tlstm_fused_cpu.cpp``) runs all T+L-1 steps, forward and backward: per step one
matrix product for the cross-layer convolution and one pass over the (sample, location) rows for
everything else, a large step split by rows between the threads; the weight gradient is one product
after the loop. It serves the tLSTM and the 3D tLSTM (``dims=3``: P x P locations, a K x K kernel); the
operator tells them apart by ``weight_h``'s rank ([K, M, G] or [K, K, M, G]).
It is compiled with ``torch.utils.cpp_extension`` the first time it is used, into
``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/tlstm-bench/`` (``$XDG_CACHE_HOME`` honoured), and later
processes load that build directly. The build is keyed by the source, the flags and the torch
version, so an edit or a new torch rebuilds it.

    from implementations import fused_cpu
    fused_cpu.unavailable_reason(torch.device("cpu"))   # None, or why not (no compiler, ...)
    y, (h, c) = fused_cpu.tlstm_forward(module, x)      # module: a TLSTMNaive-like module
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..registry import ImplementationUnavailable

SOURCE = Path(__file__).resolve().parent / "csrc" / "tlstm_fused_cpu.cpp"
DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_lock = threading.Lock()
_extension = None  # torch.ops.tlstm_fused_cpu once loaded
_build_error: str | None = None


def _compile_flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags. The vector ISA follows what PyTorch itself detected on this CPU, so
    a cache shared by machines of different CPUs never hands one a binary it cannot run."""
    isa = []
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512", "AVX512_BF16", "AMX"):
        isa = ["-mavx2", "-mfma"]
    # -fopenmp: ATen's parallel_for is a header template; without it the loop runs on one thread.
    # -fno-trapping-math, -fno-math-errno: let floor and sqrt inline so the channel loops vectorize;
    # neither reorders arithmetic, so results are unchanged.
    return ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", *isa], ["-fopenmp"]


def cache_dir() -> Path:
    """Where builds go: $TORCH_EXTENSIONS_DIR, else <user cache>/tlstm-bench/torch-<version>-py<X.Y>."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "tlstm-bench" / f"torch-{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"


def extension_name() -> str:
    """The build's name: a hash of the source, the flags and the torch version."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(repr((_compile_flags(), torch.__version__, sys.version_info[:2])).encode())
    return f"tlstm_fused_cpu_{digest.hexdigest()[:12]}"


def _library_path() -> Path:
    name = extension_name()
    return cache_dir() / name / f"{name}.so"


def find_compiler() -> str | None:
    """The C++ compiler a build would use: $CXX if set, else c++, g++ or clang++ on the PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def unavailable_reason(device: torch.device | str) -> str | None:
    """None if the operator can run on ``device`` (a compiler to build it, or a finished build),
    else a sentence saying why not. Never builds anything itself."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"the cpp backend runs on the CPU, not on {device.type}"
    if _build_error is not None:
        return _build_error
    if _extension is not None or _library_path().is_file():
        return None
    if find_compiler() is None:
        looked = "$CXX=" + os.environ["CXX"] if os.environ.get("CXX") else "c++, g++, clang++"
        return f"no C++ compiler found (looked for {looked}) and no cached build in {cache_dir()}"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja not found (pip install ninja): torch.utils.cpp_extension needs it to build the operator"
    return None


def _import_library(path: Path):
    torch.ops.load_library(str(path))  # runs the library's TORCH_LIBRARY registration
    return torch.ops.tlstm_fused_cpu


def load_extension(verbose: bool = False):
    """The compiled operator's namespace, ``torch.ops.tlstm_fused_cpu`` (functions ``forward`` and
    ``backward``): loaded from the cache, or built there first (20-60 s on a 2-core machine).

    Raises ImplementationUnavailable, with the tail of the compiler's output, if the build fails.
    """
    global _extension, _build_error
    with _lock:
        if _extension is not None:
            return _extension
        if _build_error is not None:
            raise ImplementationUnavailable(_build_error)
        library = _library_path()
        if library.is_file():
            try:
                _extension = _import_library(library)
                return _extension
            except (OSError, RuntimeError):
                pass  # a truncated or stale file: rebuild below, under cpp_extension's lock
        reason = unavailable_reason(torch.device("cpu"))
        if reason is not None:
            raise ImplementationUnavailable(reason)
        from torch.utils import cpp_extension

        cflags, ldflags = _compile_flags()
        library.parent.mkdir(parents=True, exist_ok=True)
        try:
            cpp_extension.load(
                name=library.stem,
                sources=[str(SOURCE)],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                build_directory=str(library.parent),
                verbose=verbose,
                is_python_module=False,  # a plain library registering torch.ops.tlstm_fused_cpu
            )
            _extension = torch.ops.tlstm_fused_cpu
        except Exception as exc:  # the compiler's message is the useful part; keep its tail
            tail = str(exc).strip()[-2000:]
            _build_error = f"building the C++ operator failed ({type(exc).__name__}): ...{tail}"
            raise ImplementationUnavailable(_build_error) from exc
        return _extension


class FusedSequence(torch.autograd.Function):
    """Autograd wrapper of the operator: gradients for x, the initial state and every parameter."""

    @staticmethod
    def forward(ctx, x, h0, c0, weight_x, bias_x, weight_h, bias_h, cn_a_weight, cn_a_bias, cn_c_weight,
                cn_c_bias, tensor_size: int, mem_conv: bool):
        ext = load_extension()
        y, h, c, X, A, C = ext.forward(x, h0, c0, weight_x, bias_x, weight_h, bias_h, cn_a_weight, cn_a_bias,
                                       cn_c_weight, cn_c_bias, tensor_size, mem_conv, True)
        ctx.save_for_backward(x, weight_x, weight_h, bias_h, cn_a_weight, cn_a_bias, cn_c_weight, cn_c_bias, X, A, C)
        ctx.tensor_size, ctx.mem_conv = tensor_size, mem_conv
        return y, h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh, dc):
        x, weight_x, weight_h, bias_h, cn_a_weight, cn_a_bias, cn_c_weight, cn_c_bias, X, A, C = ctx.saved_tensors
        grads = load_extension().backward(dy, dh, dc, x, weight_x, weight_h, bias_h, cn_a_weight, cn_a_bias,
                                          cn_c_weight, cn_c_bias, X, A, C, ctx.tensor_size, ctx.mem_conv)
        cn_grads = grads[7:] if cn_a_weight is not None else [None] * 4
        return (*grads[:7], *cn_grads, None, None)


def tlstm_forward(module: torch.nn.Module, x: Tensor, state: tuple[Tensor, Tensor] | None = None
                  ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run ``module`` (a TLSTMNaive-like module: its config and parameters) on x [B, T, R] with the
    fused operator. Returns y [B, T, M] and the final (h, c), each [B, P, M] ([B, P, P, M] for the 3D
    tLSTM, ``config.dims == 3``)."""
    cfg = module.config
    if x.device.type != "cpu":
        raise ValueError(f"the cpp backend runs on CPU tensors; x is on {x.device}")
    if x.dtype not in DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
        raise ValueError(f"x dtype {str(x.dtype).removeprefix('torch.')} is not supported by the cpp backend; "
                         f"allowed: {allowed}")
    if x.dtype != module.weight_h.dtype:
        raise ValueError(f"x dtype {x.dtype} must match the parameters' dtype {module.weight_h.dtype}")
    if module.weight_h.dim() != cfg.dims + 1:
        want = "[K, K, M, G]" if cfg.dims == 3 else "[K, M, G]"
        raise ValueError(f"weight_h must be {want} for dims={cfg.dims}, got {list(module.weight_h.shape)}")
    batch = x.shape[0]
    state_shape = (batch, *(cfg.tensor_size,) * (cfg.dims - 1), cfg.channels)
    state_label = "[B, P, P, M]" if cfg.dims == 3 else "[B, P, M]"
    if state is None:
        h0 = x.new_zeros(state_shape)
        c0 = x.new_zeros(state_shape)
    else:
        h0, c0 = state
        for label, t in (("h", h0), ("c", c0)):
            if tuple(t.shape) != state_shape:
                raise ValueError(f"state {label} must have shape {state_label} = {list(state_shape)}, "
                                 f"got {list(t.shape)}")
    cn = ([getattr(module, n) for n in ("cn_a_weight", "cn_a_bias", "cn_c_weight", "cn_c_bias")]
          if cfg.norm == "cn" else [None] * 4)
    inputs = (x, h0, c0, module.weight_x, module.bias_x, module.weight_h, module.bias_h, *cn)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if needs_grad:
        y, h, c = FusedSequence.apply(*inputs, cfg.tensor_size, cfg.mem_conv)
    else:  # inference: no per-step state kept for a backward
        y, h, c = load_extension().forward(*inputs, cfg.tensor_size, cfg.mem_conv, False)
    return y, (h, c)


__all__ = ["DTYPES", "FusedSequence", "cache_dir", "extension_name", "find_compiler", "load_extension",
           "tlstm_forward", "unavailable_reason"]
