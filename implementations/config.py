"""The model configuration every implementation is built from, validated where it enters.

Shape letters used throughout the project: B batch, T sequence length, R input size, M channels per
location, P tensor size (hidden locations per dimension), K kernel size, L depth, G channels out of
the cross-layer convolution (4M + K with the memory-cell convolution, 4M without; 4M + K*K and 4M for
the 3D tLSTM, whose P x P locations take a K x K kernel).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

NORMS = (None, "cn")
FAMILIES = ("tlstm", "lstm")
DIMS = (2, 3)


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and the allowed values."""


def _check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one model. tLSTMs are sized by ``tensor_size`` and derive their depth; stacked LSTMs
    are sized by ``depth`` (or, given only ``tensor_size``, take the depth a tLSTM of that size has).

    Args:
        input_size: R, features per input step.
        channels: M, channels per hidden location (the hidden size of a stacked LSTM layer).
        tensor_size: P, number of hidden locations of a tLSTM.
        kernel_size: K, taps of the cross-layer convolution (K >= 2).
        mem_conv: whether the memory-cell convolution is on.
        norm: None or "cn" (channel normalization).
        depth: L. For a tLSTM it must equal ceil(P / (K // 2)) if given.
        dims: 2 (the tLSTM: P locations) or 3 (the 3D tLSTM: P x P locations, a K x K kernel). A
            stacked LSTM has no dims: only 2 (the default).
    """

    input_size: int
    channels: int
    tensor_size: int | None = None
    kernel_size: int = 3
    mem_conv: bool = True
    norm: str | None = None
    depth: int | None = None
    dims: int = 2

    def __post_init__(self) -> None:
        _check_int("input_size", self.input_size, 1)
        _check_int("channels", self.channels, 1)
        _check_int("kernel_size", self.kernel_size, 2)
        if self.tensor_size is not None:
            _check_int("tensor_size", self.tensor_size, 1)
        if self.depth is not None:
            _check_int("depth", self.depth, 1)
        if not isinstance(self.mem_conv, bool):
            raise ConfigError(f"mem_conv must be True or False, got {self.mem_conv!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if isinstance(self.dims, bool) or not isinstance(self.dims, int) or self.dims not in DIMS:
            raise ConfigError(f"dims must be one of {DIMS} (2: the tLSTM, 3: the 3D tLSTM), got {self.dims!r}")
        if self.dims != 2 and self.tensor_size is None:
            raise ConfigError(f"dims={self.dims} is the 3D tLSTM; a stacked LSTM (sized by depth, no tensor_size) has "
                              "no dims: allowed dims: 2")
        if self.tensor_size is None and self.depth is None:
            raise ConfigError("give tensor_size (tLSTM) or depth (stacked LSTM); both are None")
        if self.tensor_size is not None and self.depth is not None:
            derived = tlstm_depth(self.tensor_size, self.kernel_size)
            if self.depth != derived:
                raise ConfigError(
                    f"depth={self.depth} contradicts tensor_size={self.tensor_size} and "
                    f"kernel_size={self.kernel_size}: a tLSTM has depth ceil(P / (K // 2)) = {derived}; "
                    "leave depth unset to derive it"
                )

    @property
    def layers(self) -> int:
        """L: the explicit depth, else the depth a tLSTM of this tensor size and kernel has."""
        if self.depth is not None:
            return self.depth
        return tlstm_depth(self.tensor_size, self.kernel_size)  # type: ignore[arg-type]

    @property
    def d_up(self) -> int:
        """Taps reaching toward the input (K // 2)."""
        return self.kernel_size // 2

    @property
    def d_down(self) -> int:
        """Taps reaching toward the output (K - 1 - K // 2)."""
        return self.kernel_size - 1 - self.kernel_size // 2

    @property
    def taps(self) -> int:
        """Kernel taps per location: K, or K*K for the 3D tLSTM."""
        return tlstm_taps(self.kernel_size, self.dims)

    @property
    def locations(self) -> int:
        """Hidden locations: P, or P*P for the 3D tLSTM."""
        return tlstm_locations(self.tensor_size, self.dims)  # type: ignore[arg-type]

    @property
    def gate_channels(self) -> int:
        """G: 4M gate pre-activations, plus one memory-kernel logit per tap with the memory-cell convolution."""
        return tlstm_gate_channels(self.channels, self.kernel_size, self.dims, self.mem_conv)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The tLSTM's derived sizes, each computed here only: ModelConfig, the Triton kernels' shapes and the
# suite's points (bench.contract.Point) call these.


def tlstm_depth(tensor_size: int, kernel_size: int) -> int:
    """L = ceil(P / (K // 2)): steps an input needs to reach the output location."""
    return math.ceil(tensor_size / (kernel_size // 2))


def tlstm_steps(seq_len: int, depth: int) -> int:
    """T + L - 1: the dependent steps one sequence takes (the output lags the input by L - 1 steps)."""
    return seq_len + depth - 1


def tlstm_locations(tensor_size: int, dims: int) -> int:
    """Hidden locations: P, or P*P for the 3D tLSTM."""
    return tensor_size ** (dims - 1)


def tlstm_taps(kernel_size: int, dims: int) -> int:
    """Kernel taps per location: K, or K*K for the 3D tLSTM."""
    return kernel_size ** (dims - 1)


def tlstm_gate_channels(channels: int, kernel_size: int, dims: int, mem_conv: bool) -> int:
    """G: 4M gate pre-activations, plus one memory-kernel logit per tap with the memory-cell convolution."""
    return 4 * channels + (tlstm_taps(kernel_size, dims) if mem_conv else 0)


def tlstm_param_count(config: ModelConfig) -> int:
    """R*M + M + K*M*G + G (3D: K*K*M*G) (+ 10M with channel normalization). Independent of P."""
    r, m, taps, g = config.input_size, config.channels, config.taps, config.gate_channels
    return r * m + m + taps * m * g + g + (10 * m if config.norm == "cn" else 0)


def lstm_param_count(config: ModelConfig) -> int:
    """torch.nn.LSTM(R, M, num_layers=L): 4M(R+M) + 8M + (L-1)(8M^2 + 8M)."""
    r, m, layers = config.input_size, config.channels, config.layers
    return 4 * m * (r + m) + 8 * m + (layers - 1) * (8 * m * m + 8 * m)


def lstm_shared_param_count(config: ModelConfig) -> int:
    """Stacked LSTM whose L layers share one layer's weights (lstm_shared): the input projection R*M + M,
    then one M -> M layer 8M^2 + 8M. Independent of L."""
    r, m = config.input_size, config.channels
    return r * m + m + 8 * m * m + 8 * m
