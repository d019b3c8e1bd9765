"""The capacity half's rows: the training runs of a results frame, labelled, keyed by setting, grouped.

A capacity run (``tlstm-bench run capacity``, ``bench.train``) trains one model on one of the paper's
algorithmic tasks (addition of two D-digit numbers; memorization of S symbols from an alphabet of V)
with its width M chosen to meet a parameter budget, and is one training row of the results frame
(``train`` holds the TrainSpec as a dict). ``capacity_rows`` reads only those rows.

A *setting* is one training configuration (task, sizes, optimizer, budget; device, dtype and machine):
runs are compared only within a setting (``settings``). A *model* is one plotted line: the implementation,
plus the variant where an implementation ran several ("tlstm_fused [tLSTM-M]", "lstm_shared"). A ``Group``
is the runs of one model at one depth in one setting, one per seed (``groups``, ``best_of``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.tasks import task_label

from ..data import fmt_int, line_labels, missing, training_rows

# Statuses whose run is an outcome of the model: it trained to the end of its budget (ok) or its loss
# blew up (diverged). A crash, timeout, OOM or error says nothing about what the model can learn.
USABLE = ("ok", "diverged")
BEST_RULE = ("the best of a family at a depth: the model that solved in the most seeds, ties broken by the fewest "
             "mean samples to solve of its solved seeds, then by the highest mean final held-out symbol accuracy")
HINT = "run `tlstm-bench run capacity`"


# --------------------------------------------------------------------------------------------------
# formatting


def fmt_samples(value: Any) -> str:
    """A sample count as '950', '12.3k', '1.2M'; missing as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    n = float(value)
    if abs(n) < 1e3:
        return f"{n:.0f}"
    if abs(n) < 1e6:
        return f"{n / 1e3:.3g}k"
    return f"{n / 1e6:.3g}M"


def fmt_acc(value: Any) -> str:
    """An accuracy as '87.4%', '100%'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.3g}%"


def span(values: list[float], fmt: Callable[[Any], str]) -> str:
    """'12.3k–15k': the smallest and the largest value, formatted; one value when they read the same."""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def fmt_depth(value: Any) -> str:
    """A depth as '4' (an integral float without its '.0')."""
    return str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)


# --------------------------------------------------------------------------------------------------
# the runs


def capacity_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The training rows of a normalized frame, with the columns this module reads: ``label`` (the model),
    ``setting`` (a key; runs are compared only within one) and ``setting_title``, ``task``, ``budget``,
    ``solve_at``, ``outcome_acc`` (final held-out symbol accuracy; 0 for a diverged run) and ``usable``."""
    runs = training_rows(df).copy()
    runs.attrs = {}
    if runs.empty:
        for column in ("label", "setting", "setting_title", "task", "budget", "solve_at", "outcome_acc"):
            runs[column] = pd.Series(dtype=object)
        runs["usable"] = pd.Series(dtype=bool)
        return runs
    runs["label"] = line_labels(runs)
    runs["task"] = runs["train"].map(task_label)
    runs["budget"] = runs["train"].map(lambda t: t.get("params_budget")).astype(float)
    runs["solve_at"] = runs["train"].map(lambda t: t.get("solve_at")).astype(float)
    place = {"device": runs["device"], "dtype": runs["dtype"], "machine": runs["machine"]}
    runs["setting"] = [
        json.dumps({"train": train, **{k: (None if missing(v[i]) else v[i]) for k, v in place.items()}},
                   sort_keys=True, default=str)
        for i, train in zip(runs.index, runs["train"])]
    runs["setting_title"] = runs["setting"].map(_setting_titles(runs))
    runs["outcome_acc"] = [0.0 if status == "diverged" else acc if status == "ok" else math.nan
                           for status, acc in zip(runs["status"], runs["final_symbol_acc"])]
    runs["usable"] = runs["status"].isin(USABLE) & (runs["solved"] | runs["outcome_acc"].notna())
    return runs


def _setting_titles(runs: pd.DataFrame) -> dict[str, str]:
    """A readable title per setting: the task and the budget, plus whatever else tells two settings apart."""
    parsed = {key: json.loads(key) for key in runs["setting"].unique()}
    trains = [s["train"] for s in parsed.values()]
    extra = sorted({k for t in trains for k in t if k not in ("task", "digits", "length", "alphabet", "params_budget")
                    and len({json.dumps(u.get(k)) for u in trains}) > 1})
    places = [k for k in ("device", "dtype", "machine") if len({str(s[k]) for s in parsed.values()}) > 1]
    titles = {}
    for key, s in parsed.items():
        train = s["train"]
        budget = train.get("params_budget")
        parts = [task_label(train) + (f", budget {fmt_int(budget)} params" if budget is not None else "")]
        parts += [f"{k}={train.get(k)}" for k in extra]
        parts += [str(s[k]) for k in places]
        titles[key] = ", ".join(parts)
    return titles


