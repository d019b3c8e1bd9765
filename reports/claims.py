"""The paper's four claims (Wider, Deeper, Cheaper, Faster) judged from a results frame, as verdicts.

Each judge takes a normalized frame (``reports.data.normalize``), looks only at ``status == "ok"``
points (except Deeper, which also counts points that failed the correctness gate), and returns a
``Claim`` whose ``verdict`` is one of ``VERDICTS`` with the numbers that decide it. The rule each judge
applies is written into ``Claim.rule`` so the report states it next to the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from bench import axes
from bench.axes import format_seconds

from .data import fmt_int, ok_rows, samples_of, timing_rows
from .stats import CONFIDENCE, Interval, bootstrap_medians_many, interval, slopes

HOLDS = "holds"
BY_CONSTRUCTION = "holds by construction"
PARTLY = "holds in part"
FAILS = "does not hold"
UNDECIDED = "undecided"
NOT_MEASURED = "not measured"
VERDICTS = (HOLDS, BY_CONSTRUCTION, PARTLY, FAILS, UNDECIDED, NOT_MEASURED)

# The Faster rule: the tLSTM's time per step may grow with depth (per-layer slope) at most this
# fraction of the stacked LSTM's, i.e. less than half as fast; judged on the bootstrap interval.
FASTER_GROWTH_FRACTION = 0.5


@dataclass
class Claim:
    """One claim's verdict. ``evidence`` is the one-line reason; ``details`` one line per slice judged;
    ``data`` the same as dicts for programs and tests."""

    name: str
    verdict: str
    evidence: str
    rule: str
    details: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    headline: str = ""  # one sentence in plain words, for the top of the report


def lstm_params(input_size: int, width: int, layers: int) -> int:
    """torch.nn.LSTM(R, M, num_layers=L): 4M(R+M) + 8M + (L-1)(8M^2 + 8M)."""
    return 4 * width * (input_size + width) + 8 * width + (layers - 1) * (8 * width * width + 8 * width)


def _span(values: list[float], spec: str) -> str:
    """'0.2–0.81' for a range, '0.82' when every value is the same."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}–{hi}"


def _ints(values: Any) -> list[int]:
    return sorted({int(v) for v in values if not (isinstance(v, float) and math.isnan(v))})


