"""``tlstm_fused``: the tLSTM with the whole sequence fused into one operator, forward and backward.

One registry name, two backends, chosen by the device unless ``backend=`` says otherwise:

- ``"cpp"`` (CPU): a C++ operator built against PyTorch (``implementations/fused_cpu``);
- ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``): Triton kernels
  (``implementations/fused_triton``).

Parameters, their names and the equations are those of ``tlstm_naive``, so either loads the
other's ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ConfigError, ModelConfig
from .registry import register
from .tlstm_naive import TLSTMNaive

BACKENDS = ("cpp", "triton")
BACKEND_DTYPES = {
    "cpp": (torch.float32, torch.float64, torch.bfloat16),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
}


def _backend_module(backend: str):
    # Imported lazily: neither a compiler nor triton is needed until a backend is used.
    if backend == "cpp":
        from . import fused_cpu as module
    else:
        from . import fused_triton as module
    return module


def default_backend(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "cpp"


def _availability(device: torch.device) -> str | None:
    return _backend_module(default_backend(device)).unavailable_reason(device)


class TLSTMFused(TLSTMNaive):
    """tLSTM computed by a fused whole-sequence operator; same contract and parameters as ``TLSTMNaive``.

    Args: those of ``TLSTMNaive``, plus ``backend`` ("cpp" or "triton").
    """

    def __init__(self, *args, backend: str = "cpp", **kwargs) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        super().__init__(*args, **kwargs)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend}"

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if x.dim() != 3 or x.shape[-1] != self.config.input_size:
            raise ValueError(
                f"x must have shape [B, T, {self.config.input_size}] (batch, time, input_size), got {list(x.shape)}"
            )
        return _backend_module(self.backend).tlstm_forward(self, x, state)


@register(
    "tlstm_fused",
    family="tlstm",
    devices=("cpu", "cuda"),
    dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
    description="fused whole-sequence tLSTM: C++ operator on CPU, Triton kernels on CUDA",
    availability=_availability,
    style=("#d62728", "o"),
)
def build_tlstm_fused(
    config: ModelConfig, *, device: torch.device, dtype: torch.dtype, backend: str | None = None
) -> TLSTMFused:
    backend = backend or default_backend(device)
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in BACKEND_DTYPES[backend]:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in BACKEND_DTYPES[backend])
        raise ConfigError(f"dtype {str(dtype).removeprefix('torch.')} is not supported by the {backend} backend; "
                          f"allowed: {allowed}")
    if backend != default_backend(device):
        reason = _backend_module(backend).unavailable_reason(device)
        if reason is not None:
            from .registry import ImplementationUnavailable

            raise ImplementationUnavailable(f"tlstm_fused backend={backend} is unavailable: {reason}")
    return TLSTMFused.from_config(config, device=device, dtype=dtype, backend=backend)
