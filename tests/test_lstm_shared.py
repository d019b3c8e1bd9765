"""lstm_shared: the stacked LSTM whose layers share one set of weights. The fast module against its
float64 reference (output, final state, every gradient), the reference against autograd's numerical
gradients and against torch.nn.LSTM, the parameter count, and the suite's correctness gate."""

from __future__ import annotations

import pytest
import torch

import implementations
from bench import measure
from bench.contract import Point
from implementations import ModelConfig
from implementations.lstm_shared import SharedLSTM, SharedLSTMReference

PARAM_NAMES = ["weight_x", "bias_x", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]


def _pair(config: ModelConfig, dtype: torch.dtype, gen: torch.Generator) -> tuple[SharedLSTM, SharedLSTMReference]:
    """The fast module in ``dtype`` and the float64 reference, with the same random weights."""
    reference = SharedLSTMReference.from_config(config, dtype=torch.float64)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    model = implementations.build("lstm_shared", config, dtype=dtype)
    model.load_state_dict(reference.state_dict())
    return model, reference


def _run(module, x, state, weights):
    """Output, final state and the gradients of a random projection of all three with respect to the input,
    the initial state (when given) and every parameter, all in float64."""
    x = x.clone().requires_grad_()
    state = None if state is None else tuple(s.clone().requires_grad_() for s in state)
    y, (h, c) = module(x, state)
    loss = (y * weights[0]).sum() + (h * weights[1]).sum() + (c * weights[2]).sum()
    inputs = [x, *(state or ()), *module.parameters()]
    grads = torch.autograd.grad(loss, inputs)
    names = ["x", *(["h0", "c0"] if state else []), *(n for n, _ in module.named_parameters())]
    out = {"y": y, "h": h, "c": c, **{f"grad {n}": g for n, g in zip(names, grads)}}
    return {k: v.detach().double() for k, v in out.items()}


@pytest.mark.parametrize("draw", range(3))
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_reference_output_state_and_every_gradient(draw, with_state, dtype, tol, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed + draw)
    r, m, layers, batch, seq_len = (int(v) for v in torch.randint(1, 5, (5,), generator=gen))
    config = ModelConfig(r, m, depth=layers)
    model, reference = _pair(config, dtype, gen)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()] == PARAM_NAMES
    x = torch.randn(batch, seq_len, r, generator=gen, dtype=torch.float64)
    state = None
    if with_state:
        state = tuple(torch.randn(layers, batch, m, generator=gen, dtype=torch.float64) for _ in range(2))
    weights = [torch.randn(shape, generator=gen, dtype=torch.float64)
               for shape in ((batch, seq_len, m), (layers, batch, m), (layers, batch, m))]
    want = _run(reference, x, state, weights)
    got = _run(model, x.to(dtype), None if state is None else tuple(s.to(dtype) for s in state),
               [w.to(dtype) for w in weights])
    assert set(got) == set(want) and len(want) == 3 + 1 + 2 * with_state + len(PARAM_NAMES)
    assert want["y"].shape == (batch, seq_len, m) and want["h"].shape == want["c"].shape == (layers, batch, m)
    for name, ref in want.items():
        torch.testing.assert_close(got[name], ref, rtol=tol, atol=tol, msg=lambda text, name=name: f"{name}: {text}")


def test_reference_gradcheck():
    config = ModelConfig(2, 2, depth=2)
    reference = SharedLSTMReference.from_config(config, dtype=torch.float64)
    names = [n for n, _ in reference.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in reference.parameters())
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def fn(x, h0, c0, *params):
        y, (h, c) = torch.func.functional_call(reference, dict(zip(names, params)), (x, (h0, c0)))
        return y, h, c

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *params))


