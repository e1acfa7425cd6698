"""*Margins*: for each margin column counted, samples per level before balancing and the expected
samples per level after each balance run (the count stage's distinct signatures rescored with
each run's parameters, :func:`curation.report.aggregate.expected_per_level`)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from curation.report import aggregate
from curation.report.context import Builder
from curation.report.format import fmt_int, fmt_num, fmt_pct
from curation.report.html import e, note, table
from curation.report.plots import plot_margin
from curation.report.run import StageOutput
from curation.report.sections.balance import BalanceRun

Levels = dict[str, float]


def _after(
    b: Builder, runs: list[BalanceRun], counts: list[StageOutput], columns: list[str]
) -> tuple[dict[str, dict[str, Levels]], list[str]]:
    """``{balance dir: {column: {level: expected samples}}}``, and why a run has none."""
    after: dict[str, dict[str, Levels]] = {}
    problems = []
    for r in runs:
        own_counts = b.producers.find(r.out, "counts", counts)
        if own_counts is None:
            problems.append(f"{r.out.label}: its counts input is not in this run")
            continue
        try:
            after[r.out.name] = aggregate.expected_per_level(own_counts, r.out, columns)
        except (ValueError, OSError, KeyError, pa.ArrowException) as exc:
            problems.append(f"{r.out.label}: {exc}")
    return after, problems


def _column_table(
    before: dict[str, int], entries_seen: dict[str, int], after_runs: list[tuple[str, Levels]]
) -> str:
    total = sum(before.values()) or 1
    headers = ["level", "samples before", "share before"]
    if entries_seen:
        headers.append("entries seen")
    for name, _ in after_runs:
        headers += [f"expected after, {name}", "share"]
    rows = []
    for level, n in before.items():
        row = [level, fmt_int(n), fmt_pct(n / total)]
        if entries_seen:
            row.append(fmt_int(entries_seen.get(level, 0)))
        for _, values in after_runs:
            size = sum(values.values()) or 1.0
            row += [fmt_num(values.get(level, 0.0)), fmt_pct(values.get(level, 0.0) / size)]
        rows.append(row)
    return table(headers, rows, align="l" + "r" * (len(headers) - 1), cls="wide")


def _column_part(
    b: Builder, c: StageOutput, col: str, after_runs: list[tuple[str, Levels]]
) -> tuple[str, dict[str, Any]] | None:
    before = aggregate.level_counts(c, col)
    if before is None:
        return None
    body = f"<h3>{e(col)}</h3>" + _column_table(
        before, aggregate.entries_per_level(c, col), after_runs
    )
    if after_runs:
        body += b.figure(plot_margin(col, before, after_runs))
    return body, {"before": before, "after": dict(after_runs)}


def _notes(b: Builder, runs: list[BalanceRun], after: dict, problems: list[str]) -> list[str]:
    body = []
    if not runs:
        body.append(
            note("No balance output: the expected samples per level after balancing are skipped.")
        )
    for text in problems:
        body.append(b.noted(f"Expected per level after balancing is not available for {text}."))
    if runs and len(after) == len(runs):
        body.append(
            note(
                "After: Σ π_i (expected repeats with replacement) per level, from each balance "
                "run's parameters applied to the count stage's distinct signatures."
            )
        )
    return body


def section_margins(b: Builder, runs: list[BalanceRun]) -> None:
    counts = b.of("count")
    if not counts:
        b.add("margins", "Margins", note("No complete count output: no margin tables."))
        return
    c = counts[0]
    columns = aggregate.counted_margins(c)
    if not columns:
        text = "No margin column was counted (count --margin COLUMN); no margin tables."
        b.add("margins", "Margins", note(text))
        return
    after, problems = _after(b, runs, counts, columns)
    body, summary = [], {}
    for col in columns:
        after_runs = [(r.out.name, after[r.out.name][col]) for r in runs if r.out.name in after]
        part = _column_part(b, c, col, after_runs)
        if part is not None:
            body.append(part[0])
            summary[col] = part[1]
    body += _notes(b, runs, after, problems)
    b.summary["margins"] = summary
    b.add("margins", "Margins", "".join(body))
