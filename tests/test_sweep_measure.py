"""bench.measure in-process: the gate catches wrong numbers, timing returns raw samples, FLOPs follow
the README's cost formulas, memory and metrics are filled in."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest
import torch

import implementations
from bench import measure
from bench.contract import ENV_FIELDS, Point
from implementations.tlstm_naive import TLSTMNaive


def _point(**overrides) -> Point:
    point = dict(impl="tlstm_naive", family="tlstm", tensor_size=3, depth=3, seq_len=5, batch=2, channels=4,
                 input_size=3, kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training",
                 device="cpu", repeats=3, warmup=1, seed=7)
    point.update(overrides)
    return Point(**point)


def test_build_point_is_seeded():
    (m1, x1), (m2, x2) = measure.build_point(_point()), measure.build_point(_point())
    assert torch.equal(x1, x2) and x1.shape == (2, 5, 3)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    m3, x3 = measure.build_point(_point(seed=8))
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("mode", ["inference", "training"])
def test_gate_passes_the_reference_and_the_lstm(dtype, mode):
    ok, err, message = measure.check_correctness(_point(dtype=dtype, mode=mode))
    assert ok, message
    assert err < measure.GATE_TOLERANCE[dtype] * 10
    ok, err, message = measure.check_correctness(_point(impl="lstm_cudnn", family="lstm", tensor_size=None,
                                                        dtype=dtype, mode=mode))
    assert ok and "native nn.LSTM" in message


class _GradientBug(TLSTMNaive):
    """Right forward, wrong backward: the gate must look at gradients in training mode."""

    def forward(self, x, state=None):
        y, (h, c) = super().forward(x, state)
        y = y + (y * 0.01 - (y * 0.01).detach())  # same value, gradient scaled by 1.01
        return y, (h, c)


def test_gate_catches_a_wrong_gradient_only_in_training():
    @implementations.register("x_grad_bug", family="tlstm", devices=("cpu",))
    def build(config, *, device, dtype):
        return _GradientBug(config.input_size, config.channels, config.tensor_size, device=device, dtype=dtype)

    try:
        ok, _, message = measure.check_correctness(_point(impl="x_grad_bug", mode="inference"))
        assert ok, message
        ok, err, message = measure.check_correctness(_point(impl="x_grad_bug", mode="training"))
        assert not ok and "grad" in message and err > 1e-4
        result = measure.measure_point(_point(impl="x_grad_bug", mode="training"), energy_window_s=None)
        assert result["status"] == "incorrect" and result["samples_s"] == []
    finally:
        implementations.unregister("x_grad_bug")


def test_time_calls_returns_raw_samples_after_warmup():
    calls = []
    samples = measure.time_calls(lambda: calls.append(1), repeats=4, warmup=2, device="cpu")
    assert len(samples) == 4 and len(calls) == 6 and all(s >= 0 for s in samples)


def test_time_calls_extends_to_min_time():
    samples = measure.time_calls(lambda: time.sleep(0.01), repeats=2, warmup=0, device="cpu", min_time_s=0.1)
    assert len(samples) >= 8 and sum(samples) >= 0.1 and sum(samples[:-1]) < 0.1


def test_training_call_resets_gradients():
    model, x = measure.build_point(_point())
    fn = measure.make_call(model, x, "training", "cpu")
    fn()
    first = model.weight_h.grad.clone()
    fn()
    torch.testing.assert_close(model.weight_h.grad, first)  # not 2x: reset between calls


def test_flops_follow_the_spec_formulas():
    p = _point(tensor_size=4, depth=4, seq_len=10, batch=3, channels=8, input_size=5, mode="inference")
    g = 4 * 8 + 3
    assert p.flops() == 3 * (2 * 5 * 8 * 10 + 2 * 4 * 3 * 8 * g * (10 + 4 - 1))
    assert replace(p, mode="training").flops() == 3 * p.flops()
    lstm = replace(p, impl="lstm_cudnn", family="lstm", tensor_size=None)
    assert lstm.flops() == 3 * 10 * (2 * 4 * 8 * (5 + 8) + 3 * 2 * 4 * 8 * 2 * 8)
    assert replace(p, mem_conv=False).flops() == 3 * (2 * 5 * 8 * 10 + 2 * 4 * 3 * 8 * (4 * 8) * (10 + 4 - 1))


def test_memory_and_metrics():
    point = _point()
    model, x = measure.build_point(point)
    mem = measure.memory(model, x, "training", "cpu")
    assert mem["saved_bytes"] > 0 and mem["rss_peak_bytes"] > 0 and mem["peak_mem_bytes"] is None
    assert measure.memory(model, x, "inference", "cpu")["saved_bytes"] is None
    row = measure.metrics(point, [0.4, 0.1, 0.2, 0.3], model=model, x=x, memory_stats=mem)
    assert row["time_median_s"] == pytest.approx(0.25)
    assert row["time_q1_s"] == pytest.approx(0.175) and row["time_q3_s"] == pytest.approx(0.325)
    assert row["noisy"] is True and row["time_per_step_s"] == pytest.approx(0.05)
    assert row["throughput_tokens_s"] == pytest.approx(2 * 5 / 0.25)
    assert row["gflops"] == pytest.approx(point.flops() / 0.25 / 1e9)
    assert (row["time_per_step_q1_s"] == pytest.approx(0.175 / 5)
            and row["time_per_step_q3_s"] == pytest.approx(0.325 / 5))
    assert row["time_per_recurrent_step_s"] == pytest.approx(0.25 / (5 + 3 - 1))  # T + L - 1 steps
    assert row["params"] == implementations.tlstm_param_count(point.model_config())
    assert row["hidden_units"] == 3 * 4 and row["backend"] == "eager"
    quiet = measure.metrics(point, [1.0, 1.01, 0.99])
    assert quiet["noisy"] is False


def test_energy_reports_why_not_when_unreadable():
    value, note = measure.energy(lambda: None, "cpu", window_s=0.01)
    if measure._rapl_files():
        assert (value is None) == ("not readable" in note or "did not advance" in note)
    else:
        assert value is None and "RAPL not present" in note


def test_environment_fields():
    env = measure.environment(["cpu"], ["float32"])
    assert set(env) == set(ENV_FIELDS)  # the contract's environment, no more, no less
    assert env["cpu_model"] and isinstance(env["cpu_flags"], list)
    assert env["matmul_gflops"]["cpu:float32"] > 0 and not math.isnan(env["matmul_gflops"]["cpu:float32"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: CUDA events and the allocator peak")
def test_cuda_point_measures_with_events_and_allocator_peak():
    result = measure.measure_point(_point(device="cuda"), energy_window_s=None)
    assert result["status"] == "ok" and len(result["samples_s"]) == 3
    assert result["metrics"]["peak_mem_bytes"] > 0
