"""Finding the stage outputs of a run directory and reading their files.

Outputs are found by the ``stage`` field of each subdirectory's ``_manifest.json``, not by fixed
names, so ``balance-metaclip/`` and ``balance-rake/`` are both found; an output without
``_SUCCESS`` is listed as incomplete and not reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage
from curation.pipeline import STAGE_ORDER
from curation.summaries import Record

R = TypeVar("R", bound=Record)


def read_json(url: str) -> Any:
    """The JSON file ``url``, or None when it is missing or unreadable."""
    try:
        return storage.read_json(url)
    except (FileNotFoundError, ValueError, OSError):
        return None


def _read_parquet(url: str) -> pa.Table | None:
    fs, path = storage.url_to_fs(url)
    try:
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            return pq.read_table(f)
    except (OSError, pa.ArrowException):
        return None


@dataclass(frozen=True)
class StageOutput:
    """One stage output found in a run directory."""

    name: str
    url: str
    stage: str
    complete: bool
    manifest: dict[str, Any]

    def path(self, *parts: str) -> str:
        """A URL under this output."""
        return storage.join(self.url, *parts)

    def json(self, *parts: str) -> Any:
        """A JSON file of this output, or None when it is missing or unreadable."""
        return read_json(self.path(*parts))

    def parquet(self, *parts: str) -> pa.Table | None:
        """A single Parquet file of this output, or None when it is missing or unreadable."""
        return _read_parquet(self.path(*parts))

    def summary(self, kind: type[R], name: str | None = None) -> R:
        """The typed summary file ``name`` (default: ``kind.FILE``) of this output; an empty
        record when the file is missing or unreadable (every field then reads as missing)."""
        return kind.from_json(self.json(name or kind.FILE))

    @property
    def label(self) -> str:
        return self.name + "/"


def discover_stages(run: str) -> list[StageOutput]:
    """Every stage output directly under ``run``, found by its manifest's ``stage`` field.

    Directories without a readable manifest (a user's own pool, work areas), temporary
    directories of a stage in progress (``*.tmp-*``) and report outputs are left out. Sorted in
    pipeline order, then by name.
    """
    fs, path = storage.url_to_fs(run)
    path = path.rstrip("/")
    if not fs.exists(path) or not fs.isdir(path):
        raise storage.StageInputError(f"{run}: run directory not found")
    found = []
    for info in fs.ls(path, detail=True):
        if info.get("type") != "directory":
            continue
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if ".tmp-" in name or name.startswith("."):
            continue
        url = storage.join(run, name)
        manifest = read_json(storage.join(url, storage.MANIFEST))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stage"), str):
            continue
        if manifest["stage"] == "report":
            continue
        complete = storage.exists(storage.join(url, storage.SUCCESS))
        found.append(StageOutput(name, url, manifest["stage"], complete, manifest))
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    found.sort(key=lambda s: (order.get(s.stage, len(order)), s.name))
    return found


class Producers:
    """Which output of the run a stage read: its manifest's input fingerprint matched against the
    outputs' fingerprints, else the only candidate."""

    def __init__(self) -> None:
        self._fingerprints: dict[str, str | None] = {}

    def fingerprint(self, out: StageOutput) -> str | None:
        if out.url not in self._fingerprints:
            try:
                self._fingerprints[out.url] = storage.fingerprint(out.url)
            except (OSError, ValueError):
                self._fingerprints[out.url] = None
        return self._fingerprints[out.url]

    def find(
        self, consumer: StageOutput, input_name: str, candidates: Sequence[StageOutput]
    ) -> StageOutput | None:
        wanted = (consumer.manifest.get("inputs") or {}).get(input_name) or {}
        fp = wanted.get("fingerprint") if isinstance(wanted, dict) else None
        if fp:
            for c in candidates:
                if self.fingerprint(c) == fp:
                    return c
        return candidates[0] if len(candidates) == 1 else None
