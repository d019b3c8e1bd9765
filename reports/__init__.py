"""Turns results files into tables, plots and a self-contained HTML report.

    import bench.results, reports
    reports.build_report(bench.results.load("out/results.jsonl"), pathlib.Path("out/report.html"))

``build_report`` writes one HTML file (figures inline, no network, no JavaScript) and every figure
as a PNG in ``<stem>_figures/``. ``judge_claims`` gives the verdicts on the paper's four claims as
``Claim`` records. Nothing here measures; the report reads only the results contract's columns.
"""

from .claims import VERDICTS, Claim, judge_cheaper, judge_claims, judge_deeper, judge_faster, judge_wider
from .data import ReportInputError, normalize
from .figures import Figure, build_figures, matched_speedups
from .html import SECTIONS, build_report

__all__ = [
    "SECTIONS",
    "VERDICTS",
    "Claim",
    "Figure",
    "ReportInputError",
    "build_figures",
    "build_report",
    "judge_cheaper",
    "judge_claims",
    "judge_deeper",
    "judge_faster",
    "judge_wider",
    "matched_speedups",
    "normalize",
]
