"""The capacity half's figures: final held-out accuracy vs depth, samples and time to solve vs depth, the
fraction of runs solved vs samples (Kaplan-Meier), and the learning curves. Every model keeps one style (colour,
dash and marker, ``reports.figures.style_for``) in all of them, its seeds' markers included, so a seed's marker
says whose it is."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.lines
import matplotlib.ticker
import pandas as pd

from ..figures import Figure, panel_grid, png, spans_decades, style_for
from .data import HINT, fmt_acc, fmt_depth, fmt_samples, missing, models, settings
from .survival import fraction_solved, run_outcomes


def _depth_axis(ax: Any, depths: list[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if depths:
        ax.set_xlim(min(depths) / 1.35, max(depths) * 1.35)
    ax.set_xlabel("depth L (layers)")
    ax.grid(True, which="major", alpha=0.3)


def _offset(depth: float, k: int, n: int) -> float:
    """Spread the models' markers at one depth a little apart on the log axis."""
    return depth * 2 ** (0.07 * (k - (n - 1) / 2))


def _samples_formatter(v: float, _: Any) -> str:
    return fmt_samples(v) if v > 0 else "0"


def _log_if_wide(ax: Any, values: list[float]) -> None:
    if spans_decades(values, ratio=10.0):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def _usable(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the figures draw: usable (see ``capacity_rows``) and with a depth."""
    return runs[runs["usable"] & runs["depth"].notna()] if not runs.empty else runs


def _model_handle(style: dict[str, Any]) -> Any:
    """A model's legend entry: its colour, dash and marker."""
    return matplotlib.lines.Line2D([], [], color=style["color"], linestyle=style["linestyle"], marker=style["marker"],
                                   markersize=5)


def _depth_grid(n_settings: int, n_depths: int) -> tuple[Any, Any, Any, int, int]:
    """A grid of one panel per depth and setting, at most three a row (two for four depths), every panel
    hidden until drawn: (fig, axes, legend, columns, rows per setting)."""
    n_cols = n_depths if n_depths <= 3 else 2 if n_depths == 4 else 3
    per_setting = math.ceil(n_depths / n_cols)
    fig, axes, legend = panel_grid(n_settings * per_setting, n_cols, legend_in=3.1)
    for ax in axes.flat:
        ax.set_visible(False)
    return fig, axes, legend, n_cols, per_setting


def _fraction_vs_samples(ax: Any, ylabel: str, title: str) -> None:
    """A panel of a fraction (0 to 100%) against training samples seen."""
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_samples_formatter))
    ax.set_xlabel("training samples seen")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9.5)


def _threshold(ax: Any, rows: pd.DataFrame, handles: dict[str, Any]) -> None:
    """The solve threshold as a dashed line, labelled with its value."""
    for solve_at in sorted({float(v) for v in rows["solve_at"].dropna()}):
        ax.axhline(solve_at, color="black", linestyle="--", linewidth=1)
        handles.setdefault(f"solved at {fmt_acc(solve_at)}",
                           matplotlib.lines.Line2D([], [], color="black", linestyle="--"))


def _finish(fig: Any, legend: Any, handles: dict[str, Any], slug: str, title: str, caption: str,
            diverged: tuple[pd.DataFrame, str] | None = None) -> Figure:
    """Draw the legend and return the Figure. ``diverged``: (runs, key): where a run of ``runs`` diverged, the
    legend ends in a black cross with that key."""
    if diverged is not None and (diverged[0]["status"] == "diverged").any():
        handles[diverged[1]] = matplotlib.lines.Line2D([], [], color="black", marker="x", linestyle="none")
    legend(handles)
    return Figure(slug, title, caption, png(fig))


