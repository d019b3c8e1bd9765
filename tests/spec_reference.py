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


def spec_tlstm_3d(x, params: dict, tensor_size: int, kernel_size: int, mem_conv: bool, norm):
    """The 3D tLSTM (spec section 7), location by location and tap by tap.

    x: [B, T, R]. Returns y [B, T, M], h, c [B, P, P, M]."""
    wx, bx, wh, bh = params["weight_x"], params["bias_x"], params["weight_h"], params["bias_h"]
    B, T, _ = x.shape
    P, K = tensor_size, kernel_size
    M = wx.shape[1]
    d_up = K // 2
    L = math.ceil(P / d_up)
    H = {(i, j): torch.zeros(B, M, dtype=x.dtype) for i in range(P) for j in range(P)}
    C = {(i, j): torch.zeros(B, M, dtype=x.dtype) for i in range(P) for j in range(P)}
    ys = []
    for s in range(T + L - 1):
        xs = x[:, s] if s < T else torch.zeros_like(x[:, 0])
        z = xs @ wx + bx

        def hcat(i, j, z=z, H=H):  # Hcat[i, j]: the input at (0, 0), H[i-1, j-1] inside, zero elsewhere
            if i == 0 and j == 0:
                return z
            if 1 <= i <= P and 1 <= j <= P:
                return H[(i - 1, j - 1)]
            return None

        newH, newC = {}, {}
        for p1 in range(P):
            for p2 in range(P):
                a = bh.expand(B, -1).clone()
                for k1 in range(K):
                    for k2 in range(K):
                        row = hcat(p1 + 1 - d_up + k1, p2 + 1 - d_up + k2)
                        if row is not None:
                            a = a + row @ wh[k1, k2]
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
                    for k1 in range(K):
                        for k2 in range(K):
                            src = (min(max(p1 - d_up + k1, 0), P - 1), min(max(p2 - d_up + k2, 0), P - 1))
                            cc = cc + q[:, k1 * K + k2 : k1 * K + k2 + 1] * C[src]
                else:
                    cc = C[(p1, p2)]
                c_new = gg * ii + cc * ff
                c_act = _cn(c_new, params["cn_c_weight"], params["cn_c_bias"]) if norm == "cn" else c_new
                newH[(p1, p2)] = torch.tanh(c_act) * oo
                newC[(p1, p2)] = c_new
        H, C = newH, newC
        if s >= L - 1:
            ys.append(H[(P - 1, P - 1)])

    def grid(d):
        return torch.stack([torch.stack([d[(i, j)] for j in range(P)], 1) for i in range(P)], 1)

    return torch.stack(ys, 1), grid(H), grid(C)
