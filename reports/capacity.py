"""The capacity half of the report: what each model learns at a fixed parameter budget, over depth, per seed.

A capacity run (``tlstm-bench run capacity``, ``bench.train``) trains one model on one of the paper's
algorithmic tasks (addition of two D-digit numbers; memorization of S symbols from an alphabet of V)
with its width M chosen to meet a parameter budget, and is one training row of the results frame
(``train`` holds the TrainSpec as a dict). This module reads only those rows and gives:

- the claims, judged seed by seed under one stated rule (``SEED_RULE``, ``compare``): Wider/Deeper (the
  best tLSTM gains from depth at the budget while each stacked LSTM saturates or degrades), tLSTM vs
  stacked LSTM at each depth, Faster in practice (time to solve), and the parameter facts at the budget;
- three figures: accuracy vs depth, samples and time to solve vs depth, learning curves;
- the samples-to-solve / time-to-solve table, one cell per model, depth and seed.

A *setting* is one training configuration (task, sizes, optimizer, budget; device, dtype and machine):
runs are compared only within a setting. A *model* is one plotted line: the implementation, plus the
variant where an implementation ran several ("tlstm_fused [tLSTM-M]", "lstm_shared").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import matplotlib.lines
import matplotlib.ticker
import numpy as np
import pandas as pd

from bench.contract import format_seconds

from .claims import BY_CONSTRUCTION, FAILS, HOLDS, NOT_MEASURED, PARTLY, UNDECIDED, Claim
from .data import SHARED_LSTM_IMPLS, fmt_int, line_labels, training_rows
from .figures import Figure, _png, _spans_decades, panel_grid, style_for

# The seed rule's margins: accuracies must differ by more than ACC_MARGIN (absolute), samples or
# seconds to solve by more than RELATIVE_MARGIN of the worse mean; a group needs MIN_SEEDS runs.
ACC_MARGIN = 0.01
RELATIVE_MARGIN = 0.10
MIN_SEEDS = 2
# Statuses whose run is an outcome of the model: it trained to the end of its budget (ok) or its loss
# blew up (diverged). A crash, timeout, OOM or error says nothing about what the model can learn.
USABLE = ("ok", "diverged")

SEED_RULE = (
    "Two groups of runs A and B (for example one model at its largest depth and at its smallest, or the best "
    "tLSTM and the best stacked LSTM at one depth) are compared by every seed's outcome. A run's outcome is its "
    "samples to solve when every run of both groups solved, otherwise its final held-out symbol accuracy (a "
    "diverged run counts as not solved, with accuracy 0; runs that crashed, timed out, ran out of memory or hit "
    "an error are left out). A beats B when every seed's outcome of A is better than every seed's outcome of B "
    f"(the ranges do not overlap) and the means differ by more than a margin: {ACC_MARGIN:g} in accuracy, or A's "
    f"mean samples to solve more than {RELATIVE_MARGIN:.0%} below B's. B beats A likewise. Otherwise the "
    f"comparison is undecided (the seeds overlap, or the means are within the margin). A group with fewer than "
    f"{MIN_SEEDS} usable seeds decides nothing: undecided (one seed).")
BEST_RULE = ("the best of a family at a depth: a model that solved in every seed, fewest mean samples to solve; "
             "failing that, the highest mean final held-out symbol accuracy")
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


def _span(values: list[float], fmt: Callable[[Any], str]) -> str:
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _depth(value: Any) -> str:
    return str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)


def task_label(train: dict[str, Any]) -> str:
    """'addition D=3' or 'memorization S=8 V=4' (as bench.contract.TrainSpec.task_label)."""
    if train.get("task") == "addition":
        return f"addition D={train.get('digits')}"
    return f"{train.get('task')} S={train.get('length')} V={train.get('alphabet')}"


# --------------------------------------------------------------------------------------------------
# the runs


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
        json.dumps({"train": train, **{k: (None if _missing(v[i]) else v[i]) for k, v in place.items()}},
                   sort_keys=True, default=str)
        for i, train in zip(runs.index, runs["train"])]
    runs["setting_title"] = runs["setting"].map(_setting_titles(runs))
    runs["outcome_acc"] = [0.0 if status == "diverged" else acc if status == "ok" else math.nan
                           for status, acc in zip(runs["status"], runs["final_symbol_acc"])]
    runs["usable"] = runs["status"].isin(USABLE) & (runs["solved"] | runs["outcome_acc"].notna())
    return runs


def _setting_titles(runs: pd.DataFrame) -> dict[str, str]:
    """A readable title per setting: the task and the budget, plus whatever else tells two settings apart."""
    settings = {key: json.loads(key) for key in runs["setting"].unique()}
    trains = [s["train"] for s in settings.values()]
    extra = sorted({k for t in trains for k in t if k not in ("task", "digits", "length", "alphabet", "params_budget")
                    and len({json.dumps(u.get(k)) for u in trains}) > 1})
    places = [k for k in ("device", "dtype", "machine") if len({str(s[k]) for s in settings.values()}) > 1]
    titles = {}
    for key, s in settings.items():
        train = s["train"]
        budget = train.get("params_budget")
        parts = [task_label(train) + (f", budget {fmt_int(budget)} params" if budget is not None else "")]
        parts += [f"{k}={train.get(k)}" for k in extra]
        parts += [str(s[k]) for k in places]
        titles[key] = ", ".join(parts)
    return titles


def _settings(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(key, title, runs) per setting, ordered by task, then budget."""
    out = []
    for key, rows in runs.groupby("setting", sort=False):
        out.append((key, str(rows["setting_title"].iloc[0]), rows))
    return sorted(out, key=lambda s: (str(s[2]["task"].iloc[0]), s[2]["budget"].iloc[0]
                                      if pd.notna(s[2]["budget"].iloc[0]) else -1.0, s[1]))