def test_parameter_count_independent_of_depth_and_registry_counts():
    counts = set()
    for depth in (1, 5):
        config = ModelConfig(32, 64, depth=depth)
        model = implementations.build("lstm_shared", config)
        n = sum(p.numel() for p in model.parameters())
        assert n == implementations.param_count("lstm_shared", config)
        assert n == implementations.lstm_shared_param_count(config)
        counts.add(n)
    assert counts == {32 * 64 + 64 + 8 * 64 * 64 + 8 * 64}
    lstm = ModelConfig(5, 6, depth=3)
    assert (sum(p.numel() for p in implementations.build("lstm_cudnn", lstm).parameters())
            == implementations.param_count("lstm_cudnn", lstm) == implementations.lstm_param_count(lstm))
    tlstm = ModelConfig(5, 6, tensor_size=3, norm="cn")
    assert (sum(p.numel() for p in implementations.build("tlstm_naive", tlstm).parameters())
            == implementations.param_count("tlstm_naive", tlstm) == implementations.tlstm_param_count(tlstm))


def test_one_layer_equals_nn_lstm_on_the_projected_input():
    """An independent check of the reference: with L = 1 the model is nn.LSTM(M, M) after the projection."""
    model = implementations.create("lstm_shared", input_size=3, channels=5, depth=1, dtype=torch.float64)
    lstm = torch.nn.LSTM(5, 5, batch_first=True, dtype=torch.float64)
    layer = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    lstm.load_state_dict({f"{name}_l0": getattr(model, name) for name in layer})
    reference = SharedLSTMReference.from_config(model.config, dtype=torch.float64)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    state = (torch.randn(1, 4, 5, dtype=torch.float64), torch.randn(1, 4, 5, dtype=torch.float64))
    with torch.no_grad():
        want_y, (want_h, want_c) = lstm(x @ model.weight_x + model.bias_x, state)
        for module in (model, reference):
            y, (h, c) = module(x, state)
            torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(h, want_h, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(c, want_c, rtol=1e-12, atol=1e-12)


def test_layers_reuse_the_weights_and_backend_is_reported():
    model = implementations.create("lstm_shared", input_size=3, channels=4, depth=3)
    x = torch.randn(2, 5, 3)
    y, (h, c) = model(x)
    assert torch.equal(y[:, -1], h[-1])  # the top layer's last output is its final state
    assert model.backend_name(x) in {"mkldnn", "native"}
    assert implementations.get("lstm_shared").family == "lstm"
    with pytest.raises(ValueError, match=r"state \(h, c\) must each have shape \[L, B, M\] = \[3, 2, 4\]"):
        model(x, (h[:2], c[:2]))


# --- the suite's correctness gate ------------------------------------------------------------------


def _point(**overrides) -> Point:
    point = dict(impl="lstm_shared", family="lstm", tensor_size=None, depth=3, seq_len=5, batch=2, channels=4,
                 input_size=3, kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training",
                 device="cpu", repeats=3, warmup=1, seed=7)
    point.update(overrides)
    return Point(**point)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("mode", ["inference", "training"])
def test_gate_passes(dtype, mode):
    ok, err, message = measure.check_correctness(_point(dtype=dtype, mode=mode))
    assert ok, message
    assert "gate vs SharedLSTMReference float64" in message
    assert err < measure.GATE_TOLERANCE[dtype] * 10


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gate_fails_for_a_wrong_forward(dtype, monkeypatch):
    def scaled(self):  # the fast path runs with weights 1% off; the reference reads the true ones
        return [w * 1.01 for w in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)]

    monkeypatch.setattr(SharedLSTM, "_layer_weights", scaled)
    for mode in ("inference", "training"):
        ok, err, message = measure.check_correctness(_point(dtype=dtype, mode=mode))
        assert not ok and err > measure.GATE_TOLERANCE[dtype], message


def test_gate_fails_for_a_wrong_gradient_only_in_training(monkeypatch):
    def wrong_gradient(self):  # same values, gradient into the shared weights scaled by 1.01
        return [w + (w * 0.01 - (w * 0.01).detach()) for w in (self.weight_ih, self.weight_hh, self.bias_ih,
                                                                 self.bias_hh)]

    monkeypatch.setattr(SharedLSTM, "_layer_weights", wrong_gradient)
    ok, _, message = measure.check_correctness(_point(dtype="float64", mode="inference"))
    assert ok, message
    ok, err, message = measure.check_correctness(_point(dtype="float64", mode="training"))
    assert not ok and "grad" in message and err > 1e-8, message
