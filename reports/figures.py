"""The report's figures: one matplotlib figure per question, drawn only from ``status == "ok"`` points.

Every builder returns a ``Figure`` holding PNG bytes, or, when the results lack the data for it, no
PNG and a line saying which sweep produces the data; a figure is never drawn empty. Lines are one per
implementation (and variant, when an implementation ran several); each line is the median over the
points at that x, with a band from the first to the third quartile of the timed samples.

Where the results vary more sizes than a figure has axes, one slice is plotted: the combination of the
other sizes that gives the most lines the most x values. The caption names the sizes held fixed.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, and the same output on every machine
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .data import line_labels, ok_rows, timing_rows  # noqa: E402

DPI = 110


@dataclass
class Figure:
    """One figure of the report: PNG bytes when drawn, else ``missing`` says how to get its data."""

    slug: str
    title: str
    caption: str
    png: bytes | None = None
    missing: str | None = None


@dataclass
class _Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None


# --------------------------------------------------------------------------------------------------
# helpers


_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P")


# One colour and marker per implementation in every figure of every report: the built-ins by name,
# any other implementation by a hash of its name. The variant (tLSTM-M, +CN, ...) sets the dash.
_IMPL_STYLES = {
    "tlstm_fused": ("#d62728", "o"),
    "lstm_cudnn": ("#1f77b4", "s"),
    "tlstm_naive": ("#7f7f7f", "^"),
    "tlstm_compiled": ("#9467bd", "D"),
    "lstm_shared": ("#2ca02c", "v"),
}
_VARIANT_DASHES = {"tLSTM": "-", "sLSTM": "-", "sLSTM (shared)": "-", "tLSTM-M": "--", "tLSTM-F": "-.", "tLSTM+CN": ":"}


def style_for(label: str) -> dict[str, Any]:
    """The colour, dash and marker of a line labelled ``impl`` or ``impl [variant]``."""
    impl, _, variant = label.partition(" [")
    variant = variant.rstrip("]")
    color, marker = _IMPL_STYLES.get(impl) or (
        plt.get_cmap("tab10")(zlib.crc32(impl.encode()) % 10), _MARKERS[zlib.crc32(impl.encode()) % len(_MARKERS)])
    dash = _VARIANT_DASHES.get(variant, _LINESTYLES[zlib.crc32(variant.encode()) % len(_LINESTYLES)] if variant
                               else "-")
    return {"color": color, "linestyle": dash, "marker": marker}


def _spans_decades(values: Iterable[float], ratio: float = 8.0) -> bool:
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=float)
    return v.size > 1 and v.max() / v.min() >= ratio


def _time_unit(values: Iterable[float]) -> tuple[str, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    typical = float(np.median(v)) if v.size else 1.0
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if typical >= scale:
            return unit, scale
    return "ns", 1e-9


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pick_slice(rows: pd.DataFrame, x: str, slice_dims: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of the one combination of ``slice_dims`` that gives the most lines the most x values,
    and the values held fixed (for the caption)."""
    # a run that spans machines is plotted one machine per panel: a line never mixes them
    dims = [d for d in ("machine", *slice_dims) if d in rows.columns]
    varying = [d for d in dims if rows[d].nunique(dropna=False) > 1]
    fixed = {d: rows[d].dropna().iloc[0] for d in dims
             if d not in varying and d != "machine" and rows[d].notna().any()}  # one machine needs no note
    if not varying:
        return rows, fixed
    best_key, best_score = None, None
    for key, group in rows.groupby(varying, dropna=False):
        per_line = group.groupby("label")[x].nunique()
        score = (int((per_line >= 2).sum()), int(group[x].nunique()), len(group))
        if best_score is None or score > best_score:
            best_key, best_score = key, score
    key_tuple = best_key if isinstance(best_key, tuple) else (best_key,)
    chosen = rows
    for d, value in zip(varying, key_tuple):
        chosen = chosen[chosen[d].isna()] if pd.isna(value) else chosen[chosen[d] == value]
        if not pd.isna(value):
            fixed[d] = value
    return chosen, fixed


