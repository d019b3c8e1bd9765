"""The Triton backend of ``tlstm_fused`` against ``tlstm_naive``: output, final state and every
gradient (x, h0, c0, every parameter), on fresh random inputs, for both forward kernels; the tLSTM
and the 3D tLSTM (``dims=3``, checked against a float64 reference on sizes drawn fresh each run).

On a machine without CUDA, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is
imported, so the kernels run on CPU tensors under Triton's interpreter. It is slow (about a
millisecond per tile operation), so the shapes here are tiny. Internal buffers are filled with NaN
before every run (outputs always are), so an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import implementations
from implementations import ConfigError

triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'tlstm-bench[triton]')")

from implementations import fused_triton  # noqa: E402
from implementations.fused_triton import ops  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if fused_triton.unavailable_reason(DEVICE) is not None:
    pytest.skip(f"triton backend unavailable: {fused_triton.unavailable_reason(DEVICE)}", allow_module_level=True)

# max |got - want| <= TOL * max(1, max |want|), per tensor; half precisions are compared with a float32 reference
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 6e-2, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def poison_buffers(monkeypatch):
    monkeypatch.setattr(ops, "POISON_BUFFERS", True)


def _models(sizes: dict, dtype: torch.dtype, gen: torch.Generator, reference_dtype=torch.float32):
    """A reference (float32 unless asked) and a triton model with the same (dtype-rounded) parameters."""
    model = implementations.create("tlstm_fused", backend="triton", device=DEVICE, dtype=dtype, **sizes)
    with torch.no_grad():
        for p in model.parameters():
            # weights larger than the default init, so that every gate and tap matters
            p.copy_(torch.randn(p.shape, generator=gen).to(dtype) * 0.5)
    reference = implementations.create("tlstm_naive", device=DEVICE, dtype=reference_dtype, **sizes)
    reference.load_state_dict({k: v.to(reference_dtype) for k, v in model.state_dict().items()})
    return reference, model


def _run(model, forward, x, h0, c0):
    """Output, final state and the gradients of a loss that weights every output element differently."""
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    y, (h, c) = forward(model, x, (h0, c0))
    weights = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)
    loss = (y.float() * weights).sum() + h.float().sum() + c.float().square().sum()
    grads = torch.autograd.grad(loss, [x, h0, c0, *model.parameters()])
    names = ["y", "h_n", "c_n", "grad x", "grad h0", "grad c0"] + [f"grad {n}" for n, _ in model.named_parameters()]
    return dict(zip(names, [y, h, c, *grads]))


def _check_against_naive(sizes: dict, batch: int, seq_len: int, seed: int, dtype=torch.float32, path="auto",
                         blocks=None, reference_dtype=torch.float32) -> dict:
    """Asserts every tensor within tolerance; returns {name: max error / max(1, max |want|)}."""
    gen = torch.Generator().manual_seed(seed)
    reference, model = _models(sizes, dtype, gen, reference_dtype)
    shape = (batch, *(sizes["tensor_size"],) * (sizes.get("dims", 2) - 1), sizes["channels"])
    x = torch.randn(batch, seq_len, sizes["input_size"], generator=gen).to(DEVICE, dtype)
    h0 = (torch.randn(shape, generator=gen) * 0.5).to(DEVICE, dtype)
    c0 = (torch.randn(shape, generator=gen) * 0.5).to(DEVICE, dtype)

    def triton_forward(m, xi, state):
        if path == "auto" and blocks is None:
            return m(xi, state)  # through TLSTMFused.forward, as users call it
        return fused_triton.tlstm_forward(m, xi, state, path=path, blocks=blocks)

    ref = reference_dtype
    want = _run(reference, lambda m, xi, s: m(xi, s), x.to(ref), h0.to(ref), c0.to(ref))
    got = _run(model, triton_forward, x, h0, c0)
    assert got.keys() == want.keys()
    tol = TOLERANCE[dtype]
    errors = {}
    for name in want:
        g, w = got[name], want[name]
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}, expected {dtype}"
        assert g.shape == w.shape, f"{name}: shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{name}: non-finite values (an unwritten element?) seed={seed}"
        err = (g.to(w.dtype) - w).abs().max().item()
        scale = max(1.0, w.abs().max().item())
        errors[name] = err / scale
        assert err <= tol * scale, (f"{name}: max error {err:.3g} > {tol * scale:.3g} (dtype {dtype}, sizes {sizes}, "
                                    f"batch {batch}, seq_len {seq_len}, path {path}, seed={seed})")
    return errors


BASE = dict(input_size=3, channels=4)


@pytest.mark.parametrize(
    "kernel_size, mem_conv, norm, tensor_size, path",
    [
        (3, True, None, 3, "auto"),  # tLSTM, through the module (auto picks the persistent kernel)
        (3, True, None, 3, "per_step"),
        (2, False, None, 3, "persistent"),  # tLSTM-F without memory-cell convolution
        (2, True, None, 1, "per_step"),  # a single location: every tap clamps to it
        (3, False, None, 1, "persistent"),
        (4, True, None, 5, "persistent"),  # K = 4: two taps up, one down, depth ceil(5/2) = 3
        (4, False, "cn", 3, "persistent"),  # tLSTM+CN
        (3, True, "cn", 3, "per_step"),
    ],
)
def test_matches_naive_float32(kernel_size, mem_conv, norm, tensor_size, path, rng_seed):
    sizes = dict(BASE, tensor_size=tensor_size, kernel_size=kernel_size, mem_conv=mem_conv, norm=norm)
    batch = 1 if tensor_size == 5 else 2
    _check_against_naive(sizes, batch, 2, rng_seed, path=path)


# Tiles smaller than the sizes, so that programs, channel tiles and reduction chunks repeat. A GPU's
# tl.dot needs tiles of at least 16, so there the sizes grow instead of the tiles shrinking.
if DEVICE == "cuda":
    TILED_BATCH, TILED_CHANNELS, TILED_BLOCKS = 17, 32, dict(bb=16, bn=16, bk=16, bkg=64)
else:
    TILED_BATCH, TILED_CHANNELS, TILED_BLOCKS = 3, 8, dict(bb=2, bn=4, bk=4, bkg=32)


def test_several_programs_persistent(rng_seed):
    """B over two programs, the last one partly empty."""
    sizes = dict(BASE, tensor_size=2, kernel_size=3, mem_conv=True, norm=None)
    _check_against_naive(sizes, TILED_BATCH, 2, rng_seed, path="persistent", blocks=dict(bb=TILED_BLOCKS["bb"]))


def test_several_programs_and_channel_tiles_per_step(rng_seed):
    """B over two programs (the last partly empty), M over two channel tiles (a grid dimension of the
    per-step kernel, a loop in the backward), reductions in chunks (forward over M, backward over
    G = 4M + 3, the last chunk partly empty): the masks and offsets a one-tile run never exercises."""
    sizes = dict(input_size=2, channels=TILED_CHANNELS, tensor_size=2, kernel_size=3, mem_conv=True, norm=None)
    _check_against_naive(sizes, TILED_BATCH, 2, rng_seed, path="per_step", blocks=TILED_BLOCKS)


@pytest.mark.parametrize("dtype, path", [(torch.bfloat16, "persistent"), (torch.float16, "per_step")])
def test_half_storage_matches_float32_reference(dtype, path, rng_seed):
    sizes = dict(BASE, tensor_size=3, kernel_size=3, mem_conv=True, norm=None)
    _check_against_naive(sizes, 2, 2, rng_seed, dtype=dtype, path=path)


def test_forward_only_uses_the_ring_and_matches(rng_seed, monkeypatch):
    """Without autograd the forward keeps two state slots instead of every step's."""
    slots = []
    run_forward = ops.run_forward

    def recording_run_forward(*args, **kwargs):
        bufs = run_forward(*args, **kwargs)
        slots.append(bufs.slots)
        return bufs

    monkeypatch.setattr(ops, "run_forward", recording_run_forward)
    gen = torch.Generator().manual_seed(rng_seed)
    sizes = dict(BASE, tensor_size=3, kernel_size=3, mem_conv=True, norm=None)
    reference, model = _models(sizes, torch.float32, gen)
    x = torch.randn(2, 3, 3, generator=gen).to(DEVICE)
    with torch.no_grad():
        want_y, (want_h, want_c) = reference(x)
        got_y, (got_h, got_c) = model(x)
    assert slots == [2]
    for got, want in ((got_y, want_y), (got_h, want_h), (got_c, want_c)):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


