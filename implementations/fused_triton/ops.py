"""Launch wrappers and the ``autograd.Function`` around the Triton kernels of ``kernels.py``.

Data flow of one call (S = T + L - 1 steps):
    z = x @ weight_x + bias_x (one matrix product, PyTorch), laid out per step as zbuf [S, B, M];
    forward kernel(s): the step loop, writing y and, when a gradient is needed, every step's H, C, A;
    backward kernel: the reverse step loop, writing dA over A, dz and the initial-state gradients;
    then PyTorch again, one matrix product each: dW_h = unfold(Hcat)^T @ dA, dx, dW_x.

The 3D tLSTM (dims=3) runs through the same kernels: its P x P locations are flattened row-major to
N = P*P and its K x K taps to K*K (see ``kernels.py``); only the state's layout at the boundary
([B, P, P, M] outside, [N, B, M] per slot inside) and the weight gradient (one product per tap)
differ here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import tlstm_gate_channels, tlstm_locations, tlstm_steps, tlstm_taps
from . import kernels

# Fill internal scratch buffers with NaN before the kernels run, so a step that forgets to write
# what a later step reads shows up as NaN. The outputs (y, dz) are always poisoned; this switch is
# for the larger internal buffers (tests turn it on; benchmarks leave it off).
POISON_BUFFERS = os.environ.get("TLSTM_TRITON_POISON", "0") == "1"

# Largest M the persistent forward is chosen for by default (then one channel tile and one reduction
# chunk; W_h is re-read every step, from L1/L2, not pinned in registers); above it, the per-step kernel.
PERSISTENT_MAX_CHANNELS = 64
# CN needs all channels of a location in one tile. Compiled for sm_90 at M = 128 (36 KB of shared
# memory, float32); wider single tiles are untested, so they are refused.
CN_MAX_CHANNELS = 128
# The per-step forward puts the locations (P, or P*P for the 3D tLSTM) on the grid's second
# dimension, which CUDA caps at 65535.
MAX_GRID_LOCATIONS = 65535
PATHS = ("auto", "persistent", "per_step")
# No software pipelining: the reduction loops are 1-4 iterations long, and without it the float32
# kernels need about 20 KB of shared memory instead of about 160 KB (measured by compiling for sm_90).
LAUNCH_OPTIONS = dict(num_warps=4, num_stages=1)
# CUDA graphs cached for the forward-only per-step path (static buffers per shape, a two-slot state
# ring: small); the oldest is dropped first. Training runs launch per step without a graph: its saved
# buffers hold every step and a cached static copy of them would double the largest allocation.
GRAPH_CACHE_SIZE = 4


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Blocks:
    """Tile sizes: BB samples per program, BN channels per tile, BK reduction chunk of the forward
    (over M) and BKG of the backward (over G), KQ the padded memory-kernel width (the taps per location:
    K, or K*K for the 3D tLSTM)."""

    bb: int
    bn: int
    bk: int
    bkg: int
    kq: int


def choose_blocks(batch: int, channels: int, taps: int, path: str, cn: bool,
                  overrides: dict | None = None) -> Blocks:
    """``taps``: the kernel taps per location, K (K*K for the 3D tLSTM), also the memory-kernel width."""
    # tl.dot on a GPU needs every dimension >= 16; the interpreter takes any power of two, and
    # smaller tiles keep its numpy work (and the tests) short.
    floor = 1 if _interpreting() else 16
    bn_full = max(floor, _pow2(channels))
    if cn or path == "persistent":
        bn = bn_full
    else:
        bn = max(floor, min(64, bn_full))
    blocks = dict(
        bb=max(floor, min(16, _pow2(batch))),
        bn=bn,
        bk=max(floor, min(64, _pow2(channels))),
        bkg=max(floor, min(64, _pow2(4 * channels + taps))),
        kq=max(floor, _pow2(taps)),
    )
    for name, value in (overrides or {}).items():
        if name not in blocks:
            raise ValueError(f"block override must be one of {sorted(blocks)}, got {name!r}")
        if value < floor or value & (value - 1):
            raise ValueError(f"block {name} must be a power of two >= {floor} (tl.dot's minimum on a GPU is 16), "
                             f"got {value}")
        blocks[name] = value
    if cn and blocks["bn"] < channels:
        raise ValueError(f"with norm='cn' the channel tile bn must cover all channels (>= {channels}), "
                         f"got {blocks['bn']}")
    if blocks["kq"] < taps:
        raise ValueError(f"block kq must be >= the taps per location ({taps}), got {blocks['kq']}")
    return Blocks(**blocks)


@dataclass(frozen=True)
class Shape:
    """The static sizes and switches of one call."""

    batch: int
    seq_len: int
    input_size: int
    channels: int
    tensor_size: int
    kernel_size: int
    depth: int
    mem_conv: bool
    cn: bool
    dims: int = 2  # 3: the 3D tLSTM, P x P locations and K x K taps

    @property
    def steps(self) -> int:
        return tlstm_steps(self.seq_len, self.depth)

    @property
    def locations(self) -> int:
        """N: P, or P*P for the 3D tLSTM."""
        return tlstm_locations(self.tensor_size, self.dims)

    @property
    def taps(self) -> int:
        """K, or K*K for the 3D tLSTM."""
        return tlstm_taps(self.kernel_size, self.dims)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """[B, P, M], or [B, P, P, M] for the 3D tLSTM."""
        return (self.batch, *(self.tensor_size,) * (self.dims - 1), self.channels)

    @property
    def gate_channels(self) -> int:
        return tlstm_gate_channels(self.channels, self.kernel_size, self.dims, self.mem_conv)


def _dot_operands(dtype: torch.dtype) -> tuple:
    """(DOT_DTYPE, DOT_PRECISION): exact float32 products under the interpreter (it has no bfloat16
    arithmetic) and for float32 storage; tensor-core products in the storage dtype otherwise."""
    from triton import language as tl

    if dtype == torch.float32 or _interpreting():
        return tl.float32, "ieee"
    return (tl.bfloat16 if dtype == torch.bfloat16 else tl.float16), None


def _alloc(shape, dtype, device, poison: bool) -> Tensor:
    return (torch.full(shape, float("nan"), dtype=dtype, device=device) if poison
            else torch.empty(shape, dtype=dtype, device=device))


def _kernel_consts(shp: Shape, blocks: Blocks, dtype: torch.dtype) -> dict:
    dot_dtype, dot_precision = _dot_operands(dtype)
    return dict(K=shp.kernel_size, TAPS=shp.taps, DIMS=shp.dims, D_UP=shp.kernel_size // 2, MEM_CONV=shp.mem_conv,
                CN=shp.cn, DOT_DTYPE=dot_dtype, DOT_PRECISION=dot_precision, BB=blocks.bb, BN=blocks.bn, KQ=blocks.kq)


class _ForwardBuffers:
    """Everything one forward writes; z, h[0], c[0] are filled before the kernels run."""

    def __init__(self, shp: Shape, save: bool, dtype: torch.dtype, device: torch.device, poison: bool) -> None:
        S, B, M, N, G = shp.steps, shp.batch, shp.channels, shp.locations, shp.gate_channels
        self.slots = S + 1 if save else 2
        self.z = torch.empty((S, B, M), dtype=dtype, device=device)  # [S, B, M]
        self.h = _alloc((self.slots, N, B, M), dtype, device, poison)  # [NS, N, B, M]
        self.c = _alloc((self.slots, N, B, M), torch.float32, device, poison)  # [NS, N, B, M]
        # a 1-element placeholder when nothing is saved: the kernel never touches it then
        self.a = _alloc((S, N, B, G) if save else (1,), torch.float32, device, poison)  # [S, N, B, G]
        self.y = torch.full((B, shp.seq_len, M), float("nan"), dtype=dtype, device=device)  # [B, T, M]

    def fill_inputs(self, z: Tensor, bias_x: Tensor, h0: Tensor, c0: Tensor, seq_len: int) -> None:
        self.z[:seq_len] = z.transpose(0, 1)  # [T, B, M]
        self.z[seq_len:] = bias_x  # (1) the padding steps take a zero input: their row is bias_x
        n = self.h.shape[1]
        self.h[0] = h0.reshape(h0.shape[0], n, h0.shape[-1]).transpose(0, 1)  # [N, B, M]
        self.c[0] = c0.reshape(c0.shape[0], n, c0.shape[-1]).transpose(0, 1)


def _launch_forward(bufs: _ForwardBuffers, shp: Shape, params: dict, blocks: Blocks, path: str, save: bool) -> None:
    S, B, M, P, N = shp.steps, shp.batch, shp.channels, shp.tensor_size, shp.locations  # N: the grid's locations
    args = (bufs.z, bufs.h, bufs.c, bufs.a, bufs.y, params["weight_h"], params["bias_h"],
            params["cn_a_weight"], params["cn_a_bias"], params["cn_c_weight"], params["cn_c_bias"],
            B, shp.seq_len, M, P, shp.depth, shp.gate_channels, bufs.slots)
    consts = _kernel_consts(shp, blocks, bufs.z.dtype) | dict(SAVE=save, BK=blocks.bk)
    grid_b = _cdiv(B, blocks.bb)
    if path == "persistent":
        kernels.tlstm_fwd_persistent_kernel[(grid_b,)](*args, S, **consts, **LAUNCH_OPTIONS)
    else:
        grid = (grid_b, N, _cdiv(M, blocks.bn))
        for s in range(S):
            kernels.tlstm_fwd_step_kernel[grid](*args, s, **consts, **LAUNCH_OPTIONS)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- CUDA graphs for the forward-only per-step path: S launches recorded once per shape, replayed per call ---
_GRAPHS: OrderedDict = OrderedDict()


def _forward_per_step_graphed(shp, params, blocks, dtype, device, z, bias_x, h0, c0) -> _ForwardBuffers:
    # The graph reads static copies of the parameters (refreshed every call, a few MB at most), so a
    # parameter replaced or converted between calls can never leave it reading freed memory.
    key = (shp, blocks, dtype, device.index)
    entry = _GRAPHS.get(key)
    if entry is None:
        static_params = {name: value.clone() for name, value in params.items()}
        bufs = _ForwardBuffers(shp, False, dtype, device, poison=False)
        bufs.fill_inputs(z, bias_x, h0, c0, shp.seq_len)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up: compiles the kernel outside the capture
            _launch_forward(bufs, shp, static_params, blocks, "per_step", False)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _launch_forward(bufs, shp, static_params, blocks, "per_step", False)
        entry = (graph, bufs, static_params)
        _GRAPHS[key] = entry
        while len(_GRAPHS) > GRAPH_CACHE_SIZE:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(key)
    graph, bufs, static_params = entry
    for name, value in params.items():
        static_params[name].copy_(value)
    bufs.fill_inputs(z, bias_x, h0, c0, shp.seq_len)
    bufs.y.fill_(float("nan"))
    graph.replay()
    # the static buffers are overwritten by the next replay: hand out copies of what the caller reads
    out = _ForwardBuffers.__new__(_ForwardBuffers)
    out.slots, out.z, out.a = bufs.slots, None, None
    out.h, out.c, out.y = bufs.h.clone(), bufs.c.clone(), bufs.y.clone()
    return out


def run_forward(shp: Shape, params: dict, x: Tensor, h0: Tensor, c0: Tensor, path: str, blocks: Blocks,
                save: bool, use_graphs: bool) -> _ForwardBuffers:
    """Steps (1)-(9) for the whole sequence; returns the buffers (y, and with ``save`` every step's state)."""
    B, T, R = x.shape
    z = (x.reshape(B * T, R) @ params["weight_x"] + params["bias_x"]).view(B, T, shp.channels)  # (1) [B, T, M]
    if path == "per_step" and use_graphs and x.device.type == "cuda" and not save:
        return _forward_per_step_graphed(shp, params, blocks, x.dtype, x.device, z, params["bias_x"], h0, c0)
    bufs = _ForwardBuffers(shp, save, x.dtype, x.device, POISON_BUFFERS)
    bufs.fill_inputs(z, params["bias_x"], h0, c0, T)
    _launch_forward(bufs, shp, params, blocks, path, save)
    return bufs


def run_backward(shp: Shape, params: dict, bufs: _ForwardBuffers, x: Tensor, blocks: Blocks,
                 dy: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None) -> dict:
    """The reverse step loop in one kernel, then the weight gradients as single matrix products."""
    S, B, T, R, M, P, N, G = (shp.steps, shp.batch, shp.seq_len, shp.input_size, shp.channels,
                              shp.tensor_size, shp.locations, shp.gate_channels)
    device, dtype = x.device, x.dtype
    f32 = torch.float32
    dy32 = torch.zeros((B, T, M), dtype=f32, device=device) if dy is None else dy.to(f32).contiguous()  # [B, T, M]
    dh = _alloc((2, N, B, M), f32, device, POISON_BUFFERS)  # ring of dL/dH_s
    dc = _alloc((2, N, B, M), f32, device, POISON_BUFFERS)  # ring of dL/dC_s
    dh[S % 2] = 0.0 if dh_n is None else dh_n.to(f32).reshape(B, N, M).transpose(0, 1)
    dc[S % 2] = 0.0 if dc_n is None else dc_n.to(f32).reshape(B, N, M).transpose(0, 1)
    dz = torch.full((S, B, M), float("nan"), dtype=f32, device=device)  # [S, B, M]
    grid_b = _cdiv(B, blocks.bb)
    dcn = torch.full((grid_b, 10 * M) if shp.cn else (1,), float("nan"), dtype=f32, device=device)
    kernels.tlstm_bwd_kernel[(grid_b,)](
        bufs.c, bufs.a, dy32, dh, dc, dz, params["weight_h"],
        params["cn_a_weight"], params["cn_a_bias"], params["cn_c_weight"], params["cn_c_bias"], dcn,
        B, T, M, P, shp.depth, G, S,
        BK=blocks.bkg, **_kernel_consts(shp, blocks, dtype), **LAUNCH_OPTIONS,
    )
    mm_dtype = f32 if dtype == f32 or device.type == "cpu" else dtype  # half storage: tensor-core products
    da = bufs.a.view(S * N * B, G)  # [S*N*B, G] dA
    if shp.dims == 2:
        grad_weight_h = _grad_weight_h_2d(shp, bufs, da, mm_dtype)
    else:
        grad_weight_h = _grad_weight_h_3d(shp, bufs, da, mm_dtype)
    grad_bias_h = da.sum(dim=0)
    dz_t = dz[:T].transpose(0, 1).reshape(B * T, M)  # [B*T, M]
    grad_x = (dz_t.to(mm_dtype) @ params["weight_x"].to(mm_dtype).t()).view(B, T, R)
    grad_weight_x = x.reshape(B * T, R).to(mm_dtype).t() @ dz_t.to(mm_dtype)  # [R, M]
    grads = dict(
        x=grad_x, weight_x=grad_weight_x, bias_x=dz.sum(dim=(0, 1)), weight_h=grad_weight_h, bias_h=grad_bias_h,
        h0=dh[0].transpose(0, 1).reshape(shp.state_shape), c0=dc[0].transpose(0, 1).reshape(shp.state_shape),
    )
    if shp.cn:
        sums = dcn.sum(dim=0)
        grads |= dict(cn_a_weight=sums[: 4 * M], cn_a_bias=sums[4 * M : 8 * M], cn_c_weight=sums[8 * M : 9 * M],
                      cn_c_bias=sums[9 * M :])
    return grads


def _grad_weight_h_2d(shp: Shape, bufs: _ForwardBuffers, da: Tensor, mm_dtype: torch.dtype) -> Tensor:
    """dW_h [K, M, G] = unfold(Hcat)^T @ dA, one product over all steps and locations."""
    S, B, M, P, K, G = shp.steps, shp.batch, shp.channels, shp.tensor_size, shp.kernel_size, shp.gate_channels
    # Hcat for every step, padded so that row p + k of the padded stack is the row tap k of location p reads
    hcat = torch.cat([bufs.z.unsqueeze(1), bufs.h[:S]], dim=1)  # [S, P+1, B, M]
    d_up, d_down = K // 2, K - 1 - K // 2
    hpad = F.pad(hcat.permute(0, 2, 3, 1), (d_up - 1, d_down))  # [S, B, M, P+K-1]
    unfolded = hpad.unfold(3, K, 1)  # [S, B, M, P, K]
    unfolded = unfolded.permute(0, 3, 1, 4, 2).reshape(S * P * B, K * M)  # [S*P*B, K*M], rows as da's
    return (unfolded.to(mm_dtype).t() @ da.to(mm_dtype)).view(K, M, G)  # one product over all steps


def _grad_weight_h_3d(shp: Shape, bufs: _ForwardBuffers, da: Tensor, mm_dtype: torch.dtype) -> Tensor:
    """dW_h [K, K, M, G]: for each tap (k1, k2), the Hcat rows it read, shifted, ^T @ dA. One product per
    tap rather than one over a K*K-times unfolded copy of every step's state (K*K times its memory)."""
    S, B, M, P, K, G = shp.steps, shp.batch, shp.channels, shp.tensor_size, shp.kernel_size, shp.gate_channels
    hcat = bufs.h.new_zeros((S, P + 1, P + 1, B, M))  # Hcat of every step: the input at (0, 0), H below-right
    hcat[:, 0, 0] = bufs.z
    hcat[:, 1:, 1:] = bufs.h[:S].view(S, P, P, B, M)
    d_up, d_down = K // 2, K - 1 - K // 2
    # hpad[:, p1 + k1, p2 + k2] is Hcat[p1 + 1 - d_up + k1, p2 + 1 - d_up + k2], zero outside
    hpad = F.pad(hcat.permute(0, 3, 4, 1, 2), (d_up - 1, d_down, d_up - 1, d_down))  # [S, B, M, P+K-1, P+K-1]
    da_mm = da.to(mm_dtype)
    grad = torch.empty((K, K, M, G), dtype=da_mm.dtype, device=da.device)
    for k1 in range(K):
        for k2 in range(K):
            rows = hpad[:, :, :, k1 : k1 + P, k2 : k2 + P].permute(0, 3, 4, 1, 2)  # [S, P, P, B, M], rows as da's
            grad[k1, k2] = rows.reshape(S * P * P * B, M).to(mm_dtype).t() @ da_mm
    return grad


PARAM_NAMES = ("weight_x", "bias_x", "weight_h", "bias_h", "cn_a_weight", "cn_a_bias", "cn_c_weight", "cn_c_bias")


class TLSTMTritonFunction(torch.autograd.Function):
    """y, h_n, c_n = f(x, h0, c0, parameters); the backward runs the reverse-time kernel."""

    @staticmethod
    def forward(ctx, shp: Shape, path: str, blocks: Blocks, use_graphs: bool, save: bool, x: Tensor, h0: Tensor,
                c0: Tensor, *param_values: Tensor):
        # ``save``: a gradient will be asked for, so keep every step's state (decided by the caller:
        # grad mode is always off in here)
        params = _kernel_params(shp, x, dict(zip(PARAM_NAMES, param_values)))
        bufs = run_forward(shp, params, x, h0, c0, path, blocks, save, use_graphs)
        S = shp.steps
        h_n = bufs.h[S % bufs.slots].transpose(0, 1).contiguous().view(shp.state_shape)  # [B, P, M] / [B, P, P, M]
        c_n = bufs.c[S % bufs.slots].transpose(0, 1).to(x.dtype).reshape(shp.state_shape)  # [B, P, M] / [B, P, P, M]
        if save:
            ctx.shp, ctx.blocks, ctx.bufs, ctx.params = shp, blocks, bufs, params
            ctx.save_for_backward(x)
        return bufs.y, h_n, c_n

    @staticmethod
    def backward(ctx, dy: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None):
        (x,) = ctx.saved_tensors
        grads = run_backward(ctx.shp, ctx.params, ctx.bufs, x, ctx.blocks, dy, dh_n, dc_n)
        ctx.bufs = None  # the saved steps are large: drop them as soon as they are used
        dtype = x.dtype
        out = [None, None, None, None, None, grads["x"].to(dtype), grads["h0"].to(dtype), grads["c0"].to(dtype)]
        for i, name in enumerate(PARAM_NAMES):
            wanted = ctx.needs_input_grad[8 + i]
            out.append(grads[name].to(dtype) if wanted and name in grads else None)
        return tuple(out)


def _kernel_params(shp: Shape, x: Tensor, params: dict) -> dict:
    """Parameters as the kernels read them: contiguous; CN's in float32 (1-element dummies without CN)."""
    out = {name: params[name].contiguous() for name in ("weight_x", "bias_x", "weight_h", "bias_h")}
    for name in PARAM_NAMES[4:]:
        value = params.get(name)
        out[name] = (value.to(torch.float32).contiguous() if shp.cn and value is not None
                     else torch.zeros(1, dtype=torch.float32, device=x.device))
    return out


def check_fits(shp: Shape, path: str | None = None) -> None:
    """Refuse sizes the kernels cannot run, with the limit; ``path``: the forward kernel, once chosen."""
    from ..config import ConfigError

    if shp.cn and shp.channels > CN_MAX_CHANNELS:
        raise ConfigError(
            f"norm='cn' in the triton backend needs channels <= {CN_MAX_CHANNELS} (CN normalizes all channels "
            f"of a location in one on-chip tile), got channels={shp.channels}"
        )
    if path == "per_step" and shp.locations > MAX_GRID_LOCATIONS:
        grid = "tensor_size" if shp.dims == 2 else "tensor_size**2"
        raise ConfigError(
            f"the triton backend's per-step forward needs {grid} <= {MAX_GRID_LOCATIONS} (one grid row per "
            f"location), got {shp.locations} locations; use path='persistent'"
        )
