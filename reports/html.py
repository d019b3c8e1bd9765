"""One self-contained HTML file from a results frame: claims, figures, tables, environment, the command.

The file needs no network and no JavaScript: figures are inline base64 PNGs, the style sheet is inline
(with a print style), and nothing is linked. Every figure is also written as a PNG next to the HTML,
in ``<stem>_figures/``, for slides and papers.

A frame with timing rows gets the speed sections (``SECTIONS``); one with training rows gets the
capacity sections (``CAPACITY_SECTIONS``, from ``reports.capacity``); a frame with both gets both, and
the environment, sweep and command once.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pathlib
from typing import Any

import pandas as pd

from bench import axes
from bench.axes import format_seconds
from bench.outdir import atomic_write

from .capacity import Capacity, build_capacity
from .capacity.html import capacity_sections_html
from .claims import Claim, judge_claims
from .data import ReportInputError, family_reference, line_labels, normalize, timing_rows, training_rows
from .figures import (
    Figure,
    build_figures,
    fig_headline,
    fig_time_split,
    matched_speedups,
    profile_shares,
    with_labels,
)  # fmt: skip
from .markup import MAX_ROWS, VERDICT_CLASS, cell, claims_html, e, figure_html, figures_html, html_table  # noqa: F401

# The speed report's sections (a frame of timing rows, or an empty one), the capacity report's (a frame of
# training rows), and the ones every report ends with.
TIMING_SECTIONS = ("headline", "claims", "figures", "where", "summary", "speedups", "failures")
CAPACITY_SECTIONS = ("capacity-headline", "capacity-claims", "capacity-figures", "capacity-solve", "capacity-curves",
                     "capacity-failures")
COMMON_SECTIONS = ("environment", "sweep", "reproduce")
SECTIONS = TIMING_SECTIONS + COMMON_SECTIONS

CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg-alt: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg);
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
p.lead { color: var(--muted); margin-top: 0; }
nav { font-size: 0.92em; margin: 10px 0 0; }
nav a { margin-right: 12px; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; font-size: 0.86em; margin: 8px 0 12px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.claims td.verdict { font-weight: 600; white-space: nowrap; }
.v-holds { background: #dafbe1; }
.v-part { background: #fff8c5; }
.v-fails { background: #ffebe9; }
.v-none { background: #eaeef2; }
.v-undecided { background: #ddf4ff; }
ul.headline { font-size: 1.05em; padding-left: 1.2em; }
ul.headline li { margin: 4px 0; }
.caveats { border: 1px solid #d4a72c; background: #fff8c5; padding: 8px 14px; margin: 12px 0; font-size: 0.92em; }
.caveats ul { margin: 4px 0; padding-left: 1.2em; }
.noisy { color: #9a6700; font-weight: 600; }
.rule { color: var(--muted); font-size: 0.92em; }
figure { margin: 14px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.92em; margin-top: 4px; max-width: 1000px; }
p.missing { color: var(--muted); font-style: italic; }
pre { background: var(--bg-alt); padding: 8px 10px; overflow-x: auto; font-size: 0.85em; }
details summary { cursor: pointer; color: var(--muted); }
table.solve td { white-space: nowrap; font-variant-numeric: tabular-nums; }
.message { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.9em; word-break: break-word; }
@media print {
  body { max-width: none; padding: 0; font-size: 10.5pt; }
  nav { display: none; }
  h2 { break-after: avoid; }
  div.fig, figure, table.claims tr, tr { break-inside: avoid; }
  h3 { break-after: avoid; }
  figure img { max-width: 100%; border: none; }
  a { color: inherit; text-decoration: none; }
  details > *:not(summary) { display: block; }
  .v-holds, .v-part, .v-fails, .v-none { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

_KEY_SIZES = axes.names(axes.MATCH)  # what tells two timed points of one implementation apart


def _caveats_html(df: pd.DataFrame, env: dict[str, Any]) -> str:
    """What a reader must know before trusting a number: the machine, the threads, its matmul rate, the noise."""
    ok = df[(df["status"] == "ok") & df["time_median_s"].notna()]
    devices = sorted({str(d) for d in ok["device"].dropna()}) or ["not recorded"]
    machine = []
    if "cuda" in devices:
        machine.append(f"GPU: {env.get('gpu_model') or 'not recorded'} (CUDA {env.get('cuda')}, cuDNN "
                       f"{env.get('cudnn')})")
    if "cpu" in devices or not machine:
        flags = env.get("cpu_flags")
        flag_text = ", ".join(flags) if isinstance(flags, list) and flags else "instruction sets not recorded"
        machine.append(f"CPU: {env.get('cpu_model') or 'not recorded'} ({flag_text}), no GPU used"
                       if "cuda" not in devices else f"CPU: {env.get('cpu_model') or 'not recorded'}")
    threads = env.get("threads")
    rates = env.get("matmul_gflops")
    rate_text = (", ".join(f"{k}: {v:g} GFLOP/s" for k, v in rates.items()) if isinstance(rates, dict) and rates
                 else "not measured")
    relative_iqr = (ok["time_iqr_s"] / ok["time_median_s"]).median()
    items = [
        "; ".join(machine),
        f"torch intra-op threads: {threads if threads is not None else 'not recorded'}; torch {env.get('torch')}",
        f"this machine's torch.mm rate at the start of the run: {rate_text}",
        f"noise within a process: median IQR / median over the {len(ok)} timed point(s) = "
        + (f"{relative_iqr:.1%}" if pd.notna(relative_iqr) else "n/a")
        + f"; {int(ok['noisy'].sum())} point(s) flagged noisy (above 10%)",
    ]
    spread = ok["process_spread"].dropna() if "process_spread" in ok else pd.Series(dtype=float)
    if len(spread):
        disagree = int(ok["processes_disagree"].fillna(False).astype(bool).sum())
        items.append(f"noise across worker processes: {int(ok['processes'].max())} processes per point; median spread "
                     f"of their medians {spread.median():.1%} (max {spread.max():.1%}); {disagree} point(s) whose "
                     "processes disagree by more than 10%")
    else:
        items.append("noise across processes: not measured (each point ran in one worker process; separate runs "
                     "of the same sweep have differed by 30% on shared machines). Set budget.processes = 3 to "
                     "measure it")
    machines = sorted({str(m) for m in df["machine"].dropna()}) if "machine" in df else []
    if len(machines) > 1:
        items.insert(0, f"these results come from {len(machines)} machines ({'; '.join(machines)}): every verdict "
                        "and figure panel is per machine, and no ratio mixes two")
    return ('<div class="caveats"><b>Read these numbers with:</b><ul>'
            + "".join(f"<li>{e(item)}</li>" for item in items) + "</ul></div>")


def _headline_html(df: pd.DataFrame, env: dict[str, Any], claims: list[Claim], headline: Figure,
                   paths: dict[str, pathlib.Path], out_dir: pathlib.Path) -> str:
    sentences = "".join(f"<li>{e(c.headline or f'{c.name}: {c.verdict}.')}</li>" for c in claims)
    return (f'<ul class="headline">{sentences}</ul>' + _caveats_html(df, env)
            + figure_html(headline, f"<h3>{e(headline.title)}</h3>", paths, out_dir))


# the profile categories as the table's split column writes them
_SHORT = {"matrix products": "products", "pointwise and reductions": "pointwise", "memory copies and allocation":
          "memory", "fused RNN library kernels": "RNN library", "other operators": "other",
          "framework overhead": "overhead"}


def _where_html(df: pd.DataFrame, split: Figure, paths: dict[str, pathlib.Path], out_dir: pathlib.Path) -> str:
    """The profiled points: the split figure, the overhead share per implementation, and a table with the
    top operator, the product rate against torch.mm on the same shape, and each point's trace file."""
    figure = figure_html(split, f"<h3>{e(split.title)}</h3>", paths, out_dir)
    ok = with_labels(df)
    shares = profile_shares(ok)
    if shares.empty:
        return figure
    overhead = shares[shares["category"] == "framework overhead"].groupby("label")["share"].median()
    callout = ("<p><b>Framework overhead</b> (time outside any operator), median share of a call: "
               + "; ".join(f"{e(label)} {share:.0%}" for label, share in overhead.sort_values().items()) + ".</p>")
    rows = []
    for _, row in ok.iterrows():
        prof = row.get("profile")
        if not isinstance(prof, dict) or not prof.get("wall_s"):
            continue
        cats = prof.get("categories_s") or {}
        split_text = ", ".join(f"{_SHORT.get(name, name)} {seconds / prof['wall_s']:.0%}"
                               for name, seconds in cats.items() if seconds / prof["wall_s"] >= 0.005)
        top = (prof.get("top_ops") or [{}])[0]
        rate = prof.get("product_gflops")
        mm = prof.get("mm_gflops_same_shape")
        rate_text = (f"{rate:.3g}" if rate else "n/a") + (f" vs {mm:.3g} (torch.mm, {prof.get('product_shape')})"
                                                           if mm else "")
        timed = row["time_median_s"]
        rows.append([e(row["label"]), e(cell(row["batch"])), e(row["mode"]), e(cell(row["depth"])),
                     e(format_seconds(prof["wall_s"])),
                     e(f"{prof['wall_s'] / timed:.2g}x" if timed and timed > 0 else "n/a"), e(split_text),
                     e(f"{top.get('name', '')} {top.get('shapes', '')}".strip()), e(rate_text),
                     f"<code>traces/{e(prof.get('trace', ''))}</code>"])
    table = html_table(["implementation", "batch", "mode", "L", "profiled call", "over timed median", "split",
                    "top operator (self time)", "product GFLOP/s", "trace"], rows, numeric={1, 3, 4, 5})
    return (figure + callout + "<p>The profiler slows a call down (second column): the split is of the profiled "
            "call, its shares, not its absolute times, are the finding. Traces open in Perfetto or "
            "chrome://tracing.</p>" + table)


