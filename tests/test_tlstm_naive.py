"""The reference tLSTM against the model statement: an independent re-implementation, gradcheck,
causality and delay, and the parameter count."""

import itertools
import math

import pytest
import torch
from torch.func import functional_call

import implementations
from implementations import ConfigError, ModelConfig, create, tlstm_param_count
from implementations.tlstm_naive import MEM_SELF_LOGIT, TLSTMNaive

from .spec_reference import spec_tlstm, spec_tlstm_3d


def _randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights everywhere (CN scales and shifts too, so they are really exercised)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)


@pytest.mark.parametrize("kernel_size, tensor_size", list(itertools.product([2, 3, 5], [1, 2, 5])))
@pytest.mark.parametrize("mem_conv, norm", [(True, None), (False, None), (True, "cn")])
def test_matches_independent_reimplementation(kernel_size, tensor_size, mem_conv, norm, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    model = create(
        "tlstm_naive", input_size=3, channels=4, tensor_size=tensor_size, kernel_size=kernel_size,
        mem_conv=mem_conv, norm=norm, dtype=torch.float64,
    )
    _randomize(model, gen)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    y, (h, c) = model(x)
    y_ref, h_ref, c_ref = spec_tlstm(x, dict(model.named_parameters()), tensor_size, kernel_size, mem_conv, norm)
    assert y.shape == (2, 5, 4) and h.shape == c.shape == (2, tensor_size, 4)
    for got, want in ((y, y_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_hand_unrolled_single_location():
    """P=1, K=2, no mem-conv: one ordinary LSTM cell whose recurrent weight is tap 1, no delay."""
    gen = torch.Generator().manual_seed(0)
    model = create("tlstm_naive", input_size=2, channels=3, tensor_size=1, kernel_size=2, mem_conv=False,
                   dtype=torch.float64)
    _randomize(model, gen)
    x = torch.randn(1, 4, 2, generator=gen, dtype=torch.float64)
    wx, bx, wh, bh = model.weight_x, model.bias_x, model.weight_h, model.bias_h
    h = c = torch.zeros(1, 3, dtype=torch.float64)
    ys = []
    for t in range(4):
        a = (x[:, t] @ wx + bx) @ wh[0] + h @ wh[1] + bh
        g, i, f, o = a.split(3, dim=-1)
        c = torch.tanh(g) * torch.sigmoid(i) + c * torch.sigmoid(f)
        h = torch.tanh(c) * torch.sigmoid(o)
        ys.append(h)
    y, _ = model(x)
    torch.testing.assert_close(y, torch.stack(ys, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5])
@pytest.mark.parametrize("mem_conv", [True, False])
@pytest.mark.parametrize("norm", [None, "cn"])
def test_gradcheck_float64(kernel_size, mem_conv, norm, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    tensor_size = 4 if kernel_size >= 4 else 3
    model = create("tlstm_naive", input_size=2, channels=2, tensor_size=tensor_size, kernel_size=kernel_size,
                   mem_conv=mem_conv, norm=norm, dtype=torch.float64)
    _randomize(model, gen)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    x = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, tensor_size, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, tensor_size, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def run(x, h0, c0, *params):
        y, (h, c) = functional_call(model, dict(zip(names, params)), (x, (h0, c0)))
        return y, h, c

    assert torch.autograd.gradcheck(run, (x, h0, c0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("tensor_size, kernel_size", [(1, 3), (3, 2), (4, 3), (5, 4), (6, 5), (7, 3)])
def test_causality_and_delay(tensor_size, kernel_size, rng_seed):
    """y[:, t] depends on x[:, :t+1] only, and really on x[:, t] (the output is delayed, not lost)."""
    gen = torch.Generator().manual_seed(rng_seed)
    model = create("tlstm_naive", input_size=3, channels=4, tensor_size=tensor_size, kernel_size=kernel_size,
                   dtype=torch.float64)
    _randomize(model, gen)
    seq_len = 6
    x = torch.randn(1, seq_len, 3, generator=gen, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda inp: model(inp)[0], x)  # [1, T, M, 1, T, R]
    dep = jac[0, :, :, 0].abs().sum(dim=(1, 3))  # [T_out, T_in]
    for t in range(seq_len):
        assert torch.all(dep[t, t + 1 :] == 0), f"y[:, {t}] depends on a later input"
        assert dep[t, t] > 1e-8, f"y[:, {t}] does not depend on x[:, {t}]"


def test_delay_equals_depth_minus_one():
    """The first L-1 steps' last location has not seen x[:, 0]: the output starts L-1 steps late."""
    model = create("tlstm_naive", input_size=3, channels=4, tensor_size=6, kernel_size=4, dtype=torch.float64)
    assert model.depth == 3
    x = torch.randn(1, 1, 3, dtype=torch.float64, requires_grad=True)
    h = torch.zeros(1, 6, 4, dtype=torch.float64)
    c = torch.zeros_like(h)
    z = x[:, 0] @ model.weight_x + model.bias_x
    for step in range(model.depth):
        h, c = model.step(z, h, c)
        grad = torch.autograd.grad(h[:, -1].sum(), x, retain_graph=True, allow_unused=True)[0]
        reached = grad is not None and grad.abs().sum() > 0
        assert reached == (step == model.depth - 1)
        z = model.bias_x.expand(1, 4)


@pytest.mark.parametrize("kernel_size, mem_conv, norm", [(3, True, None), (2, False, None), (5, True, "cn")])
def test_parameter_count_formula_and_independent_of_tensor_size(kernel_size, mem_conv, norm):
    counts = set()
    for tensor_size in range(1, 17):
        model = TLSTMNaive(32, 64, tensor_size, kernel_size, mem_conv, norm)
        n = sum(p.numel() for p in model.parameters())
        assert n == tlstm_param_count(ModelConfig(32, 64, tensor_size, kernel_size, mem_conv, norm))
        counts.add(n)
    assert len(counts) == 1
    m, g = 64, 4 * 64 + (kernel_size if mem_conv else 0)
    assert counts == {32 * m + m + kernel_size * m * g + g + (10 * m if norm else 0)}


def test_parameter_names_and_shapes():
    model = create("tlstm_naive", input_size=5, channels=6, tensor_size=3, kernel_size=4, norm="cn")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "weight_x": (5, 6), "bias_x": (6,), "weight_h": (4, 6, 28), "bias_h": (28,),
        "cn_a_weight": (24,), "cn_a_bias": (24,), "cn_c_weight": (6,), "cn_c_bias": (6,),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_to_float32(dtype):
    model = create("tlstm_naive", input_size=4, channels=8, tensor_size=3)
    x = torch.randn(2, 5, 4)
    y32, _ = model(x)
    y_low, _ = model.to(dtype)(x.to(dtype))
    assert y_low.dtype == dtype
    torch.testing.assert_close(y_low.float(), y32, rtol=5e-2, atol=5e-2)


def test_bad_input_shape_names_expected_shape():
    model = create("tlstm_naive", input_size=4, channels=8, tensor_size=3)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 4\]"):
        model(torch.randn(2, 5, 3))


# ---------------------------------------------------------------------------------------------------
# the 3D tLSTM (dims=3)


@pytest.mark.parametrize("kernel_size, tensor_size", [(2, 1), (2, 3), (3, 1), (3, 3), (4, 2), (5, 3)])
@pytest.mark.parametrize("mem_conv, norm", [(True, None), (False, None), (True, "cn"), (False, "cn")])
def test_3d_matches_independent_reimplementation(kernel_size, tensor_size, mem_conv, norm, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    model = create("tlstm_naive", input_size=3, channels=4, tensor_size=tensor_size, kernel_size=kernel_size,
                   mem_conv=mem_conv, norm=norm, dims=3, dtype=torch.float64)
    _randomize(model, gen)
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(2, tensor_size, tensor_size, 4, generator=gen, dtype=torch.float64)
    y, (h, c) = model(x)
    y_ref, h_ref, c_ref = spec_tlstm_3d(x, dict(model.named_parameters()), tensor_size, kernel_size, mem_conv, norm)
    assert model.weight_h.shape == (kernel_size, kernel_size, 4, 16 + (kernel_size**2 if mem_conv else 0))
    assert y.shape == (2, 4, 4) and h.shape == c.shape == (2, tensor_size, tensor_size, 4)
    for got, want in ((y, y_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    y2, _ = model(x, (h0, h0.clone()))  # a given state is used
    assert not torch.allclose(y2, y)


@pytest.mark.parametrize("kernel_size, mem_conv, norm", [(2, True, None), (3, True, "cn"), (3, False, None),
                                                         (4, True, None)])
def test_3d_gradcheck_float64(kernel_size, mem_conv, norm, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    p = 2
    model = create("tlstm_naive", input_size=2, channels=2, tensor_size=p, kernel_size=kernel_size,
                   mem_conv=mem_conv, norm=norm, dims=3, dtype=torch.float64)
    _randomize(model, gen)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(t.detach().clone().requires_grad_() for t in model.parameters())
    x = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, p, p, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, p, p, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def run(x, h0, c0, *params):
        y, (h, c) = functional_call(model, dict(zip(names, params)), (x, (h0, c0)))
        return y, h, c

    assert torch.autograd.gradcheck(run, (x, h0, c0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_3d_with_one_location_only_two_taps_matter(kernel_size, rng_seed):
    """P = 1: only tap (d_up - 1, d_up - 1) (the input; (0, 0) for K = 2, 3) and tap (d_up, d_up) (the location
    itself) read non-zero rows."""
    gen = torch.Generator().manual_seed(rng_seed)
    model = create("tlstm_naive", input_size=3, channels=4, tensor_size=1, kernel_size=kernel_size, dims=3,
                   dtype=torch.float64)
    _randomize(model, gen)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    y, _ = model(x)
    d_up = kernel_size // 2
    with torch.no_grad():
        keep = torch.zeros(kernel_size, kernel_size, 1, 1, dtype=torch.float64)
        keep[d_up - 1, d_up - 1] = keep[d_up, d_up] = 1
        model.weight_h.mul_(keep)
    torch.testing.assert_close(model(x)[0], y, rtol=0, atol=0)


@pytest.mark.parametrize("tensor_size, kernel_size", [(1, 3), (3, 2), (3, 3), (4, 5)])
def test_3d_causality_and_delay(tensor_size, kernel_size, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    model = create("tlstm_naive", input_size=2, channels=3, tensor_size=tensor_size, kernel_size=kernel_size,
                   dims=3, dtype=torch.float64)
    _randomize(model, gen)
    seq_len = 5
    x = torch.randn(1, seq_len, 2, generator=gen, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda inp: model(inp)[0], x)
    dep = jac[0, :, :, 0].abs().sum(dim=(1, 3))
    for t in range(seq_len):
        assert torch.all(dep[t, t + 1 :] == 0), f"y[:, {t}] depends on a later input"
        assert dep[t, t] > 1e-10, f"y[:, {t}] does not depend on x[:, {t}]"


@pytest.mark.parametrize("kernel_size, mem_conv, norm", [(3, True, None), (2, False, None), (5, True, "cn")])
def test_3d_parameter_count_formula_and_independent_of_tensor_size(kernel_size, mem_conv, norm):
    counts = set()
    for p in (1, 2, 4):
        model = create("tlstm_naive", input_size=5, channels=6, tensor_size=p, kernel_size=kernel_size,
                       mem_conv=mem_conv, norm=norm, dims=3)
        counts.add(sum(t.numel() for t in model.parameters()))
    g = 24 + (kernel_size**2 if mem_conv else 0)
    expected = 5 * 6 + 6 + kernel_size**2 * 6 * g + g + (60 if norm == "cn" else 0)
    assert counts == {expected} == {tlstm_param_count(ModelConfig(5, 6, 3, kernel_size, mem_conv, norm, dims=3))}


def test_dims_is_checked_where_it_enters():
    for bad in (4, 3.0, True, "3"):
        with pytest.raises(ConfigError, match="dims must be one of"):
            ModelConfig(3, 4, 2, dims=bad)
    with pytest.raises(ConfigError, match="allowed dims: 2"):
        create("lstm_cudnn", input_size=3, channels=4, tensor_size=2, dims=3)
    with pytest.raises(ConfigError, match="allowed dims: 2"):
        ModelConfig(3, 4, None, depth=2, dims=3)


TLSTM_IMPLS = [name for name in implementations.names() if implementations.get(name).family == "tlstm"]


@pytest.mark.parametrize("impl", TLSTM_IMPLS)
@pytest.mark.parametrize("dims, kernel_size", [(2, 2), (2, 3), (3, 2), (3, 3)])
def test_memory_kernel_starts_near_the_identity_in_every_tlstm(impl, dims, kernel_size):
    """The stated start: every memory-kernel logit bias 0 but the self tap's, MEM_SELF_LOGIT; so the softmax
    kernel gives a cell's own value weight e^3 / (e^3 + taps - 1); start_memory_kernel(0) makes it an average."""
    m = 5
    model = create(impl, input_size=4, channels=m, tensor_size=3, kernel_size=kernel_size, dims=dims)
    taps = kernel_size ** (dims - 1)
    self_tap = kernel_size // 2 if dims == 2 else (kernel_size // 2) * (kernel_size + 1)
    expected = torch.zeros(taps)
    expected[self_tap] = MEM_SELF_LOGIT
    assert model.self_tap == self_tap and torch.equal(model.bias_h[4 * m:].detach(), expected)
    weight = torch.softmax(model.bias_h[4 * m:].detach(), 0)[self_tap]
    assert weight == pytest.approx(math.exp(MEM_SELF_LOGIT) / (math.exp(MEM_SELF_LOGIT) + taps - 1))
    gates = model.bias_h[:4 * m].detach().clone()
    model.start_memory_kernel(0.0)
    assert torch.equal(model.bias_h[4 * m:].detach(), torch.zeros(taps))
    assert torch.equal(model.bias_h[:4 * m].detach(), gates)  # the gates' biases are left alone


def test_without_memory_cell_convolution_the_start_changes_nothing():
    model = create("tlstm_naive", input_size=4, channels=5, tensor_size=3, mem_conv=False)
    before = model.bias_h.detach().clone()
    model.start_memory_kernel(MEM_SELF_LOGIT)
    assert model.bias_h.shape == (20,) and torch.equal(model.bias_h.detach(), before)
