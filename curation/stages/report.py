"""The ``report`` stage: one HTML page and one ``summary.json`` for a whole run directory.

    curate report --run runs/demo [--output runs/demo/report]

Output directory (committed atomically, see :mod:`curation.storage`)::

    index.html     self-contained page: tables and PNG plots embedded as data: URLs, no script,
                   nothing loaded from elsewhere (open it from disk or attach it to a mail)
    summary.json   the headline numbers of every stage found (see :mod:`curation.report`)

The report reads only what the stages committed (see :mod:`curation.report` for which files) and
needs no Spark session. Its manifest fingerprints every stage output it found, so a rerun with
nothing changed is skipped, and a stage rerun makes the report rerun.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from curation import storage
from curation.cli import Command
from curation.report import build_report, discover_stages

log = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    """Options of the ``report`` stage (``[report]`` in a config file)."""

    run: str = field(
        default="", metadata={"help": "run directory holding the stage outputs (any fsspec URL)"}
    )
    output: str = field(
        default="", metadata={"help": "output directory of the report; empty: <run>/report"}
    )
    title: str = field(
        default="",
        metadata={"help": "page title; empty: 'Curation run report: <run directory name>'"},
    )


@dataclass
class ReportResult:
    """The committed report: its directory and summary."""

    output: str
    summary: dict[str, Any]
    skipped: bool = False

    def report(self) -> str:
        """Lines for the console."""
        s = self.summary
        stages = s.get("stages") or []
        found = ", ".join(f"{x['directory']} ({x['stage']})" for x in stages if x.get("complete"))
        incomplete = sum(1 for x in stages if not x.get("complete"))
        lines = [
            f"report: {len(stages) - incomplete} stage output(s)"
            + (f" ({incomplete} incomplete, not reported)" if incomplete else "")
            + f", {s.get('plots', 0)} plot(s)"
            + (" (up to date, skipped)" if self.skipped else ""),
            f"  stages     {found or 'none'}",
            f"  page       {storage.join(self.output, 'index.html')}",
            f"  summary    {storage.join(self.output, 'summary.json')}",
        ]
        lines += [f"  note       {n}" for n in s.get("notes") or []]
        return "\n".join(lines)


def default_output(run: str) -> str:
    """``<run>/report``."""
    return storage.join(run, "report")


def run_report(config: ReportConfig, force: bool = False) -> ReportResult:
    """Build the report of ``config.run`` and commit it to ``config.output``."""
    if not config.run:
        raise ValueError("report needs --run (the run directory)")
    output = config.output or default_output(config.run)
    started = time.perf_counter()
    stages = discover_stages(config.run)
    inputs = {s.name: s.url for s in stages if s.complete}
    manifest = storage.make_manifest("report", {"title": config.title}, inputs)
    if not force and storage.is_up_to_date(output, manifest):
        log.info("report: %s is up to date; skipped", output)
        return ReportResult(output, storage.read_json(storage.join(output, "summary.json")), True)
    report = build_report(config.run, title=config.title or None, stages=stages)
    with storage.atomic_directory(output, manifest) as tmp:
        storage.write_bytes(storage.join(tmp, "index.html"), report.html.encode("utf-8"))
        storage.write_json(storage.join(tmp, "summary.json"), report.summary)
    log.info(
        "report: %d stage outputs, %d plots in %.1f s -> %s",
        len(inputs),
        report.plots,
        time.perf_counter() - started,
        output,
    )
    return ReportResult(output, report.summary)


def _run(config: ReportConfig, spark: object, force: bool) -> ReportResult:
    return run_report(config, force)


COMMAND = Command(
    name="report",
    help="write one self-contained HTML page (with plots) and a summary.json for a run directory",
    config_cls=ReportConfig,
    section="report",
    run=_run,
    needs_spark=False,
)
