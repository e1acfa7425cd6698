"""Small pipelines for stage tests: a pool and a metadata list on disk, matched and counted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.stages.count import CountConfig, run_count
from curation.stages.match import MatchConfig, run_match


def match_and_count(
    spark: Any,
    root: Path,
    rows: list[dict],
    entries: list[str],
    margins: Sequence[str] = ("source",),
) -> tuple[str, Any]:
    """Write ``rows`` as ``root/pool.parquet`` and ``entries`` as ``root/meta.json``, then run
    ``match`` (to ``root/m``) and ``count`` with ``margins`` (to ``root/c``): returns the
    matched directory and the count stage's result."""
    (root / "meta.json").write_text(json.dumps(entries))
    pq.write_table(pa.Table.from_pylist(rows), root / "pool.parquet")
    matched = run_match(
        spark,
        MatchConfig(
            input=str(root / "pool.parquet"),
            output=str(root / "m"),
            metadata=str(root / "meta.json"),
        ),
    ).output
    counts = run_count(
        spark, CountConfig(input=matched, output=str(root / "c"), margins=list(margins))
    )
    return matched, counts
