"""The capacity claims, judged seed by seed under one stated rule (``SEED_RULE``, ``compare_groups``).

From ``capacity_rows`` (``reports.capacity.data``): Wider/Deeper (the best tLSTM gains from depth at the
budget while each stacked LSTM saturates or degrades), tLSTM vs stacked LSTM at each depth, Faster in
practice (time to solve), and the parameter facts at the budget. Each is a ``reports.claims.Claim``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.contract import format_seconds

from ..claims import BY_CONSTRUCTION, FAILS, HOLDS, NOT_MEASURED, PARTLY, UNDECIDED, Claim
from ..data import fmt_int
from .data import (
    BEST_RULE,
    HINT,
    Group,
    best_of,
    fmt_acc,
    fmt_depth,
    fmt_samples,
    groups,
    model_sizes,
    models,
    params_text,
    settings,
    side_by_side,
    span,
)  # fmt: skip
from .survival import ALPHA, PERMUTATIONS, Outcomes, accuracy_test, least_p, logrank, min_seeds, run_outcomes

SEED_RULE = (
    "Samples to solve is a time to an event. A run that solved gives its samples to solve; a run that did not is "
    "censored: it was still unsolved after the samples it used (a diverged run: after the whole sample budget). "
    "Two groups of runs A and B (for example one model at its largest depth and at its smallest, or the best tLSTM "
    "and the best stacked LSTM at one depth) are compared by a log-rank test on those censored times, every run "
    "counted, solved or not; its two-sided p-value comes from re-dealing the runs between the groups "
    f"(every split when there are at most {PERMUTATIONS:,}, else {PERMUTATIONS:,} random ones). A beats B when "
    f"p < {ALPHA:g} and A solves sooner (the log-rank statistic's sign); B beats A likewise; otherwise no "
    "difference is detected, which the claims call undecided (or, for a model against itself over depth, "
    "saturates). Where no run of either group solved, the secondary view decides: the mean final held-out symbol "
    f"accuracy, by the same kind of permutation test at p < {ALPHA:g}. Runs that crashed, timed out, ran out of "
    "memory or hit an error are left out. Groups so small that even complete separation cannot reach p < "
    f"{ALPHA:g} decide nothing (too few seeds: with equal groups that is fewer than {min_seeds()} seeds). "
    f"The level {ALPHA:g} is per comparison, with no correction for the several comparisons of a report.")


# --------------------------------------------------------------------------------------------------
# the seed rule

A_WINS, B_WINS, OVERLAP, ONE_SEED, NO_RUNS = "a", "b", "undecided", "too few seeds", "no runs"


@dataclass(frozen=True)
class Comparison:
    """The seed rule applied to two groups: ``outcome`` is one of A_WINS, B_WINS, OVERLAP (no difference
    detected), ONE_SEED (too few seeds to decide), NO_RUNS; ``text`` the numbers that decide it; ``p`` the
    p-value (nan where no test ran)."""

    outcome: str
    metric: str
    a_values: tuple[float, ...]
    b_values: tuple[float, ...]
    text: str
    p: float = math.nan

    @property
    def decided(self) -> bool:
        return self.outcome in (A_WINS, B_WINS)

    @property
    def reason(self) -> str:
        """Why an undecided comparison is undecided: 'no difference detected, p = 0.4', 'too few seeds', ...;
        '' when decided."""
        if self.outcome == OVERLAP:
            return f"no difference detected, p = {self.p:.2g}"
        return {ONE_SEED: "too few seeds", NO_RUNS: "no usable run"}.get(self.outcome, "")


def _outcomes(group: Group, metric: str) -> tuple[Outcomes, list[float]]:
    """A group's runs as censored times (samples, or seconds with metric "time") and their final accuracies."""
    u = group.usable
    return run_outcomes(u, "time" if metric == "time" else "samples"), [float(v) for v in u["outcome_acc"]]


def _group_text(o: Outcomes, fmt: Any) -> str:
    """'3 of 5 solved (12.3k–15k)' or '0 of 5 solved'."""
    done = [t for t, s in zip(o.times, o.solved) if s]
    return f"{len(done)} of {len(o)} solved" + (f" ({span(done, fmt)})" if done else "")