# --- the 3D tLSTM (dims=3): P x P locations, K x K taps, the output at corner (P-1, P-1) ---


def _draw_3d(seed: int, mem_conv: bool, norm: str | None) -> tuple[dict, int, int]:
    """Sizes drawn from the seed: P in 1..4, K in 2..5 and small B, T, R, M (M = 3 and 5 leave channel lanes
    of the tile masked). CN gets M in 4..5: over 2 or 3 channels it is so ill-conditioned that float32 itself,
    tlstm_naive's as much as the kernels', misses the float64 gradients by more than the tolerance on some
    draws (up to 1.8x it over 800 draws at M = 3; at most 0.32x at M = 4..5 over 1200). The interpreter's
    cost grows with P*P*K*K per step: the largest draws get B = T = 1."""
    gen = torch.Generator().manual_seed(seed ^ 0x3D3D)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    tensor_size, kernel_size = draw(1, 4), draw(2, 5)
    channels = draw(4, 5) if norm else draw(2, 4)
    sizes = dict(input_size=draw(1, 3), channels=channels, tensor_size=tensor_size, kernel_size=kernel_size,
                 mem_conv=mem_conv, norm=norm, dims=3)
    small = tensor_size * tensor_size * kernel_size * kernel_size > 100
    return sizes, 1 if small else draw(1, 2), 1 if small else draw(1, 3)


