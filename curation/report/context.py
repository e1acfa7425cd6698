"""The state a report is built in: the outputs found, the sections written so far, the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curation.report.html import figure_html, note
from curation.report.plots import Plot
from curation.report.run import Producers, StageOutput


@dataclass
class Builder:
    """What the sections read (the run's outputs) and add to (sections, summary, notes, plots)."""

    run: str
    stages: list[StageOutput]
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # id, title, body
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: int = 0
    producers: Producers = field(default_factory=Producers)

    def of(self, *stage: str) -> list[StageOutput]:
        """The complete outputs of the stages ``stage``, in pipeline order."""
        return [s for s in self.stages if s.stage in stage and s.complete]

    def figure(self, plot: Plot | None) -> str:
        """The HTML of ``plot`` (counted), or "" when there is nothing to draw."""
        if plot is None:
            return ""
        self.plots += 1
        return figure_html(plot)

    def add(self, section: str, title: str, body: str) -> None:
        self.sections.append((section, title, body))

    def noted(self, text: str) -> str:
        """``text`` as a note in the page, listed in the summary's notes too."""
        self.notes.append(text)
        return note(text)

    def missing(self, section: str, title: str, what: str) -> None:
        text = f"No complete {what} output in this run; section omitted."
        self.add(section, title, self.noted(text))