def _series(rows: pd.DataFrame, x: str, y: str, lo: str | None, hi: str | None) -> list[_Series]:
    out = []
    for label, group in rows.groupby("label"):
        agg = group.groupby(x)[[c for c in (y, lo, hi) if c]].median().sort_index()
        agg = agg[agg[y].notna()]
        if agg.empty:
            continue
        out.append(_Series(str(label), agg.index.to_numpy(float), agg[y].to_numpy(float),
                           agg[lo].to_numpy(float) if lo else None, agg[hi].to_numpy(float) if hi else None))
    return out


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    # tight_layout has already fitted the labels; bbox_inches="tight" would draw the figure twice
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _fixed_text(fixed: dict[str, Any]) -> str:
    names = {"seq_len": "T", "channels": "M", "input_size": "R", "depth": "L", "batch": "B"}
    parts = [f"{names.get(k, k)}={_fmt_value(v)}" for k, v in fixed.items()]
    return ", ".join(parts)


def _facets(rows: pd.DataFrame, row_dims: tuple[str, ...], col_dims: tuple[str, ...]) -> tuple[list, list]:
    def keys(dims: tuple[str, ...]) -> list:
        if not dims:
            return [()]
        uniq = rows[list(dims)].drop_duplicates().sort_values(list(dims))
        return [tuple(r) for r in uniq.itertuples(index=False)]

    return keys(row_dims), keys(col_dims)


def _select(rows: pd.DataFrame, dims: tuple[str, ...], key: tuple) -> pd.DataFrame:
    for d, value in zip(dims, key):
        rows = rows[rows[d].isna()] if pd.isna(value) else rows[rows[d] == value]
    return rows


def _facet_title(dims: tuple[str, ...], key: tuple) -> str:
    names = {"batch": "batch", "device": "", "mode": "", "metric": "", "over": ""}
    parts = []
    for d, value in zip(dims, key):
        prefix = names.get(d, d)
        parts.append(f"{prefix} {_fmt_value(value)}".strip())
    return ", ".join(parts)


def _line_figure(
    rows: pd.DataFrame,
    *,
    x: str,
    y: str,
    lo: str | None,
    hi: str | None,
    row_dims: tuple[str, ...],
    col_dims: tuple[str, ...],
    slice_dims: tuple[str, ...],
    xlabel: str,
    ylabel: str,
    y_scale: float = 1.0,
    reference: Callable[[Any, dict[str, Any]], None] | None = None,
    min_points: int = 2,
) -> tuple[bytes | None, list[str]]:
    """Draw a grid of panels (rows x cols facets), lines per label; None when no panel has a line with
    ``min_points`` x values. Returns the PNG and one 'fixed sizes' note per drawn panel."""
    rows = rows[rows[x].notna() & rows[y].notna()]
    row_keys, col_keys = _facets(rows, row_dims, col_dims)
    panels = []
    for rk in row_keys:
        for ck in col_keys:
            sub = _select(_select(rows, row_dims, rk), col_dims, ck)
            if sub.empty:
                continue
            chosen, fixed = _pick_slice(sub, x, slice_dims)
            series = [s for s in _series(chosen, x, y, lo, hi) if len(s.x) >= min_points]
            if series:
                panels.append((rk, ck, series, fixed))
    if not panels:
        return None, []
    used_rows = [rk for rk in row_keys if any(p[0] == rk for p in panels)]
    used_cols = [ck for ck in col_keys if any(p[1] == ck for p in panels)]
    n_rows, n_cols = len(used_rows), len(used_cols)
    fig, axes, legend = panel_grid(n_rows, n_cols)
    handles: dict[str, Any] = {}
    # x is shared by all panels (same sizes); y is judged per panel, since batch sizes or memory
    # metrics in different panels can sit decades apart while each panel spans little
    log_x = _spans_decades([v for p in panels for s in p[2] for v in s.x])
    notes = []
    drawn_axes = set()
    for rk, ck, series, fixed in panels:
        i, j = used_rows.index(rk), used_cols.index(ck)
        ax = axes[i][j]
        drawn_axes.add((i, j))
        for s in series:
            style = style_for(s.label)
            color = style["color"]
            (line,) = ax.plot(s.x, s.y * y_scale, markersize=4, linewidth=1.6, label=s.label, **style)
            handles.setdefault(s.label, line)
            if s.lo is not None and s.hi is not None and np.isfinite(s.lo).all() and np.isfinite(s.hi).all():
                ax.fill_between(s.x, s.lo * y_scale, s.hi * y_scale, color=color, alpha=0.22, linewidth=0)
        if reference is not None:
            reference(ax, {**dict(zip(row_dims, rk)), **dict(zip(col_dims, ck)), **fixed})
        if log_x:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        panel_y = [v * y_scale for s in series for arr in (s.y, s.lo, s.hi) if arr is not None for v in arr]
        if _spans_decades(panel_y, ratio=10.0):
            ax.set_yscale("log")
            # 1-2-5 labels read better than 10^k and, unlike labelled minor ticks, cost little to draw
            finite = [v for v in panel_y if np.isfinite(v) and v > 0]
            decades = math.log10(max(finite) / min(finite))
            subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)  # 1-2-5 labels crowd a tall range
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # ticks are costly to lay out
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # "+2.86e2" offsets hide the actual values
        title = ", ".join(t for t in (_facet_title(row_dims, rk), _facet_title(col_dims, ck)) if t)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        if fixed:
            notes.append(f"{title or 'panel'}: {_fixed_text(fixed)}")
    for i in range(n_rows):
        for j in range(n_cols):
            if (i, j) not in drawn_axes:
                axes[i][j].set_visible(False)
    for i, j in sorted(drawn_axes):
        for h in axes[i][j].get_lines():  # labelled reference lines (the torch.mm rate) join the legend
            if not h.get_label().startswith("_"):
                handles.setdefault(h.get_label(), h)
    legend(handles)
    return _png(fig), notes


