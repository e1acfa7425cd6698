"""*Stages*: every stage output found, its status and its time."""

from __future__ import annotations

from typing import Any

from curation import storage
from curation.report.context import Builder
from curation.report.format import DASH, fmt_seconds
from curation.report.html import note, table
from curation.report.run import StageOutput, read_json
from curation.summaries import BY_STAGE


def seconds_of(out: StageOutput) -> Any:
    """The stage's time from its summary (None for a stage whose summary has none)."""
    kind = BY_STAGE.get(out.stage)
    return getattr(out.summary(kind), "seconds", None) if kind is not None else None


def section_stages(b: Builder) -> None:
    rows = [
        (
            s.label,
            s.stage,
            "complete" if s.complete else "incomplete (no _SUCCESS)",
            fmt_seconds(seconds_of(s)) if s.complete else DASH,
            s.manifest.get("version", DASH),
        )
        for s in b.stages
    ]
    incomplete = [s.label for s in b.stages if not s.complete]
    body = table(("directory", "stage", "status", "time", "version"), rows, align="lllrl")
    # curate run records the stage that failed (curation.stages.run.RUN_RECORD).
    record = read_json(storage.join(b.run, "_run.json"))
    failed = record.get("failed") if isinstance(record, dict) else None
    failed_stage = failed.get("stage") if isinstance(failed, dict) else None
    if incomplete:
        why = f"the {failed_stage} stage failed" if failed_stage else None
        body += b.noted(
            f"Incomplete outputs are not reported: {', '.join(incomplete)} "
            f"({why or 'a stage in progress, or one that was killed'})."
        )
    if not b.stages:
        body = note("No stage output (a directory with _manifest.json) was found in this run.")
    if failed_stage:
        text = f"The last curate run failed in the {failed_stage} stage: {failed.get('error')}."
        b.notes.insert(0, text)
        body = note(text) + body
        b.summary["failed_stage"] = failed
    b.summary["stages"] = [
        {"directory": s.name, "stage": s.stage, "complete": s.complete} for s in b.stages
    ]
    b.add("stages", "Stages", body)
