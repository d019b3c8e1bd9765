"""The results frame as the report reads it: the contract's columns, checked where the frame enters.

A results frame (from ``bench.results.load`` or the pytest-benchmark converter) has one row per point,
the config fields, ``status``, ``message``, the metrics and ``samples_s``; ``attrs["env"]`` holds the
environment and ``attrs["sweep"]`` the sweep definition. Frames from pytest-benchmark lack many metrics
and the sweep; every missing column is added here as NaN so the rest of the report never has to ask.

A frame holds timing rows (a timed call; ``train`` is None), training rows (a capacity run of
``bench.train``; ``train`` is the TrainSpec as a dict), or both: ``timing_rows`` and ``training_rows``
split them, and each half of the report reads only its own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench import axes
from bench.axes import fmt_int, missing  # noqa: F401  (fmt_int: the report's modules import it from here)
from bench.contract import (
    COLUMNS,
    CONFIG_FIELDS,
    DERIVED_FIELDS,
    DEVICES,
    FAMILIES,
    MODES,
    NOISY_IQR_OVER_MEDIAN,
    NUMERIC_COLUMNS,
    OPTIONAL_CONFIG_FIELDS,
    STATUSES,
    ContractError,
    Point,
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
    # A missing family is the registry's (a frame built by hand may leave it out)
    registered = out["impl"].astype(str).map(lambda name: getattr(implementation(name), "family", None))
    out["family"] = out["family"].where(out["family"].notna(), registered)
    unknown = out.index[out["family"].isna()]
    if len(unknown):
        raise ReportInputError(f"results column 'family' is missing for {out.at[unknown[0], 'impl']!r}, which is not "
                               f"a registered implementation here; give it: one of {', '.join(FAMILIES)}")
    _fill_derived(out)
    _fill_timing(out)
    _check_times(out)
    # The noise flag: trusted when recorded, else derived by the contract's rule.
    derived = out["time_iqr_s"] / out["time_median_s"] > NOISY_IQR_OVER_MEDIAN
    out["noisy"] = [bool(n) if isinstance(n, (bool, np.bool_)) else bool(d) for n, d in zip(out["noisy"], derived)]
    out["message"] = out["message"].map(
        lambda m: "" if m is None or (isinstance(m, float) and math.isnan(m)) else str(m))
    _check_training(out)
    out["shares_weights"] = out["impl"].astype(str).map(lambda name: bool(getattr(implementation(name),
                                                                                  "shares_weights", False)))
    out["variant"] = [variant_name(row) for row in out.itertuples(index=False)]
    out.attrs = dict(df.attrs)
    return out


def implementation(name: str) -> Any:
    """The registered implementation ``name`` (``implementations.Implementation``: its family, style, whether its
    layers share weights, ...), or None where it is not registered here (a plugin the report did not load)."""
    try:
        import implementations

        return implementations.get(name)
    except (ImportError, KeyError):
        return None


def family_reference(family: str) -> str | None:
    """The family's reference implementation (what speedups are measured against), None where there is none."""
    try:
        import implementations

        return implementations.family_reference(family)
    except ImportError:
        return None


def _check_training(out: pd.DataFrame) -> None:
    """Training rows: ``train`` a dict (or missing on a timing row), ``curve`` a list of evaluation dicts
    (an empty list where none was recorded), ``solved`` a bool (False on timing rows)."""
    for i, train in zip(out.index, out["train"]):
        if not missing(train) and not isinstance(train, dict):
            raise ReportInputError(f"results row {i} ({out.at[i, 'impl']}): 'train' must be the training settings as "
                                   f"a dict (bench.contract.TrainSpec) or None on a timing row, got {train!r}")
    curves = []
    for i, curve in zip(out.index, out["curve"]):
        if missing(curve):
            curve = []
        if not isinstance(curve, list) or not all(isinstance(entry, dict) for entry in curve):
            raise ReportInputError(f"results row {i} ({out.at[i, 'impl']}): 'curve' must be a list of evaluations "
                                   f"{{samples, loss, symbol_acc, sequence_acc, wall_s}}, got {curve!r:.120}")
        curves.append(curve)
    out["curve"] = pd.Series(curves, index=out.index, dtype=object)
    # a recorded flag is trusted; without one, a run solved when it recorded samples to solve
    out["solved"] = [bool(flag) if isinstance(flag, (bool, np.bool_)) else bool(pd.notna(samples))
                     for flag, samples in zip(out["solved"], out["samples_to_solve"])]


