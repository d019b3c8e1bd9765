"""The report's timing figures: one matplotlib figure per question, drawn only from ``status == "ok"`` points.

Every builder returns a ``Figure`` holding PNG bytes, or, when the results lack the data for it, no
PNG and a line saying which sweep produces the data; a figure is never drawn empty. Lines are one per
implementation (and variant, when an implementation ran several); each line is the median over the
points at that x, with a band from the first to the third quartile of the timed samples. The drawing
itself (styles, slices, facets) is ``reports.plotting``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import matplotlib.patches
import numpy as np
import pandas as pd

from bench import axes as axis_table

from .data import family_reference, line_labels, timing_rows
from .plotting import (  # noqa: F401  (Figure, png, panel_grid, spans_decades, style_for: the report's API)
    Figure,
    line_figure,
    panel_grid,
    plt,
    png,
    spans_decades,
    style_for,
    time_unit,
    with_labels,
    with_notes,
)

# Panels: a row per device and batch, a column per mode (the axes with those roles); within a panel the other
# slice axes are held at one value each (the slice that gives the most lines the most x values).
FACET_ROWS = axis_table.names(axis_table.FACET_ROW)
FACET_COLS = axis_table.names(axis_table.FACET_COL)
HELD = tuple(a for a in axis_table.names(axis_table.SLICE) if a not in FACET_ROWS + FACET_COLS)


def held(x: str) -> tuple[str, ...]:
    """The axes held fixed in a figure whose x axis is ``x``: ``HELD``, with depth in the place of ``x``."""
    return tuple("depth" if a == x else a for a in HELD)


def _params_vs(ok: pd.DataFrame, x: str, slug: str, title: str, xlabel: str, caption: str, hint: str,
               reference: Callable[[Any, dict[str, Any]], None] | None = None) -> Figure:
    png, notes = line_figure(ok[ok["params"].notna()], x=x, y="params", lo=None, hi=None, row_dims=(), col_dims=(),
                             slice_dims=tuple(a for a in HELD if axis_table.get(a).has(axis_table.MODEL)),
                             xlabel=xlabel, ylabel="parameters (count)", reference=reference)
    if png is None:
        return Figure(slug, title, with_notes(caption, notes), missing=hint)
    return Figure(slug, title, with_notes(caption, notes), png)


def fig_wider(ok: pd.DataFrame, env: dict[str, Any] | None = None) -> Figure:
    widths = sorted({float(v) for v in ok["hidden_units"].dropna()})

    def wide_lstm(ax: Any, context: dict[str, Any]) -> None:
        inputs = context.get("input_size")
        if inputs is None or len(widths) < 2:
            return
        h = np.array(widths)  # one nn.LSTM layer as wide as the hidden state: 4H(R+H) + 8H parameters
        ax.plot(h, 4 * h * (float(inputs) + h) + 8 * h, color="black", linestyle=":", linewidth=1.4,
                label="one LSTM layer of that width (formula)")

    return _params_vs(ok, "hidden_units", "wider", "Wider: parameters vs hidden-state size",
                      "hidden-state size (units: P·M for tLSTM, L·M for stacked LSTM)",
                      "A flat tLSTM line means a wider hidden state costs no parameters; the stacked LSTM's line "
                      "rises with every layer, and one LSTM layer as wide as the tLSTM's hidden state (dotted, from "
                      "nn.LSTM's parameter formula) rises with the square of its width.",
                      "needs parameter counts at two or more hidden sizes: run `tlstm-bench run quick`", wide_lstm)


def fig_cheaper(ok: pd.DataFrame, env: dict[str, Any] | None = None) -> Figure:
    return _params_vs(ok, "depth", "cheaper", "Cheaper: parameters vs depth", "depth L (layers)",
                      "Where the tLSTM line lies below the stacked LSTM's, the tLSTM is cheaper at that depth (at "
                      "L = 1 a single K-tap layer can cost more).",
                      "needs parameter counts at two or more depths: run `tlstm-bench run quick`")


def _time_vs(ok: pd.DataFrame, x: str, slug: str, title: str, xlabel: str, base_caption: str, hint: str,
             slice_dims: tuple[str, ...]) -> Figure:
    rows = ok[ok["time_per_step_s"].notna()]
    unit, scale = time_unit(rows["time_per_step_s"])
    png, notes = line_figure(rows, x=x, y="time_per_step_s", lo="time_per_step_q1_s", hi="time_per_step_q3_s",
                              row_dims=FACET_ROWS, col_dims=FACET_COLS, slice_dims=slice_dims,
                              xlabel=xlabel, ylabel=f"time per timestep ({unit})", y_scale=1 / scale)
    caption = with_notes(base_caption + " Lines: median; bands: IQR (q1..q3) of the timed calls.", notes)
    if png is None:
        return Figure(slug, title, caption, missing=hint)
    return Figure(slug, title, caption, png)


def fig_time_vs_depth(ok: pd.DataFrame, env: dict[str, Any] | None = None) -> Figure:
    return _time_vs(
        ok, "depth", "time_vs_depth", "Deeper and faster: time per timestep vs depth",
        "depth L (layers)",
        "The paper's picture at small batch: a flat tLSTM line against a stacked LSTM that grows with L. "
        "Compare with the large-batch panels, where arithmetic, which grows with P, dominates.",
        "needs timed points at two or more depths: run `tlstm-bench run depth`",
        held("depth"),
    )


def fig_time_vs_seq_len(ok: pd.DataFrame, env: dict[str, Any] | None = None) -> Figure:
    return _time_vs(
        ok, "seq_len", "time_vs_seq_len", "Time per timestep vs sequence length", "sequence length T (steps)",
        "Time per step should be flat in T once start-up costs are amortized; a tLSTM pays L-1 extra "
        "steps per sequence, visible at short T.",
        "needs timed points at two or more sequence lengths: run `tlstm-bench run quick` "
        "(or `--set seq_len=[...]`)",
        held("seq_len"),
    )


# Deterministic quantities (the allocator's peak, the bytes saved for backward), and the resident set as
# the rise one call caused: the peak RSS itself depends on what the worker ran before.
MEMORY_METRICS = (
    ("cuda", "peak_mem_bytes", "CUDA allocator peak"),
    ("cpu", "saved_bytes", "saved for backward"),
    ("cpu", "rss_delta_bytes", "RSS rise during one call"),
)


def _memory_long(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per (point, memory metric). Training points only where a metric has them: a training
    step holds the activations for backward, so it is the memory that limits depth and length."""
    parts = []
    for device, column, name in MEMORY_METRICS:
        sub = ok[(ok["device"] == device) & ok[column].notna()].copy()
        if sub.empty:
            continue
        mode = "training" if (sub["mode"] == "training").any() else "inference"
        sub = sub[sub["mode"] == mode]
        sub["metric"] = f"{name} ({device}, {mode})"
        sub["memory_mib"] = sub[column] / 2**20
        parts.append(sub)
    return pd.concat(parts) if parts else ok.iloc[0:0].assign(metric=[], memory_mib=[])


