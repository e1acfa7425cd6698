"""Every Parquet output of a run reads as it is with Polars, pandas, DuckDB and pyarrow."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from tests.demo_run import demo_image_server, demo_run  # noqa: F401 - fixtures

# The Parquet folders the stages write (stage directory, folder): Spark's part files only.
FOLDERS = [
    ("matched", "pool"),
    ("matched", "rejects"),
    ("counts", "signatures"),
    ("balance", "weights"),
    ("selected", "selected"),
]
PANDAS_INDEX = "__index_level_0__"


def read_all(path: Path) -> dict[str, tuple[int, list[str]]]:
    """(rows, columns) of ``path`` as each reader sees it, given the path as it is."""
    p = str(path)
    lazy = pl.scan_parquet(p).collect()
    eager = pl.read_parquet(p)
    frame = pd.read_parquet(p)
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{p}')")
    duck_rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{p}')").fetchall()[0][0]
    table = pq.read_table(p)
    return {
        "polars scan": (lazy.height, lazy.columns),
        "polars read": (eager.height, eager.columns),
        "pandas": (len(frame), list(frame.columns)),
        "duckdb": (duck_rows, relation.columns),
        "pyarrow": (table.num_rows, table.column_names),
    }


def test_no_checksum_side_files_anywhere_in_the_run(demo_run):  # noqa: F811
    hidden = [p for p in demo_run.dir.rglob(".*") if p.is_file()]
    assert not hidden, f"side files in the run: {hidden[:5]}"
    assert not list(demo_run.dir.rglob("*.crc"))


@pytest.mark.parametrize("stage, folder", FOLDERS)
def test_every_folder_reads_with_every_reader(demo_run, stage, folder):  # noqa: F811
    path = demo_run.dir / stage / folder
    names = sorted(p.name for p in path.iterdir())
    assert names and all(n.endswith(".parquet") or n == "_SUCCESS" for n in names), names
    seen = read_all(path)
    rows = {reader: r for reader, (r, _) in seen.items()}
    columns = {reader: sorted(c) for reader, (_, c) in seen.items()}
    assert len(set(rows.values())) == 1, rows
    assert len({tuple(c) for c in columns.values()}) == 1, columns
    assert PANDAS_INDEX not in columns["pyarrow"]
    if folder != "rejects":
        assert rows["pyarrow"] > 0


def test_single_parquet_files_read_with_every_reader(demo_run):  # noqa: F811
    files = sorted(demo_run.dir.glob("counts/**/*.parquet")) + sorted(
        demo_run.dir.glob("balance/*.parquet")
    )
    assert len(files) >= 5
    for path in files:
        seen = read_all(path)
        assert len({r for r, _ in seen.values()}) == 1, (path, seen)


def test_match_drops_the_pandas_index_column(demo_run):  # noqa: F811
    source = pq.read_schema(next((demo_run.dir.parent / "pandas-pool").glob("*.parquet")))
    assert PANDAS_INDEX in source.names  # the input really had one
    pool = pq.read_table(demo_run.dir / "matched" / "pool")
    assert pool.column_names == ["uid", "url", "caption", "source", "lang", "entry_ids"]
    assert pool.num_rows + pq.read_table(demo_run.dir / "matched" / "rejects").num_rows == (
        demo_run.rows
    )
    selected = pq.read_schema(next((demo_run.dir / "selected" / "selected").glob("*.parquet")))
    assert PANDAS_INDEX not in selected.names
