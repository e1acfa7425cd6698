"""Where a run's committed stage outputs are, and Polars lazy frames over them.

A run directory holds one subdirectory per stage output (``curate run`` names them ``matched/``,
``counts/``, ``balance/``, ``selected/``, ``shards/``; hand-run stages may use any name). Each is
found by the ``stage`` field of its ``_manifest.json`` and used only when committed
(``_SUCCESS``). With several balance outputs (``balance-metaclip/``, ``balance-rake/``), the one
named ``balance`` is used unless another is named; the ``select`` output is the one whose
manifest names that balance output as its ``weights`` input, and ``matched`` is the balance
output's ``matched`` input.

Parquet folders are scanned as ``<folder>/*.parquet``, so outputs of older versions, which kept
Hadoop's ``.crc`` side files beside the data, read too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curation import storage
from curation.balancing import ScoreParams


class RunLayoutError(storage.StageInputError):
    """A run directory without the stage output a question needs; the message says which."""


def scan_folder(url: str) -> pl.LazyFrame:
    """A lazy scan of the Parquet files directly in the folder ``url``."""
    return pl.scan_parquet(storage.join(url, "*.parquet"))


@dataclass
class StageDir:
    """One committed stage output of a run."""

    name: str
    url: str
    stage: str
    manifest: dict[str, Any]

    def input_url(self, name: str) -> str | None:
        entry = (self.manifest.get("inputs") or {}).get(name) or {}
        return entry.get("url") if isinstance(entry, dict) else None


def stage_dirs(run: str) -> list[StageDir]:
    """Every committed stage output directly under ``run`` (sorted by name)."""
    fs, path = storage.url_to_fs(run)
    path = path.rstrip("/")
    if not fs.isdir(path):
        raise RunLayoutError(f"{run}: run directory not found")
    found = []
    for info in fs.ls(path, detail=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") != "directory" or ".tmp-" in name or name.startswith((".", "_")):
            continue
        url = storage.join(run, name)
        if not storage.exists(storage.join(url, storage.SUCCESS)):
            continue
        try:
            manifest = storage.read_json(storage.join(url, storage.MANIFEST))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("stage"), str):
            found.append(StageDir(name, url, manifest["stage"], manifest))
    return sorted(found, key=lambda d: d.name)


@dataclass
class RunOutputs:
    """The outputs of one run that ``curate inspect`` reads (None when the run lacks one)."""

    run: str
    balance: StageDir | None = None
    matched: StageDir | None = None
    selected: StageDir | None = None
    _params: ScoreParams | None = field(default=None, repr=False)

    @classmethod
    def find(cls, run: str, balance: str = "") -> RunOutputs:
        """Locate the outputs of ``run``; ``balance`` names the balance output to use."""
        dirs = stage_dirs(run)
        out = cls(run)
        out.balance = _pick(run, [d for d in dirs if d.stage == "balance"], balance, "balance")
        if out.balance is not None:
            out.selected = _consumer(dirs, "select", "weights", out.balance)
            out.matched = _producer(dirs, "match", out.balance.input_url("matched"))
        else:
            out.matched = _pick(run, [d for d in dirs if d.stage == "match"], "", "matched")
        return out

    def need(self, what: str) -> StageDir:
        """The output ``what`` (balance, matched, selected), or a clear error."""
        found = getattr(self, what)
        if found is None:
            stage = {"balance": "balance", "matched": "match", "selected": "select"}[what]
            raise RunLayoutError(
                f"{self.run}: no committed {stage} output found (a subdirectory whose "
                f"_manifest.json says stage {stage!r}, with _SUCCESS); run `curate {stage}` "
                "into this run directory first"
            )
        return found

    @property
    def params(self) -> ScoreParams:
        if self._params is None:
            url = storage.join(self.need("balance").url, "params.json")
            self._params = ScoreParams.from_json(storage.read_bytes(url).decode())
        return self._params

    @property
    def cap(self) -> float | None:
        """The per-entry cap t of the balance run (None for a run solved without one)."""
        t = self.params.meta.get("t")
        return None if t is None else float(t)

    def entry_factors(self) -> pl.LazyFrame:
        return pl.scan_parquet(storage.join(self.need("balance").url, "entry_factors.parquet"))

    def pool(self) -> pl.LazyFrame:
        return scan_folder(storage.join(self.need("matched").url, "pool"))

    def rejects(self) -> pl.LazyFrame:
        return scan_folder(storage.join(self.need("matched").url, "rejects"))

    def selection(self) -> pl.LazyFrame:
        return scan_folder(storage.join(self.need("selected").url, "selected"))

    def summary(self, what: str) -> dict[str, Any]:
        url = storage.join(self.need(what).url, "summary.json")
        return storage.read_json(url) if storage.exists(url) else {}


def _pick(run: str, candidates: list[StageDir], name: str, what: str) -> StageDir | None:
    if name:
        for d in candidates:
            if d.name == name.rstrip("/"):
                return d
        raise RunLayoutError(
            f"{run}: no committed {what} output named {name!r}; found: "
            + (", ".join(d.name for d in candidates) or "none")
        )
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    for d in candidates:
        if d.name == what:
            return d
    raise RunLayoutError(
        f"{run}: {len(candidates)} {what} outputs ({', '.join(d.name for d in candidates)}); "
        f"name one with --balance"
    )


def _same_place(a: str | None, b: str) -> bool:
    if not a:
        return False
    if storage.is_local(a) and storage.is_local(b):
        return os.path.realpath(storage.local_path(a)) == os.path.realpath(storage.local_path(b))
    return a.rstrip("/") == b.rstrip("/")


def _consumer(dirs: list[StageDir], stage: str, input_name: str, of: StageDir) -> StageDir | None:
    """The ``stage`` output that read ``of`` as ``input_name`` (by path, else by name)."""
    mine = [d for d in dirs if d.stage == stage]
    for d in mine:
        if _same_place(d.input_url(input_name), of.url):
            return d
    for d in mine:
        url = d.input_url(input_name) or ""
        if url.rstrip("/").rsplit("/", 1)[-1] == of.name:
            return d
    return mine[0] if len(mine) == 1 else None


def _producer(dirs: list[StageDir], stage: str, url: str | None) -> StageDir | None:
    """The ``stage`` output at ``url`` (by path, else by name), or the run's only one."""
    mine = [d for d in dirs if d.stage == stage]
    for d in mine:
        if _same_place(url, d.url):
            return d
    for d in mine:
        if url and url.rstrip("/").rsplit("/", 1)[-1] == d.name:
            return d
    return mine[0] if len(mine) == 1 else None
