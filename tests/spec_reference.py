"""An independent, deliberately different re-implementation of the tLSTM model statement.

Scalar-index loops over locations and taps, hand-written softmax and normalization: slow and only
for tiny shapes, but shares no code with ``implementations`` so it can check the reference.
"""

from __future__ import annotations

import math

import torch


def _cn(z, w, b):
    n = z.shape[-1]
    mu = z.sum(-1, keepdim=True) / n
    var = ((z - mu) ** 2).sum(-1, keepdim=True) / n
    return (z - mu) / (var + 1e-5) ** 0.5 * w + b


def spec_tlstm(x, params: dict, tensor_size: int, kernel_size: int, mem_conv: bool, norm):
    """x: [B, T, R]; params by the model's parameter names. Returns y [B, T, M], h, c [B, P, M]."""
    wx, bx, wh, bh = params["weight_x"], params["bias_x"], params["weight_h"], params["bias_h"]
    B, T, _ = x.shape
    P, K = tensor_size, kernel_size
    M = wx.shape[1]
    d_up = K // 2
    L = math.ceil(P / d_up)
    H = [torch.zeros(B, M, dtype=x.dtype) for _ in range(P)]
    C = [torch.zeros(B, M, dtype=x.dtype) for _ in range(P)]
    ys = []
    for s in range(T + L - 1):
        xs = x[:, s] if s < T else torch.zeros_like(x[:, 0])
        z = xs @ wx + bx
        rows = [z] + H  # Hcat row j
        newH, newC = [], []
        for p in range(P):
            a = bh.expand(B, -1).clone()
            for k in range(K):
                j = p + 1 - d_up + k
                if 0 <= j <= P:
                    a = a + rows[j] @ wh[k]
            g4 = a[:, : 4 * M]
            if norm == "cn":
                g4 = _cn(g4, params["cn_a_weight"], params["cn_a_bias"])
            gg = torch.tanh(g4[:, :M])
            ii = 1 / (1 + torch.exp(-g4[:, M : 2 * M]))
            ff = 1 / (1 + torch.exp(-g4[:, 2 * M : 3 * M]))
            oo = 1 / (1 + torch.exp(-g4[:, 3 * M : 4 * M]))
            if mem_conv:
                logits = a[:, 4 * M :]
                e = torch.exp(logits - logits.max(-1, keepdim=True).values)
                q = e / e.sum(-1, keepdim=True)
                cc = torch.zeros(B, M, dtype=x.dtype)
                for k in range(K):
                    src = min(max(p - d_up + k, 0), P - 1)
                    cc = cc + q[:, k : k + 1] * C[src]
            else:
                cc = C[p]
            c_new = gg * ii + cc * ff
            c_act = _cn(c_new, params["cn_c_weight"], params["cn_c_bias"]) if norm == "cn" else c_new
            newH.append(torch.tanh(c_act) * oo)
            newC.append(c_new)
        H, C = newH, newC
        if s >= L - 1:
            ys.append(H[P - 1])
    return torch.stack(ys, 1), torch.stack(H, 1), torch.stack(C, 1)
