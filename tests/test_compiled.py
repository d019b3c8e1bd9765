"""``tlstm_compiled`` (the naive step under torch.compile) against ``tlstm_naive``: output and every
gradient, with one tiny shape compiled once (compiling costs tens of seconds here), and no silent
fallback to eager."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import implementations
from implementations.tlstm_compiled import TLSTMCompiled


def test_compiled_step_matches_naive_with_one_graph(rng_seed):
    # P = 3 with the memory-cell convolution and CN: the shape where Inductor has been seen to get
    # gradients wrong for another formulation; K = 3 gives the step every tap kind.
    gen = torch.Generator().manual_seed(rng_seed)
    sizes = dict(input_size=3, channels=4, tensor_size=3, kernel_size=3, mem_conv=True, norm="cn")
    reference = implementations.create("tlstm_naive", dtype=torch.float64, **sizes)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    compiled = implementations.create("tlstm_compiled", dtype=torch.float64, **sizes)
    assert isinstance(compiled, TLSTMCompiled)
    counters.clear()  # count this model's graphs only: dynamo.reset() leaves the counters as they were
    compiled.load_state_dict(reference.state_dict())
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    results = []
    for model in (reference, compiled):
        xi = x.clone().requires_grad_()
        y, (h, c) = model(xi)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + h.sum() + c.square().sum()
        results.append((y, h, c, *torch.autograd.grad(loss, [xi, *model.parameters()])))
    for got, want in zip(*reversed(results)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # All T+L-1 steps (the first, whose state needs no gradient, included) ran one compiled graph:
    # nothing recompiled, nothing fell back to eager.
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["stats"]["calls_captured"] > 0


def test_registration():
    impl = implementations.get("tlstm_compiled")
    assert impl.family == "tlstm"
    assert impl.devices == ("cpu", "cuda")
    assert impl.supports_dtype(torch.float64) and not impl.supports_dtype(torch.bfloat16)
    with pytest.raises(implementations.ConfigError, match="dtype bfloat16"):
        implementations.create("tlstm_compiled", input_size=2, channels=2, tensor_size=2, dtype=torch.bfloat16)
