"""The ``select`` stage: deterministic selection (or repeats) from the balanced probabilities.

Each sample's uniform is ``u_i = hash(uid_i, seed)`` (``curation.selection.hash_uniform``: keyed
64-bit BLAKE2b, top 53 bits); the sample is kept iff ``u_i < π_i``. With replacement it is
repeated ``r_i = ⌊e_i⌋ + [u_i < frac(e_i)]`` times, with ``e_i = N·w_i/Σw`` the expected repeats.
Decisions depend only on (uid, seed, π_i), and π_i only on the sample's own entry ids and margin
values and the solved parameters, so the same inputs give the same selection on any cluster, any
partitioning, any rerun.

π_i is recomputed here from the balance stage's ``params.json`` with the same function that wrote
its ``weights/`` (no join of the pool with the weights, so no shuffle).

With ``all_eligible`` every sample with π_i > 0 is kept once (no draw), with its π_i: the set for
applying the inclusion probability online, a fresh draw per epoch (MetaCLIP 2 style; see
``docs/shards.md``).

Output directory (committed atomically)::

    selected/      Parquet: every matched-pool column + weight, inclusion_prob, repeats (int32 ≥ 1)
    subset.npy     DataComp-style subset: the selected uids' two 64-bit halves, dtype u8,u8, sorted
    summary.json   expected size Σπ_i (or Σe_i), realised size, sum of repeats, seed
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, LongType, StructField, StructType

from curation import storage
from curation.balancing import ScoreParams, expected_repeats, score_arrow
from curation.balancing.broadcast import broadcast_params, cached_params
from curation.selection import draw_repeats, hash_uniform, select_mask, sorted_subset, uid_halves
from curation.stages.base import Stage, StageResult, input_field, output_field
from curation.summaries import SelectSummary

log = logging.getLogger(__name__)


@dataclass
class SelectConfig:
    """Options of the ``select`` stage (``[select]`` in a config file)."""

    input: str = input_field(
        "matched", "matched pool directory (output of match)", producers=("match",)
    )
    weights: str = input_field(
        "weights", "balance directory (output of balance)", producers=("balance",)
    )
    output: str = output_field("output directory of the selection")
    seed: int = field(
        default=0, metadata={"min": 0, "below": 2**64, "help": "selection seed (0 <= seed < 2**64)"}
    )
    with_replacement: bool = field(
        default=False,
        metadata={"help": "draw integer repeats (needs a balance run solved --with-replacement)"},
    )
    all_eligible: bool = field(
        default=False,
        metadata={
            "help": "keep every sample with π > 0 (no draw), to apply inclusion_prob online per epoch"
        },
    )


def _select_partition(
    batches, broadcast, key: str, seed: int, with_replacement: bool, all_eligible: bool = False
):
    """mapInArrow body: score, draw, and keep the selected rows with weight, π and repeats."""
    params = cached_params(broadcast, key)
    for batch in batches:
        weight, pi = score_arrow(params, batch)
        u = hash_uniform(batch.column("uid"), seed)
        if all_eligible:
            repeats = (pi > 0).astype(np.int64)
        elif with_replacement:
            repeats = draw_repeats(u, expected_repeats(params, weight))
        else:
            repeats = select_mask(u, pi).astype(np.int64)
        keep = repeats > 0
        if not keep.any():
            continue
        kept = batch.filter(pa.array(keep))
        yield (
            kept.append_column("weight", pa.array(weight[keep]))
            .append_column("inclusion_prob", pa.array(pi[keep]))
            .append_column("repeats", pa.array(repeats[keep].astype(np.int32)))
        )


def _expected_partition(batches, broadcast, key: str, with_replacement: bool):
    """π_i (or e_i) of every row, for the summary's expected size.

    Per row, not per batch: the driver sums them as decimals (exact), so the expected size is
    the same number on any partitioning; a float sum of per-batch sums is not.
    """
    params = cached_params(broadcast, key)
    for batch in batches:
        weight, pi = score_arrow(params, batch)
        value = expected_repeats(params, weight) if with_replacement else pi
        yield pa.RecordBatch.from_arrays([pa.array(value, pa.float64())], names=["expected"])


def select_pool(
    pool: DataFrame,
    broadcast,
    key: str,
    seed: int,
    with_replacement: bool,
    all_eligible: bool = False,
) -> DataFrame:
    schema = StructType(
        [
            *pool.schema.fields,
            StructField("weight", DoubleType(), False),
            StructField("inclusion_prob", DoubleType(), False),
            StructField("repeats", IntegerType(), False),
        ]
    )
    return pool.mapInArrow(
        partial(
            _select_partition,
            broadcast=broadcast,
            key=key,
            seed=seed,
            with_replacement=with_replacement,
            all_eligible=all_eligible,
        ),
        schema,
    )


def _halves_partition(batches):
    for batch in batches:
        halves = uid_halves(batch.column("uid"))
        yield pa.RecordBatch.from_arrays(
            [pa.array(halves["f0"].view(np.int64)), pa.array(halves["f1"].view(np.int64))],
            names=["hi", "lo"],
        )


def subset_halves(selected: DataFrame) -> np.ndarray:
    """The selected uids as DataComp's ``u8,u8`` halves (computed on the executors)."""
    schema = StructType(
        [StructField("hi", LongType(), False), StructField("lo", LongType(), False)]
    )
    table = selected.select("uid").mapInArrow(_halves_partition, schema).toArrow()
    out = np.empty(table.num_rows, dtype=np.dtype("u8,u8"))
    out["f0"] = table.column("hi").to_numpy().view(np.uint64)
    out["f1"] = table.column("lo").to_numpy().view(np.uint64)
    return out


