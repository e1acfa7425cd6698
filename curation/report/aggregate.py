"""The report's aggregations over stage tables, on Polars lazy scans.

Each function scans only the ``*.parquet`` files of one table (never the folder: Hadoop's
``_SUCCESS`` and ``.crc`` side files sit next to them), reads only the columns it needs
(projection pushdown) and reduces to a result whose size is bounded by the number of entries or
margin levels, never by the number of rows. Local files are scanned by Polars itself; files on
another filesystem (S3, or any fsspec URL) through a PyArrow dataset on that filesystem, which
Polars scans with the same pushdown.

The one aggregation that is not a Polars query is the margin "after" table: it rescores the
distinct-signature table with the balance run's parameters (a NumPy function,
:func:`curation.balancing.rescoring.expected_by_level`), streamed in Arrow batches.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from curation import storage
from curation.balancing.params import ScoreParams
from curation.balancing.rescoring import expected_by_level, rescoring_columns
from curation.balancing.signatures import NULL_LEVEL
from curation.report.run import StageOutput

RESCORE_BATCH_ROWS = 65_536


def _parquet_files(url: str) -> tuple[Any, list[str]]:
    """The filesystem and the ``*.parquet`` files of ``url`` (a folder, or one file)."""
    fs, path = storage.url_to_fs(url)
    if not fs.exists(path):
        return fs, []
    if fs.isdir(path):
        return fs, sorted(fs.glob(f"{path.rstrip('/')}/*.parquet"))
    return fs, [path]


def _is_local(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def scan(out: StageOutput, *parts: str) -> pl.LazyFrame | None:
    """A lazy scan of the Parquet table ``parts`` of ``out`` (a folder or one file); None when it
    has no Parquet file."""
    fs, files = _parquet_files(out.path(*parts))
    if not files:
        return None
    if _is_local(fs):
        return pl.scan_parquet(files)
    import pyarrow.dataset as ds

    return pl.scan_pyarrow_dataset(ds.dataset(files, filesystem=fs, format="parquet"))


def _unreadable_as(default: Any) -> Callable:
    """A table that cannot be read (truncated, not Parquet) gives ``default``, as a missing one
    does: the report notes what it lacks rather than failing (``default`` is copied per call)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def read(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (OSError, pl.exceptions.PolarsError, pa.ArrowException):
                return copy.copy(default)

        return read

    return wrap


def _columns(frame: pl.LazyFrame) -> list[str]:
    return frame.collect_schema().names()


def _level(value: Any) -> str:
    return NULL_LEVEL if value is None else str(value)


@dataclass(frozen=True)
class HeadEntry:
    """One row of a balance run's head entries."""

    entry: str | int  # the entry's text, or its id when the table has none
    count: float  # c_j, samples of the pool that match it
    target: float | None  # its target (None when the table has no target column)
    expected: float | None  # its expected count after balancing (None when not in the table)


@_unreadable_as([])
def head_entries(out: StageOutput, top: int) -> list[HeadEntry]:
    """The ``top`` entries of a balance output's ``entry_factors.parquet`` by pool count (ties in
    entry-id order), those with a positive count only."""
    frame = scan(out, "entry_factors.parquet")
    if frame is None or "count" not in (names := _columns(frame)):
        return []
    wanted = [c for c in ("entry", "count", "target", "expected") if c in names]
    rows = (
        frame.select(wanted)
        .with_row_index("entry_id")
        .filter(pl.col("count") > 0)
        .sort(["count", "entry_id"], descending=[True, False])
        .head(top)
        .collect()
        .to_dicts()
    )
    return [
        HeadEntry(
            row.get("entry", int(row["entry_id"])),
            row["count"],
            row.get("target"),
            row.get("expected"),
        )
        for row in rows
    ]


@_unreadable_as(None)
def level_counts(out: StageOutput, column: str) -> dict[str, int] | None:
    """Samples per level of margin ``column`` (count's ``margin_counts/COLUMN.parquet``), in the
    table's order; None when the table is missing or lacks the column."""
    frame = scan(out, "margin_counts", f"{column}.parquet")
    if frame is None or column not in _columns(frame):
        return None
    table = frame.select(column, "samples").collect()
    return {_level(v): int(n) for v, n in zip(table[column].to_list(), table["samples"].to_list())}


@_unreadable_as({})
def entries_per_level(out: StageOutput, column: str) -> dict[str, int]:
    """Distinct entries seen per level of ``column`` (rows of count's
    ``margin_entry_counts/COLUMN.parquet`` per level); empty when the table is missing."""
    frame = scan(out, "margin_entry_counts", f"{column}.parquet")
    if frame is None or column not in _columns(frame):
        return {}
    table = frame.group_by(column).agg(pl.len().alias("n")).collect()
    return {_level(v): int(n) for v, n in zip(table[column].to_list(), table["n"].to_list())}


def counted_margins(out: StageOutput) -> list[str]:
    """The margin columns count wrote a level table for (``margin_counts/*.parquet``), sorted."""
    _, files = _parquet_files(out.path("margin_counts"))
    return [f.rsplit("/", 1)[-1].removesuffix(".parquet") for f in files]


@_unreadable_as({})
def matches_histogram(out: StageOutput) -> dict[int, int]:
    """Samples by number of matched entries ``k`` (count's ``matches_histogram.parquet``)."""
    frame = scan(out, "matches_histogram.parquet")
    if frame is None:
        return {}
    table = frame.select("k", "samples").collect()
    return dict(zip(table["k"].to_list(), table["samples"].to_list()))


def _signature_batches(out: StageOutput, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The signature table's ``columns``, file by file and row group by row group (no read-ahead:
    one batch of at most :data:`RESCORE_BATCH_ROWS` rows is in memory at a time).

    ``pre_buffer=False``: with pre-buffering (PyArrow's default) the reader fetches the projected
    column chunks of every row group it will read up front and keeps them until the file is
    done, so memory grows with the rows of a file (177 MiB for ``entry_ids`` of a 12M-row file).
    Without it, the reader reads one column chunk at a time: a local file is opened by Arrow
    itself, as each read through a Python file object costs a Python call."""
    import pyarrow.parquet as pq

    fs, files = _parquet_files(out.path("signatures"))
    if not files:
        raise ValueError(f"{out.path('signatures')}: no signature table")
    local = _is_local(fs)
    for path in files:
        with pa.OSFile(path) if local else fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f, pre_buffer=False)
            names = parquet.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ValueError(f"the signature table has no column {missing[0]!r}")
            yield from parquet.iter_batches(batch_size=RESCORE_BATCH_ROWS, columns=list(columns))


def expected_per_level(
    counts: StageOutput, balance: StageOutput, columns: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Expected samples per margin level after the balance run ``balance``, from the count
    output's signature table (see :mod:`curation.balancing.rescoring`). Raises ``ValueError``
    when a column is missing."""
    params = ScoreParams.from_json(storage.read_bytes(balance.path("params.json")).decode())
    batches = _signature_batches(counts, rescoring_columns(params, columns))
    return expected_by_level(params, batches, columns)