def _models(rows: pd.DataFrame) -> list[str]:
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
    def mean_samples(self) -> float:
        return float(self.usable["samples_to_solve"].mean()) if self.all_solved else math.inf

    @property
    def mean_time(self) -> float:
        u = self.usable
        return float(u["time_to_solve_s"].mean()) if self.all_solved and u["time_to_solve_s"].notna().all() \
            else math.inf

    @property
    def name(self) -> str:
        return f"{self.label} at L={_depth(self.depth)}"

    def describe(self) -> str:
        """'solved in 12.3k–15k samples, 3 of 3 seeds' or 'final accuracy 61%–64%, 1 of 3 seeds solved'."""
        u = self.usable
        if u.empty:
            return "no usable run"
        if self.all_solved:
            return f"solved in {_span(list(u['samples_to_solve']), fmt_samples)} samples, {len(u)} of {len(u)} seeds"
        diverged = int((u["status"] == "diverged").sum())
        return (f"final accuracy {_span(list(u['outcome_acc']), fmt_acc)}, {int(u['solved'].sum())} of {len(u)} "
                f"seed{'s' if len(u) != 1 else ''} solved" + (f", {diverged} diverged" if diverged else ""))


def _groups(rows: pd.DataFrame) -> dict[tuple[str, float], Group]:
    return {(str(label), float(depth)): Group(str(label), str(g["family"].iloc[0]), float(depth), g)
            for (label, depth), g in rows[rows["depth"].notna()].groupby(["label", "depth"])}


def best_of(groups: list[Group]) -> Group | None:
    """The best group by ``BEST_RULE`` (ties: by name), among those with a usable run."""
    candidates = [g for g in groups if g.seeds]
    if not candidates:
        return None
    return min(candidates, key=lambda g: ((0, g.mean_samples) if g.all_solved else (1, -g.mean_acc), g.label))


# --------------------------------------------------------------------------------------------------
# the seed rule

A_WINS, B_WINS, OVERLAP, ONE_SEED, NO_RUNS = "a", "b", "undecided", "one seed", "no runs"


@dataclass(frozen=True)
class Comparison:
    """The seed rule applied to two groups: ``outcome`` is one of A_WINS, B_WINS, OVERLAP, ONE_SEED,
    NO_RUNS; ``text`` the numbers that decide it."""

    outcome: str
    metric: str
    a_values: tuple[float, ...]
    b_values: tuple[float, ...]
    text: str

    @property
    def decided(self) -> bool:
        return self.outcome in (A_WINS, B_WINS)

    @property
    def reason(self) -> str:
        """Why an undecided comparison is undecided: 'one seed', 'seeds overlap', ...; '' when decided."""
        if self.outcome == OVERLAP:
            return "means within the margin" if "means within the margin" in self.text else "seeds overlap"
        return {ONE_SEED: "one seed", NO_RUNS: "no usable run"}.get(self.outcome, "")


