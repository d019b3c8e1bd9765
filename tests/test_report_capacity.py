"""The capacity half of the report, from hand-built training rows: the seed rule (a log-rank test on censored
samples to solve, final accuracy where no run solved), the claims it decides (where the tLSTM wins, where the
stacked LSTM wins, where no difference is detected, with too few seeds), the solve table, the failures
(diverged runs with their samples seen), and reports of training-only and mixed frames."""

from __future__ import annotations

import base64
import math
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

import reports
from reports.capacity import (
    A_WINS,
    B_WINS,
    ONE_SEED,
    OVERLAP,
    Group,
    build_capacity,
    capacity_rows,
    compare_groups,
    run_text,
)  # fmt: skip
from reports.claims import BY_CONSTRUCTION, FAILS, HOLDS, NOT_MEASURED, PARTLY, UNDECIDED
from reports.data import ReportInputError
from tests.report_synthetic import lstm_params, make_results, tlstm_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEPTHS = (1, 2, 4, 8)
SEEDS = (0, 1, 2, 3)  # the fewest with which the seed rule can decide (p = 2 / 70 at complete separation)
INPUT_SIZE = 12  # one-hot digits and markers
OUTPUTS = 12
BUDGET = 20_000
TRAIN = {"task": "addition", "digits": 5, "length": None, "alphabet": None, "optimizer": "adam", "lr": 1e-3,
         "clip": 1.0, "eval_every": 2_000, "eval_samples": 500, "max_samples": 100_000, "max_time_s": 600.0,
         "solve_at": 0.99, "params_budget": BUDGET}
ENV = {"torch": "2.13.0+cpu", "cpu_model": "Synthetic Xeon (2 cores)", "git_commit": "0123abc", "threads": 2}
SWEEP = {"name": "capacity", "command": "tlstm-bench run capacity --out /tmp/capacity"}

# The models of a capacity sweep: (impl, kernel size, mem-conv); tlstm_fused runs two variants.
MODELS = (("tlstm_fused", 3, True), ("tlstm_fused", 3, False), ("lstm_cudnn", None, None),
          ("lstm_shared", None, None))
TL, TL_M, LSTM, SHARED = "tlstm_fused [tLSTM]", "tlstm_fused [tLSTM-M]", "lstm_cudnn", "lstm_shared"


def _width(impl: str, depth: int, mem_conv: bool | None) -> tuple[int, int]:
    """The widest M whose core + head fits the budget, and the core parameter count at that M."""
    best = (1, 0)
    for m in range(1, 200):
        if impl.startswith("tlstm"):
            core = tlstm_params(INPUT_SIZE, m, 3, bool(mem_conv))
        else:
            core = lstm_params(INPUT_SIZE, m, 1 if impl == "lstm_shared" else depth)
        if core + m * OUTPUTS + OUTPUTS > BUDGET:
            break
        best = (m, core)
    return best