def _memory_vs(ok: pd.DataFrame, x: str, slug: str, title: str, xlabel: str, hint: str,
               slice_dims: tuple[str, ...]) -> Figure:
    rows = _memory_long(ok)
    png, notes = line_figure(rows, x=x, y="memory_mib", lo=None, hi=None, row_dims=("batch",),
                              col_dims=("metric",), slice_dims=slice_dims, xlabel=xlabel,
                              ylabel="memory (MiB)")
    caption = with_notes("Training steps (inference where no training point has the metric). On a GPU: the "
                       "CUDA allocator's peak. On a CPU: bytes saved for backward (the activations a training "
                       "step keeps) and how far one call raised the worker's resident set above where it stood "
                       "before the call (the peak RSS itself depends on what ran earlier in the worker). One "
                       "measurement per point, so no band.",
                       notes)
    if png is None:
        return Figure(slug, title, caption, missing=hint)
    return Figure(slug, title, caption, png)


def fig_memory_vs_depth(ok: pd.DataFrame, env: dict[str, Any] | None = None) -> Figure:
    return _memory_vs(ok, "depth", "memory_vs_depth", "Peak memory vs depth", "depth L (layers)",
                      "needs memory measurements at two or more depths: run `tlstm-bench run depth` "
                      "(`tlstm-bench run gpu` for the CUDA allocator peak)",
                      held("depth"))


def fig_memory_vs_seq_len(ok: pd.DataFrame, env: dict[str, Any] | None = None) -> Figure:
    return _memory_vs(ok, "seq_len", "memory_vs_seq_len", "Peak memory vs sequence length",
                      "sequence length T (steps)",
                      "needs memory measurements at two or more sequence lengths: run `tlstm-bench run quick`",
                      held("seq_len"))


MATCH_KEYS = axis_table.names(axis_table.MATCH)
VARIANT_KEYS = axis_table.names(axis_table.SWITCH)


