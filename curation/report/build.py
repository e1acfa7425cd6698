"""Assembling the report: every section in page order, the HTML page and the JSON summary."""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation import __version__
from curation.report.context import Builder
from curation.report.html import page
from curation.report.run import StageOutput, discover_stages
from curation.report.sections.balance import section_balance
from curation.report.sections.bias import section_bias
from curation.report.sections.comparison import section_comparison
from curation.report.sections.margins import section_margins
from curation.report.sections.pool import section_pool
from curation.report.sections.selection import section_selection
from curation.report.sections.shards import section_shards
from curation.report.sections.stages import section_stages


@dataclass
class RunReport:
    """What :func:`build_report` returns: the page, the summary and what was found."""

    run: str
    html: str
    summary: dict[str, Any]
    stages: list[StageOutput]
    plots: int = 0


def build_report(
    run: str,
    *,
    title: str | None = None,
    now: _dt.datetime | None = None,
    stages: list[StageOutput] | None = None,
) -> RunReport:
    """Read the run directory ``run`` and build the HTML page and the summary.

    ``stages``: the outputs :func:`discover_stages` found (found again when None). Raises
    :class:`curation.storage.StageInputError` when ``run`` is not a directory.
    """
    stages = discover_stages(run) if stages is None else stages
    generated = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    b = Builder(run, stages)
    b.summary.update({"run": run, "generated": generated, "version": __version__})
    section_stages(b)
    section_pool(b)
    runs = section_balance(b)
    section_bias(b)
    section_comparison(b, runs)
    section_margins(b, runs)
    section_selection(b)
    section_shards(b)
    b.summary["plots"] = b.plots
    b.summary["notes"] = b.notes
    title = title or f"Curation run report: {run.rstrip('/').rsplit('/', 1)[-1]}"
    html = page(title, run, generated, b.sections)
    return RunReport(run, html, clean(b.summary), stages, b.plots)


def clean(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
