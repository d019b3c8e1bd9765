"""Tests generated from the registry: every registered implementation, the moment it is registered,
gets the nn.LSTM-like contract checked and (for tLSTMs) its output and every gradient compared with
``tlstm_naive`` on fresh random inputs."""

import pytest
import torch

import implementations
from implementations import ModelConfig, lstm_param_count, tlstm_param_count

IMPLS = implementations.names()


def _build_or_skip(name: str, dtype: torch.dtype, **sizes) -> torch.nn.Module:
    impl = implementations.get(name)
    reason = impl.unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(f"{name} unavailable on cpu: {reason}")
    if not impl.supports_dtype(dtype):
        pytest.skip(f"{name} does not support {dtype}")
    return implementations.create(name, dtype=dtype, **sizes)


def _sizes(name: str) -> dict:
    if implementations.get(name).family == "tlstm":
        return dict(input_size=3, channels=4, tensor_size=3, kernel_size=3)
    return dict(input_size=3, channels=4, depth=2)


@pytest.mark.parametrize("name", IMPLS)
def test_contract_shapes_and_methods(name):
    model = _build_or_skip(name, torch.float32, **_sizes(name))
    x = torch.randn(2, 5, 3)
    y, (h, c) = model(x)
    assert y.shape == (2, 5, 4)
    family = implementations.get(name).family
    state_shape = (2, 3, 4) if family == "tlstm" else (2, 2, 4)
    assert h.shape == c.shape == state_shape
    # the final state can be fed back in
    y2, _ = model(x, (h, c))
    assert y2.shape == y.shape
    assert model.extra_repr()
    before = [p.detach().clone() for p in model.parameters()]
    model.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert isinstance(implementations.backend_name(model, x), str)


@pytest.mark.parametrize("name", IMPLS)
def test_parameter_count_matches_formula(name):
    sizes = _sizes(name)
    model = _build_or_skip(name, torch.float32, **sizes)
    config = ModelConfig(**sizes)
    n = sum(p.numel() for p in model.parameters())
    assert n == implementations.param_count(name, config)
    family_formula = tlstm_param_count if implementations.get(name).family == "tlstm" else lstm_param_count
    if implementations.get(name).param_count is None:  # no count of its own: the family's formula
        assert n == family_formula(config)


def test_lstm_cudnn_count_equals_nn_lstm():
    for depth in (1, 2, 5):
        ours = implementations.create("lstm_cudnn", input_size=32, channels=64, depth=depth)
        theirs = torch.nn.LSTM(32, 64, num_layers=depth)
        n_ours = sum(p.numel() for p in ours.parameters())
        assert n_ours == sum(p.numel() for p in theirs.parameters())
        assert n_ours == lstm_param_count(ModelConfig(32, 64, depth=depth))


def test_lstm_cudnn_equals_nn_lstm_with_same_weights():
    ours = implementations.create("lstm_cudnn", input_size=3, channels=4, depth=2)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    assert ours.backend_name(x) in {"mkldnn", "native"}


TLSTMS = [n for n in IMPLS if implementations.get(n).family == "tlstm" and n != "tlstm_naive"]


@pytest.mark.parametrize("name", TLSTMS)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kernel_size, mem_conv, norm", [(3, True, None), (2, False, None), (4, True, "cn")])
def test_tlstm_matches_naive_output_and_gradients(name, dims, kernel_size, mem_conv, norm, rng_seed):
    impl = implementations.get(name)
    dtype = torch.float64 if impl.supports_dtype(torch.float64) else torch.float32
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    sizes = dict(input_size=3, channels=4, tensor_size=5 if dims == 2 else 3, kernel_size=kernel_size,
                 mem_conv=mem_conv, norm=norm, dims=dims)
    model = _build_or_skip(name, dtype, **sizes)
    gen = torch.Generator().manual_seed(rng_seed)
    reference = implementations.create("tlstm_naive", dtype=dtype, **sizes)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.5)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 3, generator=gen, dtype=dtype)
    outs = []
    for m in (reference, model):
        xi = x.clone().requires_grad_()
        y, (h, c) = m(xi)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum() + h.sum() + c.square().sum()
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        outs.append((y, h, c, *grads))
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
