"""The results frame as the report reads it: the contract's columns, checked where the frame enters.

A results frame (from ``bench.results.load`` or the pytest-benchmark converter) has one row per point,
the config fields, ``status``, ``message``, the metrics and ``samples_s``; ``attrs["env"]`` holds the
environment and ``attrs["sweep"]`` the sweep definition. Frames from pytest-benchmark lack many metrics
and the sweep; every missing column is added here as NaN so the rest of the report never has to ask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench.contract import (
    COLUMNS,
    DEVICES,
    FAMILIES,
    MODES,
    NOISY_IQR_OVER_MEDIAN,
    NUMERIC_COLUMNS,
    STATUSES,
    recurrent_steps,
    timing_metrics,
)  # fmt: skip

# Only these two identify a point at all; every other column may be missing.
REQUIRED_COLUMNS = ("impl", "status")


class ReportInputError(ValueError):
    """The results frame breaks the results contract; the message names the field and allowed values."""


def _check_values(df: pd.DataFrame, field: str, allowed: tuple[str, ...], allow_missing: bool) -> None:
    values = df[field]
    present = values[values.notna()] if allow_missing else values
    bad = sorted({repr(v) for v in present if v not in allowed})
    if bad:
        raise ReportInputError(
            f"results column {field!r} has values {', '.join(bad)}; allowed: {', '.join(allowed)}"
            + (" (or missing)" if allow_missing else "")
        )


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every contract column present, numeric columns as floats, values checked.

    Raises ReportInputError naming the column when a required column is absent or a categorical
    column (status, family, mode, device) holds a value outside the contract.
    """
    if not isinstance(df, pd.DataFrame):
        raise ReportInputError(f"df must be a pandas.DataFrame (from bench.results.load), got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ReportInputError(
            f"results frame lacks column(s) {', '.join(missing)}; every row needs 'impl' (an implementation "
            f"name) and 'status' (one of {', '.join(STATUSES)})"
        )
    out = df.copy()
    out.attrs = dict(df.attrs)
    for column in COLUMNS:
        if column not in out.columns:
            out[column] = np.nan
    _check_values(out, "status", STATUSES, allow_missing=False)
    _check_values(out, "family", FAMILIES, allow_missing=True)
    _check_values(out, "mode", MODES, allow_missing=True)
    _check_values(out, "device", DEVICES, allow_missing=True)
    for column in NUMERIC_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    # A missing family is inferred from the name, as the registry names them (lstm_* vs tlstm_*).
    guess = out["impl"].astype(str).map(lambda name: "tlstm" if name.startswith("tlstm") else "lstm")
    out["family"] = out["family"].where(out["family"].notna(), guess)
    _fill_timing(out)
    _check_times(out)
    # The noise flag: trusted when recorded, else derived by the contract's rule.
    derived = out["time_iqr_s"] / out["time_median_s"] > NOISY_IQR_OVER_MEDIAN
    out["noisy"] = [bool(n) if isinstance(n, (bool, np.bool_)) else bool(d) for n, d in zip(out["noisy"], derived)]
    out["message"] = out["message"].map(
        lambda m: "" if m is None or (isinstance(m, float) and math.isnan(m)) else str(m))
    out["variant"] = [variant_name(row) for row in out.itertuples(index=False)]
    out.attrs = dict(df.attrs)
    return out


def _check_times(out: pd.DataFrame) -> None:
    """A timed point's times must be positive: a zero or negative one is not a measurement."""
    for column in ("time_median_s", "time_per_step_s"):
        bad = out.index[(out["status"] == "ok") & out[column].notna() & ~(out[column] > 0)]
        if len(bad):
            row = out.loc[bad[0]]
            size = f"P={row['tensor_size']:g} " if pd.notna(row["tensor_size"]) else ""
            raise ReportInputError(
                f"results row {bad[0]} ({row['impl']} {size}L={row['depth']:g} {row['mode']}): {column} must be a "
                f"positive number of seconds, got {row[column]!r} ({len(bad)} row(s) like it)"
            )


def _fill_timing(out: pd.DataFrame) -> None:
    """Rows with a median but no per-step metrics (a frame built by hand) get them from the contract's
    one timing function, from their samples or, without samples, their quartiles."""
    todo = out.index[out["time_median_s"].notna() & out["time_per_step_s"].isna() & out["seq_len"].notna()]
    for flag in ("noisy", "processes_disagree"):
        out[flag] = out[flag].astype(object)  # a column of NaN is float; the flag is a bool
    for i in todo:
        row = out.loc[i]
        depth = row["depth"] if pd.notna(row["depth"]) else 1
        samples = row["samples_s"] if isinstance(row["samples_s"], list) else []
        metrics = timing_metrics(
            samples, seq_len=int(row["seq_len"]), recurrent_steps=recurrent_steps(row["family"], int(row["seq_len"]),
                                                                                  int(depth)),
            batch=int(row["batch"]) if pd.notna(row["batch"]) else 1,
            flops=row["flops"] if pd.notna(row["flops"]) else None,
            quartiles=(row["time_median_s"], row["time_q1_s"], row["time_q3_s"]),
        )
        for name, value in metrics.items():
            if pd.isna(out.at[i, name]):
                out.at[i, name] = value


def variant_name(row: Any) -> str:
    """The paper's name for a row's model: tLSTM, tLSTM-M, tLSTM-F, tLSTM+CN, or sLSTM."""
    if getattr(row, "family", None) != "tlstm":
        return "sLSTM"
    k = getattr(row, "kernel_size", float("nan"))
    name = "tLSTM-F" if k == 2 else "tLSTM"
    if getattr(row, "mem_conv", True) is False or getattr(row, "mem_conv", True) == 0:
        name += "-M"
    if getattr(row, "norm", None) == "cn":
        name += "+CN"
    return name


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Only the points that passed the correctness gate and were timed: the only ones plotted."""
    return df[df["status"] == "ok"]


def line_labels(ok: pd.DataFrame) -> pd.Series:
    """One label per plotted line: the implementation, plus the variant when one impl ran several."""
    variants_per_impl = ok.groupby("impl")["variant"].nunique()
    return pd.Series(
        [f"{impl} [{variant}]" if variants_per_impl.get(impl, 1) > 1 else str(impl)
         for impl, variant in zip(ok["impl"], ok["variant"])],
        index=ok.index,
        dtype=object,
    )


def fmt_int(value: Any) -> str:
    """An integer-valued float as '1,234'; missing as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{int(round(float(value))):,}"
