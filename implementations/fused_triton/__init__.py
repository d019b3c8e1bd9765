"""Triton backend of ``tlstm_fused``: the tLSTM's whole sequence in fused Triton kernels.

- forward, persistent (``path="persistent"``, the default for M <= 64): one launch; each program owns
  a group of samples and runs all T+L-1 steps, its P x M state in a scratch no other program touches;
- forward, per step (``path="per_step"``, the default above M = 64): one launch per step, the
  cross-layer convolution as a matrix product with the gates, softmax, memory-cell stencil and LSTM
  update as its epilogue; without autograd, recorded once into a CUDA graph and replayed on a GPU;
- backward: the reverse-time loop in one kernel (recomputing the activations from the saved
  pre-activations), then the weight gradient as one matrix product over all steps.

The 3D tLSTM (``dims=3``: P x P locations, a K x K kernel) runs through the same kernels, its
locations and taps flattened row-major.

Storage float32, bfloat16 or float16; products accumulate in float32 and the cell state is float32.
On CPU tensors the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton
is first imported), which is how CI checks them. triton itself is imported only when a kernel runs,
so this package imports without it.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor


def unavailable_reason(device: torch.device | str) -> str | None:
    """None if the Triton kernels can run on ``device``, else why not."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return f"device type {device.type!r} is not supported (cuda, or cpu under TRITON_INTERPRET=1)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is present"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "triton runs on CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before triton is imported"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'tlstm-bench[triton]')"
    try:
        import triton  # noqa: F401
    except Exception as error:  # a broken install must read as unavailable, with the cause
        return f"triton does not import: {error!r}"
    return None


def tlstm_forward(
    module: torch.nn.Module,
    x: Tensor,
    state: tuple[Tensor, Tensor] | None = None,
    *,
    path: str = "auto",
    blocks: dict | None = None,
    use_graphs: bool = True,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run ``module`` (a ``TLSTMNaive``-shaped module: its config and parameters) through the kernels.

    Args:
        module: supplies ``config`` and the parameters (tlstm_naive's names).
        x: [B, T, R], the module's dtype and device.
        state: optional (h0, c0), each [B, P, M] ([B, P, P, M] for the 3D tLSTM).
        path: "auto", "persistent" or "per_step" (which forward kernel).
        blocks: tile-size overrides (bb, bn, bk, bkg, kq), powers of two; for tests.
        use_graphs: replay the forward-only per-step path from a CUDA graph (CUDA only).
    Returns: y [B, T, M] and the final (h, c), each [B, P, M] ([B, P, P, M] for the 3D tLSTM).
    """
    from . import ops  # imports triton

    cfg = module.config
    if path not in ops.PATHS:
        raise ValueError(f"path must be one of {ops.PATHS}, got {path!r}")
    dtype = module.weight_h.dtype
    if x.dtype != dtype or x.device != module.weight_h.device:
        raise ValueError(f"x must have the module's dtype and device ({dtype}, {module.weight_h.device}), "
                         f"got {x.dtype}, {x.device}")
    allowed = (torch.float32, torch.bfloat16, torch.float16)
    if dtype not in allowed:
        raise ValueError(f"dtype must be one of {[str(d) for d in allowed]} for the triton backend, got {dtype}")
    reason = unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"the triton backend cannot run on {x.device}: {reason}")
    batch, seq_len, _ = x.shape
    if batch < 1 or seq_len < 1:
        raise ValueError(f"x must have batch >= 1 and seq_len >= 1, got shape {list(x.shape)}")
    dims = getattr(cfg, "dims", 2)
    shp = ops.Shape(batch, seq_len, cfg.input_size, cfg.channels, cfg.tensor_size, cfg.kernel_size, cfg.layers,
                    cfg.mem_conv, cfg.norm == "cn", dims)
    if path == "auto":
        path = "persistent" if cfg.channels <= ops.PERSISTENT_MAX_CHANNELS else "per_step"
    ops.check_fits(shp, path)
    chosen = ops.choose_blocks(batch, cfg.channels, shp.taps, path, shp.cn, blocks)
    state_shape = shp.state_shape
    if state is None:
        h0 = torch.zeros(state_shape, dtype=dtype, device=x.device)
        c0 = torch.zeros(state_shape, dtype=dtype, device=x.device)
    else:
        h0, c0 = state
        if tuple(h0.shape) != state_shape or tuple(c0.shape) != state_shape:
            letters = "[B, P, M]" if dims == 2 else "[B, P, P, M]"
            raise ValueError(f"state (h, c) must each have shape {list(state_shape)} {letters}, "
                             f"got {list(h0.shape)}, {list(c0.shape)}")
    params = [getattr(module, name, None) for name in ops.PARAM_NAMES]
    inputs = [x, h0, c0, *(p for p in params if p is not None)]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    y, h_n, c_n = ops.TLSTMTritonFunction.apply(shp, path, chosen, use_graphs, save, x.contiguous(), h0, c0, *params)
    return y, (h_n, c_n)


__all__ = ["tlstm_forward", "unavailable_reason"]
