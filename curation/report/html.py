"""HTML building blocks of the report page: escaped tables, key/value tables, cards, figures.

Every string that comes from the run (entries, margin levels, paths, reasons) is escaped here
with :func:`html.escape`; the plots are embedded as base64 PNG ``data:`` URLs, so the page loads
nothing from elsewhere and runs no script.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

from curation import __version__
from curation.report.plots import Plot


def e(x: Any) -> str:
    """``x`` as text, HTML-escaped (quotes too)."""
    return html.escape(str(x), quote=True)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    align: str = "",
    cls: str = "",
) -> str:
    """A table of preformatted cells (escaped here); ``align`` is one l/r per column."""

    def cell(tag: str, i: int, text: Any) -> str:
        right = i < len(align) and align[i] == "r"
        return f"<{tag}{' class=num' if right else ''}>{e(text)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    klass = f' class="{e(cls)}"' if cls else ""
    return (
        f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def kv(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table."""
    body = "".join(f"<tr><th>{e(k)}</th><td class=num>{e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    caption = f"<figcaption>{e(plot.caption)}</figcaption>" if plot.caption else ""
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{e(plot.alt)}" '
        f'width="{plot.width}" height="{plot.height}">{caption}</figure>'
    )


CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #dadce0; --accent: #1f77b4; --bg-alt: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial,
       sans-serif; color: var(--fg); margin: 0; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
header { border-bottom: 2px solid var(--accent); margin-bottom: 16px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 17px; margin: 24px 0 8px; }
.meta, .note, figcaption { color: var(--muted); font-size: 13px; }
.note { font-style: italic; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 18px; }
nav a { color: var(--accent); text-decoration: none; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
table.wide { font-size: 13px; }
table.wide thead th { white-space: normal; max-width: 110px; vertical-align: bottom; }
td:first-child { white-space: nowrap; }
th, td { padding: 4px 12px 4px 8px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
thead th { background: var(--bg-alt); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { font-weight: normal; color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .v { font-size: 20px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
figure { margin: 8px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.ok { color: #188038; } .bad { color: #c5221f; }
"""


def cards(items: Iterable[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>'
            for k, v in items
        )
        + "</div>"
    )


def page(title: str, run: str, generated: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: header, table of contents and ``sections`` (id, title, body HTML)."""
    toc = "".join(f'<li><a href="#{e(i)}">{e(t)}</a></li>' for i, t, _ in sections)
    body = "".join(
        f'<section id="{e(i)}"><h2>{e(t)}</h2>{html}</section>' for i, t, html in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{e(title)}</h1>"
        f'<p class="meta">Run <code>{e(run)}</code> · generated {e(generated)} by curation '
        f"{e(__version__)}</p></header>"
        f"<nav><ul>{toc}</ul></nav>{body}</main></body></html>\n"
    )
