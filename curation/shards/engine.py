"""The resharding engine: input shards and a selection in, a new shard set's shards out.

Used by the ``reshard`` stage (shards from anywhere) and the ``download`` stage (img2dataset's raw
shards). Three Spark steps, each thin glue around the plain-Python parts of :mod:`curation.shards`:

1. *scan*: one task per input tar streams it once through fsspec (so ``s3://`` works without
   Hadoop's S3 connector) and emits one small row per sample: uid, where each member's bytes are,
   and the input ``.json``. No image bytes move.
2. *plan*: a join with the selection keeps the selected uids (an input uid seen twice keeps its
   first copy), repeats are expanded to (uid, j), and a global sort on the order key of
   :mod:`curation.shards.plan` gives each written sample its rank, hence its shard ``rank // K``.
3. *write*: one task per output shard fetches exactly its members with ranged reads and writes
   ``NNNNN.parquet`` then ``NNNNN.tar`` (each appears whole). A shard whose tar exists is skipped,
   which is how a rerun after a kill finishes only what is missing.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from curation import storage
from curation.shards import layout
from curation.shards.plan import (
    SHUFFLE_KEY_HEX,
    PlannedSample,
    n_shards,
    shard_name,
    weight_scale,
)
from curation.shards.tario import CorruptTarError, ScanCounts, scan_tar
from curation.shards.writer import atomic_open, write_output_shard
from curation.summaries import ShardStats

# --- step 1: scan ---------------------------------------------------------------------------

SCAN_SCHEMA = StructType(
    [
        StructField("src", IntegerType(), False),
        StructField("seq", IntegerType(), False),  # -1: the per-shard counts row
        StructField("key", StringType(), True),
        StructField("uid", StringType(), True),
        StructField("exts", ArrayType(StringType()), True),
        StructField("offsets", ArrayType(LongType()), True),
        StructField("sizes", ArrayType(LongType()), True),
        StructField("meta_json", StringType(), True),
        StructField("problem", StringType(), True),
        StructField("counts_json", StringType(), True),
    ]
)
SCAN_ARROW_SCHEMA = pa.schema(
    [
        ("src", pa.int32()),
        ("seq", pa.int32()),
        ("key", pa.string()),
        ("uid", pa.string()),
        ("exts", pa.list_(pa.string())),
        ("offsets", pa.list_(pa.int64())),
        ("sizes", pa.list_(pa.int64())),
        ("meta_json", pa.string()),
        ("problem", pa.string()),
        ("counts_json", pa.string()),
    ]
)
SCAN_BATCH_ROWS = 8192


def _uid_map(url: str, uid_col: str) -> dict[str, str]:
    """key -> uid from the shard's sibling ``.parquet`` (img2dataset writes one), if any."""
    parquet_url = url[: -len(".tar")] + ".parquet"
    fs, path = storage.url_to_fs(parquet_url)
    if not fs.exists(path):
        return {}
    with fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
        if "key" not in names or uid_col not in names:
            return {}
        f.seek(0)
        table = pq.read_table(f, columns=["key", uid_col])
    return {
        str(k): str(u)
        for k, u in zip(table.column("key").to_pylist(), table.column(uid_col).to_pylist())
        if k is not None and u is not None
    }


def _checked(samples: Iterator[Any], url: str) -> Iterator[Any]:
    """``samples``, with a damaged or truncated input tar reported by name (the task fails:
    a silently shorter input would drop selected samples without a word)."""
    try:
        yield from samples
    except CorruptTarError as exc:
        raise storage.StageInputError(
            f"{url}: corrupt input shard: {exc}; download it again or remove it from the input "
            "(its selected samples are then listed in _rejects.parquet as not_in_input)"
        ) from None