def judge_wider(df: pd.DataFrame) -> Claim:
    """Wider: at fixed M, R and K, a tLSTM's parameter count is identical for every P present while
    its hidden size P*M grows; a stacked LSTM's count grows with every layer."""
    rule = ("a parameter fact, true by construction (the weights are shared by all P locations): checked that, "
            "for every tLSTM with two or more tensor sizes at the same channels, input size and kernel, the "
            "parameter count is exactly the same for every P while the hidden state (P·M units) grows; compared "
            "with one LSTM layer as wide as the tLSTM's hidden state and with the stacked LSTM of depth P")
    ok = ok_rows(df)
    tl = ok[(ok["family"] == "tlstm") & ok["params"].notna() & ok["tensor_size"].notna()]
    # one tLSTM: an implementation at every model axis but its size
    group_keys = ["impl", "variant", *(a for a in axes.names(axes.MODEL) if a not in axes.names(axes.SIZE))]
    details: list[str] = []
    data: list[dict[str, Any]] = []
    failures: list[str] = []
    for key, group in tl.groupby(group_keys, dropna=False):
        sizes = _ints(group["tensor_size"])
        if len(sizes) < 2:
            continue
        params = _ints(group["params"])
        per_p = group.groupby("tensor_size")["hidden_units"].median()
        hidden = [per_p.get(float(p), math.nan) for p in sizes]
        hidden_grows = all(b > a for a, b in zip(hidden, hidden[1:]) if not (math.isnan(a) or math.isnan(b)))
        constant = len(params) == 1
        model = dict(zip(group_keys[2:], key[2:]))
        labelled = sorted((k for k in model if axes.get(k).letter), key=lambda k: axes.get(k).has(axes.SWITCH))
        where = f"{key[0]} ({key[1]}, " + ", ".join(axes.get(k).label(model[k]) for k in labelled) + ")"
        line = (f"{where}: params = {', '.join(fmt_int(p) for p in params)} for P = {', '.join(map(str, sizes))}"
                f"; hidden size {fmt_int(hidden[0])} → {fmt_int(hidden[-1])}")
        details.append(line)
        data.append({"impl": key[0], "variant": key[1], "channels": model["channels"],
                     "input_size": model["input_size"], "tensor_sizes": sizes,
                     "params": params, "hidden_units": hidden, "constant": constant, "hidden_grows": hidden_grows})
        if not (constant and hidden_grows):
            failures.append(where)
    lstm = ok[(ok["family"] == "lstm") & ok["params"].notna() & ok["depth"].notna()]
    for key, group in lstm.groupby(["impl", "channels", "input_size"], dropna=False):
        per_depth = group.groupby("depth")["params"].median()
        if len(per_depth) < 2:
            continue
        details.append(f"{key[0]} (stacked, M={int(key[1])}): params {fmt_int(per_depth.iloc[0])} at L="
                       f"{int(per_depth.index[0])} → {fmt_int(per_depth.iloc[-1])} at L={int(per_depth.index[-1])}")
    if not data:
        return Claim("Wider", NOT_MEASURED, "no tLSTM measured at two or more tensor sizes with the same "
                     "channels (run `tlstm-bench run quick`)", rule, details, data)
    if failures:
        return Claim("Wider", FAILS, "parameter count changes with P (or hidden size does not grow) for "
                     + "; ".join(failures), rule, details, data)
    first = data[0]
    configs = {(d["variant"], d["channels"], d["input_size"]) for d in data}  # implementations of one are one
    width, channels, inputs = first["hidden_units"][-1], int(first["channels"]), int(first["input_size"])
    wide_lstm = lstm_params(inputs, int(width), 1)
    stacked = lstm_params(inputs, channels, first["tensor_sizes"][-1])
    evidence = (f"params constant at {fmt_int(first['params'][0])} "
                f"for P = {', '.join(map(str, first['tensor_sizes']))} "
                f"while hidden units grow {fmt_int(first['hidden_units'][0])} → {fmt_int(width)}"
                + (f" (and in {len(configs) - 1} more configuration(s))" if len(configs) > 1 else "")
                + f"; one LSTM layer of {fmt_int(width)} units has {fmt_int(wide_lstm)}, a stacked LSTM of "
                f"{first['tensor_sizes'][-1]} layers of {channels} has {fmt_int(stacked)}")
    headline = (f"Wider: yes, by construction: {fmt_int(width)} hidden units cost the tLSTM "
                f"{fmt_int(first['params'][0])} parameters, the same as at P = {first['tensor_sizes'][0]}; one LSTM "
                f"layer that wide has {fmt_int(wide_lstm)}.")
    return Claim("Wider", BY_CONSTRUCTION, evidence, rule, details, data, headline)


