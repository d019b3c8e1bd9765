r"""The paper's stacked-LSTM baseline whose L layers share one set of weights.

Sizes: B batch, T sequence length, R input size, M channels (hidden size of every layer), L depth.

The input is first projected to M channels, as the tLSTM does; then one LSTM layer M -> M, with a
single set of weights, is applied L times, layer l reading layer l-1's output sequence. State h, c:
[L, B, M], zeros unless given. For each step t = 0 .. T-1:

    (1) z_t     = x_t @ weight_x + bias_x                                           # [B, M]
    (2) u^1     = z_t;  u^l = h^{l-1}_t for l = 2 .. L                               # [B, M]
    (3) a       = u^l @ weight_ih^T + bias_ih + h^l_{t-1} @ weight_hh^T + bias_hh    # [B, 4M]
    (4) a_i, a_f, a_g, a_o = a split in four (torch.nn.LSTM's gate order)           # each [B, M]
    (5) i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
    (6) c^l_t   = f * c^l_{t-1} + i * g
    (7) h^l_t   = o * tanh(c^l_t)
    (8) y_t     = h^L_t

The parameter count, R*M + M + 8M^2 + 8M, does not depend on L (``lstm_shared_param_count``).

:class:`SharedLSTM` is the fast one (one library LSTM call per layer: oneDNN on CPU, cuDNN on CUDA);
:class:`SharedLSTMReference` follows the equations above step by step, in float64 for the gate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import ModelConfig, lstm_shared_param_count
from .lstm_cudnn import lstm_backend
from .registry import register


class _SharedWeights(nn.Module):
    """The parameters both modules share by name, their initialization and input checks.

    Parameters:
        weight_x: [R, M], bias_x: [M]: the input projection z = x @ weight_x + bias_x.
        weight_ih: [4M, M], weight_hh: [4M, M], bias_ih: [4M], bias_hh: [4M]: the one LSTM layer every
            layer uses, in torch.nn.LSTM's layout and gate order (i, f, g, o), as in ``weight_ih_l0`` etc.
    """

    def __init__(
        self,
        input_size: int,
        channels: int,
        depth: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(input_size, channels, depth=depth)
        r, m = input_size, channels
        factory = {"device": device, "dtype": dtype}
        self.weight_x = nn.Parameter(torch.empty(r, m, **factory))
        self.bias_x = nn.Parameter(torch.empty(m, **factory))
        self.weight_ih = nn.Parameter(torch.empty(4 * m, m, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * m, m, **factory))
        self.bias_ih = nn.Parameter(torch.empty(4 * m, **factory))
        self.bias_hh = nn.Parameter(torch.empty(4 * m, **factory))
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig, *, device=None, dtype=None):
        return cls(config.input_size, config.channels, config.layers, device=device, dtype=dtype)

    @property
    def depth(self) -> int:
        return self.config.layers

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(M), 1/sqrt(M)) for every weight and bias, as nn.LSTM does."""
        bound = 1.0 / math.sqrt(self.config.channels)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        c = self.config
        return f"input_size={c.input_size}, channels={c.channels}, depth={c.layers}, shared weights"

    def _state(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """Checks x [B, T, R] and the state, and returns the state, each [L, B, M] (zeros if not given)."""
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.input_size:
            raise ValueError(
                f"x must have shape [B, T, {cfg.input_size}] (batch, time, input_size), got {list(x.shape)}"
            )
        shape = (cfg.layers, x.shape[0], cfg.channels)
        if state is None:
            zeros = torch.zeros(shape, device=x.device, dtype=x.dtype)
            return zeros, zeros.clone()
        h, c = state
        if tuple(h.shape) != shape or tuple(c.shape) != shape:
            raise ValueError(f"state (h, c) must each have shape [L, B, M] = {list(shape)}, "
                             f"got {list(h.shape)} and {list(c.shape)}")
        return h, c


class SharedLSTM(_SharedWeights):
    """Stacked LSTM of depth L whose layers share one set of weights (see the module docstring).

    Args:
        input_size: R.
        channels: M.
        depth: L.

    Parameters (an interface: :class:`SharedLSTMReference` has the same names, so state dicts load
    across): ``weight_x`` [R, M], ``bias_x`` [M] (input projection); ``weight_ih`` [4M, M],
    ``weight_hh`` [4M, M], ``bias_ih`` [4M], ``bias_hh`` [4M] (the shared layer, torch.nn.LSTM's layout,
    gate order i, f, g, o).

    Inputs: x of shape [B, T, R]; optional state (h, c), each [L, B, M] as nn.LSTM takes it.
    Outputs: y of shape [B, T, M] (the top layer's outputs) and the final (h, c), each [L, B, M].

    Each layer runs over the whole sequence in one ``torch.lstm`` call (oneDNN on CPU, cuDNN on CUDA),
    so a forward is L library calls; the gradients of the L uses add up in the shared weights. On CUDA
    the four layer tensors are kept in one cuDNN weight buffer (as ``nn.LSTM.flatten_parameters`` does),
    so cuDNN uses them without copying.
    """

    def __init__(self, *args, **kwargs) -> None:  # _SharedWeights' sizes, device and dtype
        super().__init__(*args, **kwargs)
        self.flatten_parameters()

    def _layer_weights(self) -> list[Tensor]:
        return [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]

    def flatten_parameters(self) -> None:
        """On CUDA with cuDNN, put the shared layer's four tensors in one contiguous cuDNN weight buffer
        (in place, the parameters stay the same objects); elsewhere a no-op. As nn.LSTM's method."""
        weights = self._layer_weights()
        first = weights[0]
        if not all(
            w.is_cuda and w.dtype == first.dtype and torch.backends.cudnn.is_acceptable(w) for w in weights
        ):
            return
        if len({w.data_ptr() for w in weights}) != len(weights) or not torch._use_cudnn_rnn_flatten_weight():
            return
        import torch.backends.cudnn.rnn as cudnn_rnn

        m = self.config.channels
        with torch.cuda.device_of(first), torch.no_grad():
            # (weights, weight_stride0, input_size, mode, hidden_size, proj_size, num_layers, batch_first,
            # bidirectional): one layer M -> M
            torch._cudnn_rnn_flatten_weight(weights, 4, m, cudnn_rnn.get_cudnn_mode("LSTM"), m, 0, 1, True, False)

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half() replace the tensors: rebuild the buffer
        result = super()._apply(fn, recurse)
        self.flatten_parameters()
        return result

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h0, c0 = self._state(x, state)
        weights = self._layer_weights()
        seq = x @ self.weight_x + self.bias_x  # [B, T, M]
        hs, cs = [], []
        for layer in range(self.depth):
            # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
            hx = (h0[layer : layer + 1], c0[layer : layer + 1])  # each [1, B, M]
            seq, h, c = torch.lstm(seq, hx, weights, True, 1, 0.0, self.training, False, True)  # seq [B, T, M]
            hs.append(h)
            cs.append(c)
        return seq, (torch.cat(hs), torch.cat(cs))

    def backend_name(self, x: Tensor) -> str:
        """Which LSTM backend a forward pass on ``x`` actually runs: cudnn, mkldnn or native."""
        return lstm_backend(lambda: self.forward(x[:, :1]))


class SharedLSTMReference(_SharedWeights):
    """The readable reference for :class:`SharedLSTM`: the module docstring's equations as a plain loop
    over time steps and layers, explicit gate math, no library LSTM. Same parameters, names and shapes
    as :class:`SharedLSTM`; the correctness gate builds it in float64.

    Inputs: x of shape [B, T, R]; optional state (h, c), each [L, B, M].
    Outputs: y of shape [B, T, M] and the final (h, c), each [L, B, M].
    """

    backend = "eager"

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h0, c0 = self._state(x, state)
        m = self.config.channels
        h = list(h0.unbind(0))  # L tensors [B, M]
        c = list(c0.unbind(0))
        outputs = []
        for t in range(x.shape[1]):
            u = x[:, t] @ self.weight_x + self.bias_x  # (1) [B, M]
            for layer in range(self.depth):
                # (3) the same weights at every layer
                a = u @ self.weight_ih.T + self.bias_ih + h[layer] @ self.weight_hh.T + self.bias_hh  # [B, 4M]
                a_i, a_f, a_g, a_o = a[:, :m], a[:, m : 2 * m], a[:, 2 * m : 3 * m], a[:, 3 * m :]  # (4)
                i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)  # (5)
                c[layer] = f * c[layer] + i * g  # (6)
                h[layer] = o * torch.tanh(c[layer])  # (7)
                u = h[layer]  # (2) the next layer's input
            outputs.append(u)  # (8)
        y = torch.stack(outputs, dim=1)  # [B, T, M]
        return y, (torch.stack(h), torch.stack(c))


