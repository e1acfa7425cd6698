"""Printing an :class:`~curation.inspect.queries.Answer` as a text table, CSV or JSON.

* ``table``: the facts as ``name  value`` lines, a blank line, then the table with aligned
  columns (floats to 4 significant digits, long text cut to 60 characters).
* ``csv``: the facts as ``# name: value`` comment lines, then the table as CSV (full precision;
  ``pandas.read_csv(..., comment="#")`` reads it).
* ``json``: one object ``{"title", "facts", "rows": [{column: value}, ...]}`` (full precision;
  NaN and infinities as null).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from curation.inspect.queries import Answer

FORMATS = ("table", "csv", "json")
_MAX_TEXT = 60


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    text = str(value).replace("\n", " ")
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def as_table(answer: Answer) -> str:
    lines = []
    width = max((len(k) for k in answer.facts), default=0)
    lines += [f"{k.ljust(width)}  {_cell(v)}" for k, v in answer.facts.items()]
    if lines:
        lines.append("")
    names = answer.table.columns
    cells = [[_cell(v) for v in row] for row in answer.table.iter_rows()]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    numeric = [answer.table[n].dtype.is_numeric() for n in names]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines.append(line(list(names)))
    lines.append("  ".join("-" * w for w in widths))
    lines += [line(r) for r in cells]
    if not cells:
        lines.append("(no rows)")
    return "\n".join(lines)


def as_csv(answer: Answer) -> str:
    head = "".join(f"# {k}: {v}\n" for k, v in answer.facts.items())
    buffer = io.StringIO()
    table = answer.table
    nested = [n for n in table.columns if table[n].dtype.is_nested()]
    if nested:  # CSV has no lists: write them as JSON text
        import polars as pl

        table = table.with_columns(
            pl.col(n).map_elements(lambda v: json.dumps(v.to_list()), return_dtype=pl.String)
            for n in nested
        )
    table.write_csv(buffer)
    return head + buffer.getvalue().rstrip("\n")


def as_json(answer: Answer) -> str:
    payload = {
        "title": answer.title,
        "facts": _jsonable(answer.facts),
        "rows": _jsonable(answer.table.to_dicts()),
    }
    return json.dumps(payload, indent=2, ensure_ascii=False, default=str)


def render(answer: Answer, fmt: str = "table") -> str:
    """``answer`` as text in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    return {"table": as_table, "csv": as_csv, "json": as_json}[fmt](answer)
