"""*Selection*: expected against realised size, per select output."""

from __future__ import annotations

from typing import Any

from curation.report.context import Builder
from curation.report.format import DASH, finite, fmt_int, fmt_num, fmt_signed
from curation.report.html import note, table
from curation.report.run import StageOutput
from curation.summaries import SelectSummary

HEADERS = (
    "selection",
    "weights from",
    "method",
    "seed",
    "expected size",
    "selected",
    "difference",
    "relative",
    "sum of repeats",
)


def _row(o: StageOutput, s: SelectSummary, source: StageOutput | None) -> tuple[Any, ...]:
    expected, realised = s.expected_size, s.selected
    diff = realised - expected if finite(expected) and finite(realised) else None
    return (
        o.label,
        source.label if source else DASH,
        s.method if s.method is not None else DASH,
        fmt_num(s.seed),
        fmt_num(expected),
        fmt_int(realised),
        fmt_signed(diff),
        fmt_signed(diff / expected, pct=True) if diff is not None and expected else DASH,
        fmt_int(s.total_repeats),
    )


def section_selection(b: Builder) -> None:
    outs = b.of("select")
    if not outs:
        b.missing("selection", "Selection", "select")
        b.summary["select"] = []
        return
    balances = b.of("balance")
    rows, summaries = [], []
    for o in outs:
        s = o.summary(SelectSummary)
        source = b.producers.find(o, "weights", balances)
        rows.append(_row(o, s, source))
        summaries.append(
            {
                "directory": o.name,
                "weights": source.name if source else None,
                "method": s.method,
                "seed": s.seed,
                "with_replacement": s.with_replacement,
                "expected_size": s.expected_size,
                "selected": s.selected,
                "total_repeats": s.total_repeats,
            }
        )
    body = table(HEADERS, rows, align="lllrrrrrr")
    body += note(
        "Expected size: Σ π_i over the matched pool (Σ of the expected repeats with "
        "replacement); selected: the samples the seeded hash kept."
    )
    b.summary["select"] = summaries
    b.add("selection", "Selection", body)