def is_training(df: pd.DataFrame) -> pd.Series:
    """True for a training row (``train`` holds the training settings as a dict), False for a timing row."""
    if "train" not in df.columns:
        return pd.Series(False, index=df.index, dtype=bool)
    return df["train"].map(lambda train: isinstance(train, dict)).astype(bool)


def training_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The capacity runs: rows whose ``train`` is a dict."""
    return df[is_training(df)]


def timing_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The timed points: every row that is not a training run."""
    return df[~is_training(df)]


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


def _fill_derived(out: pd.DataFrame) -> None:
    """Rows without the quantities derived from their sizes (a frame built by hand) get them from the
    contract's one place, ``Point.derived``, where their config is complete."""
    todo = out.index[out[list(DERIVED_FIELDS)].isna().all(axis=1)]
    for i in todo:
        config = {}
        for name in CONFIG_FIELDS:
            value = out.at[i, name]
            value = value.item() if hasattr(value, "item") else value
            value = int(value) if isinstance(value, float) and value.is_integer() else value
            config[name] = OPTIONAL_CONFIG_FIELDS.get(name) if missing(value) else value
        try:
            derived = Point.from_dict(config).derived()
        except (ContractError, TypeError, ValueError, AttributeError):
            continue
        for name, value in derived.items():
            out.at[i, name] = np.nan if value is None else value


def samples_of(row: pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
    """A row's raw samples (float64, empty when none were kept) and the worker process of each (None
    when unknown)."""
    samples, processes = row.get("samples_s"), row.get("sample_processes")
    values = np.asarray(samples, dtype=float) if isinstance(samples, (list, np.ndarray)) else np.empty(0)
    ids = np.asarray(processes) if isinstance(processes, (list, np.ndarray)) and len(processes) == values.size else None
    return values, ids


def _fill_timing(out: pd.DataFrame) -> None:
    """Rows with a median but no per-step metrics (a frame built by hand) get them from the contract's
    one timing function, from their samples or, without samples, their quartiles."""
    todo = out.index[out["time_median_s"].notna() & out["time_per_step_s"].isna() & out["seq_len"].notna()]
    for flag in ("noisy", "processes_disagree"):
        out[flag] = out[flag].astype(object)  # a column of NaN is float; the flag is a bool
    for i in todo:
        row = out.loc[i]
        depth = row["depth"] if pd.notna(row["depth"]) else 1
        samples, _ = samples_of(row)
        metrics = timing_metrics(
            samples, seq_len=int(row["seq_len"]),
            recurrent_steps=int(row["recurrent_steps"]) if pd.notna(row["recurrent_steps"])
            else recurrent_steps(row["family"], int(row["seq_len"]), int(depth)),
            batch=int(row["batch"]) if pd.notna(row["batch"]) else 1,
            flops=row["flops"] if pd.notna(row["flops"]) else None,
            quartiles=(row["time_median_s"], row["time_q1_s"], row["time_q3_s"]),
        )
        for name, value in metrics.items():
            if pd.isna(out.at[i, name]):
                out.at[i, name] = value


def variant_name(row: Any) -> str:
    """The paper's name for a row's model (``bench.axes.variant_name``): tLSTM, tLSTM-M, tLSTM-F, tLSTM+CN,
    3D tLSTM+CN, ..., sLSTM, or "sLSTM (shared)" for a stacked LSTM whose layers share their weights."""
    get = row.get if isinstance(row, dict) else lambda name, default=None: getattr(row, name, default)
    shares = get("shares_weights", None)
    if shares is None or missing(shares):
        shares = bool(getattr(implementation(str(get("impl", ""))), "shares_weights", False))
    return axes.variant_name(row, str(get("family", "")), bool(shares))


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Only the points that passed the correctness gate and were timed: the only ones plotted (a training
    run with status ok was not timed, and is left out)."""
    return df[(df["status"] == "ok") & ~is_training(df)]


def line_labels(ok: pd.DataFrame) -> pd.Series:
    """One label per plotted line: the implementation, plus the variant when one impl ran several or ran a
    variant other than the plain tLSTM (so a 3D-only or CN-only run says so)."""
    variants_per_impl = ok.groupby("impl")["variant"].nunique()
    plain = axes.PLAIN_VARIANTS
    return pd.Series(
        [f"{impl} [{variant}]" if variants_per_impl.get(impl, 1) > 1 or variant not in plain else str(impl)
         for impl, variant in zip(ok["impl"], ok["variant"])],
        index=ok.index,
        dtype=object,
    )