def compare_groups(a: Group, b: Group, metric: str = "outcome") -> Comparison:
    """Group ``a`` against group ``b`` by ``SEED_RULE``. ``metric``: "outcome" (samples to solve, censored;
    final accuracy where no run solved) or "time" (training seconds to solve, censored)."""
    name, fmt = ("time to solve", format_seconds) if metric == "time" else ("samples to solve", fmt_samples)
    oa, acc_a = _outcomes(a, metric)
    ob, acc_b = _outcomes(b, metric)
    numbers = f"{name}: {a.name} {_group_text(oa, fmt)} vs {b.name} {_group_text(ob, fmt)}"
    values_a, values_b = tuple(float(t) for t in oa.times), tuple(float(t) for t in ob.times)
    if not len(oa) or not len(ob):
        return Comparison(NO_RUNS, name, values_a, values_b, f"{numbers}: no usable run to compare")
    if least_p(len(oa), len(ob)) >= ALPHA:
        return Comparison(ONE_SEED, name, values_a, values_b,
                          f"{numbers}: undecided: too few seeds ({len(oa)} and {len(ob)} runs cannot give p < "
                          f"{ALPHA:g}; the rule needs {min_seeds()} or more per group)")
    test = logrank(oa, ob)
    if test is None:
        if metric == "time":
            return Comparison(NO_RUNS, name, values_a, values_b, f"{numbers}: no run solved, no time to compare")
        p = accuracy_test(acc_a, acc_b)
        mean_a, mean_b = float(np.mean(acc_a)), float(np.mean(acc_b))
        said = (f"{numbers}; final held-out symbol accuracy {span(acc_a, fmt_acc)} vs {span(acc_b, fmt_acc)}, "
                f"means {fmt_acc(mean_a)} vs {fmt_acc(mean_b)}, permutation p = {p:.3g}")
        name = "final held-out symbol accuracy"
        if p < ALPHA:
            winner = A_WINS if mean_a > mean_b else B_WINS
            return Comparison(winner, name, tuple(acc_a), tuple(acc_b),
                              f"{said}: {(a if winner == A_WINS else b).name} more accurate", p)
        return Comparison(OVERLAP, name, tuple(acc_a), tuple(acc_b), f"{said}: no difference detected", p)
    said = f"{numbers}; {test.text()}"
    if test.p < ALPHA and test.statistic != 0:
        winner = A_WINS if test.statistic > 0 else B_WINS
        return Comparison(winner, name, values_a, values_b,
                          f"{said}: {(a if winner == A_WINS else b).name} solves sooner", test.p)
    return Comparison(OVERLAP, name, values_a, values_b, f"{said}: no difference detected", test.p)


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


@dataclass
class _Tally:
    """What one judge gathers setting by setting: a line per slice judged (``details``), the same as dicts
    (``data``), a verdict and a headline per setting judged; ``claim`` and ``finish`` build the ``Claim``."""

    name: str
    rule: str
    details: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)

    @property
    def evidence(self) -> str:
        return "; ".join(self.headlines)

    def skip(self, line: str) -> None:
        """A setting not judged: its line says why."""
        self.details.append(line)
        self.verdicts.append(NOT_MEASURED)

    def judged(self, verdict: str, headline: str) -> None:
        self.verdicts.append(verdict)
        self.headlines.append(headline)

    def claim(self, verdict: str, evidence: str, headline: str) -> Claim:
        return Claim(self.name, verdict, evidence, self.rule, self.details, self.data, headline)

    def finish(self, lead: str, missing: str, missing_headline: str) -> Claim:
        """The settings' verdicts combined, with '<lead>: <verdict>. <evidence>.' as the headline; not measured
        (``missing`` as the evidence) when no setting was judged."""
        if not self.data:
            return self.claim(NOT_MEASURED, missing, missing_headline)
        verdict = _combine(self.verdicts)
        return self.claim(verdict, self.evidence, f"{lead}: {verdict}. {self.evidence}.")


def _setting_groups(runs: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, dict[tuple[str, float], Group]]]:
    """(title, runs, groups) per setting."""
    for _, title, rows in settings(runs):
        yield title, rows, groups(rows)


