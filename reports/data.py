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

CONFIG_FIELDS = (
    "impl", "family", "tensor_size", "depth", "seq_len", "batch", "channels", "input_size",
    "kernel_size", "mem_conv", "norm", "dtype", "mode", "device", "repeats", "warmup", "seed",
)
METRIC_FIELDS = (
    "params", "hidden_size", "backend", "time_median_s", "time_q1_s", "time_q3_s", "time_iqr_s",
    "noisy", "time_per_step_s", "throughput_tokens_s", "flops", "gflops", "peak_mem_bytes",
    "saved_bytes", "rss_peak_bytes", "energy_j", "energy_note", "max_abs_err",
)
OTHER_FIELDS = ("status", "message", "samples_s", "key", "sweep", "index")

STATUSES = ("ok", "incorrect", "oom", "crashed", "timeout", "unavailable", "error")
FAMILIES = ("tlstm", "lstm")
MODES = ("inference", "training")
DEVICES = ("cpu", "cuda")

# Only these two identify a point at all; every other column may be missing.
REQUIRED_COLUMNS = ("impl", "status")

NUMERIC_FIELDS = (
    "tensor_size", "depth", "seq_len", "batch", "channels", "input_size", "kernel_size",
    "params", "hidden_size", "time_median_s", "time_q1_s", "time_q3_s", "time_iqr_s",
    "time_per_step_s", "throughput_tokens_s", "flops", "gflops", "peak_mem_bytes", "saved_bytes",
    "rss_peak_bytes", "energy_j", "max_abs_err",
)


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
    for column in CONFIG_FIELDS + METRIC_FIELDS + OTHER_FIELDS:
        if column not in out.columns:
            out[column] = np.nan
    _check_values(out, "status", STATUSES, allow_missing=False)
    _check_values(out, "family", FAMILIES, allow_missing=True)
    _check_values(out, "mode", MODES, allow_missing=True)
    _check_values(out, "device", DEVICES, allow_missing=True)
    for column in NUMERIC_FIELDS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    # A missing family is inferred from the name, as the registry names them (lstm_* vs tlstm_*).
    guess = out["impl"].astype(str).map(lambda name: "tlstm" if name.startswith("tlstm") else "lstm")
    out["family"] = out["family"].where(out["family"].notna(), guess)
    # The noise flag: trusted when recorded, else derived by the contract's rule (IQR/median > 10%).
    derived = out["time_iqr_s"] / out["time_median_s"] > 0.10
    out["noisy"] = [bool(n) if isinstance(n, (bool, np.bool_)) else bool(d) for n, d in zip(out["noisy"], derived)]
    if out["time_per_step_s"].isna().any():
        per_step = out["time_median_s"] / out["seq_len"]
        out["time_per_step_s"] = out["time_per_step_s"].fillna(per_step)
    out["message"] = out["message"].map(lambda m: "" if m is None or (isinstance(m, float) and math.isnan(m)) else str(m))
    out["variant"] = [variant_name(row) for row in out.itertuples(index=False)]
    out.attrs = dict(df.attrs)
    return out


def variant_name(row: Any) -> str:
    """The spec's name (section 4) for a row's model: tLSTM, tLSTM-M, tLSTM-F, tLSTM+CN, or sLSTM."""
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


def fmt_time(seconds: Any) -> str:
    """Seconds in the unit that keeps three significant digits readable (ns, µs, ms, s)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    s = float(seconds)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"