def judge_deeper(df: pd.DataFrame) -> Claim:
    """Deeper: tLSTM points reach depth L = ceil(P / (K // 2)) and pass the correctness gate against
    the reference (which checks outputs read at the last location L-1 steps later)."""
    rule = ("true by construction: a tLSTM of tensor size P reads its output L - 1 = ceil(P / (K // 2)) - 1 steps "
            "after the input entered, so its depth is L; what the results can show is that each implementation "
            "computes that model: no tLSTM point failed the correctness gate against the reference (status "
            "'incorrect') and tLSTM points with L > 1 ran. Whether the depth buys accuracy needs training results")
    tl_all = df[df["family"] == "tlstm"]
    ok = ok_rows(tl_all)
    incorrect = tl_all[tl_all["status"] == "incorrect"]
    known = ok[ok["tensor_depth"].notna() & ok["depth"].notna()]
    mismatched = known[known["depth"] != known["tensor_depth"]]
    depths = _ints(ok["depth"])
    err = ok["max_abs_err"].max() if ok["max_abs_err"].notna().any() else math.nan
    details = []
    data = []
    for impl, group in ok.groupby("impl"):
        d = _ints(group["depth"])
        gate = group["max_abs_err"]
        details.append(f"{impl}: depths {', '.join(map(str, d))} reached, {len(group)} point(s) passed the gate"
                       + (f", max abs error {gate.max():.2g}" if gate.notna().any() else ""))
        data.append({"impl": impl, "depths": d, "passed": len(group)})
    for impl, group in incorrect.groupby("impl"):
        details.append(f"{impl}: {len(group)} point(s) failed the correctness gate (depths "
                       f"{', '.join(map(str, _ints(group['depth'])))})")
    for _, row in mismatched.iterrows():
        details.append(f"{row['impl']}: depth {int(row['depth'])} recorded for P={int(row['tensor_size'])}, "
                       f"expected {int(row['tensor_depth'])}")
    if len(incorrect) or len(mismatched):
        where = sorted(set(incorrect["impl"]) | set(mismatched["impl"]))
        return Claim("Deeper", FAILS, f"{len(incorrect)} tLSTM point(s) failed the correctness gate and "
                     f"{len(mismatched)} have the wrong depth, in {', '.join(where)}", rule, details, data)
    if not depths or max(depths) <= 1:
        return Claim("Deeper", NOT_MEASURED, "no tLSTM point with depth > 1 passed the gate "
                     "(run `tlstm-bench run quick` or `tlstm-bench run depth`)", rule, details, data)
    evidence = (f"depths L = {', '.join(map(str, depths))} by construction (P = L · (K // 2)); {len(ok)} tLSTM "
                "point(s) passed the correctness gate" + (f" (max abs error {err:.2g})" if not math.isnan(err) else ""))
    headline = (f"Deeper: yes, by construction (depth up to {max(depths)} here, from the output delay); every tLSTM "
                "point matched the reference, so the implementations compute that deep model.")
    return Claim("Deeper", BY_CONSTRUCTION, evidence, rule, details, data, headline)