def _constant_sizes(df: pd.DataFrame, fields: tuple[str, ...]) -> tuple[list[str], dict[str, Any]]:
    varying, fixed = [], {}
    for f in fields:
        values = df[f].dropna().unique()
        if len(values) > 1:
            varying.append(f)
        elif len(values) == 1:
            fixed[f] = values[0]
    return varying, fixed


def _summary_html(df: pd.DataFrame) -> str:
    ok = df[(df["status"] == "ok") & df["time_per_step_s"].notna()].copy()
    if ok.empty:
        return '<p class="missing">No timed points in these results.</p>'
    ok["label"] = line_labels(ok)
    varying, fixed = _constant_sizes(ok, _KEY_SIZES)
    index = varying or ["device"]
    labels = sorted(ok["label"].unique())
    ok["step_iqr"] = ok["time_per_step_q3_s"] - ok["time_per_step_q1_s"]
    ok["disagree"] = ok["processes_disagree"].fillna(False).astype(bool)
    ok["noisy_flag"] = ok["noisy"].fillna(False).astype(bool)
    cells = ok.groupby(index + ["label"], dropna=False).agg(
        median=("time_per_step_s", "median"), iqr=("step_iqr", "median"),
        recurrent=("time_per_recurrent_step_s", "median"), noisy=("noisy_flag", "any"),
        spread=("process_spread", "max"), disagree=("disagree", "any"))
    by_key: dict[tuple, dict[str, Any]] = {}
    for key, cell_values in zip(cells.index, cells.to_dict("records")):
        by_key.setdefault(key[:-1], {})[key[-1]] = cell_values
    keys = sorted(by_key, key=lambda k: tuple((pd.isna(v), str(v) if isinstance(v, str) else v) for v in k))
    rows = []
    for key in keys[:MAX_ROWS]:  # past that the table says how many rows it leaves out
        row = [e(cell(v)) for v in key]
        for label in labels:
            values = by_key[key].get(label)
            if values is None:
                row.append("")
                continue
            median, iqr, recurrent = values["median"], values["iqr"], values["recurrent"]
            text = f"{format_seconds(median)}"
            if not math.isnan(iqr):
                text += f" <span class=\"rule\">IQR {format_seconds(iqr)}</span>"
            if not math.isnan(recurrent) and not math.isclose(recurrent, median, rel_tol=1e-9):
                text += f" <span class=\"rule\">({format_seconds(recurrent)} per recurrent step)</span>"
            if values["noisy"]:
                text += ' <span class="noisy" title="IQR/median above 10%">noisy</span>'
            if values["disagree"]:
                text += (f' <span class="noisy" title="the medians of its worker processes differ by more than 10% '
                         f'of the pooled median">processes disagree ({values["spread"]:.0%})</span>')
            row.append(text)
        rows.append(row)
    header = [e(axes.letter(f)) for f in index] + [e(label) for label in labels]
    note = ""
    if fixed:
        note = "<p>Same for every point: " + ", ".join(f"{e(axes.letter(k))} = {e(cell(v))}"
                                                        for k, v in fixed.items()) + ".</p>"
    return (note + "<p>Median time per output step (time per call / T; what the Faster rule reads) and its IQR; "
            "where it differs, the time per recurrent step (time per call / the T + L - 1 steps a tLSTM runs); "
            "<span class=\"noisy\">noisy</span> "
            "marks points whose IQR exceeds 10% of the median, <span class=\"noisy\">processes disagree</span> "
            "points measured in several worker processes whose medians differ by more than 10% (the spread in "
            "brackets).</p>"
            + html_table(header, rows, numeric=set(range(len(index), len(header))), total=len(keys)))