@pytest.mark.parametrize(
    "mem_conv, norm, path",
    [
        (True, None, "auto"),  # through the module (auto picks the persistent kernel)
        (True, None, "per_step"),
        (False, None, "persistent"),
        (False, None, "per_step"),
        (True, "cn", "persistent"),
        (True, "cn", "per_step"),
        (False, "cn", "auto"),
        (False, "cn", "per_step"),
    ],
)
def test_3d_matches_naive_float64(mem_conv, norm, path, rng_seed):
    """The 3D kernels (float32 arithmetic) against tlstm_naive in float64 on the same weights: y, h_n, c_n
    and every gradient, at sizes drawn fresh each run."""
    sizes, batch, seq_len = _draw_3d(rng_seed, mem_conv, norm)
    errors = _check_against_naive(sizes, batch, seq_len, rng_seed, path=path, reference_dtype=torch.float64)
    worst = max(errors, key=errors.get)
    print(f"sizes {sizes} batch {batch} seq_len {seq_len}: worst {worst} {errors[worst]:.2e}")


@pytest.mark.parametrize(
    "tensor_size, kernel_size, mem_conv, norm, path",
    [
        (1, 5, True, "cn", "persistent"),  # one location: only taps (0, 0) and (2, 2) read non-zero rows
        (4, 2, True, None, "per_step"),  # no feedback taps, depth 4: the output needs every diagonal step
        (3, 4, True, None, "persistent"),  # K = 4: two taps up, one down, along both indices
    ],
)
def test_3d_extremes_match_naive_float64(tensor_size, kernel_size, mem_conv, norm, path, rng_seed):
    sizes = dict(input_size=2, channels=3, tensor_size=tensor_size, kernel_size=kernel_size, mem_conv=mem_conv,
                 norm=norm, dims=3)
    _check_against_naive(sizes, 1, 2, rng_seed, path=path, reference_dtype=torch.float64)


def test_3d_several_programs_and_channel_tiles(rng_seed):
    """The tiled masks and offsets (two programs, channel tiles, reduction chunks over M and over
    G = 4M + K*K) with the 3D tap arithmetic, on both forward kernels."""
    sizes = dict(input_size=2, channels=TILED_CHANNELS, tensor_size=2, kernel_size=3, mem_conv=True, norm=None, dims=3)
    _check_against_naive(sizes, TILED_BATCH, 1, rng_seed, path="per_step", blocks=TILED_BLOCKS,
                         reference_dtype=torch.float64)
    sizes = dict(sizes, channels=3)
    _check_against_naive(sizes, TILED_BATCH, 1, rng_seed, path="persistent", blocks=dict(bb=TILED_BLOCKS["bb"]),
                         reference_dtype=torch.float64)


@pytest.mark.parametrize("dtype, path", [(torch.bfloat16, "persistent"), (torch.float16, "per_step")])
def test_3d_half_storage_matches_float64_reference(dtype, path, rng_seed):
    sizes = dict(BASE, tensor_size=2, kernel_size=3, mem_conv=True, norm=None, dims=3)
    _check_against_naive(sizes, 2, 2, rng_seed, dtype=dtype, path=path, reference_dtype=torch.float64)