def compare(a: Group, b: Group, metric: str = "outcome") -> Comparison:
    """Group ``a`` against group ``b`` by ``SEED_RULE``. ``metric``: "outcome" (samples to solve when every
    run of both solved, else final held-out symbol accuracy) or "time" (time to solve; both must have
    solved in every seed)."""
    ua, ub = a.usable, b.usable
    if metric == "time":
        name, column, higher, fmt = "time to solve", "time_to_solve_s", False, format_seconds
        if not (a.all_solved and b.all_solved):
            return Comparison(NO_RUNS, name, (), (), "not every run of both solved: no time to solve to compare")
    elif a.all_solved and b.all_solved:
        name, column, higher, fmt = "samples to solve", "samples_to_solve", False, fmt_samples
    else:
        name, column, higher, fmt = "final held-out symbol accuracy", "outcome_acc", True, fmt_acc
    va = tuple(float(v) for v in ua[column] if pd.notna(v))
    vb = tuple(float(v) for v in ub[column] if pd.notna(v))
    numbers = (f"{name} {_span(list(va), fmt) if va else 'n/a'} ({len(va)} seed{'s' if len(va) != 1 else ''}) vs "
               f"{_span(list(vb), fmt) if vb else 'n/a'} ({len(vb)} seed{'s' if len(vb) != 1 else ''})")
    if not va or not vb:
        return Comparison(NO_RUNS, name, va, vb, f"{numbers}: no usable run to compare")
    if len(va) < MIN_SEEDS or len(vb) < MIN_SEEDS:
        return Comparison(ONE_SEED, name, va, vb, f"{numbers}: undecided: one seed (the rule needs {MIN_SEEDS} "
                                                  "or more per group)")
    mean_a, mean_b = float(np.mean(va)), float(np.mean(vb))
    if higher:
        a_all, b_all = min(va) > max(vb), min(vb) > max(va)
        apart = abs(mean_a - mean_b) > ACC_MARGIN
        means = f"means {fmt(mean_a)} vs {fmt(mean_b)}"
    else:
        a_all, b_all = max(va) < min(vb), max(vb) < min(va)
        apart = min(mean_a, mean_b) < (1 - RELATIVE_MARGIN) * max(mean_a, mean_b)
        means = f"means {fmt(mean_a)} vs {fmt(mean_b)}"
    if a_all and apart:
        return Comparison(A_WINS, name, va, vb, f"{numbers}: {a.name} better in every seed, {means}")
    if b_all and apart:
        return Comparison(B_WINS, name, va, vb, f"{numbers}: {b.name} better in every seed, {means}")
    why = "seeds overlap" if not (a_all or b_all) else "means within the margin"
    return Comparison(OVERLAP, name, va, vb, f"{numbers}: undecided ({why}), {means}")


def _combine(verdicts: list[str]) -> str:
    """One verdict from several settings': the same everywhere, in part where some hold, does not hold where
    none holds and some do not, else undecided (settings not measured do not count)."""
    judged = [v for v in verdicts if v != NOT_MEASURED]
    if not judged:
        return NOT_MEASURED
    if len(set(judged)) == 1:
        return judged[0]
    if HOLDS in judged or PARTLY in judged:
        return PARTLY
    return FAILS if FAILS in judged else UNDECIDED


# --------------------------------------------------------------------------------------------------
# the claims


def judge_depth_gain(runs: pd.DataFrame) -> Claim:
    """Wider/Deeper at a fixed budget: the best tLSTM's outcome improves from its smallest depth to its
    largest while every stacked LSTM's saturates or degrades."""
    rule = ("per setting (task, budget): the best tLSTM at its largest depth (" + BEST_RULE + ") against the same "
            "model at its smallest depth, and each stacked LSTM likewise, by the seed rule. A model improves where "
            "its largest depth beats its smallest, degrades where the smallest beats the largest, saturates where "
            "the rule finds no difference with 2 or more seeds each. Holds where the tLSTM improves and every "
            "stacked LSTM saturates or degrades; in part where a stacked LSTM improves too; does not hold where the "
            "tLSTM degrades; undecided otherwise (the tLSTM's change is undecided, or a stacked LSTM has one seed)")
    details: list[str] = []
    data: list[dict[str, Any]] = []
    verdicts: list[str] = []
    headlines: list[str] = []
    for _, title, rows in _settings(runs):
        groups = _groups(rows)
        spans: dict[str, tuple[Group, Group]] = {}
        for label in _models(rows):
            mine = sorted((g for (lab, _), g in groups.items() if lab == label and g.seeds), key=lambda g: g.depth)
            if len(mine) >= 2:
                spans[label] = (mine[-1], mine[0])  # (deepest, shallowest)
        tl = [label for label in spans if spans[label][0].family == "tlstm"]
        best = best_of([spans[label][0] for label in tl])
        if best is None:
            details.append(f"{title}: not judged: no tLSTM with usable runs at two or more depths")
            verdicts.append(NOT_MEASURED)
            continue
        deep, shallow = spans[best.label]
        tl_cmp = compare(deep, shallow)
        tl_state = {A_WINS: "improves", B_WINS: "degrades"}.get(tl_cmp.outcome, "undecided")
        states = {}
        lines = [f"{title}: best tLSTM {best.label}, L={_depth(shallow.depth)} → {_depth(deep.depth)}: {tl_state} "
                 f"({shallow.describe()} → {deep.describe()}; {tl_cmp.text})"]
        for label, (d, s) in spans.items():
            if d.family != "lstm":
                continue
            c = compare(d, s)
            state = {A_WINS: "improves", B_WINS: "degrades", OVERLAP: "saturates"}.get(c.outcome, "undecided")
            states[label] = state
            lines.append(f"{title}: {label}, L={_depth(s.depth)} → {_depth(d.depth)}: {state} ({s.describe()} → "
                         f"{d.describe()}; {c.text})")
        if tl_state == "degrades":
            verdict = FAILS
        elif tl_state != "improves":
            verdict = UNDECIDED
        elif not states:
            verdict = PARTLY  # the tLSTM half holds; no stacked LSTM ran at two depths to set it against
        elif "improves" in states.values():
            verdict = PARTLY
        elif "undecided" in states.values():
            verdict = UNDECIDED
        else:
            verdict = HOLDS
        verdicts.append(verdict)
        details.extend(lines)
        others = ", ".join(f"{label} {state}" for label, state in states.items()) or "no stacked LSTM at two depths"
        headlines.append(f"{title}: {best.label} {tl_state} from L={_depth(shallow.depth)} to L={_depth(deep.depth)} "
                         f"({shallow.describe()} → {deep.describe()}); {others}")
        data.append({"setting": title, "verdict": verdict, "tlstm": best.label, "tlstm_state": tl_state,
                     "depths": (shallow.depth, deep.depth), "tlstm_comparison": tl_cmp, "lstm_states": states})
    verdict = _combine(verdicts)
    if not data:
        return Claim("Wider/Deeper", NOT_MEASURED, "needs a tLSTM trained at two or more depths (" + HINT + ")",
                     rule, details, data, "Wider/Deeper at a fixed budget: not measured in these results.")
    evidence = "; ".join(headlines)
    return Claim("Wider/Deeper", verdict, evidence, rule, details, data,
                 f"Wider/Deeper at a fixed budget (depth helps the tLSTM, not the stacked LSTM): {verdict}. "
                 f"{evidence}.")


