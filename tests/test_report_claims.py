"""The four claims judged from synthetic results: where they hold, where they do not, and missing data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import reports
from bench.contract import timing_metrics
from reports.claims import BY_CONSTRUCTION, FAILS, HOLDS, NOT_MEASURED, PARTLY, UNDECIDED
from tests.report_synthetic import lstm_params, make_results, tlstm_params


def _judge(df):
    return {c.name: c for c in reports.judge_claims(reports.normalize(df))}


def test_verdicts_are_from_the_fixed_vocabulary():
    for claim in reports.judge_claims(reports.normalize(make_results())):
        assert claim.verdict in reports.VERDICTS
        assert claim.rule and claim.evidence


# --- Wider ---------------------------------------------------------------------------------------


def test_wider_holds_with_exact_counts():
    claim = _judge(make_results(depths=(1, 2, 4, 8), channels=(64,), input_size=32))["Wider"]
    assert claim.verdict == BY_CONSTRUCTION
    assert f"one LSTM layer of 512 units has {4 * 512 * (32 + 512) + 8 * 512:,}" in claim.evidence
    expected = tlstm_params(32, 64)
    assert f"{expected:,}" in claim.evidence and "P = 1, 2, 4, 8" in claim.evidence
    for entry in claim.data:
        assert entry["params"] == [expected]
        assert entry["hidden_units"] == [64, 128, 256, 512]


def test_wider_does_not_hold_when_params_grow_with_p():
    df = make_results(depths=(1, 2, 4), failed=False)
    grows = (df["impl"] == "tlstm_fused") & (df["tensor_size"] == 4)
    df.loc[grows, "params"] = df.loc[grows, "params"] + 1
    claim = _judge(df)["Wider"]
    assert claim.verdict == FAILS
    assert "tlstm_fused" in claim.evidence and "tlstm_naive" not in claim.evidence


def test_wider_not_measured_with_one_tensor_size():
    claim = _judge(make_results(depths=(4,), failed=False))["Wider"]
    assert claim.verdict == NOT_MEASURED
    assert "tlstm-bench run" in claim.evidence


# --- Deeper --------------------------------------------------------------------------------------


def test_deeper_holds_when_every_tlstm_point_passes_the_gate():
    claim = _judge(make_results(depths=(1, 3, 6), failed=False))["Deeper"]
    assert claim.verdict == BY_CONSTRUCTION
    assert "L = 1, 3, 6" in claim.evidence


def test_deeper_does_not_hold_with_an_incorrect_point():
    claim = _judge(make_results(depths=(1, 2), failed=True))["Deeper"]  # the failed set has one 'incorrect'
    assert claim.verdict == FAILS
    assert "1 tLSTM point(s) failed the correctness gate" in claim.evidence and "tlstm_fused" in claim.evidence


def test_deeper_does_not_hold_when_depth_contradicts_tensor_size():
    df = make_results(depths=(2, 4), failed=False)
    wrong = (df["impl"] == "tlstm_naive") & (df["tensor_size"] == 4)
    df.loc[wrong, "depth"] = 3
    claim = _judge(df)["Deeper"]
    assert claim.verdict == FAILS
    assert any("expected 4" in d for d in claim.details)


def test_deeper_not_measured_without_tlstm_points():
    claim = _judge(make_results(impls=("lstm_cudnn",), failed=False))["Deeper"]
    assert claim.verdict == NOT_MEASURED


# --- Cheaper -------------------------------------------------------------------------------------


def test_cheaper_holds_at_depth_two_and_more_with_exact_ratio():
    claim = _judge(make_results(depths=(1, 2, 8), channels=(64,), input_size=32, failed=False))["Cheaper"]
    assert claim.verdict == BY_CONSTRUCTION
    assert "FLOPs per output step" in claim.evidence and all(d["flop_ratio"] > 1 for d in claim.data)
    at_8 = [d for d in claim.data if d["depth"] == 8]
    assert at_8 and all(d["ratio"] == pytest.approx(tlstm_params(32, 64) / lstm_params(32, 64, 8)) for d in at_8)
    at_1 = [d for d in claim.data if d["depth"] == 1]
    assert at_1 and all(d["ratio"] > 1 for d in at_1), "at L=1 the tLSTM is larger, reported but not judged"
    assert any("not judged at L=1" in line for line in claim.details)


def test_cheaper_does_not_hold_when_tlstm_has_more_params():
    df = make_results(depths=(2, 4), failed=False)
    df.loc[df["family"] == "tlstm", "params"] = 10**7
    claim = _judge(df)["Cheaper"]
    assert claim.verdict == FAILS
    assert "L=2" in claim.evidence and "L=4" in claim.evidence


def test_cheaper_not_measured_without_the_baseline():
    claim = _judge(make_results(impls=("tlstm_naive",), failed=False))["Cheaper"]
    assert claim.verdict == NOT_MEASURED


def test_cheaper_not_measured_with_only_depth_one():
    claim = _judge(make_results(depths=(1,), failed=False))["Cheaper"]
    assert claim.verdict == NOT_MEASURED


# --- Faster --------------------------------------------------------------------------------------


def _lines_frame(lines: dict[str, tuple[str, float, float, float]], depths=(1, 2, 4, 8, 16), batch: int = 1,
                 samples: int = 15, seed: int = 0) -> pd.DataFrame:
    """Points whose time per step is base + slope * (L - 1), each with its raw samples drawn with
    lognormal noise. ``lines``: impl -> (family, base seconds, slope seconds per layer, noise sigma)."""
    rng = np.random.default_rng(seed)
    rows = []
    for depth in depths:
        for impl, (family, base, slope, noise) in lines.items():
            times = list((base + slope * (depth - 1)) * np.exp(rng.normal(0, noise, samples)))
            rows.append({"impl": impl, "family": family, "tensor_size": depth if family == "tlstm" else None,
                         "depth": depth, "seq_len": 1, "batch": batch, "channels": 32, "input_size": 32,
                         "kernel_size": 3, "mem_conv": True, "norm": None, "dtype": "float32", "mode": "training",
                         "device": "cpu", "status": "ok", "samples_s": times,
                         **timing_metrics(times, seq_len=1, recurrent_steps=1, batch=batch, flops=None)})
    return pd.DataFrame(rows)


def _faster(df: pd.DataFrame):
    return reports.judge_faster(reports.normalize(df))


def test_faster_holds_for_a_flat_fast_tlstm_against_a_linear_lstm():
    claim = _faster(_lines_frame({"tlstm_fused": ("tlstm", 10e-6, 0.5e-6, 0.05),
                                  "lstm_cudnn": ("lstm", 10e-6, 10e-6, 0.05)}))
    assert claim.verdict == HOLDS
    (entry,) = claim.data
    assert entry["ratio"].value == pytest.approx(0.05, abs=0.02) and entry["ratio"].hi < 0.5
    assert entry["lstm_slope"].lo < 10e-6 < entry["lstm_slope"].hi  # the interval covers the true slope
    assert "batch 1 training: yes" in claim.evidence and "less growth" in claim.headline


def test_faster_does_not_hold_when_the_tlstm_grows_faster():
    claim = _faster(_lines_frame({"tlstm_fused": ("tlstm", 10e-6, 10e-6, 0.05),
                                  "lstm_cudnn": ("lstm", 10e-6, 0.5e-6, 0.05)}))
    assert claim.verdict == FAILS and claim.data[0]["ratio"].lo > 0.5
    assert "more growth" in claim.evidence


def test_faster_is_undecided_when_the_interval_straddles_the_threshold():
    # the tLSTM grows exactly half as fast, with 30% noise and 5 samples a point: the data cannot decide
    claim = _faster(_lines_frame({"tlstm_fused": ("tlstm", 10e-6, 5e-6, 0.3),
                                  "lstm_cudnn": ("lstm", 10e-6, 10e-6, 0.3)}, samples=5))
    assert claim.verdict == UNDECIDED
    ratio = claim.data[0]["ratio"]
    assert ratio.lo < 0.5 < ratio.hi


def test_faster_follows_the_fastest_tlstm_not_a_slow_flat_one():
    # tlstm_naive is flat but slow (overhead-bound), tlstm_fused is fast but grows like the LSTM
    lines = {"tlstm_naive": ("tlstm", 2e-3, 1e-6, 0.05), "tlstm_fused": ("tlstm", 5e-6, 20e-6, 0.05),
             "lstm_cudnn": ("lstm", 10e-6, 10e-6, 0.05)}
    claim = _faster(_lines_frame(lines))
    assert claim.verdict == FAILS
    assert claim.data[0]["impl"] == "tlstm_fused" and claim.data[0]["lstm_impl"] == "lstm_cudnn"
    without_fused = _faster(_lines_frame({k: v for k, v in lines.items() if k != "tlstm_fused"}))
    assert without_fused.verdict == HOLDS  # the slow flat line alone would have carried it


def test_faster_in_part_names_where_in_words():
    small = _lines_frame({"tlstm_fused": ("tlstm", 10e-6, 0.5e-6, 0.05), "lstm_cudnn": ("lstm", 10e-6, 10e-6, 0.05)})
    large = _lines_frame({"tlstm_fused": ("tlstm", 10e-6, 30e-6, 0.05), "lstm_cudnn": ("lstm", 10e-6, 10e-6, 0.05)},
                         batch=64)
    claim = _faster(pd.concat([small, large], ignore_index=True))
    assert claim.verdict == PARTLY
    assert "batch 1 training: yes" in claim.evidence and "batch 64 training: no" in claim.evidence
    assert {d["batch"]: d["verdict"] for d in claim.data} == {1: HOLDS, 64: FAILS}


def test_faster_fits_every_depth_not_only_the_ends():
    df = _lines_frame({"tlstm_fused": ("tlstm", 10e-6, 1e-6, 0.01), "lstm_cudnn": ("lstm", 10e-6, 10e-6, 0.01)},
                      depths=(1, 2, 4, 8, 16))
    (entry,) = _faster(df).data
    assert entry["depths"] == [1, 2, 4, 8, 16]
    fused = reports.normalize(df).query("impl == 'tlstm_fused'").sort_values("depth")
    fitted = np.polyfit(fused["depth"], fused["time_per_step_s"], 1)[0]  # least squares over all depths
    assert entry["tlstm_slope"].value == pytest.approx(fitted)


def test_faster_ignores_failed_points():
    df = make_results(depths=(1, 8), tlstm_growth=0.05, noisy_every=0)
    slow = (df["family"] == "tlstm") & (df["depth"] == 8)
    df.loc[slow, "time_per_step_s"] *= 100
    df.loc[slow, "status"] = "timeout"
    assert _judge(df)["Faster"].verdict == NOT_MEASURED


def test_faster_not_measured_at_a_single_depth():
    claim = _judge(make_results(depths=(4,), failed=False))["Faster"]
    assert claim.verdict == NOT_MEASURED
    assert "tlstm-bench run depth" in claim.evidence


def test_faster_not_judged_where_the_baseline_does_not_slow_down():
    claim = _faster(_lines_frame({"tlstm_fused": ("tlstm", 10e-6, 0.5e-6, 0.05),
                                  "lstm_cudnn": ("lstm", 10e-6, -0.2e-6, 0.05)}))
    assert claim.verdict == NOT_MEASURED and not claim.data
    assert "did not slow down" in claim.evidence and claim.details


def test_faster_reports_absolute_speed_beside_the_growth_rule():
    claim = _faster(_lines_frame({"tlstm_fused": ("tlstm", 50e-6, 0.5e-6, 0.05),
                                  "lstm_cudnn": ("lstm", 10e-6, 2e-6, 0.05)}))
    assert claim.verdict == HOLDS  # grows far less, yet slower outright at L = 16
    assert claim.data[0]["outright"].lo > 1
    assert "faster outright (whole interval below 1x) in 0 of 1 slice(s)" in claim.evidence


# --- speedups at matched points --------------------------------------------------------------------


def test_speedups_match_points_and_skip_failed_ones():
    df = make_results(depths=(1, 2, 4), batches=(1, 8), noisy_every=0)
    ok = reports.normalize(df)
    sp = reports.matched_speedups(ok[ok["status"] == "ok"])
    over_naive = sp[sp["reference"] == "tlstm_naive"]
    n_fused_ok = int(((df["impl"] == "tlstm_fused") & (df["status"] == "ok")).sum())
    assert len(over_naive) == n_fused_ok and set(over_naive["impl"]) == {"tlstm_fused"}
    # synthetic bases: naive 400 us, fused 60 us per step at the same sizes
    assert over_naive["speedup"].median() == pytest.approx(400 / 60, rel=0.05)
    over_lstm = sp[sp["reference"] == "lstm_cudnn"]
    assert set(over_lstm["impl"]) == {"tlstm_fused", "tlstm_naive"}
    assert (over_lstm["speedup_lo"] <= over_lstm["speedup"]).all()
    assert (over_lstm["speedup"] <= over_lstm["speedup_hi"]).all()
    assert not math.isnan(over_lstm["speedup"].sum())




def test_faster_is_undecided_when_the_lstms_own_slope_is_uncertain():
    # replicates where the LSTM does not slow down leave the ratio unbounded: the interval must say so
    from reports.stats import interval

    assert interval(0.1, np.array([0.1] * 900 + [np.inf] * 100)).hi == np.inf
    claim = _faster(_lines_frame({"tlstm_fused": ("tlstm", 10e-6, 0.1e-6, 0.05),
                                  "lstm_cudnn": ("lstm", 10e-6, 0.15e-6, 0.6)}, samples=5))
    assert claim.data and claim.data[0]["ratio"].hi > 0.5 and claim.verdict in (UNDECIDED, NOT_MEASURED)


def test_faster_does_not_hold_when_no_slice_holds_and_others_are_undecided():
    failing = _lines_frame({"tlstm_fused": ("tlstm", 10e-6, 10e-6, 0.05), "lstm_cudnn": ("lstm", 10e-6, 0.5e-6, 0.05)})
    straddling = _lines_frame({"tlstm_fused": ("tlstm", 10e-6, 5e-6, 0.3), "lstm_cudnn": ("lstm", 10e-6, 10e-6, 0.3)},
                              batch=64, samples=5)
    claim = _faster(pd.concat([failing, straddling], ignore_index=True))
    assert {d["verdict"] for d in claim.data} == {FAILS, UNDECIDED} and claim.verdict == FAILS
