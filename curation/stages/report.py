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
from dataclasses import dataclass, field
from typing import Any

from curation import storage
from curation.report import build_report, discover_stages
from curation.stages.base import OUTPUT, Stage, StageResult

log = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    """Options of the ``report`` stage (``[report]`` in a config file)."""

    run: str = field(
        default="",
        metadata={
            "help": "run directory holding the stage outputs (any fsspec URL)",
            "role": "input",
        },
    )
    output: str = field(
        default="",
        metadata={"help": "output directory of the report; empty: <run>/report", "role": OUTPUT},
    )
    title: str = field(
        default="",
        metadata={"help": "page title; empty: 'Curation run report: <run directory name>'"},
    )


def default_output(run: str) -> str:
    """``<run>/report``."""
    return storage.join(run, "report")


class ReportStage(Stage):
    name = "report"
    help = "write one self-contained HTML page (with plots) and a summary.json for a run directory"
    options = ReportConfig
    needs_spark = False

    @property
    def output(self) -> str:
        return self.config.output or default_output(self.config.run)

    def validate(self) -> None:
        if not self.config.run:
            raise ValueError("report needs --run (the run directory)")

    def resolve_inputs(self) -> dict[str, str]:
        """Every complete stage output found in the run directory."""
        self.stages = discover_stages(self.config.run)
        self.lineage = {}
        return {s.name: s.url for s in self.stages if s.complete}

    def build_manifest(self, inputs: dict[str, str]) -> dict[str, Any]:
        return storage.make_manifest("report", self.option_values(), inputs)

    def compute(self, tmp: str) -> dict[str, Any]:
        report = build_report(self.config.run, title=self.config.title or None, stages=self.stages)
        storage.write_bytes(storage.join(tmp, "index.html"), report.html.encode("utf-8"))
        self.plots = report.plots
        return report.summary

    def log_done(self, summary: dict[str, Any]) -> None:
        log.info(
            "report: %d stage outputs, %d plots in %.1f s -> %s",
            sum(1 for s in self.stages if s.complete),
            self.plots,
            self.seconds(),
            self.output,
        )

    @classmethod
    def describe(cls, result: StageResult) -> str:
        """Lines for the console."""
        s = result.summary
        stages = s.get("stages") or []
        found = ", ".join(f"{x['directory']} ({x['stage']})" for x in stages if x.get("complete"))
        incomplete = sum(1 for x in stages if not x.get("complete"))
        lines = [
            f"report: {len(stages) - incomplete} stage output(s)"
            + (f" ({incomplete} incomplete, not reported)" if incomplete else "")
            + f", {s.get('plots', 0)} plot(s)"
            + (" (up to date, skipped)" if result.skipped else ""),
            f"  stages     {found or 'none'}",
            f"  page       {storage.join(result.output, 'index.html')}",
            f"  summary    {storage.join(result.output, 'summary.json')}",
        ]
        lines += [f"  note       {n}" for n in s.get("notes") or []]
        return "\n".join(lines)


def run_report(config: ReportConfig, force: bool = False) -> StageResult:
    """Build the report of ``config.run`` and commit it to ``config.output``."""
    return ReportStage(config).run(force)


STAGE = ReportStage