def judge_cheaper(df: pd.DataFrame) -> Claim:
    """Cheaper: at the same depth, channels and input size, a tLSTM has fewer parameters than the
    stacked LSTM. Depth 1 is reported but not judged: a single layer has nothing to share."""
    rule = ("a parameter fact, true by construction at L >= 2: checked that at every matched depth L >= 2 (same L, "
            "channels M, input size R) the tLSTM has fewer parameters than the stacked LSTM (L = 1 is listed, not "
            "judged); shown beside it, the forward FLOPs per output step of each (the cost formulas), which the "
            "tLSTM does not save")
    ok = ok_rows(df).copy()
    ok = ok[ok["params"].notna() & ok["depth"].notna()]
    # forward FLOPs per sample and output step (training counts 3x the forward)
    ok["flops_per_token"] = ok["flops"] / ok["mode"].map({"training": 3.0}).fillna(1.0) / (ok["batch"] * ok["seq_len"])
    keys = ["depth", "channels", "input_size"]
    tlstm_params = (ok[ok["family"] == "tlstm"].groupby(keys + ["impl", "variant"], dropna=False)
                    [["params", "flops_per_token"]].median().reset_index())
    lstm_params = (ok[ok["family"] == "lstm"].groupby(keys + ["impl"], dropna=False)[["params", "flops_per_token"]]
                   .median().reset_index())
    if tlstm_params.empty or lstm_params.empty:
        return Claim("Cheaper", NOT_MEASURED, "needs tLSTM and stacked-LSTM points at the same depth and channels "
                     "(run `tlstm-bench run quick`)", rule)
    merged = tlstm_params.merge(lstm_params, on=keys, suffixes=("_tlstm", "_lstm"))
    if merged.empty:
        return Claim("Cheaper", NOT_MEASURED, "no tLSTM and stacked-LSTM points share depth, channels and input "
                     "size (run `tlstm-bench run quick`)", rule)
    details, data, failing = [], [], []
    judged = 0
    for _, row in merged.sort_values(keys).iterrows():
        ratio = row["params_tlstm"] / row["params_lstm"]
        flop_ratio = row["flops_per_token_tlstm"] / row["flops_per_token_lstm"]
        depth = int(row["depth"])
        line = (f"L={depth}, M={int(row['channels'])}, R={int(row['input_size'])}: "
                f"{row['impl_tlstm']} [{row['variant']}] "
                f"{fmt_int(row['params_tlstm'])} vs {row['impl_lstm']} {fmt_int(row['params_lstm'])} params "
                f"(ratio {ratio:.3f}); FLOPs per output step ratio {flop_ratio:.2f}"
                + (" — not judged at L=1" if depth == 1 else ""))
        details.append(line)
        data.append({"depth": depth, "channels": row["channels"], "impl_tlstm": row["impl_tlstm"],
                     "impl_lstm": row["impl_lstm"], "params_tlstm": row["params_tlstm"],
                     "params_lstm": row["params_lstm"], "ratio": ratio, "flop_ratio": flop_ratio})
        if depth >= 2:
            judged += 1
            if ratio >= 1:
                failing.append(f"L={depth}, M={int(row['channels'])} "
                               f"({row['impl_tlstm']} [{row['variant']}], ratio {ratio:.2f})")
    if judged == 0:
        return Claim("Cheaper", NOT_MEASURED, "tLSTM and stacked LSTM matched only at depth 1 (run `tlstm-bench "
                     "run quick` for depths >= 2)", rule, details, data)
    ratios = [d["ratio"] for d in data if d["depth"] >= 2]
    flop_ratios = [d["flop_ratio"] for d in data if d["depth"] >= 2 and not math.isnan(d["flop_ratio"])]
    flop_text = (f"; but {_span(flop_ratios, '.2g')}x the stacked LSTM's FLOPs per output step"
                 if flop_ratios else "")
    if failing:
        verdict = FAILS if len(failing) == judged else PARTLY
        return Claim("Cheaper", verdict, "tLSTM has at least as many parameters as the stacked LSTM at "
                     + "; ".join(failing), rule, details, data)
    deepest = max((d for d in data), key=lambda d: d["depth"])
    evidence = (f"fewer parameters at all {judged} matched point(s) with L >= 2: ratio tLSTM/LSTM "
                f"{_span(ratios, '.3f')} (at L={deepest['depth']}: {fmt_int(deepest['params_tlstm'])} "
                f"vs {fmt_int(deepest['params_lstm'])}){flop_text}")
    headline = (f"Cheaper in parameters, by construction: {_span(ratios, '.2g')}x the stacked LSTM's at "
                f"the same depth and width{flop_text.replace('; but', ', but')} (it saves parameters and dependent "
                "steps, not arithmetic).")
    return Claim("Cheaper", BY_CONSTRUCTION, evidence, rule, details, data, headline)


# A claim's summary names at most this many slices per regime (batch and mode); the details list them all.
MAX_SLICES_NAMED = 5
# The report judges each combination of these separately: the machine and every axis with the slice role.
SLICE_FIELDS = ("machine", *axes.names(axes.SLICE))
# Which time the Faster rule reads: what a user pays per input token. A tLSTM also runs L - 1 extra
# steps per sequence; time per recurrent step (call / (T+L-1)) is reported beside it.
FASTER_TIME = "time_per_step_s"


@dataclass(frozen=True)
class _Line:
    """One implementation's time per output step against depth in one slice, with bootstrap replicates."""

    impl: str
    variant: str
    depths: np.ndarray  # [D]
    medians: np.ndarray  # [D] time per output step
    replicates: np.ndarray  # [R, D]
    rows: np.ndarray = field(compare=False, repr=False)  # [D] the points' positions in the frame judged

    def slope(self) -> Interval:
        return interval(float(slopes(self.depths, self.medians)[0]), slopes(self.depths, self.replicates))

    def exponent(self) -> Interval:
        """The log-log exponent: time ~ L^b (b = 0 flat, b = 1 linear in depth)."""
        logd = np.log(self.depths)
        return interval(float(slopes(logd, np.log(self.medians))[0]), slopes(logd, np.log(self.replicates)))

    def at(self, depths: np.ndarray) -> _Line:
        keep = np.isin(self.depths, depths)
        return _Line(self.impl, self.variant, self.depths[keep], self.medians[keep], self.replicates[:, keep],
                     self.rows[keep])