def _said(entry: dict[str, Any]) -> str:
    """A per-depth verdict in words, with the reason when undecided: 'holds', 'undecided (one seed)'."""
    words = {HOLDS: "holds", FAILS: "does not hold", UNDECIDED: "undecided"}
    reason = entry["comparison"].reason
    return words[entry["verdict"]] + (f" ({reason})" if entry["verdict"] == UNDECIDED and reason else "")


def judge_versus(runs: pd.DataFrame) -> Claim:
    """tLSTM vs stacked LSTM: at each depth both families ran, the best of each by the seed rule."""
    rule = ("per setting (task, budget) and at every depth both families ran: the best tLSTM against the best "
            "stacked LSTM (" + BEST_RULE + "), by the seed rule: holds at that depth where the tLSTM wins, does "
            "not hold where the stacked LSTM wins, undecided otherwise. A setting's verdict is the one at the "
            "largest depth both families ran")
    details: list[str] = []
    data: list[dict[str, Any]] = []
    verdicts: list[str] = []
    headlines: list[str] = []
    words = {HOLDS: "holds", FAILS: "does not hold", UNDECIDED: "undecided"}
    for _, title, rows in _settings(runs):
        groups = _groups(rows)
        depths = sorted({d for (_, d), g in groups.items() if g.seeds})
        per_depth = []
        for depth in depths:
            tl = best_of([g for (_, d), g in groups.items() if d == depth and g.family == "tlstm"])
            ls = best_of([g for (_, d), g in groups.items() if d == depth and g.family == "lstm"])
            if tl is None or ls is None:
                continue
            c = compare(tl, ls)
            verdict = {A_WINS: HOLDS, B_WINS: FAILS}.get(c.outcome, UNDECIDED)
            per_depth.append({"setting": title, "depth": depth, "tlstm": tl.label, "lstm": ls.label,
                              "verdict": verdict, "comparison": c})
            details.append(f"{title}, L={_depth(depth)}: {words[verdict]}: {tl.label} ({tl.describe()}) vs "
                           f"{ls.label} ({ls.describe()}); {c.text}")
        if not per_depth:
            details.append(f"{title}: not judged: no depth where both a tLSTM and a stacked LSTM have a usable run")
            verdicts.append(NOT_MEASURED)
            continue
        last = per_depth[-1]
        verdicts.append(last["verdict"])
        data.extend(per_depth)
        by_depth = ", ".join(f"L={_depth(d['depth'])} {_said(d)}" for d in per_depth)
        tl_group = groups[(last["tlstm"], last["depth"])]
        ls_group = groups[(last["lstm"], last["depth"])]
        headlines.append(f"{title}: at L={_depth(last['depth'])} {_said(last)}, {last['tlstm']} "
                         f"({tl_group.describe()}) vs {last['lstm']} ({ls_group.describe()}); per depth: {by_depth}")
    verdict = _combine(verdicts)
    if not data:
        return Claim("tLSTM vs stacked LSTM", NOT_MEASURED, "needs a tLSTM and a stacked LSTM trained at the same "
                     "depth (" + HINT + ")", rule, details, data,
                     "tLSTM vs stacked LSTM at the same budget: not measured in these results.")
    evidence = "; ".join(headlines)
    return Claim("tLSTM vs stacked LSTM", verdict, evidence, rule, details, data,
                 f"tLSTM vs stacked LSTM at the same budget, judged at the largest depth: {verdict}. {evidence}.")


