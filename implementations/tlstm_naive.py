r"""The reference tensorized LSTM: a plain per-timestep PyTorch loop, written to be read.

Every other tLSTM implementation is checked against this one, so it follows the model statement in
the README step by step and trades speed for clarity.

Sizes: B batch, T sequence length, R input size, M channels, P tensor size (hidden locations),
K kernel size, d_up = K // 2, d_down = K - 1 - d_up, L = ceil(P / d_up) depth,
G = 4M + K (memory-cell convolution on) or 4M (off).

State H, C: [B, P, M], zeros unless given. For each step s = 0 .. T+L-2, with x_s = x[:, s] for
s < T and a zero input for s >= T:

    (1) z      = x_s @ weight_x + bias_x                                          # [B, M]
    (2) Hcat   = [z; H]  (row 0 the input, rows 1..P the state; other rows read as 0)  # [B, P+1, M]
    (3) A[:,p] = bias_h + sum_k Hcat[:, p + 1 - d_up + k] @ weight_h[k]           # [B, P, G]
    (4) Ag, Ai, Af, Ao = A[..., :4M] split in four; Aq = A[..., 4M:]              # [B, P, M], [B, P, K]
        with norm="cn": A[..., :4M] = CN(A[..., :4M]; cn_a_weight, cn_a_bias)
    (5) G_ = tanh(Ag), I = sigmoid(Ai), F = sigmoid(Af), O = sigmoid(Ao), Q = softmax_K(Aq)
    (6) Cconv[:,p] = sum_k Q[:,p,k] * C[:, clamp(p - d_up + k, 0, P-1)]   (Cconv = C without mem-conv)
    (7) C_new  = G_ * I + Cconv * F
    (8) H_new  = tanh(C_new) * O       (with norm="cn": tanh(CN(C_new; cn_c_weight, cn_c_bias)) * O)
    (9) if s >= L-1: y[:, s-(L-1)] = H_new[:, P-1]

CN(Z; w, b) = (Z - mean(Z)) / sqrt(var(Z) + 1e-5) * w + b over the channel dimension of each
(sample, location), biased variance, w and b shared by all locations.

The 3D tLSTM (dims=3) has a P x P grid of locations: H, C are [B, P, P, M], weight_h is [K, K, M, G]
with G = 4M + K*K (the memory-kernel logits in row-major tap order k1*K + k2), and every step above
runs over both location indices:

    (2) Hcat [B, P+1, P+1, M]: Hcat[:, 0, 0] = z, Hcat[:, i, j] = H[:, i-1, j-1] for i, j >= 1, the rest
        of row 0 and column 0 zero
    (3) A[:, p1, p2] = bias_h + sum_{k1,k2} Hcat[:, p1+1-d_up+k1, p2+1-d_up+k2] @ weight_h[k1, k2]
    (6) Cconv[:, p1, p2] = sum_{k1,k2} Q[:, p1, p2, k1*K+k2] * C[:, clamp(p1-d_up+k1), clamp(p2-d_up+k2)]
    (9) y[:, s-(L-1)] = H_new[:, P-1, P-1]   (the output at the corner opposite the input)

with L = ceil(P / d_up) unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .registry import register

CN_EPS = 1e-5


def channel_norm(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """CN: normalize each (sample, location) over its channels (last dim), then scale and shift."""
    mean = z.mean(dim=-1, keepdim=True)
    var = z.var(dim=-1, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + CN_EPS) * weight + bias


# The memory kernel's start (a choice: the paper and its spec state only that the kernel is a softmax over its
# taps): the self tap's logit bias, so a cell starts by keeping its own value as an LSTM's does. With every
# logit near 0 the kernel starts as an average of each cell and its neighbours', which stalled learning in
# the capacity pilot (reports/examples/cpu-capacity-long/README.md).
MEM_SELF_LOGIT = 3.0


class TLSTMNaive(nn.Module):
    """Tensorized LSTM, reference implementation (see the module docstring for the equations).

    Args:
        input_size: R.
        channels: M.
        tensor_size: P.
        kernel_size: K (>= 2).
        mem_conv: memory-cell convolution on or off.
        norm: None or "cn".
        dims: 2, or 3 for the 3D tLSTM (P x P locations).

    Inputs: x of shape [B, T, R]; optional state (h, c), each [B, P, M] ([B, P, P, M] with dims=3).
    Outputs: y of shape [B, T, M] (y[:, t] is the output for input x[:, t], read L-1 steps later),
    and the final (h, c), each [B, P, M] ([B, P, P, M]), after all T+L-1 steps.
    """

    backend = "eager"

    def __init__(
        self,
        input_size: int,
        channels: int,
        tensor_size: int,
        kernel_size: int = 3,
        mem_conv: bool = True,
        norm: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(input_size, channels, tensor_size, kernel_size, mem_conv, norm, dims=dims)
        r, m, k, g = input_size, channels, kernel_size, self.config.gate_channels
        factory = {"device": device, "dtype": dtype}
        self.weight_x = nn.Parameter(torch.empty(r, m, **factory))
        self.bias_x = nn.Parameter(torch.empty(m, **factory))
        self.weight_h = nn.Parameter(torch.empty(*(k,) * (dims - 1), m, g, **factory))  # [K, M, G] or [K, K, M, G]
        self.bias_h = nn.Parameter(torch.empty(g, **factory))
        if norm == "cn":
            self.cn_a_weight = nn.Parameter(torch.empty(4 * m, **factory))
            self.cn_a_bias = nn.Parameter(torch.empty(4 * m, **factory))
            self.cn_c_weight = nn.Parameter(torch.empty(m, **factory))
            self.cn_c_bias = nn.Parameter(torch.empty(m, **factory))
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig, *, device=None, dtype=None, **kwargs):
        """Build from a ModelConfig (``kwargs`` go to subclasses, e.g. a backend choice)."""
        return cls(
            config.input_size,
            config.channels,
            config.tensor_size,  # type: ignore[arg-type]
            config.kernel_size,
            config.mem_conv,
            config.norm,
            device=device,
            dtype=dtype,
            dims=config.dims,
            **kwargs,
        )

    @property
    def depth(self) -> int:
        return self.config.layers

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(M), 1/sqrt(M)) for weights and biases, as nn.LSTM does; CN scale 1, shift 0; the
        memory kernel starts near the identity (``start_memory_kernel(MEM_SELF_LOGIT)``)."""
        bound = 1.0 / math.sqrt(self.config.channels)
        for name in ("weight_x", "bias_x", "weight_h", "bias_h"):
            nn.init.uniform_(getattr(self, name), -bound, bound)
        if self.config.norm == "cn":
            nn.init.ones_(self.cn_a_weight)
            nn.init.zeros_(self.cn_a_bias)
            nn.init.ones_(self.cn_c_weight)
            nn.init.zeros_(self.cn_c_bias)
        self.start_memory_kernel(MEM_SELF_LOGIT)

    @property
    def self_tap(self) -> int:
        """The memory-kernel tap that reads a location's own cell: d_up (2D), d_up*K + d_up (3D)."""
        k, d_up = self.config.kernel_size, self.config.kernel_size // 2
        return d_up if self.config.dims == 2 else d_up * k + d_up

    def start_memory_kernel(self, self_logit: float) -> None:
        """Set the memory-kernel logits' biases (``bias_h[4M:]``): 0 for every tap, ``self_logit`` for the self
        tap, so the softmax kernel starts with weight e^s / (e^s + taps - 1) on the cell's own value (0.91 for
        K = 3 in 2D at s = 3, 0.72 for the 3D tLSTM's 9 taps) instead of averaging it with its neighbours'
        (s = 0). No-op without the memory-cell convolution."""
        if not self.config.mem_conv:
            return
        m = self.config.channels
        with torch.no_grad():
            self.bias_h[4 * m:].zero_()
            self.bias_h[4 * m + self.self_tap] = self_logit

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"input_size={c.input_size}, channels={c.channels}, tensor_size={c.tensor_size}, "
            f"kernel_size={c.kernel_size}, mem_conv={c.mem_conv}, norm={c.norm}, depth={c.layers}, dims={c.dims}"
        )

    def state_shape(self, batch: int) -> tuple[int, ...]:
        """[B, P, M], or [B, P, P, M] for the 3D tLSTM."""
        return (batch, *(self.config.tensor_size,) * (self.config.dims - 1), self.config.channels)

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = self.state_shape(x.shape[0])
        zeros = torch.zeros(shape, device=x.device, dtype=x.dtype)
        return zeros, zeros.clone()

    def step(self, z: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Steps (2)-(8) for one timestep: z [B, M] is the projected input; h, c are [B, P, M]
        ([B, P, P, M] for the 3D tLSTM)."""
        if self.config.dims == 3:
            return self.step_3d(z, h, c)
        cfg = self.config
        p_size, k_size, m, d_up, d_down = cfg.tensor_size, cfg.kernel_size, cfg.channels, cfg.d_up, cfg.d_down

        # (2) the input as row 0 above the state, zero rows around it for the taps that fall outside.
        hcat = torch.cat([z.unsqueeze(1), h], dim=1)  # [B, P+1, M]
        hpad = nn.functional.pad(hcat, (0, 0, d_up - 1, d_down))  # [B, P+K-1, M]; row j+d_up-1 is Hcat[j]

        # (3) the cross-layer convolution: location p, tap k reads Hcat[p + 1 - d_up + k] = hpad[p + k].
        a = self.bias_h
        for k in range(k_size):
            a = a + hpad[:, k : k + p_size] @ self.weight_h[k]  # [B, P, G]

        # (4) split into gates (and memory-kernel logits), optional channel normalization; (5) activations.
        g_, i, f, o = self.gates(a)  # each [B, P, M]

        # (6) memory-cell convolution: a per-sample, per-location kernel over neighbouring cells,
        # replicate padding at both ends.
        if cfg.mem_conv:
            q = torch.softmax(a[..., 4 * m :], dim=-1)  # [B, P, K]
            offsets = torch.arange(k_size, device=h.device) - d_up  # [K]
            rows = (torch.arange(p_size, device=h.device)[:, None] + offsets).clamp(0, p_size - 1)  # [P, K]
            neighbours = c[:, rows]  # [B, P, K, M]
            c_conv = (q.unsqueeze(-1) * neighbours).sum(dim=2)  # [B, P, M]
        else:
            c_conv = c

        return self.cell_update(g_, i, f, o, c_conv)

    def gates(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Steps (4), (5): G_, I, F, O from the pre-activations a [..., G] (channel-normalized with CN)."""
        m = self.config.channels
        gates = a[..., : 4 * m]
        if self.config.norm == "cn":
            gates = channel_norm(gates, self.cn_a_weight, self.cn_a_bias)
        ag, ai, af, ao = gates.split(m, dim=-1)
        return torch.tanh(ag), torch.sigmoid(ai), torch.sigmoid(af), torch.sigmoid(ao)

    def cell_update(self, g_: Tensor, i: Tensor, f: Tensor, o: Tensor, c_conv: Tensor) -> tuple[Tensor, Tensor]:
        """Steps (7), (8): the new hidden state and cell."""
        c_new = g_ * i + c_conv * f
        c_out = channel_norm(c_new, self.cn_c_weight, self.cn_c_bias) if self.config.norm == "cn" else c_new
        h_new = torch.tanh(c_out) * o
        return h_new, c_new

    def step_3d(self, z: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The 3D tLSTM's step: z [B, M]; h, c [B, P, P, M]."""
        cfg = self.config
        p_size, k_size, m, d_up, d_down = cfg.tensor_size, cfg.kernel_size, cfg.channels, cfg.d_up, cfg.d_down
        batch = h.shape[0]

        # (2) the input at corner (0, 0), the state below and right of it, zeros in the rest of row and
        # column 0; zero padding around for the taps that fall outside.
        hcat = h.new_zeros(batch, p_size + 1, p_size + 1, m)
        hcat[:, 0, 0] = z
        hcat[:, 1:, 1:] = h
        hpad = nn.functional.pad(hcat, (0, 0, d_up - 1, d_down, d_up - 1, d_down))  # [B, P+K-1, P+K-1, M]

        # (3) location (p1, p2), tap (k1, k2) reads Hcat[p1 + 1 - d_up + k1, p2 + 1 - d_up + k2]
        # = hpad[p1 + k1, p2 + k2].
        a = self.bias_h
        for k1 in range(k_size):
            for k2 in range(k_size):
                a = a + hpad[:, k1 : k1 + p_size, k2 : k2 + p_size] @ self.weight_h[k1, k2]  # [B, P, P, G]

        # (4), (5)
        g_, i, f, o = self.gates(a)

        # (6) a per-sample, per-location K x K kernel over neighbouring cells, replicate padding.
        if cfg.mem_conv:
            q = torch.softmax(a[..., 4 * m :], dim=-1)  # [B, P, P, K*K], tap k1*K + k2
            offsets = torch.arange(k_size, device=h.device) - d_up
            rows = (torch.arange(p_size, device=h.device)[:, None] + offsets).clamp(0, p_size - 1)  # [P, K]
            neighbours = c[:, rows[:, None, :, None], rows[None, :, None, :]]  # [B, P, P, K, K, M]
            neighbours = neighbours.reshape(batch, p_size, p_size, k_size * k_size, m)
            c_conv = (q.unsqueeze(-1) * neighbours).sum(dim=3)  # [B, P, P, M]
        else:
            c_conv = c

        # (7), (8)
        return self.cell_update(g_, i, f, o, c_conv)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if x.dim() != 3 or x.shape[-1] != self.config.input_size:
            raise ValueError(
                f"x must have shape [B, T, {self.config.input_size}] (batch, time, input_size), got {list(x.shape)}"
            )
        batch, seq_len, _ = x.shape
        depth = self.depth
        h, c = self.initial_state(x) if state is None else state

        # (1) input projection; the L-1 padding steps take a zero input, so their row is bias_x.
        z_all = x @ self.weight_x + self.bias_x  # [B, T, M]
        z_pad = self.bias_x.expand(batch, self.config.channels)  # [B, M]

        outputs = []
        for s in range(seq_len + depth - 1):
            z = z_all[:, s] if s < seq_len else z_pad
            h, c = self.step(z, h, c)
            if s >= depth - 1:  # (9) the output for input s - (L-1) is read at the last location
                outputs.append(h[:, -1] if self.config.dims == 2 else h[:, -1, -1])  # [B, M]
        y = torch.stack(outputs, dim=1)  # [B, T, M]
        return y, (h, c)


@register(
    "tlstm_naive",
    family="tlstm",
    devices=("cpu", "cuda"),
    dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
    description="reference tLSTM: plain PyTorch, one loop iteration per timestep (the oracle)",
    family_reference=True,
    style=("#7f7f7f", "^"),
)
def build_tlstm_naive(config: ModelConfig, *, device: torch.device, dtype: torch.dtype) -> TLSTMNaive:
    return TLSTMNaive.from_config(config, device=device, dtype=dtype)