def scan_source(src: int, url: str, uid_col: str) -> Iterator[tuple]:
    """Rows of :data:`SCAN_SCHEMA` for one input tar (samples, then one counts row)."""
    fs, path = storage.url_to_fs(url)
    counts = ScanCounts()
    uid_map: dict[str, str] | None = None
    n = 0
    problems = {"no_image": 0, "no_uid": 0}
    with fs.open(path, "rb", block_size=8 << 20) as f:
        for sample in _checked(scan_tar(f, counts), url):
            n += 1
            meta = sample.meta or {}
            uid = meta.get(uid_col)
            uid = str(uid) if isinstance(uid, (str, int)) and uid != "" else None
            if uid is None:
                if uid_map is None:
                    uid_map = _uid_map(url, uid_col)
                uid = uid_map.get(sample.key.rsplit("/", 1)[-1])
            problem = None
            if sample.image_ext() is None:
                problem = "no_image"
            elif uid is None:
                problem = "no_uid"
            if problem:
                problems[problem] += 1
            yield (
                src,
                sample.seq,
                sample.key,
                uid,
                sample.exts,
                sample.offsets,
                sample.sizes,
                json.dumps(sample.meta, ensure_ascii=False) if sample.meta is not None else None,
                problem,
                None,
            )
    yield (
        src,
        -1,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        json.dumps({**counts.as_dict(), **problems, "samples": n}),
    )