def judge_depth_gain(runs: pd.DataFrame) -> Claim:
    """Wider/Deeper at a fixed budget: the best tLSTM's outcome improves from its smallest depth to its
    largest while every stacked LSTM's saturates or degrades."""
    rule = ("per setting (task, budget): the best tLSTM at its largest depth (" + BEST_RULE + ") against the same "
            "model at its smallest depth, and each stacked LSTM likewise, by the seed rule. A model improves where "
            "its largest depth beats its smallest, degrades where the smallest beats the largest, saturates where "
            "the rule detects no difference. Holds where the tLSTM improves and every "
            "stacked LSTM saturates or degrades; in part where a stacked LSTM improves too; does not hold where the "
            "tLSTM degrades; undecided otherwise (the tLSTM's change is undecided, or a stacked LSTM has too few "
            "seeds)")
    tally = _Tally("Wider/Deeper", rule)
    for title, rows, found in _setting_groups(runs):
        spans: dict[str, tuple[Group, Group]] = {}
        for label in models(rows):
            mine = sorted((g for (lab, _), g in found.items() if lab == label and g.seeds), key=lambda g: g.depth)
            if len(mine) >= 2:
                spans[label] = (mine[-1], mine[0])  # (deepest, shallowest)
        tl = [label for label in spans if spans[label][0].family == "tlstm"]
        best = best_of([spans[label][0] for label in tl])
        if best is None:
            tally.skip(f"{title}: not judged: no tLSTM with usable runs at two or more depths")
            continue
        deep, shallow = spans[best.label]
        tl_cmp = compare_groups(deep, shallow)
        tl_state = {A_WINS: "improves", B_WINS: "degrades"}.get(tl_cmp.outcome, "undecided")
        states = {}
        lines = [f"{title}: best tLSTM {best.label}, L={fmt_depth(shallow.depth)} → {fmt_depth(deep.depth)}: "
                 f"{tl_state} ({shallow.describe()} → {deep.describe()}; {tl_cmp.text})"]
        for label, (d, s) in spans.items():
            if d.family != "lstm":
                continue
            c = compare_groups(d, s)
            state = {A_WINS: "improves", B_WINS: "degrades", OVERLAP: "saturates"}.get(c.outcome, "undecided")
            states[label] = state
            lines.append(f"{title}: {label}, L={fmt_depth(s.depth)} → {fmt_depth(d.depth)}: {state} ({s.describe()} → "
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
        tally.details.extend(lines)
        others = ", ".join(f"{label} {state}" for label, state in states.items()) or "no stacked LSTM at two depths"
        tally.judged(verdict, f"{title}: {best.label} {tl_state} from L={fmt_depth(shallow.depth)} to "
                              f"L={fmt_depth(deep.depth)} ({shallow.describe()} → {deep.describe()}); {others}")
        tally.data.append({"setting": title, "verdict": verdict, "tlstm": best.label, "tlstm_state": tl_state,
                           "depths": (shallow.depth, deep.depth), "tlstm_comparison": tl_cmp, "lstm_states": states})
    return tally.finish("Wider/Deeper at a fixed budget (depth helps the tLSTM, not the stacked LSTM)",
                        "needs a tLSTM trained at two or more depths (" + HINT + ")",
                        "Wider/Deeper at a fixed budget: not measured in these results.")


def _said(entry: dict[str, Any]) -> str:
    """A per-depth verdict in words, with the reason when undecided: 'holds', 'undecided (too few seeds)'."""
    words = {HOLDS: "holds", FAILS: "does not hold", UNDECIDED: "undecided"}
    reason = entry["comparison"].reason
    return words[entry["verdict"]] + (f" ({reason})" if entry["verdict"] == UNDECIDED and reason else "")


def judge_versus(runs: pd.DataFrame) -> Claim:
    """tLSTM vs stacked LSTM: at each depth both families ran, the best of each by the seed rule."""
    rule = ("per setting (task, budget) and at every depth both families ran: the best tLSTM against the best "
            "stacked LSTM (" + BEST_RULE + "), by the seed rule: holds at that depth where the tLSTM wins, does "
            "not hold where the stacked LSTM wins, undecided otherwise. A setting's verdict is the one at the "
            "largest depth both families ran")
    tally = _Tally("tLSTM vs stacked LSTM", rule)
    words = {HOLDS: "holds", FAILS: "does not hold", UNDECIDED: "undecided"}
    for title, _, found in _setting_groups(runs):
        depths = sorted({d for (_, d), g in found.items() if g.seeds})
        per_depth = []
        for depth in depths:
            tl = best_of([g for (_, d), g in found.items() if d == depth and g.family == "tlstm"])
            ls = best_of([g for (_, d), g in found.items() if d == depth and g.family == "lstm"])
            if tl is None or ls is None:
                continue
            c = compare_groups(tl, ls)
            verdict = {A_WINS: HOLDS, B_WINS: FAILS}.get(c.outcome, UNDECIDED)
            per_depth.append({"setting": title, "depth": depth, "tlstm": tl.label, "lstm": ls.label,
                              "verdict": verdict, "comparison": c})
            tally.details.append(f"{title}, L={fmt_depth(depth)}: {words[verdict]}: {tl.label} ({tl.describe()}) vs "
                                 f"{ls.label} ({ls.describe()}); {c.text}")
        if not per_depth:
            tally.skip(f"{title}: not judged: no depth where both a tLSTM and a stacked LSTM have a usable run")
            continue
        last = per_depth[-1]
        tally.data.extend(per_depth)
        by_depth = ", ".join(f"L={fmt_depth(d['depth'])} {_said(d)}" for d in per_depth)
        tl_group = found[(last["tlstm"], last["depth"])]
        ls_group = found[(last["lstm"], last["depth"])]
        tally.judged(last["verdict"], f"{title}: at L={fmt_depth(last['depth'])} {_said(last)}, {last['tlstm']} "
                                      f"({tl_group.describe()}) vs {last['lstm']} ({ls_group.describe()}); "
                                      f"per depth: {by_depth}")
    return tally.finish("tLSTM vs stacked LSTM at the same budget, judged at the largest depth",
                        "needs a tLSTM and a stacked LSTM trained at the same depth (" + HINT + ")",
                        "tLSTM vs stacked LSTM at the same budget: not measured in these results.")


def judge_time_to_solve(runs: pd.DataFrame) -> Claim:
    """Faster in practice: time to solve, the quickest tLSTM against the quickest stacked LSTM at the largest
    depth where a model of each family solved in every seed."""
    rule = ("per setting (task, budget): at the largest depth where a tLSTM and a stacked LSTM each solved in "
            "every seed, the one of each family with the least mean time to solve (training wall seconds, "
            "evaluations excluded, on the machine that trained it), compared by the seed rule on time to solve "
            "(censored at the training time used): holds where the tLSTM "
            "wins, does not hold where the stacked LSTM wins, undecided otherwise; not measured where no depth has "
            "both")
    tally = _Tally("Faster in practice", rule)
    for title, rows, found in _setting_groups(runs):
        solved = [g for g in found.values() if g.all_solved and math.isfinite(g.mean_time)]
        both = sorted({g.depth for g in solved if g.family == "tlstm"}
                      & {g.depth for g in solved if g.family == "lstm"})
        if not both:
            tally.skip(f"{title}: not measured: no depth where a tLSTM and a stacked LSTM both solved in every seed")
            continue
        depth = both[-1]
        tl = min((g for g in solved if g.depth == depth and g.family == "tlstm"), key=lambda g: g.mean_time)
        ls = min((g for g in solved if g.depth == depth and g.family == "lstm"), key=lambda g: g.mean_time)
        c = compare_groups(tl, ls, metric="time")
        verdict = {A_WINS: HOLDS, B_WINS: FAILS}.get(c.outcome, UNDECIDED)
        tally.data.append({"setting": title, "depth": depth, "tlstm": tl.label, "lstm": ls.label, "verdict": verdict,
                           "comparison": c})
        line = f"at L={fmt_depth(depth)}, {tl.label} vs {ls.label}: {_said(tally.data[-1])}; {c.text}"
        side = side_by_side(rows)
        if side > 1:  # budget.workers: the runs shared the machine, so slowed each other
            line += f" (trained {side} runs side by side: each time includes the others' load)"
        tally.details.append(f"{title}: {line}")
        tally.judged(verdict, f"{title}: {line}")
    return tally.finish("Faster in practice (time to solve at the largest depth both solved)",
                        "needs a tLSTM and a stacked LSTM that both solved the task in every seed at the same depth ("
                        + HINT + " with a larger max_samples or max_time_s)",
                        "Faster in practice (time to solve): not measured in these results.")


def judge_parameters(runs: pd.DataFrame) -> Claim:
    """The parameter facts at the budget: a tLSTM's width and parameter count do not change with depth; an
    unshared stacked LSTM's width shrinks as L grows, to stay within the budget."""
    rule = ("facts, not a comparison: at a fixed budget a tLSTM keeps one width M and one parameter count at every "
            "depth (its weights are shared by the P locations, so depth costs no parameters), while an unshared "
            "stacked LSTM adds 8M² + 8M parameters per layer, so its width must shrink as L grows (a stacked LSTM "
            "whose layers share their weights keeps its width). Checked on the recorded counts: does not hold if "
            "a tLSTM's parameter count differs between depths or an unshared stacked LSTM's width at its largest "
            "depth is not below the one at its smallest")
    tally = _Tally("Parameters at the budget", rule)
    problems: list[str] = []
    for _, title, rows in settings(runs):
        sizes = model_sizes(rows[rows["params"].notna()])
        if not sizes:
            continue
        budget = rows["budget"].iloc[0]
        family = rows.groupby("label")["family"].first()
        shared = rows.groupby("label")["shares_weights"].first()
        facts = []
        for label in models(rows):
            if label not in sizes:
                continue
            per = sizes[label]
            depths = sorted(per)
            widths = [per[d]["channels"] for d in depths]
            totals = [per[d]["params"] for d in depths]
            share = (f", {span([t / budget for t in totals], lambda v: f'{v:.0%}')} of the budget"
                     if pd.notna(budget) and budget > 0 else "")
            at = ", ".join(fmt_depth(d) for d in depths)
            first, last = per[depths[0]], per[depths[-1]]
            if len({fmt_int(w) for w in widths}) == 1 and len({fmt_int(t) for t in totals}) == 1:
                text = (f"{label}: M={fmt_int(widths[0])} at L={at}; "
                        f"{params_text(first['core_params'], first['head_params'], first['params'])} params{share}")
            else:
                text = (f"{label}: M={fmt_int(widths[0])} at L={fmt_depth(depths[0])} → M={fmt_int(widths[-1])} at "
                        f"L={fmt_depth(depths[-1])}; params "
                        f"{params_text(first['core_params'], first['head_params'], first['params'])} → "
                        f"{params_text(last['core_params'], last['head_params'], last['params'])}{share}")
            tally.details.append(f"{title}: {text}")
            facts.append(text)
            entry = {"setting": title, "model": label, "family": family[label], "depths": depths, "widths": widths,
                     "params": totals, "budget": budget}
            tally.data.append(entry)
            if len(depths) < 2:
                continue
            if family[label] == "tlstm" and len(set(totals)) > 1:
                problems.append(f"{title}: {label}'s parameter count changes with depth ({fmt_int(min(totals))} to "
                                f"{fmt_int(max(totals))})")
            if family[label] == "lstm" and not bool(shared[label]) and not widths[-1] < widths[0]:
                problems.append(f"{title}: {label}'s width does not shrink with depth (M={fmt_int(widths[0])} at "
                                f"L={fmt_depth(depths[0])}, {fmt_int(widths[-1])} at L={fmt_depth(depths[-1])}): its "
                                "parameter count grows with L, so the budget is not fixed")
        tally.headlines.append(f"{title}: " + "; ".join(facts))
    if not tally.data:
        return tally.claim(NOT_MEASURED, "no training run recorded its parameter count",
                           "Parameters at the budget: not recorded in these results.")
    if problems:
        said = "; ".join(problems)
        return tally.claim(FAILS, said, f"Parameters at the budget: {FAILS}: {said}.")
    return tally.claim(BY_CONSTRUCTION, tally.evidence, f"Parameters at the budget (core + head): {tally.evidence}.")


def judge_capacity(runs: pd.DataFrame) -> list[Claim]:
    """The capacity claims from ``capacity_rows``: Wider/Deeper, tLSTM vs stacked LSTM, Faster in practice, and
    the parameter facts beside them."""
    return [judge_depth_gain(runs), judge_versus(runs), judge_time_to_solve(runs), judge_parameters(runs)]


def capacity_headline(claims: list[Claim]) -> list[str]:
    """One sentence per claim, for the top of a capacity report."""
    return [c.headline or f"{c.name}: {c.verdict}." for c in claims]
