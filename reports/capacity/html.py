"""The capacity half of the report as HTML: its sections, from a ``Capacity`` (data -> claims -> figures ->
tables, built in ``reports.capacity``)."""

from __future__ import annotations

import pathlib

from ..markup import cell, claims_html, e, figures_html, html_table
from . import SEED_RULE, Capacity, capacity_failures, fmt_samples, run_text
from .data import seeds_per_group, side_by_side
from .survival import min_seeds, power_text

# How much two runs side by side slow each other, as measured (the capacity sweep's 72 runs of the time, once
# one at a time and once two at a time, on this project's 2-core VM; issue 26's closing note).
SIDE_BY_SIDE_MEASURED = ("Measured on a 2-core AMD EPYC (family 25, model 17, AVX-512): a training step two at a time "
                         "took 1.10× its time alone (median over 72 runs; interquartile range 0.99–1.27×, extremes "
                         "0.69–1.85×), and the whole sweep ran 1.80× faster.")


def _capacity_caveats_html(cap: Capacity) -> str:
    """What a reader must know about the training runs: how many seeds, where they ran, what the times are."""
    runs = cap.runs
    per_group = seeds_per_group(runs)
    seeds = (f"{per_group.min()}" if per_group.min() == per_group.max() else f"{per_group.min()} to {per_group.max()}"
             ) if len(per_group) else "no"
    devices = ", ".join(sorted({str(d) for d in runs["device"].dropna()})) or "not recorded"
    machines = sorted({str(m) for m in runs["machine"].dropna()})
    resumed = int((runs["resumed"].fillna(0) > 0).sum())
    stops = runs.loc[runs["status"] == "ok", "stop_reason"].dropna().value_counts()
    items = [
        f"{len(runs)} training run(s); {seeds} usable seed(s) per model and depth (the rule needs {min_seeds()} or "
        "more to decide anything)",
        f"device: {devices}" + (f"; machine: {'; '.join(machines)}" if machines else "")
        + "; time to solve is training wall time on that machine, evaluations excluded: compare times only "
        "within one report",
        "how the finished runs stopped: " + (", ".join(f"{n} {e(s)}" for s, n in stops.items()) or "not recorded"),
    ]
    side = side_by_side(runs)
    if side > 1:
        items.append(f"runs trained {side} at a time (budget.workers), one per core: each run's times include "
                     f"the others' load. {SIDE_BY_SIDE_MEASURED} Samples to solve do not depend on it")
    if resumed:
        items.append(f"{resumed} run(s) were resumed from a checkpoint after an interruption")
    return ('<div class="caveats"><b>Read these numbers with:</b><ul>'
            + "".join(f"<li>{e(item)}</li>" for item in items) + "</ul></div>")


def _capacity_headline_html(cap: Capacity) -> str:
    sentences = "".join(f"<li>{e(sentence)}</li>" for sentence in cap.headline)
    return f'<ul class="headline">{sentences}</ul>' + _capacity_caveats_html(cap)


def _capacityclaims_html(cap: Capacity) -> str:
    return ("<p>He et al. (NIPS 2017) claim that at the same number of parameters a tensorized LSTM gets more out of "
            "depth than a stacked LSTM: it can be made deeper (and wider) for free, and learns the algorithmic tasks "
            "better and sooner. Each verdict below is computed from the training runs in this report, seed by seed, "
            "by the rule stated with it; whatever the runs say is the verdict.</p>"
            f'<p><b>The seed rule.</b> {e(SEED_RULE)}</p>'
            f'<p><b>What it can tell apart here.</b> {e(_power(cap))}</p>' + claims_html(cap.claims))


def _power(cap: Capacity) -> str:
    """What the rule can tell apart with the seeds of the smallest group."""
    per_group = seeds_per_group(cap.runs)
    return power_text(int(per_group.min())) if len(per_group) else "No usable runs: the rule has nothing to decide."


def _solve_tables_html(cap: Capacity) -> str:
    if not cap.tables:
        return '<p class="missing">No training runs in these results.</p>'
    parts = ["<p>One line per seed: samples to solve / time to solve (training wall time), or the best held-out "
             "symbol accuracy of a run that did not solve, or how a run failed. Width M and parameters (total, core "
             "+ head) at the budget per model, or per cell where they change with depth.</p>"]
    for table in cap.tables:
        header = ["model", "M, params (core + head)"] + [f"L={cell(d)}" for d in table.depths]
        rows = []
        for row in table.rows:
            cells = [f"<b>{e(row['label'])}</b>", e(row["sizes"])]
            for depth in table.depths:
                entry = row["cells"].get(depth)
                if entry is None:
                    cells.append("")
                    continue
                sizes = f'<div class="rule">{e(entry["sizes"])}</div>' if entry["sizes"] else ""
                cells.append(sizes + "<br>".join(e(line) for line in entry["lines"]))
            rows.append(cells)
        parts.append(f"<h3>{e(table.title)}</h3>" + html_table(header, rows, cls="solve"))
    return "".join(parts)


def _capacity_failures_html(cap: Capacity) -> str:
    runs = cap.runs
    failed = capacity_failures(runs)
    if failed.empty:
        return f"<p>Every one of the {len(runs)} training run(s) has status ok.</p>"
    counts = failed["status"].value_counts()
    rows = []
    for _, r in failed.iterrows():
        rows.append([e(r["status"]), e(r["label"]), e(cell(r["depth"])), e(cell(r["seed"])),
                     e(r["setting_title"]), e(fmt_samples(r["samples_seen"])), e(run_text(r)),
                     f'<span class="message">{e(r["message"])}</span>'])
    return (f"<p>{len(failed)} of {len(runs)} training run(s) did not train to the end of their budget: "
            + ", ".join(f"{n} {e(s)}" for s, n in counts.items()) + ". A diverged run counts in the claims as not "
            "solved, with accuracy 0; the others are left out of them.</p>"
            + html_table(["status", "model", "L", "seed", "setting", "samples seen", "outcome", "message"], rows,
                     numeric={2, 3, 5}))


def capacity_sections_html(cap: Capacity, paths: dict[str, pathlib.Path], out_dir: pathlib.Path) -> str:
    accuracy, solve, solved, curves = cap.figures
    return f"""<section id="capacity-headline">
<h2>Capacity: in short</h2>
{_capacity_headline_html(cap)}
</section>
<section id="capacity-claims">
<h2>Capacity claims, judged from these training runs</h2>
{_capacityclaims_html(cap)}
</section>
<section id="capacity-figures">
<h2>Capacity figures</h2>
{figures_html([accuracy, solve, solved], paths, out_dir)}
</section>
<section id="capacity-solve">
<h2>Samples and time to solve, per seed</h2>
{_solve_tables_html(cap)}
</section>
<section id="capacity-curves">
<h2>Learning curves</h2>
{figures_html([curves], paths, out_dir, start=4)}
</section>
<section id="capacity-failures">
<h2>Training runs that failed or diverged</h2>
{_capacity_failures_html(cap)}
</section>
"""
