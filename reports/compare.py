"""Two runs of the same sweep, point by point: is the new run slower, with an interval that says so?

    tlstm-bench compare results/base results/new [--threshold 0.05]

Points are matched on their configuration (every field but ``repeats`` and ``warmup``, so a rerun with
a larger budget still matches). For each matched ``ok`` pair: the ratio of median times new / base and
its bootstrap interval (each run's samples resampled on their own, hierarchical over worker processes).
A point is *slower* when the ratio exceeds 1 + threshold and the whole interval lies above 1, *faster*
when the ratio is below 1 / (1 + threshold) and the whole interval lies below 1, else *same*; a point
that was ok in BASE and failed in NEW is *failed*, and fails the gate too. A gate
in the spirit of asv's continuous benchmarking, for sweep results (pytest-benchmark's own compare
does the same job for benchmark runs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.contract import CONFIG_FIELDS, format_seconds

from .data import samples_of
from .stats import bootstrap_medians, interval

MATCH_FIELDS = tuple(f for f in CONFIG_FIELDS if f not in ("repeats", "warmup"))
SLOWER, FASTER, SAME, FAILED = "slower", "faster", "same", "failed"


def _describe(row: pd.Series) -> str:
    size = f"P={int(row['tensor_size'])} " if pd.notna(row["tensor_size"]) else ""
    return (f"{size}L={int(row['depth'])} T={int(row['seq_len'])} B={int(row['batch'])} M={int(row['channels'])} "
            f"{row['dtype']} {row['mode']} {row['device']}")


def compare(base: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """One row per matched ok point: sizes, both medians, the ratio new / base with its interval and the
    verdict; worst (largest ratio) first."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    rng = np.random.default_rng(seed)

    def canonical(value) -> str:  # 2 and 2.0 are one size (a column with a missing value turns to floats)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def by_match(df: pd.DataFrame) -> dict[tuple, pd.Series]:
        return {tuple(canonical(row[f]) for f in MATCH_FIELDS): row for _, row in df.iterrows()}

    def ok(df: pd.DataFrame) -> dict[tuple, pd.Series]:
        return by_match(df[(df["status"] == "ok") & df["time_median_s"].notna()])

    base_ok, new_ok = ok(base), ok(new)
    new_failed = {m: row for m, row in by_match(new[new["status"] != "ok"]).items() if m in base_ok}
    rows = []
    for match, n in new_failed.items():  # ok before, failed now: the worst regression of all
        rows.append({"impl": n["impl"], "point": _describe(n),
                     "base_s": float(base_ok[match]["time_median_s"]), "new_s": np.nan, "ratio": np.inf,
                     "ratio_lo": np.inf, "ratio_hi": np.inf, "verdict": f"{FAILED} ({n['status']})"})
    for match in [m for m in new_ok if m in base_ok]:
        b, n = base_ok[match], new_ok[match]
        ratio = float(n["time_median_s"] / b["time_median_s"])
        b_samples, b_proc = samples_of(b)
        n_samples, n_proc = samples_of(n)
        if b_samples.size and n_samples.size:
            reps = bootstrap_medians(n_samples, n_proc, rng=rng) / bootstrap_medians(b_samples, b_proc, rng=rng)
            band = interval(ratio, reps)
        else:  # no raw samples: no interval, so no point can be called slower or faster
            band = interval(ratio, np.array([0.0, np.inf]))
        if ratio > 1 + threshold and band.lo > 1:
            verdict = SLOWER
        elif ratio < 1 / (1 + threshold) and band.hi < 1:
            verdict = FASTER
        else:
            verdict = SAME
        rows.append({
            "impl": n["impl"],
            "point": _describe(n),
            "base_s": float(b["time_median_s"]), "new_s": float(n["time_median_s"]),
            "ratio": ratio, "ratio_lo": band.lo, "ratio_hi": band.hi, "verdict": verdict,
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=["impl", "point", "base_s", "new_s", "ratio", "ratio_lo", "ratio_hi", "verdict"])
    matched = len(table) - len(new_failed)
    table.attrs["unmatched_new"] = int(len(new_ok) - matched)
    table.attrs["unmatched_base"] = int(len(base_ok) - len(table))
    return table.sort_values("ratio", ascending=False, kind="stable").reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    """The comparison as text, worst first."""
    if table.empty:
        return "(no point is ok in both runs with the same configuration)"
    lines = [f"{'verdict':<8} {'ratio new/base':<24} {'base':>10} {'new':>10}  implementation, point "
             "(median time per call)"]
    for row in table.itertuples(index=False):
        band = f"{row.ratio:.3f} [{row.ratio_lo:.3f}, {row.ratio_hi:.3f}]"
        lines.append(f"{row.verdict:<8} {band:<24} {format_seconds(row.base_s):>10} {format_seconds(row.new_s):>10}  "
                     f"{row.impl}, {row.point}")
    return "\n".join(lines)
