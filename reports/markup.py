"""HTML pieces shared by both halves of the report: escaping, cells, tables, the claims table and figures."""

from __future__ import annotations

import base64
import html
import pathlib
from typing import Any

from bench.axes import fmt_value, missing

from .claims import BY_CONSTRUCTION, FAILS, HOLDS, NOT_MEASURED, PARTLY, UNDECIDED, Claim
from .plotting import Figure

VERDICT_CLASS = {HOLDS: "v-holds", BY_CONSTRUCTION: "v-holds", PARTLY: "v-part", FAILS: "v-fails",
                  UNDECIDED: "v-undecided", NOT_MEASURED: "v-none"}

def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def cell(value: Any) -> str:
    """A value in a table cell: integer-valued floats without '.0', missing as empty."""
    return "" if missing(value) else fmt_value(value)


# A report stays readable (and small) at any size: a table or a list of evidence shows at most this many rows.
MAX_ROWS = 300
CUT_NOTE = ("and {more} more, not shown: a report lists at most {limit} rows; every point is in results.jsonl "
            "(bench.results.load reads it into pandas)")


def html_table(header: list[str], rows: list[list[str]], numeric: set[int] | None = None, cls: str = "",
               total: int | None = None) -> str:
    """An HTML table; cells are already escaped HTML. Past ``MAX_ROWS`` rows the rest is summed up in one row
    (``total``: how many rows the whole table has, when the caller built only the first ones)."""
    limit = MAX_ROWS
    total = max(total or 0, len(rows))
    numeric = numeric or set()
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows[:limit]
    )
    if total > limit:
        body += (f'<tr><td colspan="{len(header)}" class="rule">… '
                 f"{e(CUT_NOTE.format(more=total - limit, limit=limit))}</td></tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def claims_html(claims: list[Claim]) -> str:
    rows = []
    for c in claims:
        detail = ""
        if c.details:
            items = "".join(f"<li>{e(d)}</li>" for d in c.details[:MAX_ROWS])
            if len(c.details) > MAX_ROWS:
                items += f"<li>… {e(CUT_NOTE.format(more=len(c.details) - MAX_ROWS, limit=MAX_ROWS))}</li>"
            detail = f"<details><summary>{len(c.details)} line(s) of evidence</summary><ul>{items}</ul></details>"
        rows.append([
            f"<b>{e(c.name)}</b>",
            f'<span class="{VERDICT_CLASS.get(c.verdict, "")}">{e(c.verdict)}</span>',
            f"{e(c.evidence)}<div class=\"rule\">Rule: {e(c.rule)}</div>{detail}",
        ])
    body = html_table(["claim", "verdict", "the numbers that decide it"], rows, cls="claims")
    # the verdict cell carries the colour
    for verdict, cls in VERDICT_CLASS.items():
        body = body.replace(f'<td><span class="{cls}">{e(verdict)}</span></td>',
                            f'<td class="verdict {cls}">{e(verdict)}</td>')
    return body


def figure_html(f: Figure, heading: str, paths: dict[str, pathlib.Path], out_dir: pathlib.Path) -> str:
    if f.png is None:
        return f'<div class="fig">{heading}<p class="missing">Not in these results: {e(f.missing)}.</p></div>'
    data = base64.b64encode(f.png).decode("ascii")
    written = paths.get(f.slug)
    note = f' <span class="rule">(PNG: {e(written.relative_to(out_dir))})</span>' if written is not None else ""
    return (f'<div class="fig">{heading}<figure><img alt="{e(f.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(f.caption)}{note}</figcaption></figure></div>")


def figures_html(figures: list[Figure], paths: dict[str, pathlib.Path], out_dir: pathlib.Path, start: int = 1) -> str:
    parts = []
    for i, f in enumerate(figures, start=start):
        heading = f'<h3 id="fig-{e(f.slug)}">{i}. {e(f.title)}</h3>'
        parts.append(figure_html(f, heading, paths, out_dir))
    return "\n".join(parts)