def _speedups_html(df: pd.DataFrame) -> str:
    ok = df[df["status"] == "ok"]
    sp = matched_speedups(ok)
    if sp.empty:
        return ('<p class="missing">No matched points: needs a tLSTM implementation and the tLSTM reference '
                f"(`{e(family_reference('tlstm'))}`) or a stacked LSTM timed at the same sizes (run `tlstm-bench run "
                "quick`).</p>")
    rows = []
    for (impl, ref, mode, batch), g in sp.groupby(["impl", "reference", "mode", "batch"]):
        geo = float(pd.Series(g["speedup"]).map(math.log).mean())
        rows.append([e(impl), e(ref), e(mode), e(cell(batch)), str(len(g)), f"{math.exp(geo):.3g}x",
                     f"{g['speedup'].min():.3g}x", f"{g['speedup'].max():.3g}x"])
    return ("<p>Speedup = reference time / implementation time at matched points (same depth, T, batch, channels, "
            "dtype, mode, device); geometric mean over the matched points.</p>"
            + html_table(["implementation", "over", "mode", "batch", "points", "geo. mean", "min", "max"], rows,
                     numeric={3, 4, 5, 6, 7}))


def _failures_html(df: pd.DataFrame) -> str:
    failed = df[df["status"] != "ok"]
    if failed.empty:
        return f"<p>Every one of the {len(df)} points has status ok.</p>"
    counts = failed["status"].value_counts()
    rows = []
    for _, r in failed.sort_values(["status", "impl"]).iterrows():
        sizes = ", ".join(f"{axes.letter(f)}={cell(r[f])}" for f in ("mode", "batch", "seq_len", "channels",
                                                                               "depth", "tensor_size")
                          if cell(r[f]))
        rows.append([e(r["status"]), e(r["impl"]), e(sizes), e(r["device"] if cell(r["device"]) else ""),
                     f'<span class="message">{e(r["message"])}</span>'])
    return (f"<p>{len(failed)} of {len(df)} point(s) did not give a timing: "
            + ", ".join(f"{n} {e(s)}" for s, n in counts.items()) + ". They are not plotted.</p>"
            + html_table(["status", "implementation", "sizes", "device", "message"], rows))