def empty_selection_warning(expected_size: float) -> str:
    """What a user must know about a selection of 0 samples (it is committed: a valid draw)."""
    return (
        f"0 samples selected (expected {expected_size:.3g}): the shard set would be empty; "
        "rerun balance with a larger --cap or --target-size, or check that --weights comes "
        "from a balance run on this --input"
    )


class SelectStage(Stage):
    name = "select"
    help = "select samples deterministically (hash of uid and seed) from the balanced probabilities"
    options = SelectConfig

    def validate(self) -> None:
        super().validate()
        config = self.config
        if not 0 <= config.seed < 2**64:
            raise ValueError(f"--seed {config.seed}: the seed must lie in [0, 2**64)")
        if config.with_replacement and config.all_eligible:
            raise ValueError(
                "--all-eligible keeps every sample once; it excludes --with-replacement"
            )

    def resolve_inputs(self) -> dict[str, str]:
        inputs = super().resolve_inputs()
        self.params = ScoreParams.from_json(
            storage.read_bytes(storage.join(self.config.weights, "params.json")).decode()
        )
        if self.config.with_replacement and self.params.repeat_scale is None:
            raise ValueError(
                f"{self.config.weights}: these weights were solved without replacement; rerun "
                "balance with --with-replacement and a target size to draw repeats"
            )
        return inputs

    def commit(self, manifest: dict) -> dict:
        self.broadcast, self.key = broadcast_params(self.spark, self.params)
        try:
            return super().commit(manifest)
        finally:
            self.broadcast.unpersist()

    def compute(self, tmp: str) -> dict:
        config, params, spark = self.config, self.params, self.spark
        pool = spark.read.parquet(storage.spark_url(storage.join(config.input, "pool")))
        selected_url = storage.join(tmp, "selected")
        selection = select_pool(
            pool,
            self.broadcast,
            self.key,
            config.seed,
            config.with_replacement,
            config.all_eligible,
        )
        selection.write.parquet(storage.spark_url(selected_url))
        selected = spark.read.parquet(storage.spark_url(selected_url))
        buffer = io.BytesIO()
        np.save(buffer, sorted_subset(subset_halves(selected)), allow_pickle=False)
        storage.write_bytes(storage.join(tmp, "subset.npy"), buffer.getvalue())
        expected = (
            pool.select("uid", *params.score_columns())
            .mapInArrow(
                partial(
                    _expected_partition,
                    broadcast=self.broadcast,
                    key=self.key,
                    with_replacement=config.with_replacement,
                ),
                StructType([StructField("expected", DoubleType(), False)]),
            )
            .agg(F.sum(F.col("expected").cast("decimal(38,18)")))
            .first()[0]
        )
        counts = selected.agg(F.count("*"), F.sum("repeats")).first()
        summary = SelectSummary(
            seed=config.seed,
            with_replacement=config.with_replacement,
            all_eligible=config.all_eligible,
            method=params.method,
            expected_size=float(expected or 0.0),
            selected=int(counts[0]),
            total_repeats=int(counts[1] or 0),
            seconds=self.seconds(),
        )
        if summary.selected == 0:
            summary.warning = empty_selection_warning(summary.expected_size)
            log.warning("select: %s", summary.warning)
        return summary.to_json()

    def log_done(self, summary: dict) -> None:
        s = SelectSummary.from_json(summary)
        log.info(
            "select: %d selected (expected %.1f) -> %s", s.selected, s.expected_size, self.output
        )

    @classmethod
    def describe(cls, result: StageResult) -> str:
        s = result.record(SelectSummary)
        return "\n".join(
            [
                f"select: {s.selected:,} samples selected (expected {s.expected_size:,.1f}), "
                f"{s.total_repeats:,} with repeats, seed {s.seed}"
                + (" (up to date, skipped)" if result.skipped else ""),
                f"  selected   {storage.join(result.output, 'selected')}",
                f"  subset     {storage.join(result.output, 'subset.npy')}",
            ]
            + ([f"  WARNING    {s.warning}"] if s.warning else [])
        )


def run_select(spark: SparkSession, config: SelectConfig, force: bool = False) -> StageResult:
    """Select from the matched pool with the balance stage's parameters."""
    return SelectStage(config, spark).run(force)


STAGE = SelectStage
