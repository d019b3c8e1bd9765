"""Triton kernels of the fused tLSTM: a persistent forward, a per-step forward and a persistent backward.

Importing this module imports triton; ``implementations.fused_triton`` does so only when a kernel is
first needed, so that the package imports on machines without triton.

Equation numbers (1)-(9) are those of ``implementations/tlstm_naive.py``. Sizes: B batch, T sequence
length, M channels, P tensor size, K kernel size, D_UP = K // 2, L depth, S = T + L - 1 steps,
NS history slots (S + 1 when the backward needs every step, 2 for a forward-only ring).

One set of kernels serves the tLSTM (``DIMS=2``) and the 3D tLSTM (``DIMS=3``): they loop over
N locations (P, or P*P flattened row-major, location (p1, p2) = p1*P + p2) and TAPS kernel taps (K, or
K*K row-major, tap (k1, k2) = k1*K + k2, the order of weight_h [K, K, M, G] and of the memory-kernel
logits); G = 4M + TAPS (memory-cell convolution on) or 4M (off). Which Hcat row a tap reads and
which cell the memory-cell convolution clamps to is plain scalar arithmetic in a ``DIMS`` branch
resolved at compile time, so the 2D kernels are the same code as before 3D existed (N == P).

Buffers (all contiguous, written by the Python wrapper in ``ops.py``):
    z    [S, B, M]      storage dtype  projected inputs, row 0 (3D: corner (0, 0)) of Hcat at each step (1)
    h    [NS, N, B, M]  storage dtype  hidden state H_s in slot s % NS
    c    [NS, N, B, M]  float32        cell state C_s in slot s % NS
    a    [S, N, B, G]   float32        pre-activations A (before CN); the backward overwrites them with dA
    y    [B, T, M]      storage dtype  outputs (read at location N - 1: P-1, or (P-1, P-1))
A program owns BB samples. Its rows of ``h``/``c`` (and of the backward scratch) are touched by no
other program, so programs never wait for each other: the interpreter, which runs programs one after
another, and a GPU, which runs them at once, compute the same thing. Inside a program, steps and
phases that read what another thread of the program wrote are separated by ``tl.debug_barrier()``.

The interpreter has no bfloat16 arithmetic, and scalar conditions cannot be combined with tensor
masks there: scalars enter masks through a zero vector (``zb + j >= 0``), and ``tl.dot`` operands
are cast to ``DOT_DTYPE`` (float32 under the interpreter and for float32 storage, where
``DOT_PRECISION="ieee"`` asks for exact products rather than TF32 so that float32 results match the
reference; the storage dtype for bfloat16/float16 on a GPU). sigmoid is written 1 / (1 + exp(-x))
and tanh 2 sigmoid(2x) - 1, inline: tl has no tanh that runs under the interpreter, and every nested
``@triton.jit`` call (tl.sigmoid is one) costs milliseconds there.
"""

from __future__ import annotations

import triton
import triton.language as tl

CN_EPS = tl.constexpr(1e-5)  # a global a kernel may read must be a tl.constexpr instance