def _env_html(df: pd.DataFrame, env: Any) -> str:
    if not isinstance(env, dict) or not env:
        return '<p class="missing">No environment recorded with these results.</p>'
    rows = [[e(k), e(cell(v) if not isinstance(v, (dict, list)) else json.dumps(v))] for k, v in env.items()]
    backends = df.loc[df["status"] == "ok"].groupby("impl")["backend"].agg(
        lambda s: ", ".join(sorted({str(v) for v in s if isinstance(v, str)})))
    extra = ""
    if len(backends) and any(backends):
        extra = "<p>Backends that actually ran: " + "; ".join(f"{e(i)}: {e(b) or 'not recorded'}"
                                                             for i, b in backends.items()) + ".</p>"
    return html_table(["field", "value"], rows) + extra


def _sweep_html(df: pd.DataFrame, sweep: Any) -> tuple[str, str]:
    sweeps = sorted({str(s) for s in df["sweep"].dropna()})
    if not isinstance(sweep, dict) or not sweep:
        config = ('<p class="missing">No sweep definition recorded (results from pytest-benchmark or an older '
                  "run).</p>")
        if sweeps:
            config += f"<p>Sweep names on the points: {e(', '.join(sweeps))}.</p>"
        return config, '<p class="missing">The reproducing command was not recorded with these results.</p>'
    shown = {k: v for k, v in sweep.items() if k != "command"}
    config = f"<pre>{e(json.dumps(shown, indent=2, default=str))}</pre>"
    command = sweep.get("command")
    if command:
        cmd = command if isinstance(command, str) else " ".join(map(str, command))
        repro = f"<p>To rerun these measurements:</p><pre>{e(cmd)}</pre>"
    else:
        repro = '<p class="missing">The sweep definition has no "command" entry.</p>'
    return config, repro