def panel_grid(n_rows: int, n_cols: int,
               legend_in: float = 2.9) -> tuple[Any, Any, Callable[[dict[str, Any]], None]]:
    """A figure of n_rows x n_cols panels of 4.2 x 2.9 in and a function that draws one shared legend in a
    right-hand column ``legend_in`` inches wide. Fixed margins in inches instead of tight_layout (which lays
    every label out twice), so no legend ever covers a line."""
    panel_w, panel_h, gap_w, gap_h = 4.2, 2.9, 0.9, 0.85
    left, right, top, bottom = 0.85, legend_in, 0.45, 0.65
    width = left + n_cols * panel_w + (n_cols - 1) * gap_w + right
    height = top + n_rows * panel_h + (n_rows - 1) * gap_h + bottom
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap_w / panel_w, hspace=gap_h / panel_h)

    def legend(handles: dict[str, Any]) -> None:
        fig.legend(list(handles.values()), list(handles.keys()), loc="upper left", fontsize=8.5, frameon=False,
                   bbox_to_anchor=(1 - (right - 0.15) / width, 1 - top / height))

    return fig, axes, legend


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows with their plotted line's label."""
    ok = ok_rows(df).copy()
    ok["label"] = line_labels(ok) if not ok.empty else pd.Series(dtype=object)
    return ok


def _caption(base: str, notes: list[str]) -> str:
    if not notes:
        return base
    unique = sorted(set(n.split(": ", 1)[1] for n in notes))
    if len(unique) == 1:
        return f"{base} Held fixed: {unique[0]}."
    return f"{base} Held fixed per panel: " + "; ".join(notes) + "."


# --------------------------------------------------------------------------------------------------
# the figures


def _params_vs(ok: pd.DataFrame, x: str, slug: str, title: str, xlabel: str, caption: str, hint: str,
               reference: Callable[[Any, dict[str, Any]], None] | None = None) -> Figure:
    png, notes = _line_figure(ok[ok["params"].notna()], x=x, y="params", lo=None, hi=None, row_dims=(), col_dims=(),
                              slice_dims=("channels", "input_size"), xlabel=xlabel, ylabel="parameters (count)",
                              reference=reference)
    if png is None:
        return Figure(slug, title, _caption(caption, notes), missing=hint)
    return Figure(slug, title, _caption(caption, notes), png)


def fig_wider(ok: pd.DataFrame) -> Figure:
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


def fig_cheaper(ok: pd.DataFrame) -> Figure:
    return _params_vs(ok, "depth", "cheaper", "Cheaper: parameters vs depth", "depth L (layers)",
                      "Where the tLSTM line lies below the stacked LSTM's, the tLSTM is cheaper at that depth (at "
                      "L = 1 a single K-tap layer can cost more).",
                      "needs parameter counts at two or more depths: run `tlstm-bench run quick`")


def _time_vs(ok: pd.DataFrame, x: str, slug: str, title: str, xlabel: str, base_caption: str, hint: str,
             slice_dims: tuple[str, ...]) -> Figure:
    rows = ok[ok["time_per_step_s"].notna()]
    unit, scale = _time_unit(rows["time_per_step_s"])
    png, notes = _line_figure(rows, x=x, y="time_per_step_s", lo="time_per_step_q1_s", hi="time_per_step_q3_s",
                              row_dims=("device", "batch"), col_dims=("mode",), slice_dims=slice_dims,
                              xlabel=xlabel, ylabel=f"time per timestep ({unit})", y_scale=1 / scale)
    caption = _caption(base_caption + " Lines: median; bands: IQR (q1..q3) of the timed calls.", notes)
    if png is None:
        return Figure(slug, title, caption, missing=hint)
    return Figure(slug, title, caption, png)