def matched_speedups(ok: pd.DataFrame) -> pd.DataFrame:
    """Speedup of every tLSTM implementation over its family's reference implementation (same variant) and
    over each stacked LSTM, at points matched on every axis with the ``match`` role (``bench.axes``).

    speedup = reference median / implementation median (> 1: faster); low/high from the quartiles
    (reference q1 / impl q3 .. reference q3 / impl q1), a conservative band.
    """
    cols = list(MATCH_KEYS) + list(VARIANT_KEYS) + ["impl", "family", "variant", "time_median_s", "time_q1_s",
                                                     "time_q3_s"]
    base = ok[ok["time_median_s"].notna()][cols].copy()
    for key in MATCH_KEYS + VARIANT_KEYS:
        # merge() treats NaN keys as equal only when they are the same object type; make them strings
        base[key] = base[key].map(lambda v: "-" if pd.isna(v) else str(v))
    tlstm = base[base["family"] == "tlstm"]
    parts = []
    reference = family_reference("tlstm")
    naive = tlstm[tlstm["impl"] == reference]
    others = tlstm[tlstm["impl"] != reference]
    if not naive.empty and not others.empty:
        matched = others.merge(naive, on=list(MATCH_KEYS + VARIANT_KEYS), suffixes=("", "_ref"))
        matched["reference"] = reference
        parts.append(matched)
    for lstm_impl, lstm in base[base["family"] == "lstm"].groupby("impl"):
        if tlstm.empty:
            continue
        matched = tlstm.merge(lstm.drop(columns=list(VARIANT_KEYS)), on=list(MATCH_KEYS), suffixes=("", "_ref"))
        matched["reference"] = lstm_impl
        parts.append(matched)
    if not parts:
        return pd.DataFrame(columns=list(MATCH_KEYS) + ["impl", "reference", "speedup", "speedup_lo", "speedup_hi"])
    out = pd.concat(parts, ignore_index=True)
    out["speedup"] = out["time_median_s_ref"] / out["time_median_s"]
    out["speedup_lo"] = out["time_q1_s_ref"] / out["time_q3_s"]
    out["speedup_hi"] = out["time_q3_s_ref"] / out["time_q1_s"]
    for key in MATCH_KEYS:
        if axis_table.numeric(key):
            out[key] = pd.to_numeric(out[key], errors="coerce")
    return out


def fig_speedups(ok: pd.DataFrame, env: dict[str, Any] | None = None) -> Figure:
    title = "Speedups of the tLSTM implementations, matched points"
    speedups = matched_speedups(ok)
    caption_base = ("Speedup = reference median time / implementation median time at the same depth, T, batch, "
                    "channels, dtype, mode and device; above the dashed line at 1 the implementation is faster. "
                    "Bands: reference q1/impl q3 .. reference q3/impl q1.")
    if speedups.empty:
        return Figure("speedups", title, caption_base, missing=f"needs a tLSTM implementation and the tLSTM reference "
                      f"(`{family_reference('tlstm')}`) or a stacked LSTM timed at the same points: run "
                      "`tlstm-bench run quick`")
    speedups = speedups.copy()
    speedups["label"] = line_labels(speedups) + ", B=" + speedups["batch"].map(axis_table.fmt_value)
    speedups["over"] = "over " + speedups["reference"]

    def one_line(ax: Any, context: dict[str, Any]) -> None:
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)

    png, notes = line_figure(speedups, x="depth", y="speedup", lo="speedup_lo", hi="speedup_hi", row_dims=("mode",),
                              col_dims=("over",), slice_dims=(*held("depth"), "device"),
                              xlabel="depth L (layers)", ylabel="speedup (x, reference time / impl time)",
                              reference=one_line, min_points=1)
    if png is None:
        return Figure("speedups", title, caption_base, missing="run `tlstm-bench run quick`")
    return Figure("speedups", title, with_notes(caption_base, notes), png)