def judge_time_to_solve(runs: pd.DataFrame) -> Claim:
    """Faster in practice: time to solve, the quickest tLSTM against the quickest stacked LSTM at the largest
    depth where a model of each family solved in every seed."""
    rule = ("per setting (task, budget): at the largest depth where a tLSTM and a stacked LSTM each solved in "
            "every seed, the one of each family with the least mean time to solve (training wall seconds, "
            "evaluations excluded, on the machine that trained it), compared by the seed rule on time to solve "
            f"(margin: the better mean more than {RELATIVE_MARGIN:.0%} below the other): holds where the tLSTM "
            "wins, does not hold where the stacked LSTM wins, undecided otherwise; not measured where no depth has "
            "both")
    details: list[str] = []
    data: list[dict[str, Any]] = []
    verdicts: list[str] = []
    headlines: list[str] = []
    for _, title, rows in _settings(runs):
        groups = _groups(rows)
        solved = [g for g in groups.values() if g.all_solved and math.isfinite(g.mean_time)]
        both = sorted({g.depth for g in solved if g.family == "tlstm"}
                      & {g.depth for g in solved if g.family == "lstm"})
        if not both:
            details.append(f"{title}: not measured: no depth where a tLSTM and a stacked LSTM both solved in every "
                           "seed")
            verdicts.append(NOT_MEASURED)
            continue
        depth = both[-1]
        tl = min((g for g in solved if g.depth == depth and g.family == "tlstm"), key=lambda g: g.mean_time)
        ls = min((g for g in solved if g.depth == depth and g.family == "lstm"), key=lambda g: g.mean_time)
        c = compare(tl, ls, metric="time")
        verdict = {A_WINS: HOLDS, B_WINS: FAILS}.get(c.outcome, UNDECIDED)
        verdicts.append(verdict)
        data.append({"setting": title, "depth": depth, "tlstm": tl.label, "lstm": ls.label, "verdict": verdict,
                     "comparison": c})
        line = f"at L={_depth(depth)}, {tl.label} vs {ls.label}: {_said(data[-1])}; {c.text}"
        details.append(f"{title}: {line}")
        headlines.append(f"{title}: {line}")
    verdict = _combine(verdicts)
    if not data:
        return Claim("Faster in practice", NOT_MEASURED, "needs a tLSTM and a stacked LSTM that both solved the task "
                     "in every seed at the same depth (" + HINT + " with a larger max_samples or max_time_s)", rule,
                     details, data, "Faster in practice (time to solve): not measured in these results.")
    evidence = "; ".join(headlines)
    return Claim("Faster in practice", verdict, evidence, rule, details, data,
                 f"Faster in practice (time to solve at the largest depth both solved): {verdict}. {evidence}.")


def _params_text(core: Any, head: Any, total: Any) -> str:
    """'19,876 (19,600 + 276)': the total, then core + head where recorded."""
    if _missing(core) or _missing(head):
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


def judge_parameters(runs: pd.DataFrame) -> Claim:
    """The parameter facts at the budget: a tLSTM's width and parameter count do not change with depth; an
    unshared stacked LSTM's width shrinks as L grows, to stay within the budget."""
    rule = ("facts, not a comparison: at a fixed budget a tLSTM keeps one width M and one parameter count at every "
            "depth (its weights are shared by the P locations, so depth costs no parameters), while an unshared "
            "stacked LSTM adds 8M² + 8M parameters per layer, so its width must shrink as L grows (a stacked LSTM "
            "whose layers share their weights keeps its width). Checked on the recorded counts: does not hold if "
            "a tLSTM's parameter count differs between depths or an unshared stacked LSTM's width at its largest "
            "depth is not below the one at its smallest")
    details: list[str] = []
    data: list[dict[str, Any]] = []
    problems: list[str] = []
    headlines: list[str] = []
    for _, title, rows in _settings(runs):
        sizes = model_sizes(rows[rows["params"].notna()])
        if not sizes:
            continue
        budget = rows["budget"].iloc[0]
        family = rows.groupby("label")["family"].first()
        impl = rows.groupby("label")["impl"].first()
        facts = []
        for label in _models(rows):
            if label not in sizes:
                continue
            per = sizes[label]
            depths = sorted(per)
            widths = [per[d]["channels"] for d in depths]
            totals = [per[d]["params"] for d in depths]
            share = (f", {_span([t / budget for t in totals], lambda v: f'{v:.0%}')} of the budget"
                     if pd.notna(budget) and budget > 0 else "")
            at = ", ".join(_depth(d) for d in depths)
            first, last = per[depths[0]], per[depths[-1]]
            if len({fmt_int(w) for w in widths}) == 1 and len({fmt_int(t) for t in totals}) == 1:
                text = (f"{label}: M={fmt_int(widths[0])} at L={at}; "
                        f"{_params_text(first['core_params'], first['head_params'], first['params'])} params{share}")
            else:
                text = (f"{label}: M={fmt_int(widths[0])} at L={_depth(depths[0])} → M={fmt_int(widths[-1])} at "
                        f"L={_depth(depths[-1])}; params "
                        f"{_params_text(first['core_params'], first['head_params'], first['params'])} → "
                        f"{_params_text(last['core_params'], last['head_params'], last['params'])}{share}")
            details.append(f"{title}: {text}")
            facts.append(text)
            entry = {"setting": title, "model": label, "family": family[label], "depths": depths, "widths": widths,
                     "params": totals, "budget": budget}
            data.append(entry)
            if len(depths) < 2:
                continue
            if family[label] == "tlstm" and len(set(totals)) > 1:
                problems.append(f"{title}: {label}'s parameter count changes with depth ({fmt_int(min(totals))} to "
                                f"{fmt_int(max(totals))})")
            if family[label] == "lstm" and impl[label] not in SHARED_LSTM_IMPLS and not widths[-1] < widths[0]:
                problems.append(f"{title}: {label}'s width does not shrink with depth (M={fmt_int(widths[0])} at "
                                f"L={_depth(depths[0])}, {fmt_int(widths[-1])} at L={_depth(depths[-1])}): its "
                                "parameter count grows with L, so the budget is not fixed")
        headlines.append(f"{title}: " + "; ".join(facts))
    if not data:
        return Claim("Parameters at the budget", NOT_MEASURED, "no training run recorded its parameter count", rule,
                     details, data, "Parameters at the budget: not recorded in these results.")
    evidence = "; ".join(headlines)
    if problems:
        return Claim("Parameters at the budget", FAILS, "; ".join(problems), rule, details, data,
                     f"Parameters at the budget: {FAILS}: " + "; ".join(problems) + ".")
    return Claim("Parameters at the budget", BY_CONSTRUCTION, evidence, rule, details, data,
                 f"Parameters at the budget (core + head): {evidence}.")