def lstm_shared_step_flops(input_size: int, channels: int, depth: int) -> int:
    """Forward FLOPs per sample and step: the input projected to M, then L layers of [M] -> [4M] twice."""
    return 2 * input_size * channels + depth * 2 * 4 * channels * 2 * channels


def build_lstm_shared_reference(config: ModelConfig, device: torch.device) -> SharedLSTMReference:
    """The gate's float64 reference for lstm_shared."""
    return SharedLSTMReference.from_config(config, device=device, dtype=torch.float64)


@register(
    "lstm_shared",
    family="lstm",
    devices=("cpu", "cuda"),
    # torch.lstm runs all four on CPU (oneDNN or native kernels) and on CUDA (cuDNN), as lstm_cudnn does
    dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
    description="stacked LSTM whose L layers share one set of weights (the paper's baseline): input projected "
    "to M, then one torch.lstm layer per depth (cuDNN on CUDA, oneDNN on CPU)",
    param_count=lstm_shared_param_count,
    reference=build_lstm_shared_reference,
    shares_weights=True,
    step_flops=lstm_shared_step_flops,
    style=("#2ca02c", "v"),
)
def build_lstm_shared(config: ModelConfig, *, device: torch.device, dtype: torch.dtype) -> SharedLSTM:
    return SharedLSTM.from_config(config, device=device, dtype=dtype)