def settings(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(key, title, runs) per setting, ordered by task, then budget."""
    out = []
    for key, rows in runs.groupby("setting", sort=False):
        out.append((key, str(rows["setting_title"].iloc[0]), rows))
    return sorted(out, key=lambda s: (str(s[2]["task"].iloc[0]), s[2]["budget"].iloc[0]
                                      if pd.notna(s[2]["budget"].iloc[0]) else -1.0, s[1]))


def models(rows: pd.DataFrame) -> list[str]:
    """The models of a setting: tLSTMs first, then stacked LSTMs, each by name."""
    family = rows.groupby("label")["family"].first()
    # "impl [tLSTM" sorts before "impl [tLSTM-M": the plain variant first
    return sorted(family.index, key=lambda label: (family[label] != "tlstm", label.rstrip("]")))


@dataclass
class Group:
    """The runs of one model at one depth in one setting (one per seed)."""

    label: str
    family: str
    depth: float
    rows: pd.DataFrame

    @property
    def usable(self) -> pd.DataFrame:
        return self.rows[self.rows["usable"]]

    @property
    def seeds(self) -> int:
        return len(self.usable)

    @property
    def all_solved(self) -> bool:
        u = self.usable
        return len(u) > 0 and bool(u["solved"].all()) and bool(u["samples_to_solve"].notna().all())

    @property
    def mean_acc(self) -> float:
        return float(self.usable["outcome_acc"].mean()) if self.seeds else math.nan

    @property
    def solved_seeds(self) -> int:
        return int(self.usable["solved"].sum())

    @property
    def mean_solved_samples(self) -> float:
        """The mean samples to solve of the seeds that solved (inf when none did)."""
        done = self.usable[self.usable["solved"]]["samples_to_solve"].dropna()
        return float(done.mean()) if len(done) else math.inf

    @property
    def mean_time(self) -> float:
        u = self.usable
        return float(u["time_to_solve_s"].mean()) if self.all_solved and u["time_to_solve_s"].notna().all() \
            else math.inf

    @property
    def name(self) -> str:
        return f"{self.label} at L={fmt_depth(self.depth)}"

    def describe(self) -> str:
        """'solved in 12.3k–15k samples, 3 of 3 seeds' or 'final accuracy 61%–64%, 1 of 3 seeds solved'."""
        u = self.usable
        if u.empty:
            return "no usable run"
        if self.all_solved:
            return f"solved in {span(list(u['samples_to_solve']), fmt_samples)} samples, {len(u)} of {len(u)} seeds"
        diverged = int((u["status"] == "diverged").sum())
        return (f"final accuracy {span(list(u['outcome_acc']), fmt_acc)}, {int(u['solved'].sum())} of {len(u)} "
                f"seed{'s' if len(u) != 1 else ''} solved" + (f", {diverged} diverged" if diverged else ""))


def groups(rows: pd.DataFrame) -> dict[tuple[str, float], Group]:
    """The groups of a setting's rows, keyed by (model, depth); rows without a depth are left out."""
    return {(str(label), float(depth)): Group(str(label), str(g["family"].iloc[0]), float(depth), g)
            for (label, depth), g in rows[rows["depth"].notna()].groupby(["label", "depth"])}


def seeds_per_group(runs: pd.DataFrame) -> pd.Series:
    """The usable runs (seeds) of every group: (setting, model, depth) -> count."""
    return runs[runs["usable"]].groupby(["setting", "label", "depth"]).size()


def side_by_side(rows: pd.DataFrame) -> int:
    """How many runs trained at once (``budget.workers``, the ``side_by_side`` metric): the most any run
    recorded; 1 where none did."""
    if "side_by_side" not in rows or not rows["side_by_side"].notna().any():
        return 1
    return int(rows["side_by_side"].max())


def best_of(candidates: list[Group]) -> Group | None:
    """The best group by ``BEST_RULE`` (ties: by name), among those with a usable run."""
    candidates = [g for g in candidates if g.seeds]
    if not candidates:
        return None
    return min(candidates, key=lambda g: (-g.solved_seeds, g.mean_solved_samples, -g.mean_acc, g.label))


# --------------------------------------------------------------------------------------------------
# the sizes


def params_text(core: Any, head: Any, total: Any) -> str:
    """'19,876 (19,600 + 276)': the total, then core + head where recorded."""
    if missing(core) or missing(head):
        return fmt_int(total)
    return f"{fmt_int(total)} ({fmt_int(core)} + {fmt_int(head)})"


def model_sizes(rows: pd.DataFrame) -> dict[str, dict[float, dict[str, float]]]:
    """Per model and depth: the width M and the parameter counts (total, core, head) its runs recorded."""
    out: dict[str, dict[float, dict[str, float]]] = {}
    known = rows[rows["depth"].notna()]
    for (label, depth), g in known.groupby(["label", "depth"]):
        out.setdefault(str(label), {})[float(depth)] = {
            name: float(g[name].median()) if g[name].notna().any() else math.nan
            for name in ("channels", "params", "core_params", "head_params")}
    return out


__all__ = [
    "BEST_RULE",
    "HINT",
    "USABLE",
    "Group",
    "best_of",
    "capacity_rows",
    "fmt_acc",
    "fmt_depth",
    "fmt_samples",
    "groups",
    "missing",
    "model_sizes",
    "models",
    "params_text",
    "seeds_per_group",
    "settings",
    "side_by_side",
    "span",
]