def fig_gflops(ok: pd.DataFrame, env: dict[str, Any]) -> Figure:
    title = "Achieved GFLOP/s against the machine's matrix-multiply rate"
    rows = ok[ok["gflops"].notna()].copy()
    # the band: the same FLOPs over the timing quartiles (a slow call, q3, gives the low rate)
    rows["gflops_lo"] = rows["gflops"] * rows["time_median_s"] / rows["time_q3_s"]
    rows["gflops_hi"] = rows["gflops"] * rows["time_median_s"] / rows["time_q1_s"]
    recorded = env.get("matmul_gflops") if isinstance(env, dict) else None
    drawn: list[float] = []

    def ref_line(ax: Any, context: dict[str, Any]) -> None:
        rate = matmul_rate(recorded, context.get("device"), context.get("dtype"))
        if rate is not None:
            drawn.append(rate)
            ax.axhline(rate, color="black", linestyle="--", linewidth=1.2,
                       label=f"torch.mm, {context.get('device', '')} {context.get('dtype', '')}: "
                             f"{rate:.0f} GFLOP/s".replace("  ", " "))

    png, notes = line_figure(rows, x="depth", y="gflops", lo="gflops_lo", hi="gflops_hi", row_dims=FACET_ROWS,
                              col_dims=FACET_COLS, slice_dims=held("depth"),
                              xlabel="depth L (layers)", ylabel="achieved GFLOP/s",
                              reference=ref_line)
    base = ("FLOPs from the cost formulas in the README divided by the median time. The dashed line is this machine's "
            "measured torch.mm rate: the distance to it is what a better kernel could still win.")
    if png is not None and not drawn:
        base += " (The run recorded no matmul_gflops for these devices and dtypes, so the line is missing.)"
    if png is None:
        return Figure("gflops", title, base, missing="needs FLOP counts at two or more depths: run "
                      "`tlstm-bench run depth`")
    return Figure("gflops", title, with_notes(base, notes), png)


def matmul_rate(recorded: Any, device: Any, dtype: Any) -> float | None:
    """The torch.mm rate for a panel: ``env["matmul_gflops"]`` is one number, or a dict keyed
    "device:dtype" (as the sweep runner records it, one measurement per device and dtype)."""
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        return float(recorded) if math.isfinite(float(recorded)) else None
    if isinstance(recorded, dict):
        value = recorded.get(f"{device}:{dtype}")
        if value is None and dtype is None:  # dtype not held fixed: only an unambiguous entry will do
            matches = [v for k, v in recorded.items() if str(k).startswith(f"{device}:")]
            value = matches[0] if len(matches) == 1 else None
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return float(value)
    return None


# The categories of bench.profile, in stacking order, with fixed colours.
PROFILE_COLORS = {
    "matrix products": "#1f77b4", "pointwise and reductions": "#ff7f0e", "memory copies and allocation": "#2ca02c",
    "fused RNN library kernels": "#9467bd", "other operators": "#8c564b", "framework overhead": "#bbbbbb",
}