def judge_capacity(runs: pd.DataFrame) -> list[Claim]:
    """The capacity claims from ``capacity_rows``: Wider/Deeper, tLSTM vs stacked LSTM, Faster in practice, and
    the parameter facts beside them."""
    return [judge_depth_gain(runs), judge_versus(runs), judge_time_to_solve(runs), judge_parameters(runs)]


def capacity_headline(claims: list[Claim]) -> list[str]:
    """One sentence per claim, for the top of a capacity report."""
    return [c.headline or f"{c.name}: {c.verdict}." for c in claims]


# --------------------------------------------------------------------------------------------------
# the table


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
    if _missing(value):
        return f"run {fallback + 1}"
    return f"seed {int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value}"


def solve_tables(runs: pd.DataFrame) -> list[SolveTable]:
    """One table per setting: rows = models, columns = depths, one line per seed in each cell."""
    tables = []
    for _, title, rows in _settings(runs):
        known = rows[rows["depth"].notna()]
        depths = sorted({float(d) for d in known["depth"]})
        sizes = model_sizes(known)
        table = SolveTable(title, depths)
        for label in _models(known):
            mine = known[known["label"] == label]
            per = sizes.get(label, {})
            texts = {d: f"M={fmt_int(s['channels'])}, {_params_text(s['core_params'], s['head_params'], s['params'])}"
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


# --------------------------------------------------------------------------------------------------
# the figures


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
    if _spans_decades(values, ratio=10.0):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def _threshold(ax: Any, rows: pd.DataFrame, handles: dict[str, Any]) -> None:
    """The solve threshold as a dashed line, labelled with its value."""
    for solve_at in sorted({float(v) for v in rows["solve_at"].dropna()}):
        ax.axhline(solve_at, color="black", linestyle="--", linewidth=1)
        handles.setdefault(f"solved at {fmt_acc(solve_at)}",
                           matplotlib.lines.Line2D([], [], color="black", linestyle="--"))


def fig_accuracy_vs_depth(runs: pd.DataFrame) -> Figure:
    """Final held-out symbol accuracy vs depth at the budget: every seed a marker, the mean a line."""
    slug, title = "capacity_accuracy", "Capacity: final held-out accuracy vs depth at a fixed parameter budget"
    caption = ("Final held-out symbol accuracy (the last evaluation) of every run, one marker per seed, and the "
               "mean over seeds as the line, one panel per task and budget. A cross marks a diverged run, drawn at "
               "accuracy 0 as the claims count it. The dashed line is the accuracy at which a run counts as solved. "
               "Runs that crashed, timed out or hit an error are not drawn (see the failures table).")
    usable = runs[runs["usable"] & runs["depth"].notna()] if not runs.empty else runs
    if usable.empty:
        return Figure(slug, title, caption, missing="needs training runs that finished: " + HINT)
    settings = _settings(usable)
    n_cols = min(3, len(settings))
    n_rows = math.ceil(len(settings) / n_cols)
    fig, axes, legend = panel_grid(n_rows, n_cols, legend_in=3.1)
    handles: dict[str, Any] = {}
    for i, (_, setting_title, rows) in enumerate(settings):
        ax = axes[i // n_cols][i % n_cols]
        models = _models(rows)
        depths = sorted({float(d) for d in rows["depth"]})
        for k, label in enumerate(models):
            style = style_for(label)
            mine = rows[rows["label"] == label]
            means = mine.groupby("depth")["outcome_acc"].mean().sort_index()
            xs = [_offset(d, k, len(models)) for d in means.index]
            ax.plot(xs, means.to_numpy(), color=style["color"], linestyle=style["linestyle"], linewidth=1.6)
            ok = mine[mine["status"] == "ok"]
            ax.scatter([_offset(d, k, len(models)) for d in ok["depth"]], ok["outcome_acc"], color=style["color"],
                       marker=style["marker"], s=22, alpha=0.75, zorder=3)
            div = mine[mine["status"] == "diverged"]
            if len(div):
                ax.scatter([_offset(d, k, len(models)) for d in div["depth"]], div["outcome_acc"],
                           color=style["color"], marker="x", s=30, zorder=3)
            handles.setdefault(label, matplotlib.lines.Line2D([], [], color=style["color"],
                                                              linestyle=style["linestyle"], marker=style["marker"],
                                                              markersize=5, label=label))
        _threshold(ax, rows, handles)
        _depth_axis(ax, depths)
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_ylabel("final held-out symbol accuracy")
        ax.set_title(setting_title, fontsize=9.5)
    for j in range(len(settings), n_rows * n_cols):
        axes[j // n_cols][j % n_cols].set_visible(False)
    if (runs["status"] == "diverged").any():
        handles["diverged (at 0)"] = matplotlib.lines.Line2D([], [], color="black", marker="x", linestyle="none")
    legend(handles)
    return Figure(slug, title, caption, _png(fig))


def fig_solve_vs_depth(runs: pd.DataFrame) -> Figure:
    """Samples to solve and time to solve vs depth; unsolved runs hollow, at what they used without solving."""
    slug, title = "capacity_solve", "Capacity: samples and time to solve vs depth"
    caption = ("Left: training samples until the held-out symbol accuracy first reached the solve threshold; right: "
               "the training wall time until then (evaluations excluded). Filled markers: one per solved seed; the "
               "line joins the means at the depths where every seed solved. Hollow markers: runs that did not "
               "solve, and crosses runs that diverged, drawn at the samples and the time they used without solving, so "
               "the true value is above them (at least this much).")
    usable = runs[runs["usable"] & runs["depth"].notna()] if not runs.empty else runs
    if usable.empty or not (usable["solved"].any() or usable["samples_seen"].notna().any()):
        return Figure(slug, title, caption, missing="needs training runs that finished: " + HINT)
    settings = _settings(usable)
    fig, axes, legend = panel_grid(len(settings), 2, legend_in=3.1)
    handles: dict[str, Any] = {}
    columns = (("samples_to_solve", "samples_seen", "samples to solve"),
               ("time_to_solve_s", "train_time_s", "time to solve (s)"))
    for i, (_, setting_title, rows) in enumerate(settings):
        models = _models(rows)
        depths = sorted({float(d) for d in rows["depth"]})
        for j, (solved_col, used_col, ylabel) in enumerate(columns):
            ax = axes[i][j]
            values: list[float] = []
            for k, label in enumerate(models):
                style = style_for(label)
                mine = rows[rows["label"] == label]
                solved = mine[mine["solved"] & mine[solved_col].notna()]
                unsolved = mine[~mine["solved"] & mine[used_col].notna() & (mine["status"] == "ok")]
                diverged = mine[mine[used_col].notna() & (mine["status"] == "diverged")]
                ax.scatter([_offset(d, k, len(models)) for d in solved["depth"]], solved[solved_col],
                           color=style["color"], marker=style["marker"], s=22, zorder=3)
                ax.scatter([_offset(d, k, len(models)) for d in unsolved["depth"]], unsolved[used_col],
                           facecolors="none", edgecolors=style["color"], marker=style["marker"], s=26, zorder=3)
                ax.scatter([_offset(d, k, len(models)) for d in diverged["depth"]], diverged[used_col],
                           color=style["color"], marker="x", s=30, zorder=3)
                values += list(solved[solved_col]) + list(unsolved[used_col]) + list(diverged[used_col])
                every = [d for d, g in mine.groupby("depth") if bool(g["solved"].all()) and g[solved_col].notna().all()]
                if every:
                    means = solved[solved["depth"].isin(every)].groupby("depth")[solved_col].mean().sort_index()
                    ax.plot([_offset(d, k, len(models)) for d in means.index], means.to_numpy(), color=style["color"],
                            linestyle=style["linestyle"], linewidth=1.6)
                handles.setdefault(label, matplotlib.lines.Line2D([], [], color=style["color"],
                                                                  linestyle=style["linestyle"],
                                                                  marker=style["marker"], markersize=5))
            _depth_axis(ax, depths)
            _log_if_wide(ax, values)
            if j == 0:
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_samples_formatter))
            ax.set_ylabel(ylabel)
            ax.set_title(setting_title, fontsize=9.5)
    handles["hollow: not solved (at what it used)"] = matplotlib.lines.Line2D(
        [], [], color="black", marker="o", markerfacecolor="none", linestyle="none")
    if (usable["status"] == "diverged").any():
        handles["diverged (at what it used)"] = matplotlib.lines.Line2D([], [], color="black", marker="x",
                                                                        linestyle="none")
    legend(handles)
    return Figure(slug, title, caption, _png(fig))


def fig_learning_curves(runs: pd.DataFrame) -> Figure:
    """Held-out symbol accuracy vs samples seen: one panel per depth (and setting), one line per model and seed."""
    slug, title = "capacity_curves", "Capacity: learning curves, held-out accuracy vs samples seen"
    caption = ("Held-out symbol accuracy at every evaluation against the training samples seen so far, one line per "
               "model and seed (all seeds of a model in its colour and dash), one panel per depth. A cross ends a "
               "run that diverged. The dashed line is the solve threshold.")
    rows = runs[runs["curve"].map(lambda c: isinstance(c, list) and len(c) > 0) & runs["depth"].notna()] \
        if not runs.empty else runs
    if rows.empty:
        return Figure(slug, title, caption, missing="no training run recorded a learning curve (its evaluations): "
                      + HINT)
    settings = _settings(rows)
    depths = sorted({float(d) for d in rows["depth"]})
    # at most three panels a row (two for four depths), so the panels stay readable inline
    n_cols = len(depths) if len(depths) <= 3 else 2 if len(depths) == 4 else 3
    per_setting = math.ceil(len(depths) / n_cols)
    fig, axes, legend = panel_grid(len(settings) * per_setting, n_cols, legend_in=3.1)
    for ax in axes.flat:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for i, (_, setting_title, srows) in enumerate(settings):
        models = _models(srows)
        for j, depth in enumerate(depths):
            ax = axes[i * per_setting + j // n_cols][j % n_cols]
            here = srows[srows["depth"] == depth]
            if here.empty:
                continue
            ax.set_visible(True)
            samples_seen: list[float] = []
            for label in models:
                style = style_for(label)
                for _, run in here[here["label"] == label].iterrows():
                    points = [(e.get("samples"), e.get("symbol_acc")) for e in run["curve"]]
                    points = [(float(x), float(y)) for x, y in points if not _missing(x) and not _missing(y)]
                    if not points:
                        continue
                    xs, ys = zip(*points)
                    samples_seen += xs
                    ax.plot(xs, ys, color=style["color"], linestyle=style["linestyle"], linewidth=1.1, alpha=0.8)
                    if run["status"] == "diverged":
                        ax.plot(xs[-1], ys[-1], color=style["color"], marker="x", markersize=6)
                    handles.setdefault(label, matplotlib.lines.Line2D([], [], color=style["color"],
                                                                      linestyle=style["linestyle"]))
            _threshold(ax, here, handles)
            ax.set_ylim(-0.03, 1.03)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_samples_formatter))
            ax.set_xlabel("training samples seen")
            ax.set_ylabel("held-out symbol accuracy")
            ax.grid(True, alpha=0.3)
            ax.set_title(f"L={_depth(depth)}" + (f", {setting_title}" if len(settings) > 1 else ""), fontsize=9.5)
    legend(handles)
    if len(settings) == 1:
        caption += f" Setting: {settings[0][1]}."
    return Figure(slug, title, caption, _png(fig))


