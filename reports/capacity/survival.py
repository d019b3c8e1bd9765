"""Samples to solve as a time to an event: Kaplan-Meier curves and a log-rank test between two groups of runs.

A run that solved gives its samples (or seconds) to solve; a run that did not is *censored*: all we know is
that it had not solved after the samples it used (its whole budget, unless a time cap stopped it first; a
run that diverged is censored at the whole sample budget, since it had stopped learning). So every run
counts, solved or not, on one scale. scipy does the statistics: ``scipy.stats.ecdf`` the Kaplan-Meier
estimate, ``scipy.stats.logrank`` the statistic, ``scipy.stats.permutation_test`` its p-value by
re-dealing the runs between the two groups (exact for the small groups seeds give; the chi-square
approximation ``logrank`` reports is poor at a handful of runs per group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

ALPHA = 0.05  # two-sided, per comparison
POWER = 0.80  # for the detectable hazard ratio stated with the rule
PERMUTATIONS = 2000  # at most this many random splits; every split when there are fewer


@dataclass(frozen=True)
class Outcomes:
    """The runs of one group as (time, solved): ``times[i]`` is samples (or seconds) to solve where
    ``solved[i]``, else the samples (seconds) after which run i was still unsolved."""

    times: np.ndarray
    solved: np.ndarray

    def __len__(self) -> int:
        return len(self.times)

    def data(self, index: np.ndarray | None = None) -> scipy.stats.CensoredData:
        t, s = (self.times, self.solved) if index is None else (self.times[index], self.solved[index])
        return scipy.stats.CensoredData(uncensored=t[s], right=t[~s])


def outcomes(times: list[float], solved: list[bool]) -> Outcomes:
    return Outcomes(np.asarray(times, dtype=float), np.asarray(solved, dtype=bool))


def run_outcomes(runs: pd.DataFrame, metric: str = "samples") -> Outcomes:
    """Training runs (capacity rows) as censored times: samples (or, with metric "time", training seconds) to
    solve where a run solved; else what it used, or the whole budget for a run that diverged."""
    solved_col, used_col, budget_key = (("time_to_solve_s", "train_time_s", "max_time_s") if metric == "time"
                                        else ("samples_to_solve", "samples_seen", "max_samples"))
    times, solved = [], []
    for _, run in runs.iterrows():
        done = bool(run["solved"]) and pd.notna(run[solved_col])
        budget = run["train"].get(budget_key) if isinstance(run["train"], dict) else None
        if done:
            times.append(float(run[solved_col]))
        elif run["status"] == "diverged" and budget is not None:
            times.append(float(budget))
        else:
            times.append(float(run[used_col]) if pd.notna(run[used_col]) else float(budget or math.nan))
        solved.append(done)
    return outcomes(times, solved)


def fraction_solved(o: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier estimate of the fraction of runs solved by each time, as step points (x, y) from
    (0, 0) to the last time seen; flat after the last solve (the censored runs' tail)."""
    xs, ys = [0.0], [0.0]
    if len(o) and o.solved.any():
        sf = scipy.stats.ecdf(o.data()).sf
        for t, p in zip(sf.quantiles, sf.probabilities):
            xs.append(float(t))
            ys.append(1.0 - float(p))
    if len(o) and xs[-1] < float(o.times.max()):
        xs.append(float(o.times.max()))
        ys.append(ys[-1])
    return np.asarray(xs), np.asarray(ys)


@dataclass(frozen=True)
class LogRank:
    """``statistic`` > 0: group a solves sooner; ``p`` two-sided from ``splits`` re-dealings (``exact``
    when every split of the pooled runs was counted)."""

    statistic: float
    p: float
    splits: int
    exact: bool

    def text(self) -> str:
        how = f"exact over all {self.splits:,} splits" if self.exact else f"{self.splits:,} random splits"
        return f"log-rank p = {self.p:.3g} ({how})"


def splits(n_a: int, n_b: int) -> int:
    return math.comb(n_a + n_b, n_a)


