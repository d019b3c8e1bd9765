"""The stacked-LSTM baseline: ``torch.nn.LSTM`` (cuDNN on CUDA, oneDNN/mkldnn on CPU) behind the suite's contract."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .config import ModelConfig
from .registry import register

# ATen operators that reveal which LSTM backend ran (seen in the profiler's op names).
_BACKEND_OPS = {
    "aten::_cudnn_rnn": "cudnn",
    "aten::miopen_rnn": "miopen",
    "aten::mkldnn_rnn_layer": "mkldnn",
}


class LSTMBaseline(nn.LSTM):
    """``nn.LSTM(input_size, channels, num_layers=depth, batch_first=True)``.

    Inputs: x of shape [B, T, R]; optional state (h, c), each [L, B, M] as nn.LSTM takes it.
    Outputs: y of shape [B, T, M] and the final (h, c), each [L, B, M].
    """

    def __init__(self, input_size: int, channels: int, depth: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(input_size, channels, num_layers=depth, batch_first=True, device=device, dtype=dtype)
        if self.weight_ih_l0.is_cuda:
            self.flatten_parameters()

    def _apply(self, fn, recurse=True):  # keep the cuDNN weight buffer contiguous after .to()/.cuda()
        result = super()._apply(fn, recurse)
        if self.weight_ih_l0.is_cuda:
            self.flatten_parameters()
        return result

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None):  # type: ignore[override]
        return super().forward(x, state)

    def backend_name(self, x: Tensor) -> str:
        """Which LSTM backend a forward pass on ``x`` actually runs: cudnn, mkldnn or native (see
        :func:`lstm_backend`)."""
        return lstm_backend(lambda: self.forward(x[:, :1]))


def lstm_backend(run: Callable[[], object]) -> str:
    """Which LSTM backend ``run()`` (one short forward pass) actually uses: cudnn, miopen, mkldnn or native.

    Found by running it under no_grad and a dispatch mode that records the ATen operators called, so it
    reports what ran, not what the flags suggest.
    """
    seen: set[str] = set()

    class _Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(f"aten::{func._schema.name.split('::')[-1]}")
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), _Recorder():
        run()
    for op, name in _BACKEND_OPS.items():
        if op in seen:
            return name
    return "native"


@register(
    "lstm_cudnn",
    family="lstm",
    devices=("cpu", "cuda"),
    dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
    description="stacked LSTM baseline: torch.nn.LSTM (cuDNN on CUDA, oneDNN on CPU)",
    style=("#1f77b4", "s"),
)
def build_lstm_cudnn(config: ModelConfig, *, device: torch.device, dtype: torch.dtype) -> LSTMBaseline:
    return LSTMBaseline(config.input_size, config.channels, config.layers, device=device, dtype=dtype)