@triton.jit
def _fwd_tile(
    s, p, n0, offs_b,
    z_ptr, h_ptr, c_ptr, a_ptr, y_ptr, w_ptr, bh_ptr, cnaw_ptr, cnab_ptr, cncw_ptr, cncb_ptr,
    B, T, M, P, L, G, NS,
    K: tl.constexpr, TAPS: tl.constexpr, DIMS: tl.constexpr, D_UP: tl.constexpr, MEM_CONV: tl.constexpr,
    CN: tl.constexpr, SAVE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KQ: tl.constexpr,
):
    """Steps (2)-(9) of step s at location p (0 .. N-1) for samples offs_b and channels n0 .. n0+BN-1."""
    if DIMS == 2:
        N = P  # the same value, not a second argument: the 2D kernels stay what they were (loops bounded by P)
    else:
        N = P * P
    rd = s % NS
    wr = (s + 1) % NS
    zb = offs_b * 0  # [BB] zeros: scalar conditions enter the masks through it
    mask_b = offs_b < B
    offs_n = n0 + tl.arange(0, BN)
    mask_n = offs_n < M
    mask_bn = mask_b[:, None] & mask_n[None, :]  # [BB, BN]
    offs_q = tl.arange(0, KQ)
    mask_q = offs_q < TAPS

    # (2), (3): A[p] = bias_h + sum_k Hcat[p + 1 - D_UP + k] @ W[k] (3D: tap (k1, k2) of location (p1, p2)
    # reads Hcat[p1 + 1 - D_UP + k1, p2 + 1 - D_UP + k2]), each gate block its own product, so that the
    # epilogue has g, i, f, o of the same channels (and all TAPS memory logits) at hand.
    acc_g = tl.zeros([BB, BN], dtype=tl.float32)
    acc_i = tl.zeros([BB, BN], dtype=tl.float32)
    acc_f = tl.zeros([BB, BN], dtype=tl.float32)
    acc_o = tl.zeros([BB, BN], dtype=tl.float32)
    acc_q = tl.zeros([BB, KQ], dtype=tl.float32)
    for k in tl.static_range(TAPS):
        if DIMS == 2:
            j = p + 1 - D_UP + k  # the Hcat row tap k reads; row 0 is the input, rows outside 0..P are zero
            row_ok = mask_b & (zb + j >= 0) & (zb + j <= P)
            from_z = row_ok & (zb + j == 0)
            from_h = row_ok & (zb + j > 0)
            h_loc = j - 1  # the H location of Hcat row j
        else:
            # Hcat[j1, j2]: (0, 0) is the input, the rest of row 0 and column 0 and all outside 0..P are zero
            j1 = p // P + 1 - D_UP + k // K
            j2 = p % P + 1 - D_UP + k % K
            row_ok = mask_b & (zb + j1 >= 0) & (zb + j1 <= P) & (zb + j2 >= 0) & (zb + j2 <= P)
            from_z = row_ok & (zb + j1 == 0) & (zb + j2 == 0)
            from_h = row_ok & (zb + j1 > 0) & (zb + j2 > 0)
            h_loc = (j1 - 1) * P + j2 - 1
        for kc in range(0, M, BK):
            offs_k = kc + tl.arange(0, BK)
            mask_k = offs_k < M
            u_z = tl.load(z_ptr + (s * B + offs_b[:, None]) * M + offs_k[None, :],
                          mask=from_z[:, None] & mask_k[None, :], other=0.0)
            u_h = tl.load(h_ptr + ((rd * N + h_loc) * B + offs_b[:, None]) * M + offs_k[None, :],
                          mask=from_h[:, None] & mask_k[None, :], other=0.0)
            u = tl.where(from_z[:, None], u_z, u_h).to(DOT_DTYPE)  # [BB, BK]
            w_rows = w_ptr + (k * M + offs_k[:, None]) * G  # W[k][kc:kc+BK, :]
            mask_w = mask_k[:, None] & mask_n[None, :]
            acc_g += tl.dot(u, tl.load(w_rows + offs_n[None, :], mask=mask_w, other=0.0).to(DOT_DTYPE), input_precision=DOT_PRECISION)
            acc_i += tl.dot(u, tl.load(w_rows + M + offs_n[None, :], mask=mask_w, other=0.0).to(DOT_DTYPE), input_precision=DOT_PRECISION)
            acc_f += tl.dot(u, tl.load(w_rows + 2 * M + offs_n[None, :], mask=mask_w, other=0.0).to(DOT_DTYPE), input_precision=DOT_PRECISION)
            acc_o += tl.dot(u, tl.load(w_rows + 3 * M + offs_n[None, :], mask=mask_w, other=0.0).to(DOT_DTYPE), input_precision=DOT_PRECISION)
            if MEM_CONV:
                mask_wq = mask_k[:, None] & mask_q[None, :]
                acc_q += tl.dot(u, tl.load(w_rows + 4 * M + offs_q[None, :], mask=mask_wq, other=0.0).to(DOT_DTYPE), input_precision=DOT_PRECISION)

    ag = acc_g + tl.load(bh_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    ai = acc_i + tl.load(bh_ptr + M + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    af = acc_f + tl.load(bh_ptr + 2 * M + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    ao = acc_o + tl.load(bh_ptr + 3 * M + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    a_rows = a_ptr + ((s * N + p) * B + offs_b[:, None]) * G  # [BB, 1]
    if SAVE:
        tl.store(a_rows + offs_n[None, :], ag, mask=mask_bn)
        tl.store(a_rows + M + offs_n[None, :], ai, mask=mask_bn)
        tl.store(a_rows + 2 * M + offs_n[None, :], af, mask=mask_bn)
        tl.store(a_rows + 3 * M + offs_n[None, :], ao, mask=mask_bn)

    # (4) channel normalization over the 4M gate channels: the wrapper guarantees one tile (BN >= M).
    if CN:
        mean = (tl.sum(ag, axis=1) + tl.sum(ai, axis=1) + tl.sum(af, axis=1) + tl.sum(ao, axis=1)) / (4 * M)
        xg = tl.where(mask_n[None, :], ag - mean[:, None], 0.0)
        xi = tl.where(mask_n[None, :], ai - mean[:, None], 0.0)
        xf = tl.where(mask_n[None, :], af - mean[:, None], 0.0)
        xo = tl.where(mask_n[None, :], ao - mean[:, None], 0.0)
        var = (tl.sum(xg * xg, axis=1) + tl.sum(xi * xi, axis=1) + tl.sum(xf * xf, axis=1) + tl.sum(xo * xo, axis=1)) / (4 * M)
        rstd = (1.0 / tl.sqrt(var + CN_EPS))[:, None]
        ag = xg * rstd * tl.load(cnaw_ptr + offs_n, mask=mask_n, other=0.0)[None, :] + tl.load(cnab_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        ai = xi * rstd * tl.load(cnaw_ptr + M + offs_n, mask=mask_n, other=0.0)[None, :] + tl.load(cnab_ptr + M + offs_n, mask=mask_n, other=0.0)[None, :]
        af = xf * rstd * tl.load(cnaw_ptr + 2 * M + offs_n, mask=mask_n, other=0.0)[None, :] + tl.load(cnab_ptr + 2 * M + offs_n, mask=mask_n, other=0.0)[None, :]
        ao = xo * rstd * tl.load(cnaw_ptr + 3 * M + offs_n, mask=mask_n, other=0.0)[None, :] + tl.load(cnab_ptr + 3 * M + offs_n, mask=mask_n, other=0.0)[None, :]

    # (5) activations
    g = (2.0 * (1.0 / (1.0 + tl.exp(-2.0 * ag))) - 1.0)  # tanh(x) = 2 sigmoid(2x) - 1
    i = (1.0 / (1.0 + tl.exp(-ai)))
    f = (1.0 / (1.0 + tl.exp(-af)))
    o = (1.0 / (1.0 + tl.exp(-ao)))

    # (6) memory-cell convolution with replicate padding; Q is recomputed by every channel tile.
    if MEM_CONV:
        aq = acc_q + tl.load(bh_ptr + 4 * M + offs_q, mask=mask_q, other=0.0).to(tl.float32)[None, :]
        if SAVE:
            first_tile = mask_b & (zb + n0 == 0)
            tl.store(a_rows + 4 * M + offs_q[None, :], aq, mask=first_tile[:, None] & mask_q[None, :])
        aq = tl.where(mask_q[None, :], aq, float("-inf"))
        e = tl.exp(aq - tl.max(aq, axis=1)[:, None])
        q = e / tl.sum(e, axis=1)[:, None]  # [BB, KQ]
        c_conv = tl.zeros([BB, BN], dtype=tl.float32)
        for k in tl.static_range(TAPS):
            if DIMS == 2:
                jj = tl.minimum(tl.maximum(p - D_UP + k, 0), P - 1)
            else:
                jj = (tl.minimum(tl.maximum(p // P - D_UP + k // K, 0), P - 1) * P
                      + tl.minimum(tl.maximum(p % P - D_UP + k % K, 0), P - 1))
            c_k = tl.load(c_ptr + ((rd * N + jj) * B + offs_b[:, None]) * M + offs_n[None, :], mask=mask_bn, other=0.0)
            q_k = tl.sum(tl.where(offs_q[None, :] == k, q, 0.0), axis=1)  # [BB]
            c_conv += q_k[:, None] * c_k
    else:
        c_conv = tl.load(c_ptr + ((rd * N + p) * B + offs_b[:, None]) * M + offs_n[None, :], mask=mask_bn, other=0.0)

    # (7) cell update, kept in float32
    c_new = g * i + c_conv * f
    tl.store(c_ptr + ((wr * N + p) * B + offs_b[:, None]) * M + offs_n[None, :], c_new, mask=mask_bn)

    # (8) hidden update, with CN of the cell over its M channels (one tile)
    if CN:
        mean_c = tl.sum(tl.where(mask_n[None, :], c_new, 0.0), axis=1) / M
        xc = tl.where(mask_n[None, :], c_new - mean_c[:, None], 0.0)
        rstd_c = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / M + CN_EPS)
        c_out = xc * rstd_c[:, None] * tl.load(cncw_ptr + offs_n, mask=mask_n, other=0.0)[None, :] + tl.load(cncb_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    else:
        c_out = c_new
    h_new = (2.0 * (1.0 / (1.0 + tl.exp(-2.0 * c_out))) - 1.0) * o
    tl.store(h_ptr + ((wr * N + p) * B + offs_b[:, None]) * M + offs_n[None, :], h_new.to(h_ptr.dtype.element_ty), mask=mask_bn)

    # (9) the output for input t = s - (L-1) is read at the last location (3D: the corner (P-1, P-1))
    t = s - (L - 1)
    is_out = mask_b & (zb + p == N - 1) & (zb + t >= 0)
    tl.store(y_ptr + (offs_b[:, None] * T + t) * M + offs_n[None, :], h_new.to(y_ptr.dtype.element_ty),
             mask=is_out[:, None] & mask_n[None, :])


@triton.jit
def tlstm_fwd_persistent_kernel(
    z_ptr, h_ptr, c_ptr, a_ptr, y_ptr, w_ptr, bh_ptr, cnaw_ptr, cnab_ptr, cncw_ptr, cncb_ptr,
    B, T, M, P, L, G, NS, S,
    K: tl.constexpr, TAPS: tl.constexpr, DIMS: tl.constexpr, D_UP: tl.constexpr, MEM_CONV: tl.constexpr,
    CN: tl.constexpr, SAVE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KQ: tl.constexpr,
):
    """The whole T+L-1 step loop in one launch; grid (cdiv(B, BB),), one program per sample group."""
    offs_b = (tl.program_id(0) * BB + tl.arange(0, BB)).to(tl.int64)  # int64: S*P*B*G can pass 2**31
    if DIMS == 2:
        N = P  # the same value, not a second argument: the 2D kernels stay what they were (loops bounded by P)
    else:
        N = P * P
    for s in range(S):
        for p in range(N):
            for n0 in range(0, M, BN):
                _fwd_tile(s, p, n0, offs_b, z_ptr, h_ptr, c_ptr, a_ptr, y_ptr, w_ptr, bh_ptr,
                          cnaw_ptr, cnab_ptr, cncw_ptr, cncb_ptr, B, T, M, P, L, G, NS,
                          K, TAPS, DIMS, D_UP, MEM_CONV, CN, SAVE, DOT_DTYPE, DOT_PRECISION, BB, BN, BK, KQ)
        # step s+1 reads rows other threads of this program wrote in step s
        tl.debug_barrier()


@triton.jit(do_not_specialize=["s"])  # one compiled kernel for every step index
def tlstm_fwd_step_kernel(
    z_ptr, h_ptr, c_ptr, a_ptr, y_ptr, w_ptr, bh_ptr, cnaw_ptr, cnab_ptr, cncw_ptr, cncb_ptr,
    B, T, M, P, L, G, NS, s,
    K: tl.constexpr, TAPS: tl.constexpr, DIMS: tl.constexpr, D_UP: tl.constexpr, MEM_CONV: tl.constexpr,
    CN: tl.constexpr, SAVE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KQ: tl.constexpr,
):
    """One step s; grid (cdiv(B, BB), N, cdiv(M, BN)): a matrix product with the whole step as its epilogue."""
    offs_b = (tl.program_id(0) * BB + tl.arange(0, BB)).to(tl.int64)  # int64: S*P*B*G can pass 2**31
    _fwd_tile(s, tl.program_id(1), tl.program_id(2) * BN, offs_b, z_ptr, h_ptr, c_ptr, a_ptr, y_ptr, w_ptr,
              bh_ptr, cnaw_ptr, cnab_ptr, cncw_ptr, cncb_ptr, B, T, M, P, L, G, NS,
              K, TAPS, DIMS, D_UP, MEM_CONV, CN, SAVE, DOT_DTYPE, DOT_PRECISION, BB, BN, BK, KQ)


@triton.jit
def tlstm_bwd_kernel(
    c_ptr, a_ptr, dy_ptr, dh_ptr, dc_ptr, dz_ptr, w_ptr,
    cnaw_ptr, cnab_ptr, cncw_ptr, cncb_ptr, dcn_ptr,
    B, T, M, P, L, G, S,
    K: tl.constexpr, TAPS: tl.constexpr, DIMS: tl.constexpr, D_UP: tl.constexpr, MEM_CONV: tl.constexpr,
    CN: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KQ: tl.constexpr,
):
    """The reverse-time loop; grid (cdiv(B, BB),), one program per sample group.

    Reads the forward's saved h, c (every slot, NS = S + 1) and pre-activations a; overwrites a with
    dA (for the weight gradient, one matrix product after this kernel) and writes dz [S, B, M]
    (the gradient of Hcat row 0, i.e. of the projected input). dh, dc [2, N, B, M] float32 are a ring:
    slot (s+1) % 2 holds dL/dH_{s+1} and dL/dC_{s+1} (the wrapper puts the final-state gradients in
    slot S % 2); step s writes dL/dH_s, dL/dC_s into slot s % 2, so slot 0 ends with the gradients
    of the initial state. With CN, each program writes its sums of the CN parameter gradients to
    dcn [programs, 10M]: cn_a_weight, cn_a_bias (4M each), cn_c_weight, cn_c_bias (M each).
    """
    pid = tl.program_id(0)
    offs_b = (pid * BB + tl.arange(0, BB)).to(tl.int64)  # int64: S*P*B*G can pass 2**31
    if DIMS == 2:
        N = P  # the same value, not a second argument: the 2D kernels stay what they were (loops bounded by P)
    else:
        N = P * P
    zb = offs_b * 0
    mask_b = offs_b < B
    offs_q = tl.arange(0, KQ)
    mask_q = offs_q < TAPS
    if CN:
        # one channel tile (BN >= M): the CN parameter gradients accumulate in registers
        acc_aw_g = tl.zeros([BN], dtype=tl.float32)
        acc_aw_i = tl.zeros([BN], dtype=tl.float32)
        acc_aw_f = tl.zeros([BN], dtype=tl.float32)
        acc_aw_o = tl.zeros([BN], dtype=tl.float32)
        acc_ab_g = tl.zeros([BN], dtype=tl.float32)
        acc_ab_i = tl.zeros([BN], dtype=tl.float32)
        acc_ab_f = tl.zeros([BN], dtype=tl.float32)
        acc_ab_o = tl.zeros([BN], dtype=tl.float32)
        acc_cw = tl.zeros([BN], dtype=tl.float32)
        acc_cb = tl.zeros([BN], dtype=tl.float32)

    for s_rev in range(S):
        s = S - 1 - s_rev
        rd = (s + 1) % 2
        wr = s % 2
        t = s - (L - 1)

        # phase 0: dL/dC_s is accumulated by scatter-adds from the memory-cell convolution below
        for p in range(N):
            for n0 in range(0, M, BN):
                offs_n = n0 + tl.arange(0, BN)
                mask_bn = mask_b[:, None] & (offs_n < M)[None, :]
                tl.store(dc_ptr + ((wr * N + p) * B + offs_b[:, None]) * M + offs_n[None, :],
                         tl.zeros([BB, BN], dtype=tl.float32), mask=mask_bn)
        tl.debug_barrier()

        # phase 1: per location, from dL/dH_{s+1}, dL/dC_{s+1} back to dA (stored over A) and dL/dC_s
        for p in range(N):
            a_rows = a_ptr + ((s * N + p) * B + offs_b[:, None]) * G  # [BB, 1]
            if MEM_CONV:
                aq = tl.load(a_rows + 4 * M + offs_q[None, :], mask=mask_b[:, None] & mask_q[None, :], other=0.0)
                aq = tl.where(mask_q[None, :], aq, float("-inf"))
                e = tl.exp(aq - tl.max(aq, axis=1)[:, None])
                q = e / tl.sum(e, axis=1)[:, None]  # [BB, KQ]
                dq = tl.zeros([BB, KQ], dtype=tl.float32)
            for n0 in range(0, M, BN):
                offs_n = n0 + tl.arange(0, BN)
                mask_n = offs_n < M
                mask_bn = mask_b[:, None] & mask_n[None, :]
                state_off = (offs_b[:, None] * M + offs_n[None, :])  # [BB, BN] within one [B, M] row block
                ag = tl.load(a_rows + offs_n[None, :], mask=mask_bn, other=0.0)
                ai = tl.load(a_rows + M + offs_n[None, :], mask=mask_bn, other=0.0)
                af = tl.load(a_rows + 2 * M + offs_n[None, :], mask=mask_bn, other=0.0)
                ao = tl.load(a_rows + 3 * M + offs_n[None, :], mask=mask_bn, other=0.0)
                if CN:
                    mean = (tl.sum(ag, axis=1) + tl.sum(ai, axis=1) + tl.sum(af, axis=1) + tl.sum(ao, axis=1)) / (4 * M)
                    xg = tl.where(mask_n[None, :], ag - mean[:, None], 0.0)
                    xi = tl.where(mask_n[None, :], ai - mean[:, None], 0.0)
                    xf = tl.where(mask_n[None, :], af - mean[:, None], 0.0)
                    xo = tl.where(mask_n[None, :], ao - mean[:, None], 0.0)
                    var = (tl.sum(xg * xg, axis=1) + tl.sum(xi * xi, axis=1) + tl.sum(xf * xf, axis=1) + tl.sum(xo * xo, axis=1)) / (4 * M)
                    rstd = (1.0 / tl.sqrt(var + CN_EPS))[:, None]
                    xg = xg * rstd  # the normalized gates (x-hat)
                    xi = xi * rstd
                    xf = xf * rstd
                    xo = xo * rstd
                    wg = tl.load(cnaw_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
                    wi = tl.load(cnaw_ptr + M + offs_n, mask=mask_n, other=0.0)[None, :]
                    wf = tl.load(cnaw_ptr + 2 * M + offs_n, mask=mask_n, other=0.0)[None, :]
                    wo = tl.load(cnaw_ptr + 3 * M + offs_n, mask=mask_n, other=0.0)[None, :]
                    ag = xg * wg + tl.load(cnab_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
                    ai = xi * wi + tl.load(cnab_ptr + M + offs_n, mask=mask_n, other=0.0)[None, :]
                    af = xf * wf + tl.load(cnab_ptr + 2 * M + offs_n, mask=mask_n, other=0.0)[None, :]
                    ao = xo * wo + tl.load(cnab_ptr + 3 * M + offs_n, mask=mask_n, other=0.0)[None, :]
                g = (2.0 * (1.0 / (1.0 + tl.exp(-2.0 * ag))) - 1.0)  # tanh(x) = 2 sigmoid(2x) - 1
                i = (1.0 / (1.0 + tl.exp(-ai)))
                f = (1.0 / (1.0 + tl.exp(-af)))
                o = (1.0 / (1.0 + tl.exp(-ao)))
                if MEM_CONV:
                    c_conv = tl.zeros([BB, BN], dtype=tl.float32)
                    for k in tl.static_range(TAPS):
                        if DIMS == 2:
                            jj = tl.minimum(tl.maximum(p - D_UP + k, 0), P - 1)
                        else:
                            jj = (tl.minimum(tl.maximum(p // P - D_UP + k // K, 0), P - 1) * P
                                  + tl.minimum(tl.maximum(p % P - D_UP + k % K, 0), P - 1))
                        c_k = tl.load(c_ptr + (s * N + jj) * B * M + state_off, mask=mask_bn, other=0.0)
                        q_k = tl.sum(tl.where(offs_q[None, :] == k, q, 0.0), axis=1)
                        c_conv += q_k[:, None] * c_k
                else:
                    c_conv = tl.load(c_ptr + (s * N + p) * B * M + state_off, mask=mask_bn, other=0.0)
                c_new = tl.load(c_ptr + ((s + 1) * N + p) * B * M + state_off, mask=mask_bn, other=0.0)
                if CN:
                    mean_c = tl.sum(tl.where(mask_n[None, :], c_new, 0.0), axis=1) / M
                    xc = tl.where(mask_n[None, :], c_new - mean_c[:, None], 0.0)
                    rstd_c = (1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / M + CN_EPS))[:, None]
                    xc = xc * rstd_c
                    wc = tl.load(cncw_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
                    c_out = xc * wc + tl.load(cncb_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
                else:
                    c_out = c_new
                th = (2.0 * (1.0 / (1.0 + tl.exp(-2.0 * c_out))) - 1.0)

                # gradients arriving at H_{s+1}[p], C_{s+1}[p]; the output y[:, t] adds to the last location
                dh = tl.load(dh_ptr + (rd * N + p) * B * M + state_off, mask=mask_bn, other=0.0)
                is_out = mask_b & (zb + p == N - 1) & (zb + t >= 0)
                dh += tl.load(dy_ptr + (offs_b[:, None] * T + t) * M + offs_n[None, :],
                              mask=is_out[:, None] & mask_n[None, :], other=0.0)
                dc = tl.load(dc_ptr + (rd * N + p) * B * M + state_off, mask=mask_bn, other=0.0)

                # (8) backward
                do = dh * th
                dc_out = dh * o * (1.0 - th * th)
                if CN:
                    acc_cw += tl.sum(dc_out * xc, axis=0)
                    acc_cb += tl.sum(dc_out, axis=0)
                    dxc = dc_out * wc
                    m1 = tl.sum(dxc, axis=1)[:, None] / M
                    m2 = tl.sum(dxc * xc, axis=1)[:, None] / M
                    dc_out = tl.where(mask_n[None, :], rstd_c * (dxc - m1 - xc * m2), 0.0)
                dc = dc + dc_out
                # (7), (5) backward
                dag = dc * i * (1.0 - g * g)
                dai = dc * g * i * (1.0 - i)
                daf = dc * c_conv * f * (1.0 - f)
                dao = do * o * (1.0 - o)
                d_conv = dc * f
                # (4) backward: CN over the 4M gate channels
                if CN:
                    acc_aw_g += tl.sum(dag * xg, axis=0)
                    acc_aw_i += tl.sum(dai * xi, axis=0)
                    acc_aw_f += tl.sum(daf * xf, axis=0)
                    acc_aw_o += tl.sum(dao * xo, axis=0)
                    acc_ab_g += tl.sum(dag, axis=0)
                    acc_ab_i += tl.sum(dai, axis=0)
                    acc_ab_f += tl.sum(daf, axis=0)
                    acc_ab_o += tl.sum(dao, axis=0)
                    dxg = dag * wg
                    dxi = dai * wi
                    dxf = daf * wf
                    dxo = dao * wo
                    m1 = (tl.sum(dxg, axis=1) + tl.sum(dxi, axis=1) + tl.sum(dxf, axis=1) + tl.sum(dxo, axis=1))[:, None] / (4 * M)
                    m2 = (tl.sum(dxg * xg, axis=1) + tl.sum(dxi * xi, axis=1) + tl.sum(dxf * xf, axis=1)
                          + tl.sum(dxo * xo, axis=1))[:, None] / (4 * M)
                    dag = rstd * (dxg - m1 - xg * m2)
                    dai = rstd * (dxi - m1 - xi * m2)
                    daf = rstd * (dxf - m1 - xf * m2)
                    dao = rstd * (dxo - m1 - xo * m2)
                tl.store(a_rows + offs_n[None, :], dag, mask=mask_bn)
                tl.store(a_rows + M + offs_n[None, :], dai, mask=mask_bn)
                tl.store(a_rows + 2 * M + offs_n[None, :], daf, mask=mask_bn)
                tl.store(a_rows + 3 * M + offs_n[None, :], dao, mask=mask_bn)
                # (6) backward: dQ sums over all channels (every tile adds its part); dC_s is scattered
                if MEM_CONV:
                    for k in tl.static_range(TAPS):
                        if DIMS == 2:
                            jj = tl.minimum(tl.maximum(p - D_UP + k, 0), P - 1)
                        else:
                            jj = (tl.minimum(tl.maximum(p // P - D_UP + k // K, 0), P - 1) * P
                                  + tl.minimum(tl.maximum(p % P - D_UP + k % K, 0), P - 1))
                        c_k = tl.load(c_ptr + (s * N + jj) * B * M + state_off, mask=mask_bn, other=0.0)
                        dq_k = tl.sum(d_conv * c_k, axis=1)  # [BB]
                        dq = tl.where(offs_q[None, :] == k, dq + dq_k[:, None], dq)
                        q_k = tl.sum(tl.where(offs_q[None, :] == k, q, 0.0), axis=1)
                        dc_dst = dc_ptr + (wr * N + jj) * B * M + state_off
                        tl.store(dc_dst, tl.load(dc_dst, mask=mask_bn, other=0.0) + q_k[:, None] * d_conv, mask=mask_bn)
                        # the next tap may clamp to the same location
                        tl.debug_barrier()
                else:
                    tl.store(dc_ptr + (wr * N + p) * B * M + state_off, d_conv, mask=mask_bn)
            if MEM_CONV:
                # softmax backward: dAq = Q * (dQ - sum_k Q dQ)
                daq = q * (dq - tl.sum(q * dq, axis=1)[:, None])
                tl.store(a_rows + 4 * M + offs_q[None, :], daq, mask=mask_b[:, None] & mask_q[None, :])
        tl.debug_barrier()

        # phase 2: (2), (3) backward: dHcat[j] = sum_k dA[j - 1 + D_UP - k] @ W[k]^T; row 0 is dz_s, row j >= 1
        # is dL/dH_s at location j - 1. 3D: row 0 is Hcat[0, 0], row j >= 1 is Hcat[j1, j2] with
        # (j1 - 1, j2 - 1) location j - 1, and dHcat[j1, j2] = sum_{k1, k2} dA[j1 - 1 + D_UP - k1, j2 - 1 + D_UP - k2]
        # @ W[k1, k2]^T (the rest of Hcat's row 0 and column 0 is constant: its gradient is not needed)
        for j in range(N + 1):
            if DIMS == 3:
                jm = tl.maximum(j - 1, 0)
                jn = tl.minimum(j, 1)  # 0 for the input corner, else 1
                j1 = (jm // P + 1) * jn
                j2 = (jm % P + 1) * jn
            for n0 in range(0, M, BN):
                offs_n = n0 + tl.arange(0, BN)
                mask_n = offs_n < M
                acc = tl.zeros([BB, BN], dtype=tl.float32)
                for k in tl.static_range(TAPS):
                    if DIMS == 2:
                        pp = j - 1 + D_UP - k
                        row_ok = mask_b & (zb + pp >= 0) & (zb + pp < P)
                    else:
                        pp1 = j1 - 1 + D_UP - k // K
                        pp2 = j2 - 1 + D_UP - k % K
                        row_ok = mask_b & (zb + pp1 >= 0) & (zb + pp1 < P) & (zb + pp2 >= 0) & (zb + pp2 < P)
                        pp = pp1 * P + pp2
                    for kc in range(0, G, BK):
                        offs_k = kc + tl.arange(0, BK)
                        mask_k = offs_k < G
                        da = tl.load(a_ptr + ((s * N + pp) * B + offs_b[:, None]) * G + offs_k[None, :],
                                     mask=row_ok[:, None] & mask_k[None, :], other=0.0)  # [BB, BK]
                        w_t = tl.load(w_ptr + (k * M + offs_n[None, :]) * G + offs_k[:, None],
                                      mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # [BK, BN] = W[k]^T tile
                        acc += tl.dot(da.to(DOT_DTYPE), w_t.to(DOT_DTYPE), input_precision=DOT_PRECISION)
                mask_bn = mask_b[:, None] & mask_n[None, :]
                to_z = mask_b & (zb + j == 0)
                to_h = mask_b & (zb + j > 0)
                tl.store(dz_ptr + (s * B + offs_b[:, None]) * M + offs_n[None, :], acc,
                         mask=to_z[:, None] & mask_n[None, :])
                tl.store(dh_ptr + ((wr * N + j - 1) * B + offs_b[:, None]) * M + offs_n[None, :], acc,
                         mask=to_h[:, None] & mask_n[None, :])
        tl.debug_barrier()

    if CN:
        offs_n = tl.arange(0, BN)
        mask_n = offs_n < M
        row = dcn_ptr + pid * 10 * M
        tl.store(row + offs_n, acc_aw_g, mask=mask_n)
        tl.store(row + M + offs_n, acc_aw_i, mask=mask_n)
        tl.store(row + 2 * M + offs_n, acc_aw_f, mask=mask_n)
        tl.store(row + 3 * M + offs_n, acc_aw_o, mask=mask_n)
        tl.store(row + 4 * M + offs_n, acc_ab_g, mask=mask_n)
        tl.store(row + 5 * M + offs_n, acc_ab_i, mask=mask_n)
        tl.store(row + 6 * M + offs_n, acc_ab_f, mask=mask_n)
        tl.store(row + 7 * M + offs_n, acc_ab_o, mask=mask_n)
        tl.store(row + 8 * M + offs_n, acc_cw, mask=mask_n)
        tl.store(row + 9 * M + offs_n, acc_cb, mask=mask_n)