def sections_for(df: pd.DataFrame) -> tuple[str, ...]:
    """The section ids a report of normalized frame ``df`` has, in order."""
    training = len(training_rows(df)) > 0
    timing = len(timing_rows(df)) > 0 or not training
    return (CAPACITY_SECTIONS if training else ()) + (TIMING_SECTIONS if timing else ()) + COMMON_SECTIONS


def _timing_sections_html(df: pd.DataFrame, env: dict[str, Any], claims: list[Claim], figures: list[Figure],
                          paths: dict[str, pathlib.Path], out_dir: pathlib.Path, headline: Figure | None,
                          split: Figure | None, prefix: str) -> str:
    return f"""<section id="headline">
<h2>{prefix}In short</h2>
{_headline_html(df, env, claims, headline or fig_headline([]), paths, out_dir)}
</section>
<section id="claims">
<h2>{prefix}The paper's four claims, judged from these results</h2>
<p>He et al. (NIPS 2017) claim tensorized LSTMs are wider, deeper, cheaper and faster than stacked LSTMs.
Each verdict below is computed from the points in this report only (status ok), by the rule stated with it.</p>
{claims_html(claims)}
</section>
<section id="figures">
<h2>{prefix}Figures</h2>
{figures_html(figures, paths, out_dir)}
</section>
<section id="where">
<h2>Where the time goes</h2>
{_where_html(df, split or fig_time_split(df.iloc[0:0]), paths, out_dir)}
</section>
<section id="summary">
<h2>Summary: median time per timestep</h2>
{_summary_html(df)}
</section>
<section id="speedups">
<h2>Speedups at matched points</h2>
{_speedups_html(df)}
</section>
<section id="failures">
<h2>Failed points</h2>
{_failures_html(df)}
</section>
"""