def run(impl: str, depth: int, seed: int, *, acc: float | None = None, solved_at: float | None = None,
        time_s: float | None = None, status: str = "ok", samples_seen: float | None = None,
        kernel_size: int | None = 3, mem_conv: bool | None = True, train: dict[str, Any] | None = None,
        message: str = "") -> dict[str, Any]:
    """One training row as bench.results.load gives it. ``solved_at``: samples to solve (the run solved);
    else ``acc`` is its final held-out symbol accuracy (best = final)."""
    train = dict(TRAIN if train is None else train)
    family = "tlstm" if impl.startswith("tlstm") else "lstm"
    m, core = _width(impl, depth, mem_conv)
    head = m * OUTPUTS + OUTPUTS
    solved = solved_at is not None and status == "ok"
    final = train["solve_at"] + 0.005 if solved else acc
    seen = solved_at if solved else samples_seen if samples_seen is not None else train["max_samples"]
    train_time = time_s if time_s is not None else seen / 10_000  # 10k samples per second unless told
    curve = []
    for i in range(1, int(seen // train["eval_every"]) + 1):
        samples = i * train["eval_every"]
        rising = 0.1 + ((final or 0.1) - 0.1) * samples / seen  # from chance-like 0.1 up to the final accuracy
        curve.append({"samples": samples, "loss": 2.0 / i, "symbol_acc": rising, "sequence_acc": 0.0,
                      "wall_s": train_time * samples / seen})
    if status == "diverged":
        curve[-1]["loss"] = float("nan")
    stop = "solved" if solved else "diverged" if status == "diverged" else "max_samples" if status == "ok" else None
    return {
        "impl": impl, "family": family, "tensor_size": depth if family == "tlstm" else None, "depth": depth,
        "seq_len": 2 * train["digits"] + 2 if train["task"] == "addition" else train["length"], "batch": 32,
        "channels": m, "input_size": INPUT_SIZE, "kernel_size": kernel_size if family == "tlstm" else None,
        "mem_conv": mem_conv if family == "tlstm" else None, "norm": None, "dtype": "float32", "mode": "training",
        "device": "cpu", "repeats": 1, "warmup": 0, "seed": seed, "train": train, "status": status,
        "message": message, "params": core + head, "core_params": core, "head_params": head, "solved": solved,
        "samples_to_solve": solved_at if solved else None, "time_to_solve_s": train_time if solved else None,
        "samples_seen": seen, "train_time_s": train_time, "step_time_s": train_time / max(seen / 32, 1),
        "final_loss": 0.01 if solved else 1.0, "final_symbol_acc": final if status == "ok" else None,
        "final_sequence_acc": 1.0 if solved else 0.0, "best_symbol_acc": final if status == "ok" else None,
        "stop_reason": stop, "resumed": 0, "curve": curve, "sweep": "capacity", "machine": "synthetic: Xeon",
    }


Outcome = Callable[[str, int, int], dict[str, Any]]  # (model, depth, seed) -> keyword arguments of run()


def frame(outcome: Outcome, *, depths=DEPTHS, seeds=SEEDS, models=MODELS, extra=()) -> pd.DataFrame:
    rows = []
    for impl, k, mem_conv in models:
        label = {"lstm_cudnn": LSTM, "lstm_shared": SHARED}.get(impl, TL if mem_conv else TL_M)
        for depth in depths:
            for seed in seeds:
                rows.append(run(impl, depth, seed, kernel_size=k, mem_conv=mem_conv, **outcome(label, depth, seed)))
    df = pd.DataFrame(rows + list(extra))
    df.attrs["env"] = dict(ENV)
    df.attrs["sweep"] = dict(SWEEP)
    return df


def tlstm_wins(label: str, depth: int, seed: int) -> dict[str, Any]:
    """The paper's picture: the tLSTM learns more the deeper it is and solves at L >= 4; the unshared stacked
    LSTM degrades with depth (its width shrinks), the shared one stays where it is."""
    jitter = 0.01 * seed
    if label == TL:
        return {"solved_at": {4: 40_000, 8: 20_000}[depth] + 1_000 * seed} if depth >= 4 else \
            {"acc": {1: 0.60, 2: 0.80}[depth] + jitter}
    if label == TL_M:
        return {"acc": {1: 0.58, 2: 0.70, 4: 0.85, 8: 0.93}[depth] + jitter}
    if label == LSTM:
        return {"acc": {1: 0.61, 2: 0.62, 4: 0.55, 8: 0.45}[depth] + jitter}
    return {"acc": 0.60 + 0.01 * ((seed + depth) % 3)}  # lstm_shared: flat, seeds overlap across depths


def lstm_wins(label: str, depth: int, seed: int) -> dict[str, Any]:
    """The other way round: the stacked LSTM gains from depth and solves at L = 8, the tLSTM degrades."""
    jitter = 0.01 * seed
    if label in (TL, TL_M):
        return {"acc": {1: 0.62, 2: 0.58, 4: 0.52, 8: 0.48}[depth] + jitter - (0.02 if label == TL_M else 0)}
    if label == LSTM:
        return {"solved_at": 30_000 + 1_000 * seed} if depth == 8 else {"acc": 0.60 + 0.05 * depth / 4 + jitter}
    return {"acc": 0.60 + jitter}


def overlapping(label: str, depth: int, seed: int) -> dict[str, Any]:
    """Seeds that disagree: at every depth the tLSTM's and the stacked LSTM's seed ranges overlap."""
    spread = (0.70, 0.90, 0.80, 0.86) if label in (TL, TL_M) else (0.85, 0.75, 0.88, 0.79)
    return {"acc": spread[seed] + 0.01 * depth / 8}


def _claims(df: pd.DataFrame) -> dict[str, reports.Claim]:
    return {c.name: c for c in build_capacity(reports.normalize(df)).claims}


@pytest.fixture(scope="module")
def winning() -> pd.DataFrame:
    return frame(tlstm_wins)


# --- the seed rule ---------------------------------------------------------------------------------


def _group(runs: list[dict[str, Any]], label: str = "x", family: str = "tlstm") -> Group:
    rows = capacity_rows(reports.normalize(pd.DataFrame(runs)))
    return Group(label, family, float(rows["depth"].iloc[0]), rows)


def test_seed_rule_where_no_run_solved_compares_final_accuracy():
    a = _group([run("tlstm_fused", 4, s, acc=v) for s, v in enumerate((0.90, 0.92, 0.91, 0.93))])
    b = _group([run("lstm_cudnn", 4, s, acc=v) for s, v in enumerate((0.80, 0.85, 0.82, 0.83))], family="lstm")
    c = compare_groups(a, b)
    assert c.outcome == A_WINS and compare_groups(b, a).outcome == B_WINS
    assert c.metric == "final held-out symbol accuracy" and c.p == pytest.approx(2 / 70)
    overlap = _group([run("lstm_cudnn", 4, s, acc=v) for s, v in enumerate((0.80, 0.93, 0.91, 0.89))], family="lstm")
    c = compare_groups(a, overlap)
    assert c.outcome == OVERLAP and "no difference detected" in c.text and c.reason.startswith("no difference")


def test_seed_rule_ranks_every_run_by_samples_to_solve_censoring_the_unsolved():
    fast = _group([run("tlstm_fused", 4, s, solved_at=v) for s, v in enumerate((20_000, 22_000, 21_000, 23_000))])
    slow = _group([run("lstm_cudnn", 4, s, solved_at=v) for s, v in enumerate((30_000, 34_000, 31_000, 33_000))],
                  family="lstm")
    c = compare_groups(fast, slow)
    assert c.outcome == A_WINS and c.metric == "samples to solve" and "20k–23k" in c.text
    assert "log-rank p = 0.0286 (exact over all 70 splits)" in c.text
    # interleaved solve times: no difference
    mixed_up = _group([run("lstm_cudnn", 4, s, solved_at=v) for s, v in enumerate((20_500, 21_500, 22_500, 23_500))],
                      family="lstm")
    assert compare_groups(fast, mixed_up).outcome == OVERLAP
    # runs that did not solve still count, censored at the samples they used: 4 solved beat 0 solved, and
    # one unsolved seed among solved ones keeps the comparison on samples to solve
    never = _group([run("lstm_cudnn", 4, s, acc=0.9) for s in SEEDS], family="lstm")
    c = compare_groups(fast, never)
    assert c.outcome == A_WINS and c.metric == "samples to solve" and "0 of 4 solved" in c.text
    one_short = _group([run("lstm_cudnn", 4, 0, acc=0.9)] + [run("lstm_cudnn", 4, s, solved_at=25_000 + s)
                                                              for s in (1, 2, 3)], family="lstm")
    c = compare_groups(fast, one_short)
    assert c.metric == "samples to solve" and "3 of 4 solved" in c.text


def test_seed_rule_with_too_few_seeds_decides_nothing():
    a = _group([run("tlstm_fused", 4, s, solved_at=1_000) for s in (0, 1, 2)])
    b = _group([run("lstm_cudnn", 4, s, acc=0.2) for s in (0, 1, 2)], family="lstm")
    c = compare_groups(a, b)  # 3 against 3: complete separation gives p = 2 / 20 = 0.1
    assert c.outcome == ONE_SEED and "too few seeds" in c.text and c.reason == "too few seeds"


def test_a_diverged_run_counts_as_unsolved_at_the_budget_and_a_crash_not_at_all():
    a = _group([run("tlstm_fused", 4, s, acc=0.5) for s in SEEDS])
    b = _group([run("lstm_cudnn", 4, 0, acc=0.6), run("lstm_cudnn", 4, 1, status="diverged", samples_seen=3_200),
                run("lstm_cudnn", 4, 2, acc=0.55), run("lstm_cudnn", 4, 3, acc=0.62),
                run("lstm_cudnn", 4, 4, status="crashed", samples_seen=None)], family="lstm")
    c = compare_groups(a, b)
    assert sorted(c.b_values) == [0.0, 0.55, 0.6, 0.62] and c.outcome == OVERLAP
    solved = _group([run("tlstm_fused", 4, s, solved_at=50_000) for s in SEEDS])
    c = compare_groups(solved, b)
    assert c.metric == "samples to solve" and TRAIN["max_samples"] in c.b_values  # the diverged run, censored


# --- the claims --------------------------------------------------------------------------------------


def test_tlstm_clearly_wins(winning):
    claims = _claims(winning)
    depth = claims["Wider/Deeper"]
    assert depth.verdict == HOLDS, depth.evidence
    (entry,) = depth.data
    assert entry["tlstm"] == TL and entry["tlstm_state"] == "improves"
    assert entry["lstm_states"] == {LSTM: "degrades", SHARED: "saturates"}
    versus = claims["tLSTM vs stacked LSTM"]
    assert versus.verdict == HOLDS
    per_depth = {d["depth"]: d["verdict"] for d in versus.data}
    assert per_depth[8.0] == HOLDS and per_depth[4.0] == HOLDS
    assert per_depth[1.0] == UNDECIDED  # 0.60-0.62 against 0.61-0.63: the seeds overlap
    assert all(d["tlstm"] == TL for d in versus.data if d["depth"] >= 4)
    # the stacked LSTMs never solved: no time to solve to compare
    assert claims["Faster in practice"].verdict == NOT_MEASURED


def test_stacked_lstm_wins_and_the_claims_say_so():
    claims = _claims(frame(lstm_wins))
    assert claims["Wider/Deeper"].verdict == FAILS
    assert claims["Wider/Deeper"].data[0]["tlstm_state"] == "degrades"
    versus = claims["tLSTM vs stacked LSTM"]
    assert versus.verdict == FAILS
    last = max(versus.data, key=lambda d: d["depth"])
    assert last["depth"] == 8.0 and last["lstm"] == LSTM and last["verdict"] == FAILS
    assert "does not hold" in versus.headline


def test_overlapping_seeds_are_undecided():
    claims = _claims(frame(overlapping))
    versus = claims["tLSTM vs stacked LSTM"]
    assert versus.verdict == UNDECIDED
    assert {d["verdict"] for d in versus.data} == {UNDECIDED}
    assert all(d["comparison"].outcome == OVERLAP for d in versus.data)
    assert "no difference detected" in " ".join(versus.details)
    assert claims["Wider/Deeper"].verdict == UNDECIDED


def test_a_single_seed_is_undecided_however_large_the_gap():
    claims = _claims(frame(tlstm_wins, seeds=(0,)))
    for name in ("Wider/Deeper", "tLSTM vs stacked LSTM"):
        assert claims[name].verdict == UNDECIDED, name
    versus = claims["tLSTM vs stacked LSTM"]
    last = max(versus.data, key=lambda d: d["depth"])
    assert last["comparison"].outcome == ONE_SEED and "undecided (too few seeds)" in versus.evidence


def test_stacked_lstm_that_also_gains_from_depth_leaves_the_depth_claim_in_part():
    def both_gain(label: str, depth: int, seed: int) -> dict[str, Any]:
        if label == LSTM:
            return {"acc": 0.5 + 0.05 * depth + 0.01 * seed}
        return tlstm_wins(label, depth, seed)

    claim = _claims(frame(both_gain))["Wider/Deeper"]
    assert claim.verdict == PARTLY and claim.data[0]["lstm_states"][LSTM] == "improves"


def _all_solve(tlstm_seconds: float, lstm_seconds: float) -> Outcome:
    def outcome(label: str, depth: int, seed: int) -> dict[str, Any]:
        seconds = tlstm_seconds if label in (TL, TL_M) else lstm_seconds
        return {"solved_at": 30_000 + 500 * seed, "time_s": seconds * depth * (1 + 0.02 * seed)}
    return outcome


def test_faster_in_practice_judges_time_to_solve_at_the_largest_depth():
    claim = _claims(frame(_all_solve(2.0, 5.0)))["Faster in practice"]
    assert claim.verdict == HOLDS
    (entry,) = claim.data
    assert entry["depth"] == 8.0 and entry["comparison"].metric == "time to solve"
    assert "16 s" in claim.evidence and "40 s" in claim.evidence  # the fastest seeds: 2 s x 8 and 5 s x 8
    assert _claims(frame(_all_solve(5.0, 2.0)))["Faster in practice"].verdict == FAILS
    assert _claims(frame(_all_solve(2.0, 2.1)))["Faster in practice"].verdict == UNDECIDED  # within 10%
    # the samples to solve are the same for every model: the accuracy claim is undecided, not a win
    assert _claims(frame(_all_solve(2.0, 5.0)))["tLSTM vs stacked LSTM"].verdict == UNDECIDED


def test_parameter_facts_at_the_budget(winning):
    claim = _claims(winning)["Parameters at the budget"]
    assert claim.verdict == BY_CONSTRUCTION
    facts = {d["model"]: d for d in claim.data}
    assert len(set(facts[TL]["params"])) == 1 and len(set(facts[TL]["widths"])) == 1
    assert facts[LSTM]["widths"][0] > facts[LSTM]["widths"][-1]  # the unshared LSTM narrows with depth
    assert len(set(facts[SHARED]["widths"])) == 1
    assert all(p <= BUDGET for d in facts.values() for p in d["params"])
    m, core = _width("tlstm_fused", 1, True)
    head = m * OUTPUTS + OUTPUTS
    assert f"M={m} at L=1, 2, 4, 8; {core + head:,} ({core:,} + {head:,})" in claim.evidence


def test_parameter_facts_fail_when_a_tlstm_grows_with_depth(winning):
    df = winning.copy()
    deep = (df["impl"] == "tlstm_fused") & (df["depth"] == 8)
    df.loc[deep, "params"] = df.loc[deep, "params"] + 100
    claim = _claims(df)["Parameters at the budget"]
    assert claim.verdict == FAILS and TL in claim.evidence and "changes with depth" in claim.evidence


def test_the_verdict_vocabulary_and_one_headline_sentence_per_claim(winning):
    cap = build_capacity(reports.normalize(winning))
    assert [c.name for c in cap.claims] == ["Wider/Deeper", "tLSTM vs stacked LSTM", "Faster in practice",
                                            "Parameters at the budget"]
    for claim in cap.claims:
        assert claim.verdict in reports.VERDICTS and claim.rule and claim.evidence
    assert len(cap.headline) == 4
    assert cap.headline[0].startswith("Wider/Deeper at a fixed budget") and "holds" in cap.headline[0]
    assert all(sentence.endswith(".") for sentence in cap.headline)


# --- the solve table and the failures -------------------------------------------------------------------


def test_run_text_formats():
    rows = capacity_rows(reports.normalize(pd.DataFrame([
        run("tlstm_fused", 4, 0, solved_at=12_300, time_s=4.1),
        run("tlstm_fused", 4, 1, acc=0.874),
        run("lstm_cudnn", 4, 0, status="diverged", samples_seen=3_200),
        run("lstm_cudnn", 4, 1, status="timeout", samples_seen=50_000),
    ])))
    assert [run_text(r) for _, r in rows.iterrows()] == [
        "12.3k / 4.1 s", "not solved (best 87.4%)", "diverged at 3.2k samples", "timeout after 50k samples"]


def test_solve_table_has_one_cell_per_model_and_depth_and_a_line_per_seed(winning):
    (table,) = build_capacity(reports.normalize(winning)).tables
    assert table.depths == [1.0, 2.0, 4.0, 8.0]
    rows = {r["label"]: r for r in table.rows}
    assert list(rows) == [TL, TL_M, LSTM, SHARED]
    assert rows[TL]["cells"][8.0]["lines"] == ["seed 0: 20k / 2 s", "seed 1: 21k / 2.1 s", "seed 2: 22k / 2.2 s",
                                                 "seed 3: 23k / 2.3 s"]
    assert rows[LSTM]["cells"][8.0]["lines"][0] == "seed 0: not solved (best 45%)"
    m, _ = _width("tlstm_fused", 1, True)
    assert rows[TL]["sizes"].startswith(f"M={m}, ")  # the same at every depth: said once
    assert rows[LSTM]["sizes"] == "" and rows[LSTM]["cells"][8.0]["sizes"].startswith(
        f"M={_width('lstm_cudnn', 8, None)[0]}, ")


def test_a_diverged_run_is_listed_with_its_samples_seen(tmp_path):
    diverged = run("lstm_cudnn", 8, 4, status="diverged", samples_seen=3_200, kernel_size=None, mem_conv=None,
                   message="loss is nan at step 100")
    df = frame(tlstm_wins, extra=[diverged])
    text = reports.build_report(df, tmp_path / "r.html").read_text()
    failures = text[text.index('<section id="capacity-failures">'):text.index('<section id="environment">')]
    assert "<td>diverged</td>" in failures and "diverged at 3.2k samples" in failures
    assert "loss is nan at step 100" in failures and "1 diverged" in failures
    solve = text[text.index('<section id="capacity-solve">'):text.index('<section id="capacity-curves">')]
    assert "seed 4: diverged at 3.2k samples" in solve
    # it counts as accuracy 0 among the stacked LSTM's seeds at L = 8
    runs = capacity_rows(reports.normalize(df))
    lstm_8 = Group(LSTM, "lstm", 8.0, runs[(runs["label"] == LSTM) & (runs["depth"] == 8)])
    tlstm_8 = Group(TL_M, "tlstm", 8.0, runs[(runs["label"] == TL_M) & (runs["depth"] == 8)])
    assert sorted(compare_groups(tlstm_8, lstm_8).b_values) == pytest.approx([0.0, 0.45, 0.46, 0.47, 0.48])


# --- normalize and the split ----------------------------------------------------------------------------


def test_normalize_keeps_training_rows_whole(winning):
    df = reports.normalize(winning)
    assert df["solved"].dtype == bool and int(df["solved"].sum()) == 8
    assert all(isinstance(c, list) and c for c in df["curve"])
    assert set(df["variant"]) == {"tLSTM", "tLSTM-M", "sLSTM", "sLSTM (shared)"}
    assert (df.loc[df["impl"] == "lstm_shared", "variant"] == "sLSTM (shared)").all()
    assert df["time_median_s"].isna().all()
    assert len(reports.training_rows(df)) == len(df) and reports.timing_rows(df).empty


def test_normalize_refuses_a_curve_that_is_not_a_list_of_evaluations():
    df = pd.DataFrame([run("tlstm_fused", 1, 0, acc=0.5)])
    df.at[0, "curve"] = "0.5,0.6"
    with pytest.raises(ReportInputError, match="'curve' must be a list"):
        reports.normalize(df)


def _mixed() -> pd.DataFrame:
    timing = make_results(depths=(1, 2), batches=(1,), modes=("training",), failed=True)
    training = frame(tlstm_wins, depths=(1, 8), seeds=(0, 1),
                     extra=[run("lstm_shared", 8, 9, status="diverged", samples_seen=4_000, kernel_size=None,
                                mem_conv=None)])
    mixed = pd.concat([timing, training], ignore_index=True)
    mixed.attrs = dict(timing.attrs)
    return mixed


def test_the_timing_half_never_sees_training_rows():
    mixed = reports.normalize(_mixed())
    timing = reports.timing_rows(mixed)
    assert len(timing) == len(make_results(depths=(1, 2), batches=(1,), modes=("training",), failed=True))
    on_mixed = reports.judge_claims(mixed)
    on_timing = reports.judge_claims(timing)
    assert [(c.verdict, c.evidence) for c in on_mixed] == [(c.verdict, c.evidence) for c in on_timing]
    figures = reports.build_figures(mixed)
    assert [f.png is None for f in figures] == [f.png is None for f in reports.build_figures(timing)]


def test_a_mixed_frame_builds_a_report_with_both_halves(tmp_path):
    path = reports.build_report(_mixed(), tmp_path / "mixed.html")
    text = path.read_text()
    for section in reports.SECTIONS + reports.CAPACITY_SECTIONS:
        assert text.count(f'<section id="{section}">') == 1, section
    assert text.index('id="capacity-claims"') < text.index('id="claims"')
    summary = text[text.index('<section id="summary">'):text.index('<section id="speedups">')]
    assert "lstm_shared" not in summary and "tlstm_fused" in summary
    timing_failures = text[text.index('<section id="failures">'):text.index('<section id="environment">')]
    assert "diverged" not in timing_failures and "<td>oom</td>" in timing_failures
    capacity_failures = text[text.index('<section id="capacity-failures">'):text.index('<section id="headline">')]
    assert "diverged at 4k samples" in capacity_failures and "oom" not in capacity_failures
    pngs = sorted(p.name for p in (tmp_path / "mixed_figures").glob("*.png"))
    assert len(re.findall(r"<img ", text)) == len(pngs) > 3
    assert pngs[:4] == ["00_capacity_accuracy.png", "01_capacity_solve.png", "02_capacity_solved.png",
                        "03_capacity_curves.png"]
    assert "04_headline.png" in pngs and "05_wider.png" in pngs
    assert "Speed: In short" in text and "Capacity: in short" in text


# --- the report of a capacity run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def capacity_report(tmp_path_factory: pytest.TempPathFactory, winning) -> tuple[pathlib.Path, str]:
    df = winning.copy()
    df.attrs = dict(winning.attrs)
    path = reports.build_report(df, tmp_path_factory.mktemp("capacity") / "capacity.html")
    return path, path.read_text(encoding="utf-8")


def test_training_only_report_has_the_capacity_sections_and_not_the_timing_ones(capacity_report):
    _, text = capacity_report
    for section in reports.CAPACITY_SECTIONS + ("environment", "sweep", "reproduce"):
        assert f'<section id="{section}">' in text, section
    for section in ("headline", "claims", "figures", "where", "summary", "speedups", "failures"):
        assert f'<section id="{section}">' not in text, section
    assert "tlstm-bench run capacity --out /tmp/capacity" in text and "0123abc" in text
    assert "Wider/Deeper at a fixed budget" in text  # the headline sentence
    assert "The seed rule." in text and "log-rank test on those censored times" in text
    assert re.search(r"Wider/Deeper</b></td><td[^>]*>holds<", text)
    assert re.search(r"Faster in practice</b></td><td[^>]*>not measured<", text)
    assert "64 training run(s), 64 ok, 8 solved" in text  # 4 models x 4 depths x 4 seeds; 2 depths x 4 solved


def test_training_only_report_embeds_and_writes_its_figures(capacity_report):
    path, text = capacity_report
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(srcs) == 4 and "Not in these results" not in text
    pngs = sorted((path.parent / "capacity_figures").glob("*.png"))
    assert [p.name for p in pngs] == ["00_capacity_accuracy.png", "01_capacity_solve.png", "02_capacity_solved.png",
                                      "03_capacity_curves.png"]
    on_disk = {p.read_bytes() for p in pngs}
    for src in srcs:
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG_MAGIC) and data in on_disk
    assert not re.search(r'(src|href)\s*=\s*"(?!data:|#)', text) and "<script" not in text.lower()


def test_figures_say_what_is_missing_instead_of_drawing_nothing():
    crashed = frame(lambda label, depth, seed: {"status": "crashed", "samples_seen": 0}, depths=(1,), seeds=(0,))
    cap = build_capacity(reports.normalize(crashed))
    assert all(f.png is None and "tlstm-bench run capacity" in f.missing for f in cap.figures)
    assert all(c.verdict == NOT_MEASURED for c in cap.claims[:3])


def test_a_second_task_is_judged_on_its_own():
    memo = dict(TRAIN, task="memorization", digits=None, length=20, alphabet=8, params_budget=BUDGET)
    addition = frame(tlstm_wins)
    memorization = frame(lambda label, depth, seed: {**lstm_wins(label, depth, seed), "train": memo})
    both = pd.concat([addition, memorization], ignore_index=True)
    claims = _claims(both)
    versus = claims["tLSTM vs stacked LSTM"]
    settings = {d["setting"] for d in versus.data}
    assert settings == {f"addition D=5, budget {BUDGET:,} params", f"memorization S=20 V=8, budget {BUDGET:,} params"}
    assert versus.verdict == PARTLY  # holds on addition, does not hold on memorization
    assert not math.isnan(capacity_rows(reports.normalize(both))["budget"].iloc[0])