def test_3d_forward_only_matches(rng_seed):
    """Without autograd (the two-slot ring), from the zero state: y and the final [B, P, P, M] state."""
    gen = torch.Generator().manual_seed(rng_seed)
    sizes = dict(BASE, tensor_size=3, kernel_size=3, mem_conv=True, norm=None, dims=3)
    reference, model = _models(sizes, torch.float32, gen, torch.float64)
    x = torch.randn(2, 3, 3, generator=gen).to(DEVICE)
    with torch.no_grad():
        want_y, (want_h, want_c) = reference(x.double())
        got_y, (got_h, got_c) = model(x)
    assert got_h.shape == got_c.shape == (2, 3, 3, 4)
    for got, want in ((got_y, want_y), (got_h, want_h), (got_c, want_c)):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


def test_3d_bad_inputs_are_refused_with_the_limit():
    model = implementations.create("tlstm_fused", input_size=2, channels=4, tensor_size=2, dims=3, backend="triton",
                                   device=DEVICE)
    x = torch.zeros(1, 2, 2, device=DEVICE)
    with pytest.raises(ValueError, match=r"state \(h, c\) must each have shape \[1, 2, 2, 4\] \[B, P, P, M\]"):
        fused_triton.tlstm_forward(model, x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match=r"kq must be >= the taps per location \(9\)"):
        fused_triton.tlstm_forward(model, x, blocks=dict(kq=4))
    # the per-step kernel has one grid row per location: P*P <= 65535 (checked before anything is allocated)
    shp = ops.Shape(1, 1, 2, 4, 256, 3, 256, True, False, 3)
    ops.check_fits(shp, "persistent")
    with pytest.raises(ConfigError, match=r"tensor_size\*\*2 <= 65535 .* got 65536 locations"):
        ops.check_fits(shp, "per_step")


def test_registry_selects_triton_backend():
    model = implementations.create("tlstm_fused", input_size=3, channels=4, tensor_size=2, backend="triton",
                                   device=DEVICE)
    assert model.backend == "triton"
    assert "backend=triton" in model.extra_repr()


def test_bad_inputs_are_refused_with_the_limit():
    with pytest.raises(ConfigError, match="channels <= 128"):
        model = implementations.create("tlstm_fused", input_size=2, channels=129, tensor_size=2, norm="cn",
                                       backend="triton", device=DEVICE)
        model(torch.zeros(1, 1, 2, device=DEVICE))
    model = implementations.create("tlstm_fused", input_size=2, channels=4, tensor_size=2, backend="triton",
                                   device=DEVICE)
    x = torch.zeros(1, 2, 2, device=DEVICE)
    with pytest.raises(ValueError, match="path must be one of"):
        fused_triton.tlstm_forward(model, x, path="fastest")
    with pytest.raises(ValueError, match="power of two"):
        fused_triton.tlstm_forward(model, x, blocks=dict(bn=24))
    with pytest.raises(ValueError, match=r"state \(h, c\) must each have shape \[1, 2, 4\]"):
        fused_triton.tlstm_forward(model, x, (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))
    with pytest.raises(ConfigError, match="dtype float64 is not supported by the triton backend"):
        implementations.create("tlstm_fused", input_size=2, channels=4, tensor_size=2, backend="triton",
                               device=DEVICE, dtype=torch.float64)


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = fused_triton.unavailable_reason("cpu")
    assert reason is not None and "TRITON_INTERPRET=1" in reason


def test_package_imports_without_triton():
    """The backend module is importable (and the registry usable) where triton is absent."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail as if not installed
        "import implementations, implementations.fused_triton as ft\n"
        "reason = ft.unavailable_reason('cpu')\n"
        "assert reason is not None and 'not installed' in reason, reason\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")  # so that the reason given is the missing package
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_matches_eager(rng_seed):
    """The forward-only per-step path replays a CUDA graph; a second call with new inputs and new
    weights must still match an eager launch loop (static buffers and parameters are refreshed)."""
    gen = torch.Generator().manual_seed(rng_seed)
    sizes = dict(BASE, tensor_size=3, kernel_size=3, mem_conv=True, norm=None)
    _, model = _models(sizes, torch.float32, gen)
    for _ in range(2):
        x = torch.randn(2, 4, 3, generator=gen).to(DEVICE)
        with torch.no_grad():
            got = fused_triton.tlstm_forward(model, x, path="per_step", use_graphs=True)
            want = fused_triton.tlstm_forward(model, x, path="per_step", use_graphs=False)
            for p in model.parameters():
                p.add_(0.1)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


@pytest.mark.skipif(os.environ.get("TLSTM_TRITON_AOT") != "1",
                    reason="compiling for sm_90 without a GPU takes minutes: set TLSTM_TRITON_AOT=1")
def test_kernels_compile_for_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "implementations.fused_triton.aot_check"], capture_output=True,
                            text=True, env=env, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr

