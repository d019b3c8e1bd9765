"""The capacity half of the report: what each model learns at a fixed parameter budget, over depth, per seed.

A capacity run (``tlstm-bench run capacity``, ``bench.train``) trains one model on one of the paper's
algorithmic tasks at a width chosen to meet a parameter budget, and is one training row of the results
frame. ``build_capacity`` reads only those rows and gives a ``Capacity``; like the timing half, the work is
split by layer, and each layer imports only the ones before it:

- ``data``: the rows (``capacity_rows``), the settings runs are compared within, the models, and a
  ``Group`` of runs per model, depth and setting (one per seed);
- ``claims``: the seed rule (``SEED_RULE``, ``compare_groups``) and the claims it decides: Wider/Deeper,
  tLSTM vs stacked LSTM at each depth, Faster in practice (time to solve), the parameter facts;
- ``survival``: samples to solve as censored times: Kaplan-Meier curves, the log-rank test, the rule's power;
- ``figures``: accuracy vs depth, samples and time to solve vs depth, fraction solved vs samples, learning
  curves;
- ``tables``: the samples-to-solve / time-to-solve table, one cell per model, depth and seed, and the
  failed runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..claims import Claim
from ..figures import Figure
from .claims import (
    A_WINS,
    B_WINS,
    NO_RUNS,
    ONE_SEED,
    OVERLAP,
    SEED_RULE,
    Comparison,
    capacity_headline,
    compare_groups,
    judge_capacity,
    judge_depth_gain,
    judge_parameters,
    judge_time_to_solve,
    judge_versus,
)  # fmt: skip
from .data import Group, best_of, capacity_rows, fmt_acc, fmt_samples
from .figures import fig_accuracy_vs_depth, fig_fraction_solved, fig_learning_curves, fig_solve_vs_depth
from .tables import SolveTable, capacity_failures, run_text, solve_tables


@dataclass
class Capacity:
    """The capacity half of a report: the labelled runs, the claims, the figures (accuracy vs depth, samples
    and time to solve vs depth, fraction solved vs samples, learning curves) and one solve table per setting."""

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
    figures = [fig_accuracy_vs_depth(runs), fig_solve_vs_depth(runs), fig_fraction_solved(runs),
               fig_learning_curves(runs)]
    return Capacity(runs, judge_capacity(runs), figures, solve_tables(runs))


__all__ = [
    "A_WINS",
    "B_WINS",
    "NO_RUNS",
    "ONE_SEED",
    "OVERLAP",
    "SEED_RULE",
    "Capacity",
    "Comparison",
    "Group",
    "SolveTable",
    "best_of",
    "build_capacity",
    "capacity_failures",
    "capacity_headline",
    "capacity_rows",
    "compare_groups",
    "fig_accuracy_vs_depth",
    "fig_fraction_solved",
    "fig_learning_curves",
    "fig_solve_vs_depth",
    "fmt_acc",
    "fmt_samples",
    "judge_capacity",
    "judge_depth_gain",
    "judge_parameters",
    "judge_time_to_solve",
    "judge_versus",
    "run_text",
    "solve_tables",
]
