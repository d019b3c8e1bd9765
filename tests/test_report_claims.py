"""The four claims judged from synthetic results: where they hold, where they do not, and missing data."""

from __future__ import annotations

import math

import pytest

import reports
from reports.claims import FAILS, HOLDS, NOT_MEASURED, PARTLY
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
    assert claim.verdict == HOLDS
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
    assert claim.verdict == HOLDS
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
    assert claim.verdict == HOLDS
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


def test_faster_holds_when_tlstm_time_is_flat_in_depth():
    claim = _judge(make_results(depths=(1, 8), tlstm_growth=0.05, lstm_growth=1.0, noisy_every=0))["Faster"]
    assert claim.verdict == HOLDS
    for entry in claim.data:
        # the synthetic model: time per step = base * (1 + growth * (L - 1)), 2% sample noise
        assert entry["tlstm_ratio"] == pytest.approx(1 + 0.05 * 7, rel=0.06)
        assert entry["lstm_ratio"] == pytest.approx(1 + 1.0 * 7, rel=0.06)
        assert entry["holds"]


def test_faster_does_not_hold_when_tlstm_grows_like_the_lstm():
    claim = _judge(make_results(depths=(1, 4), tlstm_growth=0.9, lstm_growth=1.0, noisy_every=0))["Faster"]
    assert claim.verdict == FAILS
    assert not any(entry["holds"] for entry in claim.data)


def test_faster_holds_in_part_naming_the_batch_where_it_fails():
    df = make_results(depths=(1, 2, 4, 8), batches=(1, 64), tlstm_growth={1: 0.05, 64: 0.9}, noisy_every=0)
    claim = _judge(df)["Faster"]
    assert claim.verdict == PARTLY
    held, failed = claim.evidence.split("does not hold at")
    assert "batch 1 " in held and "batch 64" not in held
    assert "batch 64" in failed
    assert all(entry["holds"] == (entry["batch"] == 1) for entry in claim.data)


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


def test_faster_says_when_its_deciding_points_are_noisy():
    quiet = _judge(make_results(depths=(1, 8), noisy_every=0, failed=False))["Faster"]
    assert "noisy" not in quiet.evidence and not any(d["noisy"] for d in quiet.data)
    df = make_results(depths=(1, 8), noisy_every=0, failed=False)
    df.loc[(df["impl"] == "lstm_cudnn") & (df["depth"] == 8), "noisy"] = True
    loud = _judge(df)["Faster"]
    assert all(d["noisy"] for d in loud.data)
    assert f"{len(loud.data)} of {len(loud.data)} slice(s) rest on noisy points" in loud.evidence


def test_faster_not_judged_where_the_baseline_does_not_slow_down():
    claim = _judge(make_results(depths=(1, 4), tlstm_growth=0.0, lstm_growth=-0.1, noisy_every=0))["Faster"]
    assert claim.verdict == NOT_MEASURED and not claim.data
    assert "did not slow down" in claim.evidence and claim.details


def test_faster_reports_absolute_speed_beside_the_growth_rule():
    # flat but slow: the naive reference grows little with depth yet stays slower than the LSTM at L=2
    df = make_results(impls=("tlstm_naive", "lstm_cudnn"), depths=(1, 2), batches=(1,), modes=("inference",),
                      tlstm_growth=0.05, lstm_growth=1.0, noisy_every=0, failed=False)
    claim = _judge(df)["Faster"]
    assert claim.verdict == HOLDS
    assert "below the stacked LSTM's in 0 of 1 slice(s)" in claim.evidence