def _lines(frame: _Columns, positions: np.ndarray) -> list[_Line]:
    """Each implementation's line among the rows at ``positions``, its medians only (replicates come later,
    see ``_resampled``)."""
    by_line: dict[tuple[str, str], list[int]] = {}
    for position in positions:
        impl, variant = frame.impl[position], frame.variant[position]
        if not (pd.isna(impl) or pd.isna(variant)):
            by_line.setdefault((str(impl), str(variant)), []).append(position)
    lines = []
    for (impl, variant), rows in sorted(by_line.items()):
        idx = np.asarray(rows)
        idx = idx[np.argsort(frame.depth[idx], kind="stable")]
        lines.append(_Line(impl, variant, frame.depth[idx], frame.time[idx], np.empty((0, len(idx))), idx))
    return lines


def _resampled(frame: _Columns, lines: list[_Line], rng: np.random.Generator) -> list[_Line]:
    """The lines with their bootstrap replicates, every point of them resampled in one call."""
    if not lines:
        return []
    rows = np.concatenate([line.rows for line in lines])
    samples = [frame.samples(i) for i in rows]  # only the judged points
    medians = bootstrap_medians_many([s for s, _ in samples], [p for _, p in samples], rng=rng)
    # the contract's per-step time over its per-call median: one scale for every replicate of a point; a point
    # without raw samples (a pytest-benchmark file saved without data) has no spread to draw from
    reps = np.where(np.isnan(medians), frame.time[rows][:, None], medians * (frame.time / frame.median)[rows][:, None])
    out, start = [], 0
    for line in lines:
        out.append(replace(line, replicates=reps[start:start + len(line.depths)].T.copy()))
        start += len(line.depths)
    return out


@dataclass(frozen=True)
class _Columns:
    """The columns the Faster rule reads, as arrays (positions index them)."""

    impl: np.ndarray
    variant: np.ndarray
    depth: np.ndarray
    time: np.ndarray  # FASTER_TIME
    median: np.ndarray  # time per call
    samples_s: np.ndarray  # object arrays: each point's raw samples and their processes
    sample_processes: np.ndarray

    @classmethod
    def of(cls, ok: pd.DataFrame) -> _Columns:
        return cls(ok["impl"].to_numpy(), ok["variant"].to_numpy(), ok["depth"].to_numpy(float),
                   ok[FASTER_TIME].to_numpy(float), ok["time_median_s"].to_numpy(float),
                   ok["samples_s"].to_numpy(), ok["sample_processes"].to_numpy())

    def samples(self, position: int) -> tuple[np.ndarray, np.ndarray | None]:
        return samples_of({"samples_s": self.samples_s[position], "sample_processes": self.sample_processes[position]})


def _fastest(lines: list[_Line], depths: set[float]) -> _Line | None:
    """The line with the lowest geometric-mean time over ``depths`` (at least two of them present)."""
    best, best_time = None, math.inf
    for line in lines:
        shared = line.at(np.array(sorted(depths & set(line.depths))))
        if len(shared.depths) < 2:
            continue
        time = float(np.exp(np.log(shared.medians).mean()))
        if time < best_time:
            best, best_time = shared, time
    return best


def _fmt_ratio(ratio: Interval) -> str:
    """The growth ratio as the paper would say it: '3.1x less growth [2.4, 3.9]' (or more growth)."""
    if ratio.value <= 0:
        return f"no growth with depth (slope ratio {ratio:.2g})"
    if ratio.value < 1:
        lo = 1 / ratio.hi if ratio.hi > 0 else 0.0
        if ratio.lo <= 0:  # the interval reaches no growth at all: bounded on one side only
            return f"{1 / ratio.value:.3g}x less growth (at least {lo:.3g}x)"
        return f"{1 / ratio.value:.3g}x less growth [{lo:.3g}, {1 / ratio.lo:.3g}]"
    return f"{ratio.value:.3g}x more growth [{ratio.lo:.3g}, {ratio.hi:.3g}]"


