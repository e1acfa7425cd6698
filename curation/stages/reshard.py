"""The ``reshard`` stage: selected samples from img2dataset-style shards into a new shard set.

    curate reshard --input SHARDS --selected SELECTED --output DIR --samples-per-shard K [--shuffle]

The work is done by the engine of :mod:`curation.shards.engine` (scan, plan, write); the output
layout is described in :mod:`curation.shards.layout` and ``docs/shards.md``. The input shards may
come from anywhere; when they are a shard set of this pipeline, they must come from the same
matched pool as the selection (they may hold another selection of it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from curation import storage
from curation.shards import layout
from curation.shards.engine import ReshardOptions, reshard_into, selection_frame, write_rejects
from curation.stages.base import input_field, output_field
from curation.stages.shard_stage import S3Fields, ShardSetStage


@dataclass
class _ReshardOptions:
    input: str = input_field(
        "shards",
        "directory of img2dataset-style shards: *.tar (+ a .parquet each)",
        producers=("download", "reshard"),
        external=True,
    )
    selected: str = input_field(
        "selected", "output directory of the select stage", producers=("select",)
    )
    output: str = output_field("output directory of the new shard set")
    samples_per_shard: int = field(
        default=10_000,
        metadata={"min": 1, "help": "samples per output shard (the last may hold fewer)"},
    )
    shuffle: bool = field(
        default=False,
        metadata={"help": "mix samples across output shards (deterministic, seeded)"},
    )
    seed: int = field(
        default=0, metadata={"min": 0, "below": 2**64, "help": "seed of the shuffle order"}
    )
    uid_col: str = field(
        default="uid",
        metadata={
            "help": "field of each sample's .json, or column of the shard's .parquet, "
            "holding the uid"
        },
    )


@dataclass
class ReshardConfig(S3Fields, _ReshardOptions):
    """Options of the ``reshard`` stage (``[reshard]`` in a config file); the S3 options come
    last in ``--help`` (dataclass fields follow the reversed method resolution order)."""


class ReshardStage(ShardSetStage):
    name = "reshard"
    help = "rewrite downloaded shards into a new shard set holding the selected samples"
    options = ReshardConfig
    # Shards downloaded for one selection may be resharded for another of the same pool.
    lineage_keys: ClassVar[tuple[str, ...] | None] = ("metadata", "matched")

    def resolve_inputs(self) -> dict[str, str]:
        inputs = super().resolve_inputs()
        self.sources = layout.list_input_shards(self.config.input)
        return inputs

    def write(self, manifest: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any], bool]:
        config = self.config
        started = self.started
        state = layout.prepare_output(config.output, manifest, self.force)
        prepared = time.perf_counter()
        selection = selection_frame(self.spark, config.selected)
        selection_read = time.perf_counter()
        options = ReshardOptions(
            config.samples_per_shard, config.shuffle, config.seed, config.uid_col, self.s3
        )
        outcome = reshard_into(self.spark, self.sources, selection, config.output, options)
        stats = outcome.stats
        if not outcome.sizes:
            raise storage.StageInputError(
                f"{config.input}: none of the {stats.selected_uids:,} selected uids is "
                f"in the input shards (uids are read from the .json field or .parquet column "
                f"{config.uid_col!r}; see --uid-col)"
            )
        engine_done = time.perf_counter()
        stats.rejects = write_rejects(config.output, outcome.missing, "not_in_input")
        stats.timings.update(
            prepare=round(prepared - started, 3),
            read_selection=round(selection_read - prepared, 3),
            rejects=round(time.perf_counter() - engine_done, 3),
        )
        stats.resumed = state == "resume"
        stats.seconds = self.seconds()
        return outcome.sizes, stats.to_json(), False


def run_reshard(spark: Any, config: ReshardConfig, force: bool = False):
    """Reshard ``config.input`` to ``config.output`` keeping ``config.selected``'s samples."""
    return ReshardStage(config, spark).run(force)


STAGE = ReshardStage
