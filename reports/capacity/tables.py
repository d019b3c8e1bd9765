"""The capacity half's tables: one samples-to-solve / time-to-solve table per setting (``solve_tables``:
models by depth, one line per seed in each cell) and the runs that did not train to the end of their
budget (``capacity_failures``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.contract import format_seconds

from ..data import fmt_int
from .data import fmt_acc, fmt_samples, missing, model_sizes, models, params_text, settings


@dataclass
class SolveTable:
    """One setting's samples-to-solve / time-to-solve table: ``rows`` one per model, each {"label", "sizes"
    (width and params when the same at every depth, else ""), "cells": {depth: {"sizes", "lines"}}}."""

    title: str
    depths: list[float]
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_text(row: Any) -> str:
    """One run as a table line: '12.3k / 4.1 s', 'not solved (best 87%)', 'diverged at 3.2k samples', or
    the failure status."""
    if row["status"] == "ok" and row["solved"]:
        return f"{fmt_samples(row['samples_to_solve'])} / {format_seconds(row['time_to_solve_s'])}"
    if row["status"] == "ok":
        best = row["best_symbol_acc"] if pd.notna(row["best_symbol_acc"]) else row["final_symbol_acc"]
        return f"not solved (best {fmt_acc(best)})"
    if row["status"] == "diverged":
        return f"diverged at {fmt_samples(row['samples_seen'])} samples"
    seen = f" after {fmt_samples(row['samples_seen'])} samples" if pd.notna(row["samples_seen"]) else ""
    return f"{row['status']}{seen}"


def _seed(value: Any, fallback: int) -> str:
    if missing(value):
        return f"run {fallback + 1}"
    return f"seed {int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value}"


def solve_tables(runs: pd.DataFrame) -> list[SolveTable]:
    """One table per setting: rows = models, columns = depths, one line per seed in each cell."""
    tables = []
    for _, title, rows in settings(runs):
        known = rows[rows["depth"].notna()]
        depths = sorted({float(d) for d in known["depth"]})
        sizes = model_sizes(known)
        table = SolveTable(title, depths)
        for label in models(known):
            mine = known[known["label"] == label]
            per = sizes.get(label, {})
            texts = {d: f"M={fmt_int(s['channels'])}, {params_text(s['core_params'], s['head_params'], s['params'])}"
                     for d, s in per.items()}
            same = len(set(texts.values())) == 1
            cells = {}
            for depth, g in mine.groupby("depth"):
                ordered = g.sort_values("seed", key=lambda s: s.map(lambda v: (str(type(v)), v)))
                lines = [f"{_seed(r['seed'], i)}: {run_text(r)}" for i, (_, r) in enumerate(ordered.iterrows())]
                cells[float(depth)] = {"sizes": "" if same else texts.get(float(depth), ""), "lines": lines}
            table.rows.append({"label": label, "sizes": next(iter(texts.values())) if same and texts else "",
                               "cells": cells})
        tables.append(table)
    return tables


def capacity_failures(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not train to the end of their budget (status other than ok), diverged ones first."""
    failed = runs[runs["status"] != "ok"].copy()
    failed["first"] = failed["status"] != "diverged"
    return failed.sort_values(["first", "status", "label", "depth"]).drop(columns="first")


__all__ = ["SolveTable", "capacity_failures", "run_text", "solve_tables"]