def judge_faster(df: pd.DataFrame, seed: int = 0) -> Claim:
    """Faster: the fastest tLSTM's time per step grows with depth less than half as fast as the fastest
    stacked LSTM's, judged per slice on bootstrap intervals from the raw samples."""
    rule = (f"per slice (machine, device, dtype, mode, batch, T, M, R): the fastest tLSTM and the fastest stacked "
            f"LSTM (lowest geometric-mean time per output step over the depths both ran) are each fitted time per "
            f"output step = a + b·L over all those depths; holds where the ratio of per-layer slopes "
            f"b_tLSTM / b_LSTM is below {FASTER_GROWTH_FRACTION:g} with its whole {int(CONFIDENCE * 100)}% bootstrap "
            f"interval (from the raw samples, hierarchical over worker processes), does not hold where the whole "
            f"interval is above, undecided where it straddles {FASTER_GROWTH_FRACTION:g}; not judged where the "
            f"stacked LSTM's slope is not positive. Time per recurrent step (call / (T+L-1)) is in the tables, not in "
            f"the rule")
    ok = ok_rows(df)
    ok = ok[ok[FASTER_TIME].notna() & ok["depth"].notna() & (ok[FASTER_TIME] > 0)].reset_index(drop=True)
    frame = _Columns.of(ok)
    family = ok["family"].to_numpy()
    machines = ok["machine"].nunique() > 1
    rng = np.random.default_rng(seed)
    details: list[str] = []
    data: list[dict[str, Any]] = []
    judged: list[tuple[Any, _Line, _Line]] = []  # per slice: its fastest tLSTM and fastest stacked LSTM
    for slice_key, positions in ok.groupby(list(SLICE_FIELDS), dropna=False).indices.items():
        tlstm_lines = _lines(frame, positions[family[positions] == "tlstm"])
        lstm_lines = _lines(frame, positions[family[positions] == "lstm"])
        lstm_depths = {d for line in lstm_lines for d in line.depths}
        tlstm = _fastest(tlstm_lines, lstm_depths)
        if tlstm is None:
            continue
        lstm = _fastest(lstm_lines, set(tlstm.depths))
        if lstm is None:
            continue
        judged.append((slice_key, tlstm.at(lstm.depths), lstm))
    # only the lines judged are resampled, all of them in one call
    lines = iter(_resampled(frame, [line for _, tlstm, lstm in judged for line in (tlstm, lstm)], rng))
    for (slice_key, _, _), tlstm, lstm in zip(judged, lines, lines):
        where = dict(zip(SLICE_FIELDS, slice_key))
        label = (f"{where['device']} {where['dtype']} {where['mode']}, batch {fmt_int(where['batch'])}, "
                 f"T={fmt_int(where['seq_len'])}, M={fmt_int(where['channels'])}"
                 + (f", on {where['machine']}" if machines else ""))
        pair = (f"{tlstm.impl} [{tlstm.variant}] vs {lstm.impl}, L {int(tlstm.depths[0])}→{int(tlstm.depths[-1])}"
                f" ({len(tlstm.depths)} depths)")
        t_slope, l_slope = tlstm.slope(), lstm.slope()
        t_exp, l_exp = tlstm.exponent(), lstm.exponent()
        slopes_text = (f"slopes {format_seconds(t_slope.value)}/layer [{format_seconds(t_slope.lo)}, "
                       f"{format_seconds(t_slope.hi)}] vs {format_seconds(l_slope.value)}/layer "
                       f"[{format_seconds(l_slope.lo)}, {format_seconds(l_slope.hi)}]; log-log exponents "
                       f"{t_exp:.2f} vs {l_exp:.2f}")
        deepest = len(tlstm.depths) - 1
        outright = interval(float(tlstm.medians[deepest] / lstm.medians[deepest]),
                            tlstm.replicates[:, deepest] / lstm.replicates[:, deepest])
        outright_text = (f"at L={int(tlstm.depths[deepest])} the tLSTM takes {outright:.2g}x the LSTM's time per "
                         f"step")
        entry = {**where, "impl": tlstm.impl, "variant": tlstm.variant, "lstm_impl": lstm.impl,
                 "depths": [int(d) for d in tlstm.depths], "tlstm_slope": t_slope, "lstm_slope": l_slope,
                 "tlstm_exponent": t_exp, "lstm_exponent": l_exp, "outright": outright, "tlstm_line": tlstm,
                 "lstm_line": lstm}
        if l_slope.value <= 0:
            details.append(f"{label}: {pair}: not judged, the stacked LSTM did not slow down with depth "
                           f"({slopes_text})")
            continue
        lstm_reps = slopes(lstm.depths, lstm.replicates)
        # a replicate where the LSTM did not slow down leaves the ratio unbounded: it widens the interval
        safe = np.where(lstm_reps > 0, lstm_reps, 1.0)
        ratio_reps = np.where(lstm_reps > 0, slopes(tlstm.depths, tlstm.replicates) / safe, np.inf)
        ratio = interval(t_slope.value / l_slope.value, ratio_reps)
        side = ratio.excludes(FASTER_GROWTH_FRACTION)
        verdict = HOLDS if side < 0 else FAILS if side > 0 else UNDECIDED
        entry.update(ratio=ratio, verdict=verdict)
        data.append(entry)
        details.append(f"{label}: {verdict}: {pair}: slope ratio {ratio:.2g} ({_fmt_ratio(ratio)}); {slopes_text}; "
                       f"{outright_text}")
    if not data:
        why = ("the stacked LSTM did not slow down with depth in any slice, so there is no growth to compare with "
               "(rerun on an idle machine)" if details else
               "needs timed tLSTM and stacked-LSTM points at two or more common depths in the same slice")
        return Claim("Faster", NOT_MEASURED, f"{why} (run `tlstm-bench run depth`)", rule, details, data,
                     "Faster: not measured in these results.")
    words = {HOLDS: "yes", FAILS: "no", UNDECIDED: "undecided"}
    # what tells a regime's (batch and mode's) slices apart
    varying = [f for f in SLICE_FIELDS if f not in ("batch", "mode") and len({str(d[f]) for d in data}) > 1]
    by_regime: dict[tuple, list[str]] = {}
    for d in data:
        apart = "".join(f", {axes.get(f).label(d[f]) if f in axes.names() else d[f]}" for f in varying)
        by_regime.setdefault((d["batch"], d["mode"]), []).append(
            f"{words[d['verdict']]}, {_fmt_ratio(d['ratio'])} ({d['impl']} vs {d['lstm_impl']}{apart})")
    def summed_up(parts: list[str]) -> str:  # a large run's hundreds of slices: a count, the rest in the details
        if len(parts) <= MAX_SLICES_NAMED:
            return ", ".join(parts)
        tally = ", ".join(f"{sum(p.startswith(w + ',') for p in parts)} {w}" for w in dict.fromkeys(words.values()))
        return f"{len(parts)} slices ({tally}): " + ", ".join(parts[:MAX_SLICES_NAMED]) + ", ..."

    where_text = "; ".join(f"batch {fmt_int(b)} {m}: " + summed_up(parts)
                           for (b, m), parts in sorted(by_regime.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))))
    verdicts = {d["verdict"] for d in data}
    if len(verdicts) == 1:
        verdict = verdicts.pop()
    elif HOLDS in verdicts:
        verdict = PARTLY
    else:  # some slices do not hold and none holds: the claim does not hold where it was decided
        verdict = FAILS
    n_quicker = sum(d["outright"].hi < 1 for d in data)
    evidence = (f"{where_text}. At the largest depth the fastest tLSTM is faster outright (whole interval below 1x) "
                f"in {n_quicker} of {len(data)} slice(s)")
    headline = (f"Faster, judged on how time per step grows with depth (fastest tLSTM vs fastest stacked LSTM; "
                f"holds at less than half the growth): {verdict}. {where_text}.")
    return Claim("Faster", verdict, evidence, rule, details, data, headline)


def judge_claims(df: pd.DataFrame) -> list[Claim]:
    """All four claims, in the paper's order: Wider, Deeper, Cheaper, Faster, from the timing rows only (the
    training runs are judged by ``reports.capacity``)."""
    df = timing_rows(df)
    return [judge_wider(df), judge_deeper(df), judge_cheaper(df), judge_faster(df)]
