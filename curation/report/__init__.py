"""The run report: one self-contained HTML page and a ``summary.json`` for a whole run directory.

:func:`build_report` reads a run directory (a local path or any fsspec URL) through
:mod:`curation.storage`. It finds the stage outputs in it by the ``stage`` field of each
subdirectory's ``_manifest.json``, not by fixed names, so ``balance-metaclip/`` and
``balance-rake/`` are both found, and an output without ``_SUCCESS`` is listed as incomplete and
not reported. Nothing here needs Spark. The inputs are the JSON files a stage wrote and its
Parquet tables, which are aggregated with Polars lazy scans (only the columns needed, and results
bounded by the number of entries or margin levels, not by the number of rows). The per-margin
"after" table rescores the count stage's distinct-signature table with each balance run's
``params.json`` (:mod:`curation.balancing.rescoring`). This is exact, and it streams the table once
per balance run, in batches.

The package: :mod:`~curation.report.format` (numbers for people), :mod:`~curation.report.run`
(finding and reading stage outputs), :mod:`~curation.report.aggregate` (the Polars scans over
stage tables), :mod:`~curation.report.plots`, :mod:`~curation.report.html` (escaped building
blocks and the page), one module per section under :mod:`curation.report.sections`, and
:mod:`~curation.report.build`, which puts them together. Every stage summary is read through its
typed class in :mod:`curation.summaries`.

The plots are drawn on matplotlib's Agg canvas. The report does not import pyplot and does not
switch the global backend. They are embedded as base64 PNG ``data:`` URLs, so the page loads nothing
from elsewhere and runs no script. Every string that comes from the run (entries, margin levels,
paths, reasons) is escaped with :func:`html.escape`.

The page has these sections. When a section's stage is missing, a one-line note takes its place.

- *Stages*: every stage output found, its status and its time.
- *Pool and matching*: rows, usable rows, matched share, rejects by reason, metadata entries, and
  a plot of the matches-per-sample histogram. The count stage adds entries observed, distinct
  signatures and the top entries.
- *Balancing*, one part per balance output: the solver facts, then before/after entry statistics
  and weight statistics. Plots: rank–frequency of the entry counts before and after (log–log) with
  the target, the histogram of inclusion probabilities, and the convergence curve (max relative
  error and L1 per iteration, log y). The head entries follow with count, target and expected
  count.
- *Method comparison*, when several balance outputs exist: L1 error to the target, max head-entry
  error, entropy, top-100 share, tail entries fully kept, Kish ESS, design effect, max/mean weight
  and expected size, with a rank–frequency overlay.
- *Margins*: for each margin column counted, samples per level before balancing and the expected
  samples per level after each balance run.
- *Selection*: expected against realised size.
- *Output shards*: samples, shards, bytes, and failures by reason.
"""

from curation.report.build import RunReport, build_report
from curation.report.format import (
    DASH,
    fmt_bytes,
    fmt_int,
    fmt_num,
    fmt_pct,
    fmt_seconds,
    fmt_signed,
)
from curation.report.plots import (
    Plot,
    plot_convergence,
    plot_margin,
    plot_matches_histogram,
    plot_pi_histogram,
    plot_rank_frequency,
    plot_rank_frequency_overlay,
    plot_tail_entropy,
)
from curation.report.run import StageOutput, discover_stages

__all__ = [
    "DASH",
    "Plot",
    "RunReport",
    "StageOutput",
    "build_report",
    "discover_stages",
    "fmt_bytes",
    "fmt_int",
    "fmt_num",
    "fmt_pct",
    "fmt_seconds",
    "fmt_signed",
    "plot_convergence",
    "plot_margin",
    "plot_matches_histogram",
    "plot_pi_histogram",
    "plot_rank_frequency",
    "plot_rank_frequency_overlay",
    "plot_tail_entropy",
]