def _scan_batches(
    batches: Iterable[pa.RecordBatch], uid_col: str, s3: storage.S3Options
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: (src, url) rows in, :data:`SCAN_ARROW_SCHEMA` batches out."""
    storage.apply_storage_options(s3)
    names = SCAN_ARROW_SCHEMA.names
    for batch in batches:
        for src, url in zip(batch.column("src").to_pylist(), batch.column("url").to_pylist()):
            rows: list[tuple] = []
            for row in scan_source(src, url, uid_col):
                rows.append(row)
                if len(rows) >= SCAN_BATCH_ROWS:
                    yield pa.RecordBatch.from_pylist(
                        [dict(zip(names, r)) for r in rows], schema=SCAN_ARROW_SCHEMA
                    )
                    rows = []
            if rows:
                yield pa.RecordBatch.from_pylist(
                    [dict(zip(names, r)) for r in rows], schema=SCAN_ARROW_SCHEMA
                )


# --- step 3: write --------------------------------------------------------------------------

PLAN_COLUMNS = (
    "uid",
    "j",
    "repeats",
    "src",
    "key",
    "exts",
    "offsets",
    "sizes",
    "meta_json",
    "caption",
    "url",
    "weight",
    "inclusion_prob",
    "entry_ids",
)


def _rank_batches(
    batches: Iterable[pa.RecordBatch], offsets: dict[int, int], samples_per_shard: int
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body over the sorted plan: (shard, rank, pickled plan row) per sample.

    The plan is range-partitioned and sorted, so a sample's rank is its partition's offset
    (rows in earlier partitions) plus its position in the partition. The plan row travels
    pickled in one binary column: turning a DataFrame of arrays into Python rows is the slow
    part of ``DataFrame.rdd``, one bytes column is not.
    """
    from pyspark import TaskContext

    rank = offsets.get(TaskContext.get().partitionId(), 0)
    for batch in batches:
        rows = batch.select(list(PLAN_COLUMNS)).to_pylist()
        ranks = list(range(rank, rank + len(rows)))
        rank += len(rows)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array([r // samples_per_shard for r in ranks], pa.int32()),
                pa.array(ranks, pa.int64()),
                pa.array(
                    [pickle.dumps(tuple(row.values()), protocol=5) for row in rows], pa.binary()
                ),
            ],
            names=["shard", "rank", "payload"],
        )


def _write_partition(
    items: Iterable[tuple[int, tuple[int, bytes]]],
    out_url: str,
    sources: list[str],
    scale: float,
    total_shards: int,
    s3: storage.S3Options,
) -> Iterator[dict[str, Any]]:
    storage.apply_storage_options(s3)
    by_shard: dict[int, list[tuple[int, tuple]]] = {}
    for shard, ranked in items:
        by_shard.setdefault(shard, []).append(ranked)
    for shard in sorted(by_shard):
        samples = []
        for rank, payload in sorted(by_shard[shard], key=lambda t: t[0]):
            row = dict(zip(PLAN_COLUMNS, pickle.loads(payload)))
            samples.append(
                PlannedSample(
                    shard=shard,
                    rank=rank,
                    uid=row["uid"],
                    repeat_index=row["j"],
                    repeats=row["repeats"],
                    src=row["src"],
                    src_key=row["key"],
                    exts=list(row["exts"]),
                    offsets=list(row["offsets"]),
                    sizes=list(row["sizes"]),
                    meta_json=row["meta_json"],
                    caption=row["caption"],
                    url=row["url"],
                    weight=row["weight"],
                    inclusion_prob=row["inclusion_prob"],
                    entry_ids=None if row["entry_ids"] is None else list(row["entry_ids"]),
                )
            )
        yield write_output_shard(
            out_url,
            shard_name(shard, total_shards),
            samples,
            sources,
            scale,
            storage.url_to_fs,
        )


# --- step 2: plan ---------------------------------------------------------------------------


def selection_frame(spark: SparkSession, selected: str) -> DataFrame:
    """The selection as a Spark DataFrame: Spark reads local paths itself; other URLs are read
    through fsspec on the driver (this Spark has no S3 connector) and handed over as Arrow."""
    if storage.is_local(selected):
        layout.read_selection(selected, ("uid", "caption", "repeats"))  # validates
        df = spark.read.parquet(storage.spark_url(layout.selection_table_url(selected)))
        for name, typ in (
            ("url", "string"),
            ("weight", "double"),
            ("inclusion_prob", "double"),
            ("entry_ids", "array<int>"),
        ):
            if name not in df.columns:
                df = df.withColumn(name, F.lit(None).cast(typ))
        types = {
            "uid": "string",
            "url": "string",
            "caption": "string",
            "weight": "double",
            "inclusion_prob": "double",
            "entry_ids": "array<int>",
            "repeats": "int",
        }
        return df.select(*(F.col(c).cast(types[c]).alias(c) for c in layout.SELECTION_COLUMNS))
    return spark.createDataFrame(layout.read_selection(selected))


def order_columns(shuffle: bool, seed: int, by_uid: bool = False) -> list:
    """The sort key of :mod:`curation.shards.plan` as Spark columns (``by_uid``: (uid, j)
    instead of input order when not shuffled)."""
    if by_uid and not shuffle:
        return [F.col("uid"), F.col("j")]
    if shuffle:
        digest = F.sha2(
            F.concat_ws("\x00", F.lit(str(seed)), F.col("uid"), F.col("j").cast("string")), 256
        )
        return [F.substring(digest, 1, SHUFFLE_KEY_HEX), F.col("uid"), F.col("j")]
    return [F.col("src"), F.col("seq"), F.col("j")]


def _dec(col) -> Any:
    return F.col(col).cast("decimal(38,18)")


@dataclass(frozen=True)
class ReshardOptions:
    """How the engine writes a shard set (the reshard and download stages' shared options)."""

    samples_per_shard: int
    shuffle: bool
    seed: int
    uid_col: str
    s3: storage.S3Options
    #: Order an unshuffled set by (uid, j) rather than by input order (``download``:
    #: img2dataset's order inside a raw shard follows which download thread finished first).
    by_uid: bool = False


@dataclass
class ReshardOutcome:
    sizes: dict[str, int]
    stats: ShardStats
    missing: pa.Table  # uid, url of the selected samples not written


def reshard_into(
    spark: SparkSession,
    sources: list[str],
    selection: DataFrame,
    output: str,
    options: ReshardOptions,
) -> ReshardOutcome:
    """Scan ``sources``, plan against ``selection`` and write the shards into ``output``.

    ``output`` must already be prepared (:func:`curation.shards.layout.prepare_output`); this
    writes the shards only, the caller commits. ``by_uid``: order an unshuffled set by (uid, j)
    rather than by input order (``download``: img2dataset's order inside a raw shard follows
    which download thread finished first).
    """
    sc = spark.sparkContext
    sc.setJobDescription(f"reshard: scan {len(sources)} input shard(s)")
    # One partition, hence one task, per input tar.
    paths = spark.createDataFrame(
        sc.parallelize(list(enumerate(sources)), max(1, len(sources))), "src int, url string"
    )
    scanned = paths.mapInArrow(
        partial(_scan_batches, uid_col=options.uid_col, s3=options.s3), SCAN_SCHEMA
    ).persist()
    try:
        return _plan_and_write(spark, scanned, sources, selection, output, options)
    finally:
        scanned.unpersist()
        sc.setJobDescription(None)


class _Laps:
    """Seconds per step, for the stats' ``timings``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.clock, 3)
        self.clock = now


@dataclass
class _Plan:
    """The plan of a shard set: the selected samples found, in written order."""

    ordered: DataFrame  # PLAN_COLUMNS, sorted by the order key (persisted)
    selection: DataFrame  # SELECTION_COLUMNS
    usable: DataFrame  # scanned samples with a uid and an image
    selected: Any  # n (uids), samples (Σ repeats), w (Σ weight · repeats) of the selection
    planned: Any  # n (samples written), uids (found), w of the found uids


def _scan_counts(scanned: DataFrame) -> dict[str, int]:
    """The per-tar scan counts, summed."""
    totals: dict[str, int] = {}
    for row in scanned.filter("seq = -1").select("counts_json").collect():
        for k, v in json.loads(row["counts_json"]).items():
            totals[k] = totals.get(k, 0) + int(v)
    return totals


def _selection_totals(sel: DataFrame) -> Any:
    return sel.agg(
        F.count("*").alias("n"),
        F.sum("repeats").alias("samples"),
        F.sum(_dec("weight") * F.col("repeats")).alias("w"),
    ).first()


def _plan(scanned: DataFrame, selection: DataFrame, options: ReshardOptions, lap: _Laps) -> _Plan:
    """Join the first copy of each scanned uid with the selection, expand repeats, sort.

    The caller unpersists ``ordered``.
    """
    usable = scanned.filter("seq >= 0").filter("problem IS NULL")
    first = Window.partitionBy("uid").orderBy("src", "seq")
    firsts = usable.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")
    sel = selection.select(*layout.SELECTION_COLUMNS)
    selected = _selection_totals(sel)
    lap("selection")
    joined = firsts.join(sel, "uid", "inner")
    expanded = joined.withColumn("j", F.explode(F.sequence(F.lit(0), F.col("repeats") - 1)))
    scanned.sparkSession.sparkContext.setJobDescription("reshard: plan")
    # the plan rows the writer takes (the sort keys src, seq, j have placed them already)
    order = order_columns(options.shuffle, options.seed, options.by_uid)
    ordered = expanded.orderBy(*order).select(*PLAN_COLUMNS).persist()
    first_copy = F.col("j") == 0
    try:
        planned = ordered.agg(
            F.count("*").alias("n"),
            F.count(F.when(first_copy, 1)).alias("uids"),
            F.sum(F.when(first_copy, _dec("weight") * F.col("repeats"))).alias("w"),
        ).first()
    except BaseException:
        ordered.unpersist()
        raise
    lap("plan")
    return _Plan(ordered, sel, usable, selected, planned)


def _stats(
    plan: _Plan, scan: dict[str, int], sources: list[str], options: ReshardOptions, lap: _Laps
) -> ShardStats:
    """The shard set's stats (before writing): what was scanned, dropped, found and missing."""
    selected, planned = plan.selected, plan.planned
    n_written = int(planned["n"])
    scale = (
        weight_scale(Decimal(selected["w"] or 0), Decimal(planned["w"] or 0))
        if selected["w"] is not None
        else 1.0
    )
    usable_n = scan.get("samples", 0) - scan.get("no_image", 0) - scan.get("no_uid", 0)
    firsts_n = int(plan.usable.agg(F.countDistinct("uid").alias("n")).first()["n"])
    lap("duplicates")
    return ShardStats(
        input_shards=len(sources),
        input_samples=scan.get("samples", 0),
        input_members_skipped={
            "non_regular": scan.get("non_regular_members", 0),
            "bad_name": scan.get("bad_member_names", 0),
            "duplicate_ext": scan.get("duplicate_members", 0),
        },
        input_samples_dropped={
            "no_image": scan.get("no_image", 0),
            "no_uid": scan.get("no_uid", 0),
            "duplicate_uid": usable_n - firsts_n,
            "not_selected": firsts_n - int(planned["uids"]),
        },
        selected_uids=int(selected["n"]),
        selected_samples=int(selected["samples"] or 0),
        found_uids=int(planned["uids"]),
        missing_uids=int(selected["n"]) - int(planned["uids"]),
        written_samples=n_written,
        output_shards=n_shards(n_written, options.samples_per_shard),
        samples_per_shard=options.samples_per_shard,
        shuffle=options.shuffle,
        seed=options.seed,
        weight_scale=scale,
        timings=lap.timings,
    )


def _missing(plan: _Plan) -> pa.Table:
    """Selected uids that are not in the output (read while the plan is still cached)."""
    return (
        plan.selection.join(plan.ordered.filter("j = 0").select("uid"), "uid", "left_anti")
        .select("uid", "url")
        .orderBy("uid")
        .toArrow()
    )


def _write(
    plan: _Plan, output: str, sources: list[str], stats: ShardStats, s3: storage.S3Options
) -> list[dict[str, Any]]:
    """One task per output shard writes it; returns each shard's row (shard, samples, bytes,
    skipped, seconds), in shard order."""
    ordered, total = plan.ordered, stats.output_shards
    ordered.sparkSession.sparkContext.setJobDescription(f"reshard: write {total} shard(s)")
    per_partition = ordered.groupBy(F.spark_partition_id().alias("p")).count().collect()
    offsets, running = {}, 0
    for row in sorted(per_partition, key=lambda r: r["p"]):
        offsets[int(row["p"])] = running
        running += int(row["count"])
    ranked = ordered.mapInArrow(
        partial(_rank_batches, offsets=offsets, samples_per_shard=stats.samples_per_shard),
        "shard int, rank long, payload binary",
    )
    # One task per output shard (an RDD partitioner, so that adaptive execution cannot
    # merge the tiny metadata partitions into one task that writes every shard).
    write = partial(
        _write_partition,
        out_url=output,
        sources=sources,
        scale=stats.weight_scale,
        total_shards=total,
        s3=s3,
    )
    shards = (
        ranked.rdd.map(lambda r: (r[0], (r[1], r[2])))
        .partitionBy(total, lambda shard: shard)
        .mapPartitions(write)
        .collect()
    )
    return sorted(shards, key=lambda r: r["shard"])


def _plan_and_write(
    spark: SparkSession,
    scanned: DataFrame,
    sources: list[str],
    selection: DataFrame,
    output: str,
    options: ReshardOptions,
) -> ReshardOutcome:
    lap = _Laps()
    scan = _scan_counts(scanned)
    lap("scan")
    plan = _plan(scanned, selection, options, lap)
    try:
        stats = _stats(plan, scan, sources, options, lap)
        missing = _missing(plan)
        lap("missing")
        if stats.written_samples == 0:
            return ReshardOutcome({}, stats, missing)
        shards = _write(plan, output, sources, stats, options.s3)
        lap("write")
    finally:
        plan.ordered.unpersist()
    stats.bytes_written = sum(r["bytes"] for r in shards if not r["skipped"])
    stats.output_bytes = sum(r["bytes"] for r in shards)
    stats.shards_skipped_as_done = sum(1 for r in shards if r["skipped"])
    stats.timings["write_in_tasks"] = round(sum(r["seconds"] for r in shards), 3)
    sizes = {f"{r['shard']}.tar": int(r["samples"]) for r in shards}
    return ReshardOutcome(sizes, stats, missing)


def write_rejects(url: str, missing: pa.Table, reason: str) -> int:
    """Selected samples absent from the output, as ``_rejects.parquet`` (uid, url, reason)."""
    table = missing.select(["uid", "url"]).append_column(
        "reason", pa.array([reason] * missing.num_rows, pa.string())
    )
    fs, path = storage.url_to_fs(storage.join(url, layout.REJECTS))
    with atomic_open(fs, path) as f:
        pq.write_table(table, f)
    return table.num_rows