def fig_accuracy_vs_depth(runs: pd.DataFrame) -> Figure:
    """Final held-out symbol accuracy vs depth at the budget: every seed a marker, the mean a line."""
    slug, title = "capacity_accuracy", "Capacity: final held-out accuracy vs depth at a fixed parameter budget"
    caption = ("Final held-out symbol accuracy (the last evaluation) of every run, one marker per seed, and the "
               "mean over seeds as the line, one panel per task and budget. A cross marks a diverged run, drawn at "
               "accuracy 0 as the claims count it. The dashed line is the accuracy at which a run counts as solved. "
               "Runs that crashed, timed out or hit an error are not drawn (see the failures table).")
    usable = _usable(runs)
    if usable.empty:
        return Figure(slug, title, caption, missing="needs training runs that finished: " + HINT)
    panels = settings(usable)
    n_cols = min(3, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes, legend = panel_grid(n_rows, n_cols, legend_in=3.1)
    handles: dict[str, Any] = {}
    for i, (_, setting_title, rows) in enumerate(panels):
        ax = axes[i // n_cols][i % n_cols]
        names = models(rows)
        depths = sorted({float(d) for d in rows["depth"]})
        for k, label in enumerate(names):
            style = style_for(label)
            mine = rows[rows["label"] == label]
            means = mine.groupby("depth")["outcome_acc"].mean().sort_index()
            xs = [_offset(d, k, len(names)) for d in means.index]
            ax.plot(xs, means.to_numpy(), color=style["color"], linestyle=style["linestyle"], linewidth=1.6)
            ok = mine[mine["status"] == "ok"]
            ax.scatter([_offset(d, k, len(names)) for d in ok["depth"]], ok["outcome_acc"], color=style["color"],
                       marker=style["marker"], s=22, alpha=0.75, zorder=3)
            div = mine[mine["status"] == "diverged"]
            if len(div):
                ax.scatter([_offset(d, k, len(names)) for d in div["depth"]], div["outcome_acc"],
                           color=style["color"], marker="x", s=30, zorder=3)
            handles.setdefault(label, _model_handle(style))
        _threshold(ax, rows, handles)
        _depth_axis(ax, depths)
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_ylabel("final held-out symbol accuracy")
        ax.set_title(setting_title, fontsize=9.5)
    for j in range(len(panels), n_rows * n_cols):
        axes[j // n_cols][j % n_cols].set_visible(False)
    return _finish(fig, legend, handles, slug, title, caption, diverged=(runs, "diverged (at 0)"))


def fig_solve_vs_depth(runs: pd.DataFrame) -> Figure:
    """Samples to solve and time to solve vs depth; unsolved runs hollow, at what they used without solving."""
    slug, title = "capacity_solve", "Capacity: samples and time to solve vs depth"
    caption = ("Left: training samples until the held-out symbol accuracy first reached the solve threshold; right: "
               "the training wall time until then (evaluations excluded). Filled markers: one per solved seed; the "
               "line joins the means at the depths where every seed solved. Hollow markers: runs that did not "
               "solve, and crosses runs that diverged, drawn at the samples and the time they used without solving, so "
               "the true value is above them (at least this much).")
    usable = _usable(runs)
    if usable.empty or not (usable["solved"].any() or usable["samples_seen"].notna().any()):
        return Figure(slug, title, caption, missing="needs training runs that finished: " + HINT)
    panels = settings(usable)
    fig, axes, legend = panel_grid(len(panels), 2, legend_in=3.1)
    handles: dict[str, Any] = {}
    columns = (("samples_to_solve", "samples_seen", "samples to solve"),
               ("time_to_solve_s", "train_time_s", "time to solve (s)"))
    for i, (_, setting_title, rows) in enumerate(panels):
        names = models(rows)
        depths = sorted({float(d) for d in rows["depth"]})
        for j, (solved_col, used_col, ylabel) in enumerate(columns):
            ax = axes[i][j]
            values: list[float] = []
            for k, label in enumerate(names):
                style = style_for(label)
                mine = rows[rows["label"] == label]
                solved = mine[mine["solved"] & mine[solved_col].notna()]
                unsolved = mine[~mine["solved"] & mine[used_col].notna() & (mine["status"] == "ok")]
                diverged = mine[mine[used_col].notna() & (mine["status"] == "diverged")]
                ax.scatter([_offset(d, k, len(names)) for d in solved["depth"]], solved[solved_col],
                           color=style["color"], marker=style["marker"], s=22, zorder=3)
                ax.scatter([_offset(d, k, len(names)) for d in unsolved["depth"]], unsolved[used_col],
                           facecolors="none", edgecolors=style["color"], marker=style["marker"], s=26, zorder=3)
                ax.scatter([_offset(d, k, len(names)) for d in diverged["depth"]], diverged[used_col],
                           color=style["color"], marker="x", s=30, zorder=3)
                values += list(solved[solved_col]) + list(unsolved[used_col]) + list(diverged[used_col])
                every = [d for d, g in mine.groupby("depth") if bool(g["solved"].all()) and g[solved_col].notna().all()]
                if every:
                    means = solved[solved["depth"].isin(every)].groupby("depth")[solved_col].mean().sort_index()
                    ax.plot([_offset(d, k, len(names)) for d in means.index], means.to_numpy(), color=style["color"],
                            linestyle=style["linestyle"], linewidth=1.6)
                handles.setdefault(label, _model_handle(style))
            _depth_axis(ax, depths)
            _log_if_wide(ax, values)
            if j == 0:
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_samples_formatter))
            ax.set_ylabel(ylabel)
            ax.set_title(setting_title, fontsize=9.5)
    handles["hollow: not solved (at what it used)"] = matplotlib.lines.Line2D(
        [], [], color="black", marker="o", markerfacecolor="none", linestyle="none")
    return _finish(fig, legend, handles, slug, title, caption, diverged=(usable, "diverged (at what it used)"))


def fig_fraction_solved(runs: pd.DataFrame) -> Figure:
    """The Kaplan-Meier estimate of the fraction of seeds solved vs training samples: one panel per depth (and
    setting), one step line per model; what the seed rule's log-rank test compares."""
    slug, title = "capacity_solved", "Capacity: fraction of seeds solved vs samples (Kaplan-Meier)"
    caption = ("For each model, the estimated fraction of its seeds that had solved the task (held-out symbol "
               "accuracy at the threshold) by each number of training samples, one panel per depth. A run that did "
               "not solve counts until the samples it used (censored; a diverged run until the whole budget), so a "
               "line that stays flat at the right ended with unsolved runs. These curves are what the seed rule's "
               "log-rank test compares.")
    usable = _usable(runs)
    if usable.empty or usable["samples_seen"].isna().all():
        return Figure(slug, title, caption, missing="needs training runs that finished: " + HINT)
    panels = settings(usable)
    depths = sorted({float(d) for d in usable["depth"]})
    fig, axes, legend, n_cols, per_setting = _depth_grid(len(panels), len(depths))
    handles: dict[str, Any] = {}
    for i, (_, setting_title, srows) in enumerate(panels):
        for j, depth in enumerate(depths):
            here = srows[srows["depth"] == depth]
            if here.empty:
                continue
            ax = axes[i * per_setting + j // n_cols][j % n_cols]
            ax.set_visible(True)
            for label in models(srows):
                mine = here[here["label"] == label]
                if mine.empty:
                    continue
                style = style_for(label)
                xs, ys = fraction_solved(run_outcomes(mine))
                ax.step(xs, ys, where="post", color=style["color"], linestyle=style["linestyle"], linewidth=1.6)
                ax.plot(xs[-1], ys[-1], color=style["color"], marker=style["marker"], markersize=5)
                handles.setdefault(label, _model_handle(style))
            where = f", {setting_title}" if len(panels) > 1 else ""
            _fraction_vs_samples(ax, "fraction of seeds solved", f"L={fmt_depth(depth)}{where}")
    if len(panels) == 1:
        caption += f" Setting: {panels[0][1]}."
    return _finish(fig, legend, handles, slug, title, caption)


def fig_learning_curves(runs: pd.DataFrame) -> Figure:
    """Held-out symbol accuracy vs samples seen: one panel per depth (and setting), one line per model and seed."""
    slug, title = "capacity_curves", "Capacity: learning curves, held-out accuracy vs samples seen"
    caption = ("Held-out symbol accuracy at every evaluation against the training samples seen so far, one line per "
               "model and seed (all seeds of a model in its colour and dash, each line ending in its marker), one "
               "panel per depth. A cross ends a run that diverged. The dashed line is the solve threshold.")
    rows = runs[runs["curve"].map(lambda c: isinstance(c, list) and len(c) > 0) & runs["depth"].notna()] \
        if not runs.empty else runs
    if rows.empty:
        return Figure(slug, title, caption, missing="no training run recorded a learning curve (its evaluations): "
                      + HINT)
    panels = settings(rows)
    depths = sorted({float(d) for d in rows["depth"]})
    # at most three panels a row (two for four depths), so the panels stay readable inline
    fig, axes, legend, n_cols, per_setting = _depth_grid(len(panels), len(depths))
    handles: dict[str, Any] = {}
    for i, (_, setting_title, srows) in enumerate(panels):
        names = models(srows)
        for j, depth in enumerate(depths):
            ax = axes[i * per_setting + j // n_cols][j % n_cols]
            here = srows[srows["depth"] == depth]
            if here.empty:
                continue
            ax.set_visible(True)
            samples_seen: list[float] = []
            for label in names:
                style = style_for(label)
                for _, run in here[here["label"] == label].iterrows():
                    points = [(e.get("samples"), e.get("symbol_acc")) for e in run["curve"]]
                    points = [(float(x), float(y)) for x, y in points if not missing(x) and not missing(y)]
                    if not points:
                        continue
                    xs, ys = zip(*points)
                    samples_seen += xs
                    ax.plot(xs, ys, color=style["color"], linestyle=style["linestyle"], linewidth=1.1, alpha=0.8)
                    if run["status"] == "diverged":
                        ax.plot(xs[-1], ys[-1], color=style["color"], marker="x", markersize=6)
                    else:
                        ax.plot(xs[-1], ys[-1], color=style["color"], marker=style["marker"], markersize=4.5,
                                alpha=0.8)
                    handles.setdefault(label, _model_handle(style))
            _threshold(ax, here, handles)
            where = f", {setting_title}" if len(panels) > 1 else ""
            _fraction_vs_samples(ax, "held-out symbol accuracy", f"L={fmt_depth(depth)}{where}")
    if len(panels) == 1:
        caption += f" Setting: {panels[0][1]}."
    return _finish(fig, legend, handles, slug, title, caption)


__all__ = ["fig_accuracy_vs_depth", "fig_fraction_solved", "fig_learning_curves", "fig_solve_vs_depth"]