def fig_time_vs_depth(ok: pd.DataFrame) -> Figure:
    return _time_vs(
        ok, "depth", "time_vs_depth", "Deeper and faster: time per timestep vs depth",
        "depth L (layers)",
        "The paper's picture at small batch: a flat tLSTM line against a stacked LSTM that grows with L. "
        "Compare with the large-batch panels, where arithmetic, which grows with P, dominates.",
        "needs timed points at two or more depths: run `tlstm-bench run depth`",
        ("dtype", "seq_len", "channels", "input_size"),
    )


def fig_time_vs_seq_len(ok: pd.DataFrame) -> Figure:
    return _time_vs(
        ok, "seq_len", "time_vs_seq_len", "Time per timestep vs sequence length", "sequence length T (steps)",
        "Time per step should be flat in T once start-up costs are amortized; a tLSTM pays L-1 extra "
        "steps per sequence, visible at short T.",
        "needs timed points at two or more sequence lengths: run `tlstm-bench run quick` "
        "(or `--set seq_len=[...]`)",
        ("dtype", "depth", "channels", "input_size"),
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
    png, notes = _line_figure(rows, x=x, y="memory_mib", lo=None, hi=None, row_dims=("batch",),
                              col_dims=("metric",), slice_dims=slice_dims, xlabel=xlabel,
                              ylabel="memory (MiB)")
    caption = _caption("Training steps (inference where no training point has the metric). On a GPU: the "
                       "CUDA allocator's peak. On a CPU: bytes saved for backward (the activations a training "
                       "step keeps) and how far one call raised the worker's resident set above where it stood "
                       "before the call (the peak RSS itself depends on what ran earlier in the worker). One "
                       "measurement per point, so no band.",
                       notes)
    if png is None:
        return Figure(slug, title, caption, missing=hint)
    return Figure(slug, title, caption, png)


def fig_memory_vs_depth(ok: pd.DataFrame) -> Figure:
    return _memory_vs(ok, "depth", "memory_vs_depth", "Peak memory vs depth", "depth L (layers)",
                      "needs memory measurements at two or more depths: run `tlstm-bench run depth` "
                      "(`tlstm-bench run gpu` for the CUDA allocator peak)",
                      ("dtype", "seq_len", "channels", "input_size"))


def fig_memory_vs_seq_len(ok: pd.DataFrame) -> Figure:
    return _memory_vs(ok, "seq_len", "memory_vs_seq_len", "Peak memory vs sequence length",
                      "sequence length T (steps)",
                      "needs memory measurements at two or more sequence lengths: run `tlstm-bench run quick`",
                      ("dtype", "depth", "channels", "input_size"))


MATCH_KEYS = ("depth", "seq_len", "batch", "channels", "input_size", "dtype", "mode", "device")
VARIANT_KEYS = ("kernel_size", "mem_conv", "norm")


def matched_speedups(ok: pd.DataFrame) -> pd.DataFrame:
    """Speedup of every tLSTM implementation over ``tlstm_naive`` (same variant) and over each stacked
    LSTM, at points matched on depth, T, batch, channels, input size, dtype, mode and device.

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
    naive = tlstm[tlstm["impl"] == "tlstm_naive"]
    others = tlstm[tlstm["impl"] != "tlstm_naive"]
    if not naive.empty and not others.empty:
        matched = others.merge(naive, on=list(MATCH_KEYS + VARIANT_KEYS), suffixes=("", "_ref"))
        matched["reference"] = "tlstm_naive"
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
    for key in ("depth", "seq_len", "batch", "channels", "input_size"):
        out[key] = pd.to_numeric(out[key], errors="coerce")
    return out


def fig_speedups(ok: pd.DataFrame) -> Figure:
    title = "Speedups of the tLSTM implementations, matched points"
    speedups = matched_speedups(ok)
    caption_base = ("Speedup = reference median time / implementation median time at the same depth, T, batch, "
                    "channels, dtype, mode and device; above the dashed line at 1 the implementation is faster. "
                    "Bands: reference q1/impl q3 .. reference q3/impl q1.")
    if speedups.empty:
        return Figure("speedups", title, caption_base, missing="needs a tLSTM implementation and `tlstm_naive` or "
                      "`lstm_cudnn` timed at the same points: run `tlstm-bench run quick`")
    speedups = speedups.copy()
    speedups["label"] = line_labels(speedups) + ", B=" + speedups["batch"].map(_fmt_value)
    speedups["over"] = "over " + speedups["reference"]

    def one_line(ax: Any, context: dict[str, Any]) -> None:
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)

    png, notes = _line_figure(speedups, x="depth", y="speedup", lo="speedup_lo", hi="speedup_hi", row_dims=("mode",),
                              col_dims=("over",), slice_dims=("dtype", "seq_len", "channels", "input_size", "device"),
                              xlabel="depth L (layers)", ylabel="speedup (x, reference time / impl time)",
                              reference=one_line, min_points=1)
    if png is None:
        return Figure("speedups", title, caption_base, missing="run `tlstm-bench run quick`")
    return Figure("speedups", title, _caption(caption_base, notes), png)


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

    png, notes = _line_figure(rows, x="depth", y="gflops", lo="gflops_lo", hi="gflops_hi", row_dims=("device", "batch"),
                              col_dims=("mode",), slice_dims=("dtype", "seq_len", "channels", "input_size"),
                              xlabel="depth L (layers)", ylabel="achieved GFLOP/s",
                              reference=ref_line)
    base = ("FLOPs from the cost formulas in the README divided by the median time. The dashed line is this machine's "
            "measured torch.mm rate: the distance to it is what a better kernel could still win.")
    if png is not None and not drawn:
        base += " (The run recorded no matmul_gflops for these devices and dtypes, so the line is missing.)"
    if png is None:
        return Figure("gflops", title, base, missing="needs FLOP counts at two or more depths: run "
                      "`tlstm-bench run depth`")
    return Figure("gflops", title, _caption(base, notes), png)


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
            ax.set_xticks(positions, [_fmt_value(d) for d in table.index])
            ax.set_title(f"{label}, batch {_fmt_value(batch)}, {mode}", fontsize=9)
            ax.set_xlabel("depth L")
            if j == 0:
                ax.set_ylabel("share of the call")
            ax.set_ylim(0, 1.02)
    handles = [matplotlib.patches.Patch(color=c, label=k) for k, c in PROFILE_COLORS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (3.4 * len(labels) + 2.6), 1))
    return Figure("time_split", title, caption, _png(fig))


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
        unit, scale = _time_unit([v for line in lines for v in line.medians])
        for line in lines:
            plain = line.variant in ("tLSTM", "sLSTM", "sLSTM (shared)")
            label = line.impl if plain else f"{line.impl} [{line.variant}]"
            lo, hi = np.nanpercentile(line.replicates, [2.5, 97.5], axis=0)
            style = style_for(label)
            ax.plot(line.depths, line.medians / scale, markersize=4, linewidth=1.8, label=label, **style)
            ax.fill_between(line.depths, lo / scale, hi / scale, color=style["color"], alpha=0.22, linewidth=0)
        ax.set_ylim(bottom=0)
        ax.set_title(f"batch {_fmt_value(entry['batch'])}, {entry['mode']}, T={_fmt_value(entry['seq_len'])}, "
                     f"M={_fmt_value(entry['channels'])}, {entry['dtype']} {entry['device']}", fontsize=9.5)
        ax.set_xlabel("depth L (layers)")
        ax.set_ylabel(f"time per output step ({unit})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8.5, frameon=False)
    fig.tight_layout()
    return Figure("headline", title, caption, _png(fig))


def build_figures(df: pd.DataFrame, env: dict[str, Any] | None = None) -> list[Figure]:
    """Every figure of the report, in reading order, from a normalized frame; ``env`` defaults to
    ``df.attrs["env"]`` (it supplies the torch.mm reference rate)."""
    if env is None:
        env = df.attrs.get("env") or {}
    # pandas deep-copies attrs into every intermediate frame; the figures never read them
    df = timing_rows(df).copy()  # the training runs have figures of their own (reports.capacity)
    df.attrs = {}
    ok = with_labels(df)
    return [
        fig_wider(ok),
        fig_cheaper(ok),
        fig_time_vs_depth(ok),
        fig_time_vs_seq_len(ok),
        fig_memory_vs_depth(ok),
        fig_memory_vs_seq_len(ok),
        fig_speedups(ok),
        fig_gflops(ok, env),
    ]
