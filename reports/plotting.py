"""Drawing shared by both halves of the report: the ``Figure`` record, one style per line (colour and marker
by implementation, dash and marker by variant), PNG output, and the faceted line figure with its slice
picking. ``reports.figures`` (timing) and ``reports.capacity.figures`` (training runs) draw with these.

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

from bench import axes as axis_table  # noqa: E402

from .data import implementation, line_labels, ok_rows  # noqa: E402

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


# One colour and marker per implementation in every figure of every report: its registered style, or for an
# implementation registered without one (or not registered here) a hash of its name. The variant sets the
# dash (a 3D variant the dash of its 2D namesake) and, unless it is a plain one (bench.axes.PLAIN_VARIANTS),
# the marker too: the variants of one implementation share its colour, so their seeds' markers must tell
# them apart. The variants' markers are none of the implementations' (nor the "x" of a diverged run).
_VARIANT_DASHES = {"tLSTM": "-", "sLSTM": "-", "sLSTM (shared)": "-", "tLSTM-M": "--", "tLSTM-F": "-.", "tLSTM+CN": ":"}
_VARIANT_MARKERS = {"tLSTM-M": "<", "tLSTM-F": "*", "tLSTM+CN": "d", "3D tLSTM": "X", "3D tLSTM+CN": "h"}
_MORE_MARKERS = (">", "p", "H", "8", "<", "*", "d", "X", "h")


def style_for(label: str) -> dict[str, Any]:
    """The colour, dash and marker of a line labelled ``impl`` or ``impl [variant]``."""
    impl, _, variant = label.partition(" [")
    variant = variant.rstrip("]")
    registered = implementation(impl)
    color, marker = (registered.style if registered is not None else None) or (
        plt.get_cmap("tab10")(zlib.crc32(impl.encode()) % 10), _MARKERS[zlib.crc32(impl.encode()) % len(_MARKERS)])
    planar = variant.removeprefix("3D ")
    dash = _VARIANT_DASHES.get(planar, _LINESTYLES[zlib.crc32(planar.encode()) % len(_LINESTYLES)] if planar
                               else "-")
    if variant and variant not in axis_table.PLAIN_VARIANTS:
        marker = _VARIANT_MARKERS.get(variant, _MORE_MARKERS[zlib.crc32(variant.encode()) % len(_MORE_MARKERS)])
    return {"color": color, "linestyle": dash, "marker": marker}


def spans_decades(values: Iterable[float], ratio: float = 8.0) -> bool:
    """Whether the positive finite ``values`` span a factor of ``ratio`` or more (then the axis goes log)."""
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=float)
    return v.size > 1 and v.max() / v.min() >= ratio


def time_unit(values: Iterable[float]) -> tuple[str, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    typical = float(np.median(v)) if v.size else 1.0
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if typical >= scale:
            return unit, scale
    return "ns", 1e-9


def _pick_slice(rows: pd.DataFrame, x: str, slice_dims: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of the one combination of ``slice_dims`` that gives the most lines the most x values,
    and the values held fixed (for the caption)."""
    # a run that spans machines is plotted one machine per panel: a line never mixes them
    fields = [d for d in ("machine", *slice_dims) if d in rows.columns]
    varying = [d for d in fields if rows[d].nunique(dropna=False) > 1]
    fixed = {d: rows[d].dropna().iloc[0] for d in fields
             if d not in varying and d != "machine" and rows[d].notna().any()}  # one machine needs no note
    if not varying:
        return rows, fixed
    # score every combination at once (thousands of them in a large run): lines with >= 2 x values, x values, rows
    codes = np.zeros(len(rows), dtype=np.int64)
    for d in varying:
        column, uniques = pd.factorize(rows[d], use_na_sentinel=True)
        codes = codes * (len(uniques) + 1) + column + 1
    combo = pd.Series(codes, index=rows.index)
    per_line = rows.groupby([combo, rows["label"]])[x].nunique()
    score = pd.DataFrame({"lines": (per_line >= 2).groupby(level=0).sum(),
                          "xs": rows.groupby(combo)[x].nunique(), "rows": rows.groupby(combo).size()})
    top = score.sort_values(["lines", "xs", "rows"], ascending=False).iloc[0]
    best = score.index[(score == top).all(axis=1)]
    # ties go to the first combination in sorted order, as a loop over groupby(varying) would meet them
    best_key = next(iter(rows[combo.isin(best)].groupby(varying, dropna=False)))[0]
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


def png(fig: Any) -> bytes:
    """The figure as PNG bytes, at ``DPI``; closes it."""
    buffer = io.BytesIO()
    # tight_layout has already fitted the labels; bbox_inches="tight" would draw the figure twice
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _fixed_text(fixed: dict[str, Any]) -> str:
    return ", ".join(f"{axis_table.letter(k)}={axis_table.fmt_value(v)}" for k, v in fixed.items())


def _facets(rows: pd.DataFrame, row_dims: tuple[str, ...], col_dims: tuple[str, ...]) -> tuple[list, list]:
    def keys(fields: tuple[str, ...]) -> list:
        if not fields:
            return [()]
        uniq = rows[list(fields)].drop_duplicates().sort_values(list(fields))
        return [tuple(r) for r in uniq.itertuples(index=False)]

    return keys(row_dims), keys(col_dims)


def _select(rows: pd.DataFrame, fields: tuple[str, ...], key: tuple) -> pd.DataFrame:
    for d, value in zip(fields, key):
        rows = rows[rows[d].isna()] if pd.isna(value) else rows[rows[d] == value]
    return rows


def _facet_title(fields: tuple[str, ...], key: tuple) -> str:
    names = {"batch": "batch", "device": "", "mode": "", "metric": "", "over": ""}
    parts = []
    for d, value in zip(fields, key):
        prefix = names.get(d, d)
        parts.append(f"{prefix} {axis_table.fmt_value(value)}".strip())
    return ", ".join(parts)


def line_figure(
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
    log_x = spans_decades([v for p in panels for s in p[2] for v in s.x])
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
        if spans_decades(panel_y, ratio=10.0):
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
    return png(fig), notes


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


def with_notes(base: str, notes: list[str]) -> str:
    if not notes:
        return base
    unique = sorted(set(n.split(": ", 1)[1] for n in notes))
    if len(unique) == 1:
        return f"{base} Held fixed: {unique[0]}."
    return f"{base} Held fixed per panel: " + "; ".join(notes) + "."


# --------------------------------------------------------------------------------------------------
# the figures