def profile_shares(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per profiled point and category: seconds and share of the profiled wall time."""
    rows = []
    for _, row in ok.iterrows():
        prof = row.get("profile")
        if not isinstance(prof, dict) or not isinstance(prof.get("categories_s"), dict) or not prof.get("wall_s"):
            continue
        for cat, seconds in prof["categories_s"].items():
            rows.append({"label": row["label"], "impl": row["impl"], "batch": row["batch"], "mode": row["mode"],
                         "depth": row["depth"], "category": cat, "seconds": seconds,
                         "share": seconds / prof["wall_s"]})
    return pd.DataFrame(rows, columns=["label", "impl", "batch", "mode", "depth", "category", "seconds", "share"])


def fig_time_split(ok: pd.DataFrame) -> Figure:
    """Stacked bars: the share of each category in a profiled call, per implementation, against depth."""
    title = "Where the time goes: share of a profiled call by category"
    caption = ("One profiled call per point, after the timed ones (bench.profile): each operator's self time on the "
               "calling thread by category, and framework overhead (time outside any operator: Python, autograd, "
               "dispatch) as the rest of the call's wall time, so each bar adds up to 1. Overhead is what the "
               "tLSTM's one-large-product design is meant to remove.")
    shares = profile_shares(ok)
    if shares.empty:
        return Figure("time_split", title, caption, missing="needs profiled points: run `tlstm-bench profile depth` "
                      "(or any sweep)")
    labels = sorted(shares["label"].unique())
    regimes = sorted({(b, m) for b, m in zip(shares["batch"], shares["mode"])}, key=lambda k: (k[0], str(k[1])))
    fig, axes = plt.subplots(len(regimes), len(labels), figsize=(3.4 * len(labels) + 2.6, 2.6 * len(regimes) + 0.6),
                             squeeze=False, sharey=True)
    for i, (batch, mode) in enumerate(regimes):
        for j, label in enumerate(labels):
            ax = axes[i][j]
            sub = shares[(shares["label"] == label) & (shares["batch"] == batch) & (shares["mode"] == mode)]
            table = sub.pivot_table(index="depth", columns="category", values="share", aggfunc="median")
            bottom = np.zeros(len(table))
            positions = np.arange(len(table))
            for cat, color in PROFILE_COLORS.items():
                if cat in table:
                    values = table[cat].fillna(0).to_numpy()
                    ax.bar(positions, values, bottom=bottom, color=color, label=cat, width=0.75)
                    bottom += values
            ax.set_xticks(positions, [axis_table.fmt_value(d) for d in table.index])
            ax.set_title(f"{label}, batch {axis_table.fmt_value(batch)}, {mode}", fontsize=9)
            ax.set_xlabel("depth L")
            if j == 0:
                ax.set_ylabel("share of the call")
            ax.set_ylim(0, 1.02)
    handles = [matplotlib.patches.Patch(color=c, label=k) for k, c in PROFILE_COLORS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (3.4 * len(labels) + 2.6), 1))
    return Figure("time_split", title, caption, png(fig))


def fig_headline(slices: list[dict[str, Any]]) -> Figure:
    """The fastest tLSTM against the fastest stacked LSTM, time per step vs depth normalised to the smallest
    depth, at the smallest and the largest batch (training where measured): the Faster claim's slices."""
    title = "Time per step vs depth, fastest tLSTM against fastest stacked LSTM"
    caption = ("Time per output step on a linear axis, so the slope of each line is what one more layer costs: the "
               "Faster rule compares these slopes. A flat line is depth for free. Bands: 95% bootstrap intervals "
               "from the raw samples. One panel per batch size (the smallest and the largest measured; training "
               "where measured); the implementations are the fastest of each family in that slice.")
    if not slices:
        return Figure("headline", title, caption, missing="needs tLSTM and stacked-LSTM points at two or more "
                      "depths in one slice: run `tlstm-bench run depth`")
    batches = sorted({d["batch"] for d in slices})
    panels = []
    for batch in dict.fromkeys([batches[0], batches[-1]]):
        candidates = [d for d in slices if d["batch"] == batch]
        training = [d for d in candidates if d["mode"] == "training"] or candidates
        panels.append(max(training, key=lambda d: (len(d["depths"]), d["channels"], d["seq_len"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.2, 3.6), squeeze=False)
    for ax, entry in zip(axes[0], panels):
        lines = (entry["tlstm_line"], entry["lstm_line"])
        unit, scale = time_unit([v for line in lines for v in line.medians])
        for line in lines:
            plain = line.variant in ("tLSTM", "sLSTM", "sLSTM (shared)")
            label = line.impl if plain else f"{line.impl} [{line.variant}]"
            lo, hi = np.nanpercentile(line.replicates, [2.5, 97.5], axis=0)
            style = style_for(label)
            ax.plot(line.depths, line.medians / scale, markersize=4, linewidth=1.8, label=label, **style)
            ax.fill_between(line.depths, lo / scale, hi / scale, color=style["color"], alpha=0.22, linewidth=0)
        ax.set_ylim(bottom=0)
        fmt = axis_table.fmt_value
        ax.set_title(f"batch {fmt(entry['batch'])}, {entry['mode']}, T={fmt(entry['seq_len'])}, "
                     f"M={fmt(entry['channels'])}, {entry['dtype']} {entry['device']}", fontsize=9.5)
        ax.set_xlabel("depth L (layers)")
        ax.set_ylabel(f"time per output step ({unit})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8.5, frameon=False)
    fig.tight_layout()
    return Figure("headline", title, caption, png(fig))


def build_figures(df: pd.DataFrame, env: dict[str, Any] | None = None) -> list[Figure]:
    """The report's timing-comparison figures (``TIMING_FIGURES``), in reading order, from a normalized frame:
    parameters vs width and vs depth, time and memory vs depth and vs sequence length, speedups, GFLOP/s. Its training
    rows are left out. Not drawn here: the headline (``fig_headline``) and the time split
    (``fig_time_split``), which the report draws itself, and the capacity figures
    (``reports.capacity.build_capacity``). ``env`` defaults to ``df.attrs["env"]`` (it supplies the
    torch.mm reference rate)."""
    if env is None:
        env = df.attrs.get("env") or {}
    # pandas deep-copies attrs into every intermediate frame; the figures never read them
    df = timing_rows(df).copy()  # the training runs have figures of their own (reports.capacity)
    df.attrs = {}
    ok = with_labels(df)
    return [figure(ok, env) for figure in TIMING_FIGURES]


# The timing figures in reading order: each ``figure(ok rows with labels, env) -> Figure``. A new figure is
# one function added here.
TIMING_FIGURES: list[Callable[[pd.DataFrame, dict[str, Any]], Figure]] = [
    fig_wider, fig_cheaper, fig_time_vs_depth, fig_time_vs_seq_len, fig_memory_vs_depth, fig_memory_vs_seq_len,
    fig_speedups, fig_gflops,
]