def logrank(a: Outcomes, b: Outcomes) -> LogRank | None:
    """The log-rank test of a against b by permutation; None when no run of either solved (nothing to rank)."""
    if not (a.solved.any() or b.solved.any()):
        return None
    pooled = Outcomes(np.concatenate([a.times, b.times]), np.concatenate([a.solved, b.solved]))

    def statistic(ia: np.ndarray, ib: np.ndarray) -> float:
        ia, ib = np.asarray(ia, dtype=int), np.asarray(ib, dtype=int)
        if not (pooled.solved[ia].any() or pooled.solved[ib].any()):
            return 0.0
        return float(scipy.stats.logrank(pooled.data(ia), pooled.data(ib)).statistic)

    n = splits(len(a), len(b))
    index_a, index_b = np.arange(len(a)), np.arange(len(a), len(a) + len(b))
    result = scipy.stats.permutation_test((index_a, index_b), statistic, permutation_type="independent",
                                          vectorized=False, n_resamples=PERMUTATIONS, alternative="two-sided",
                                          rng=np.random.default_rng(0))
    return LogRank(statistic(index_a, index_b), float(result.pvalue), min(n, PERMUTATIONS), n <= PERMUTATIONS)


def accuracy_test(a: list[float], b: list[float]) -> float:
    """The two-sided p-value of the difference of mean final accuracies, by permutation (the secondary view,
    for groups where no run solved)."""
    result = scipy.stats.permutation_test((np.asarray(a), np.asarray(b)),
                                          lambda x, y: float(np.mean(x) - np.mean(y)),
                                          permutation_type="independent", vectorized=False,
                                          n_resamples=PERMUTATIONS, alternative="two-sided",
                                          rng=np.random.default_rng(0))
    return float(result.pvalue)


def least_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value a permutation test can give with these group sizes (complete
    separation): below ALPHA or the comparison can never decide."""
    return min(1.0, 2.0 / splits(n_a, n_b))


def detectable_hazard_ratio(n_a: int, n_b: int) -> float:
    """The hazard ratio the log-rank test detects with probability POWER at ALPHA when every run solves
    (Schoenfeld's approximation: events d = n_a + n_b, allocation n_a / d)."""
    d = n_a + n_b
    share = n_a / d
    z = scipy.stats.norm.ppf(1 - ALPHA / 2) + scipy.stats.norm.ppf(POWER)
    return math.exp(z / math.sqrt(d * share * (1 - share)))


def fewest_solved_to_decide(n: int) -> int | None:
    """With n runs per group: the fewest solved runs of a group that beats a group where none solved
    (the solved ones first, the rest and all of the other group censored at the budget); None when even
    n of n cannot."""
    for k in range(1, n + 1):
        a = outcomes([float(i + 1) for i in range(k)] + [float(n + 1)] * (n - k), [True] * k + [False] * (n - k))
        b = outcomes([float(n + 1)] * n, [False] * n)
        test = logrank(a, b)
        if test is not None and test.p < ALPHA:
            return k
    return None


def power_text(n: int) -> str:
    """What the rule can tell apart with n seeds per group, in one sentence."""
    if n < 2:
        return f"With {n} seed per group the rule decides nothing."
    least = least_p(n, n)
    if least >= ALPHA:
        return (f"With {n} seeds per group it can never decide: even complete separation gives p = {least:.3g} "
                f"≥ {ALPHA:g} ({splits(n, n)} splits); use {min_seeds()} or more.")
    k = fewest_solved_to_decide(n)
    beats = (f"a model that solves in {k} or more of its {n} seeds beats one that never solves"
             if k is not None else "no count of solved seeds beats a model that never solves")
    return (f"With {n} seeds per group: {beats}; when every run solves, it detects (power {POWER:.0%}) a hazard "
            f"ratio of about {detectable_hazard_ratio(n, n):.1f} (one model solving that many times as fast at "
            f"any moment; Schoenfeld's approximation); the smallest p it can give is {least:.3g}.")


def min_seeds() -> int:
    """The fewest seeds per group with which the rule can decide at all."""
    n = 2
    while least_p(n, n) >= ALPHA:
        n += 1
    return n


__all__ = ["ALPHA", "LogRank", "Outcomes", "accuracy_test", "fraction_solved", "least_p", "logrank",
           "min_seeds", "outcomes", "power_text", "run_outcomes"]
