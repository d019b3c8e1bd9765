"""Where the time goes (bench.profile): categories that add up, a slow phase that shows, the fused
operator's named phases, traces on disk, and `tlstm-bench profile` end to end."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

import implementations
from bench import cli, measure, results
from bench.contract import Point
from bench.profile import CATEGORIES, OVERHEAD, POINTWISE, PRODUCTS, category, profile_call
from implementations.tlstm_naive import TLSTMNaive

# The stated tolerance: operator self time on the calling thread may exceed the call's wall time by no
# more than this (timer granularity); anything more would mean time counted twice.
TOLERANCE = 0.02


def _point(impl: str = "tlstm_naive", **overrides) -> Point:
    fields = dict(impl=impl, family="tlstm", tensor_size=3, depth=3, seq_len=6, batch=2, channels=8, input_size=4,
                  kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training", device="cpu", repeats=2,
                  warmup=0, seed=0)
    fields.update(overrides)
    return Point(**fields)


def _profile(point: Point, tmp_path: Path) -> dict:
    model, x = measure.build_point(point)
    return profile_call(measure.make_call(model, x, point.mode, point.device), point, tmp_path / f"{point.key}.json.gz")


def test_categories_of_operator_names():
    assert category("aten::mm") == category("tlstm_fused::backward_product") == PRODUCTS
    assert category("aten::sigmoid") == category("aten::tanh_backward") == category("aten::softmax") == POINTWISE
    assert category("aten::expand") == category("aten::view") == category("AddmmBackward0") == OVERHEAD
    assert category("aten::copy_") == "memory copies and allocation"
    assert category("aten::mkldnn_rnn_layer") == "fused RNN library kernels"


def test_the_categories_add_up_to_the_profiled_wall_time(tmp_path):
    prof = _profile(_point(), tmp_path)
    assert set(prof["categories_s"]) == set(CATEGORIES)
    assert sum(prof["categories_s"].values()) == pytest.approx(prof["wall_s"], rel=TOLERANCE)
    assert prof["counted_s"] <= prof["wall_s"] * (1 + TOLERANCE)  # nothing counted twice
    assert all(v >= 0 for v in prof["categories_s"].values()) and prof["top_ops"]
    trace = json.loads(gzip.decompress((tmp_path / prof["trace"]).read_bytes()))
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])


class _SlowPointwise(TLSTMNaive):
    """tlstm_naive with a deliberately slow pointwise phase: 20 tanh passes over a million values."""

    def forward(self, x, state=None):
        y, (h, c) = super().forward(x, state)
        extra = y.new_ones(1_000_000)
        for _ in range(20):
            extra = torch.tanh(extra)
        return y + 0 * extra[0], (h, c)


def test_a_slow_pointwise_phase_moves_the_split(tmp_path):
    @implementations.register("x_slow_pointwise", family="tlstm", devices=("cpu",))
    def build(config, *, device, dtype):
        return _SlowPointwise.from_config(config, device=device, dtype=dtype)

    try:
        plain = _profile(_point(), tmp_path)
        slow = _profile(_point("x_slow_pointwise"), tmp_path)
    finally:
        implementations.unregister("x_slow_pointwise")

    def share(prof: dict, name: str) -> float:
        return prof["categories_s"][name] / prof["wall_s"]

    assert share(slow, POINTWISE) > share(plain, POINTWISE) + 0.1
    assert share(slow, PRODUCTS) < share(plain, PRODUCTS)


def test_the_fused_operator_names_its_phases(tmp_path):
    reason = implementations.get("tlstm_fused").unavailable_reason("cpu")
    if reason:
        pytest.skip(f"tlstm_fused unavailable: {reason}")
    prof = _profile(_point("tlstm_fused", batch=4, channels=16), tmp_path)
    names = {e.get("name") for e in json.loads(gzip.decompress((tmp_path / prof["trace"]).read_bytes()))["traceEvents"]}
    assert {"tlstm_fused::forward_product", "tlstm_fused::forward_pointwise", "tlstm_fused::backward_product",
            "tlstm_fused::backward_pointwise"} <= names
    assert prof["categories_s"][PRODUCTS] > 0 and prof["categories_s"][POINTWISE] > 0


BREAKS_UNDER_PROFILER = """
import torch
import implementations
from implementations.tlstm_naive import TLSTMNaive


class Breaks(TLSTMNaive):
    def forward(self, x, state=None):
        if torch.autograd.profiler._is_profiler_enabled:
            raise RuntimeError("this implementation cannot be profiled")
        return super().forward(x, state)


@implementations.register("x_profile_breaks", family="tlstm", devices=("cpu",))
def build(config, *, device, dtype):
    return Breaks.from_config(config, device=device, dtype=dtype)
"""


def test_tlstm_bench_profile_end_to_end(tmp_path, capsys, tiny_sweep):
    (tmp_path / "breaks.py").write_text(BREAKS_UNDER_PROFILER)
    sweep = tiny_sweep(["tlstm_naive", "lstm_cudnn", "x_profile_breaks"], name="p.toml", plugins=["breaks.py"],
                       axes={"depth": [1, 2]})
    out = tmp_path / "out"
    try:
        assert cli.main(["profile", str(sweep), "--out", str(out), "--quiet"]) == 0
    finally:
        implementations.unregister("x_profile_breaks")
    df = results.load(out)
    broken = df[df["impl"] == "x_profile_breaks"]
    assert (broken["status"] == "error").all() and broken["message"].str.contains("cannot be profiled").all()
    ok = df[df["impl"] != "x_profile_breaks"]
    assert (ok["status"] == "ok").all() and ok["time_median_s"].notna().all()
    for _, row in ok.iterrows():
        assert (out / "traces" / row["profile"]["trace"]).is_file()
        assert row["profile"]["energy_j_per_step"] is None and row["profile"]["energy_note"]
    report = (out / "report.html").read_text()
    assert "Where the time goes" in report and "Framework overhead" in report and "traces/" in report


def test_profile_resume_over_a_timing_run_profiles_the_points_without_a_profile(tmp_path, capsys, tiny_sweep):
    # issue 23: `profile --resume` on a plain run's folder said "8 already done" and profiled nothing
    sweep, out = tiny_sweep(["tlstm_naive", "lstm_cudnn"], name="p.toml"), tmp_path / "out"
    assert cli.main(["run", str(sweep), "--out", str(out), "--quiet", "--no-report"]) == 0
    timed = results.load(out)
    assert timed["profile"].isna().all()
    assert cli.main(["profile", str(sweep), "--out", str(out), "--resume", "--quiet", "--no-report"]) == 0
    assert f"0 already done, {len(timed)} run" in capsys.readouterr().out
    df = results.load(out)
    assert len(df) == len(timed) and (df["status"] == "ok").all()  # the new lines replaced the old ones
    for _, row in df.iterrows():
        assert (out / "traces" / row["profile"]["trace"]).is_file()
    assert cli.main(["profile", str(sweep), "--out", str(out), "--resume", "--quiet", "--no-report"]) == 0
    assert f"{len(timed)} already done, 0 run" in capsys.readouterr().out