# --------------------------------------------------------------------------------------------------
# everything at once


@dataclass
class Capacity:
    """The capacity half of a report: the labelled runs, the claims, the figures (accuracy vs depth, samples
    and time to solve vs depth, learning curves) and one solve table per setting."""

    runs: pd.DataFrame
    claims: list[Claim]
    figures: list[Figure]
    tables: list[SolveTable]

    @property
    def headline(self) -> list[str]:
        return capacity_headline(self.claims)


def build_capacity(df: pd.DataFrame) -> Capacity:
    """The capacity half from a normalized frame (its timing rows are ignored)."""
    runs = capacity_rows(df)
    figures = [fig_accuracy_vs_depth(runs), fig_solve_vs_depth(runs), fig_learning_curves(runs)]
    return Capacity(runs, judge_capacity(runs), figures, solve_tables(runs))


__all__ = [
    "ACC_MARGIN",
    "MIN_SEEDS",
    "RELATIVE_MARGIN",
    "SEED_RULE",
    "Capacity",
    "Comparison",
    "Group",
    "SolveTable",
    "build_capacity",
    "capacity_failures",
    "capacity_headline",
    "capacity_rows",
    "compare",
    "fig_accuracy_vs_depth",
    "fig_learning_curves",
    "fig_solve_vs_depth",
    "judge_capacity",
    "judge_depth_gain",
    "judge_parameters",
    "judge_time_to_solve",
    "judge_versus",
    "solve_tables",
]
