"""The ``demo-pool`` stage: write the built-in synthetic demo pool (see :mod:`curation.demo`).

Output directory (committed atomically)::

    part-NNNNN.parquet   the pool, split into ``--files`` files
    _summary.json        rows, files, the metadata list (``_``-prefixed, so that a reader of the
                         pool never takes it for data)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from curation.demo import pool_table, write_parquet_files
from curation.metadata import DEFAULT_METADATA, load_metadata
from curation.stages.base import Stage, StageResult, input_field, output_field
from curation.summaries import PoolSummary

log = logging.getLogger(__name__)


@dataclass
class DemoPoolConfig:
    """Options of ``curate demo-pool`` (``[demo]`` in a config file)."""

    output: str = output_field("output directory of Parquet files", default="runs/demo/pool")
    rows: int = field(default=200_000, metadata={"min": 1, "help": "number of captions"})
    files: int = field(default=8, metadata={"min": 1, "help": "number of Parquet files"})
    seed: int = field(default=0, metadata={"min": 0, "below": 2**64, "help": "random seed"})
    metadata: str = input_field(
        "metadata", "metadata list the keywords come from", default=DEFAULT_METADATA
    )
    zipf_exponent: float = field(
        default=1.1, metadata={"min": 0, "help": "exponent of the keyword popularity law"}
    )
    vocabulary: int = field(
        default=5_000,
        metadata={
            "min": 0,
            "help": "keywords come from this many entries of the list (0: all of them)",
        },
    )
    url_prefix: str = field(
        default="https://demo.invalid/images/",
        metadata={"help": "URL prefix of the (synthetic) images"},
    )


class DemoPoolStage(Stage):
    name = "demo-pool"
    help = "write the built-in synthetic demo pool (deterministic, seeded)"
    options = DemoPoolConfig
    needs_spark = False
    summary_file = "_summary.json"

    def validate(self) -> None:
        super().validate()
        if self.config.rows <= 0 or self.config.files <= 0:
            raise ValueError("demo-pool: rows and files must be positive")

    def compute(self, tmp: str) -> dict[str, Any]:
        config = self.config
        metadata = load_metadata(config.metadata)
        table = pool_table(
            metadata.entries,
            config.rows,
            config.seed,
            config.zipf_exponent,
            config.vocabulary,
            config.url_prefix,
        )
        write_parquet_files(table, tmp, config.files)
        return PoolSummary(
            output=config.output,
            rows=config.rows,
            files=config.files,
            metadata=config.metadata,
            seconds=self.seconds(),
        ).to_json()

    def log_done(self, summary: dict[str, Any]) -> None:
        s = PoolSummary.from_json(summary)
        log.info("demo-pool: %d rows in %d files -> %s", s.rows, s.files, self.output)

    @classmethod
    def describe(cls, result: StageResult) -> str:
        s = result.record(PoolSummary)
        skipped = " (up to date, skipped)" if result.skipped else ""
        return f"demo-pool: {s.rows:,} captions in {s.files} Parquet files -> {s.output}{skipped}"


def write_demo_pool(config: DemoPoolConfig, force: bool = False) -> dict[str, Any]:
    """Write the demo pool; returns its summary (``skipped`` is set when it was up to date)."""
    result = DemoPoolStage(config).run(force)
    return {**result.summary, "skipped": True} if result.skipped else result.summary


STAGE = DemoPoolStage