def render_html(df: pd.DataFrame, claims: list[Claim], figures: list[Figure], paths: dict[str, pathlib.Path],
                out_dir: pathlib.Path, headline: Figure | None = None, split: Figure | None = None,
                capacity: Capacity | None = None) -> str:
    """The whole report as one HTML string (figures inline). ``claims``, ``figures``, ``headline`` and ``split``
    are the speed half's, from the timing rows; ``capacity`` the capacity half (built here from the training
    rows when not given)."""
    env = df.attrs.get("env") if isinstance(df.attrs.get("env"), dict) else {}
    sweep = df.attrs.get("sweep") if isinstance(df.attrs.get("sweep"), dict) else {}
    envs = df.attrs.get("envs") if isinstance(df.attrs.get("envs"), list) else []
    df = df.copy()
    df.attrs = {}  # pandas would deep-copy them into every derived frame
    timing, training = timing_rows(df), training_rows(df)
    sections = sections_for(df)
    if capacity is None and len(training):
        capacity = build_capacity(training)
    device = env.get("gpu_model") or env.get("cpu_model") or ", ".join(sorted({str(d) for d in df["device"].dropna()}))
    name = sweep.get("name") or ", ".join(sorted({str(s) for s in df["sweep"].dropna()})) or "results"
    impls = ", ".join(sorted({str(i) for i in df["impl"]}))
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    config, repro = _sweep_html(df, sweep)
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in sections)
    counts = []
    if "headline" in sections:
        counts.append(f"{len(timing)} point(s), {int((timing['status'] == 'ok').sum())} ok")
    if capacity is not None:
        counts.append(f"{len(training)} training run(s), {int((training['status'] == 'ok').sum())} ok, "
                      f"{int(training['solved'].sum())} solved")
    both = capacity is not None and "headline" in sections
    body = (capacity_sections_html(capacity, paths, out_dir) if capacity is not None else "") + (
        _timing_sections_html(timing, env, claims, figures, paths, out_dir, headline, split,
                              "Speed: " if both else "") if "headline" in sections else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tlstm-bench report: {e(name)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>tlstm-bench report: {e(name)}</h1>
<p class="lead">{e("; ".join(counts))}; implementations: {e(impls)}; device: {e(device or "not recorded")};
commit {e(env.get("git_commit") or "not recorded")}; built {e(stamp)}.</p>
<nav>{nav}</nav>
</header>
{body}<section id="environment">
<h2>Environment</h2>
{_env_html(df, env)}
{f'<p class="noisy">These results come from {len(envs)} machines (host, device or versions differ); the table '
 'shows the first.</p>' if len(envs) > 1 else ''}
</section>
<section id="sweep">
<h2>Sweep configuration</h2>
{config}
</section>
<section id="reproduce">
<h2>Reproduce</h2>
{repro}
</section>
</body>
</html>
"""


def _resolve_out(out: pathlib.Path | str) -> pathlib.Path:
    if not isinstance(out, (str, pathlib.Path)):
        raise ReportInputError(f"out must be a path to an .html file, got {type(out).__name__}")
    path = pathlib.Path(out)
    if path.is_dir():
        return path / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise ReportInputError(f"out must end in .html or .htm (or name an existing directory), got {str(path)!r}")
    return path


def build_report(df: pd.DataFrame, out: pathlib.Path) -> pathlib.Path:
    """Write the report for results frame ``df`` to ``out`` (an .html file, or a directory to hold
    report.html) and every figure as a PNG in ``<out stem>_figures/``. Returns the HTML file's path.

    Raises ReportInputError when ``df`` breaks the results contract or ``out`` is not an .html path.
    """
    path = _resolve_out(out)
    frame = normalize(df)
    attrs = dict(frame.attrs)
    # pandas deep-copies attrs into every derived frame, which dominated the build time; work without
    frame.attrs = {}
    sections = sections_for(frame)
    claims: list[Claim] = []
    figures: list[Figure] = []
    headline = split = None
    drawn: list[Figure] = []
    training = training_rows(frame)
    capacity = build_capacity(training) if len(training) else None
    if capacity is not None:
        drawn += capacity.figures
    if "headline" in sections:  # the speed half, from the timing rows only
        timing = timing_rows(frame)
        claims = judge_claims(timing)
        faster = next(c for c in claims if c.name == "Faster")
        headline = fig_headline(faster.data)
        figures = build_figures(timing, attrs.get("env") or {})
        split = fig_time_split(with_labels(timing))
        drawn += [headline, *figures, split]
    frame.attrs = attrs
    path.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = path.parent / f"{path.stem}_figures"
    fig_dir.mkdir(exist_ok=True)
    for stale in fig_dir.glob("[0-9][0-9]_*.png"):
        stale.unlink()  # a figure absent this time must not linger from an earlier build
    paths: dict[str, pathlib.Path] = {}
    for i, figure in enumerate(drawn):
        if figure.png is None:
            continue
        png_path = fig_dir / f"{i:02d}_{figure.slug}.png"
        atomic_write(png_path, figure.png)
        paths[figure.slug] = png_path
    atomic_write(path, render_html(frame, claims, figures, paths, path.parent, headline, split, capacity))
    return path


__all__ = ["CAPACITY_SECTIONS", "SECTIONS", "build_report", "render_html", "sections_for"]
