"""The report's aggregations without Spark: Polars scans that skip Hadoop side files, the head
entries in the old order, and the rescoring of a signature table in batches."""

from __future__ import annotations

import tracemalloc

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.balancing import ScoreParams, score_arrow
from curation.balancing.rescoring import expected_by_level
from curation.balancing.signatures import NULL_LEVEL
from curation.report import aggregate
from curation.report.run import StageOutput
from tests.servers import s3_server  # noqa: F401


def output(path) -> StageOutput:
    return StageOutput(path.name, str(path), "count", True, {"stage": "count"})


def hadoop_folder(folder, tables: list[pa.Table]) -> None:
    """Parquet part files with the side files Spark's Hadoop writer leaves next to them."""
    folder.mkdir(parents=True)
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"part-{i:05d}.parquet")
        (folder / f".part-{i:05d}.parquet.crc").write_bytes(b"\x00crc")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "._SUCCESS.crc").write_bytes(b"\x00crc")


def test_entries_per_level_reads_a_folder_with_hadoop_side_files(tmp_path):
    hadoop_folder(
        tmp_path / "counts" / "margin_entry_counts" / "source.parquet",
        [
            pa.table({"source": ["a", "a", None], "entry_id": [1, 2, 3]}),
            pa.table({"source": ["b", "a"], "entry_id": [1, 4]}),
        ],
    )
    got = aggregate.entries_per_level(output(tmp_path / "counts"), "source")
    assert got == {"a": 3, "b": 1, NULL_LEVEL: 1}


def test_level_counts_keep_the_table_order_and_name_null(tmp_path):
    folder = tmp_path / "counts" / "margin_counts"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"lang": ["en", None, "fr"], "samples": [5, 2, 1]}), folder / "lang.parquet"
    )
    (folder / ".lang.parquet.crc").write_bytes(b"\x00")
    out = output(tmp_path / "counts")
    assert aggregate.counted_margins(out) == ["lang"]
    assert aggregate.level_counts(out, "lang") == {"en": 5, NULL_LEVEL: 2, "fr": 1}
    assert aggregate.level_counts(out, "missing") is None


def test_head_entries_are_the_top_counts_ties_in_entry_order(tmp_path):
    (tmp_path / "balance").mkdir()
    counts = [3, 9, 0, 9, 1]
    pq.write_table(
        pa.table({"entry": list("abcde"), "count": counts, "target": [1.0] * 5}),
        tmp_path / "balance" / "entry_factors.parquet",
    )
    rows = aggregate.head_entries(output(tmp_path / "balance"), 4)
    want = [int(j) for j in np.argsort(-np.array(counts), kind="stable")[:4]]
    assert [r.entry for r in rows] == [list("abcde")[j] for j in want]
    assert all(r.count > 0 for r in rows)
    assert rows[0].target == 1.0 and rows[0].expected is None


def test_rescoring_in_batches_sums_multiplicity_times_pi_per_level():
    params = ScoreParams(method="metaclip", n_entries=3, entry_values=np.array([1.0, 0.5, 0.25]))
    table = pa.table(
        {
            "entry_ids": pa.array([[0], [1], [1, 2], [2], []], pa.list_(pa.int32())),
            "source": ["a", "b", None, "a", "b"],
            "multiplicity": [2, 4, 1, 8, 3],
        }
    )
    _, pi = score_arrow(params, table)
    want: dict[str, float] = {}
    for level, m, p in zip(table.column("source").to_pylist(), [2, 4, 1, 8, 3], pi):
        key = NULL_LEVEL if level is None else level
        want[key] = want.get(key, 0.0) + m * p
    for size in (1, 2, 5):
        got = expected_by_level(params, table.to_batches(max_chunksize=size), ["source"])
        assert got["source"] == pytest.approx(want)


def test_an_unreadable_table_reads_as_a_missing_one(tmp_path):
    folder = tmp_path / "counts" / "margin_counts"
    folder.mkdir(parents=True)
    (folder / "lang.parquet").write_bytes(b"not parquet")
    (tmp_path / "counts" / "matches_histogram.parquet").write_bytes(b"PAR1 truncated")
    out = output(tmp_path / "counts")
    assert aggregate.level_counts(out, "lang") is None
    assert aggregate.matches_histogram(out) == {}


def signature_file(folder, rows: int, seed: int) -> None:
    """A signature table of ``rows`` random rows in row groups of 2,000 (as a scaled or a
    many-row-group file would have), incompressible so that its size grows with its rows."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 5, rows))]).astype(np.int32)
    entry_ids = pa.ListArray.from_arrays(offsets, rng.integers(0, 1 << 20, offsets[-1], np.int32))
    table = pa.table({"entry_ids": entry_ids, "multiplicity": rng.integers(1, 9, rows)})
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-00000.parquet", row_group_size=2_000)


def peak_reading_signatures(out: StageOutput) -> int:
    """Peak bytes held (Python allocations, where a Python file's reads land, plus Arrow's pool)
    while the rescoring reads the signature table batch by batch."""
    tracemalloc.start()
    arrow_peak = rows = 0
    try:
        for batch in aggregate._signature_batches(out, ["entry_ids", "multiplicity"]):
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
            rows += batch.num_rows
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows > 0
    return python_peak + arrow_peak


def test_reading_the_signature_table_holds_a_batch_not_the_file(tmp_path):
    # PyArrow's pre-buffering fetched every row group's column chunks up front and kept them
    # until the file was done: 570 MiB for the report on 98M signature rows (bench_report.py).
    small, large = tmp_path / "small", tmp_path / "large"
    signature_file(small / "signatures", 100_000, seed=1)
    signature_file(large / "signatures", 800_000, seed=2)
    file_size = (large / "signatures" / "part-00000.parquet").stat().st_size
    assert file_size > 8 << 20
    peak_small = peak_reading_signatures(output(small))
    peak_large = peak_reading_signatures(output(large))
    assert peak_large < peak_small + (1 << 20), (peak_small, peak_large, file_size)


def test_the_signature_table_reads_the_same_from_s3(tmp_path, s3_server, monkeypatch):  # noqa: F811
    local = tmp_path / "counts"
    signature_file(local / "signatures", 10_000, seed=3)
    fs = s3_server.fs()
    fs.put(str(local / "signatures") + "/", "test/report/counts/signatures/", recursive=True)
    opts = s3_server.options.storage_options()
    monkeypatch.setitem(fsspec.config.conf, "s3", opts)
    remote = StageOutput("counts", "s3://test/report/counts", "count", True, {"stage": "count"})
    columns = ["entry_ids", "multiplicity"]
    got = pa.Table.from_batches(list(aggregate._signature_batches(remote, columns)))
    assert got.equals(pq.read_table(local / "signatures", columns=columns))
