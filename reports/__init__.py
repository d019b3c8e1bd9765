"""Turns results files into tables, plots and a self-contained HTML report.

    import bench.results, reports
    reports.build_report(bench.results.load("out/results.jsonl"), pathlib.Path("out/report.html"))

``build_report`` writes one HTML file (figures inline, no network, no JavaScript) and every figure
as a PNG in ``<stem>_figures/``. ``judge_claims`` gives the verdicts on the paper's four claims as
``Claim`` records; ``build_capacity`` gives the capacity half (training runs at a fixed parameter
budget, judged seed by seed). Nothing here measures; the report reads only the results contract's columns.
"""

from .capacity import Capacity, build_capacity, capacity_rows, judge_capacity
from .claims import VERDICTS, Claim, judge_cheaper, judge_claims, judge_deeper, judge_faster, judge_wider
from .data import ReportInputError, normalize, timing_rows, training_rows
from .figures import Figure, build_figures, matched_speedups
from .html import CAPACITY_SECTIONS, SECTIONS, build_report, sections_for

__all__ = [
    "CAPACITY_SECTIONS",
    "SECTIONS",
    "VERDICTS",
    "Capacity",
    "Claim",
    "Figure",
    "ReportInputError",
    "build_capacity",
    "build_figures",
    "build_report",
    "capacity_rows",
    "judge_capacity",
    "judge_cheaper",
    "judge_claims",
    "judge_deeper",
    "judge_faster",
    "judge_wider",
    "matched_speedups",
    "normalize",
    "sections_for",
    "timing_rows",
    "training_rows",
]
