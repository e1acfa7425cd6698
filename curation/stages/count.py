"""The ``count`` stage: entry and margin marginals of a matched pool.

Output directory (committed atomically)::

    entry_counts.parquet            entry_id int32, entry string, count int64 (c_j; every entry,
                                    zeros included, ordered by entry_id) [, lang string with
                                    per-language lists]
    signatures/                     Parquet: entry_ids list<int32> [, margin columns]
                                    [, attribute_groups, attribute_labels], multiplicity int64 —
                                    the distinct (S_i, x_i[, groups, labels]) signatures; unmatched
                                    samples have the empty signature. The attribute columns are
                                    carried when the pool was matched with --attributes (the
                                    id lists of curation/attributes.py; attributes.json copied)
    matches_histogram.parquet       k int32, samples int64 (k_i = |S_i|)
    margin_counts/<col>.parquet     <col>, samples int64
    margin_entry_counts/<col>.parquet  <col>, entry_id int32, count int64
    metadata.json                   the metadata list (copied from the matched input)
    summary.json                    totals, top entries, per-margin level counts

All marginals are derived from the signature table, which is built with one aggregation over the
pool. Spark's aggregation combines rows inside each task before the shuffle (partial aggregation), so
a head entry such as ``the`` or the empty signature of unmatched samples cannot create a straggler:
each task sends at most one row per distinct key. No ``collect_list`` is used anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from curation import storage
from curation.attributes import ATTRIBUTES_FILE, GROUPS_COL, LABELS_COL
from curation.metadata import entries_fingerprint
from curation.stages.base import LineageError, Stage, StageResult, input_field, output_field
from curation.summaries import CountSummary, TopEntry

log = logging.getLogger(__name__)


@dataclass
class CountConfig:
    """Options of the ``count`` stage (``[count]`` in a config file)."""

    input: str = input_field(
        "matched", "matched pool directory (output of match)", producers=("match",)
    )
    output: str = output_field("output directory of the counts")
    margins: list[str] = field(
        default_factory=list,
        metadata={"help": "extra margin column, e.g. language (repeatable)", "repeatable": True},
    )
    top: int = field(
        default=25, metadata={"min": 0, "help": "how many top entries the summary lists"}
    )


def signature_table(pool: DataFrame, margins: list[str]) -> DataFrame:
    """Distinct (entry set, margin values) with their multiplicities; one partial aggregation."""
    return pool.groupBy("entry_ids", *margins).agg(F.count("*").alias("multiplicity"))


def _write_table(table: pa.Table, url: str) -> None:
    fs, path = storage.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def entry_count_vector(signatures: DataFrame, n_entries: int) -> np.ndarray:
    """c_j for every entry: Σ multiplicity over the signatures that contain j."""
    rows = (
        signatures.select(F.explode("entry_ids").alias("entry_id"), "multiplicity")
        .groupBy("entry_id")
        .agg(F.sum("multiplicity").alias("count"))
        .toArrow()
    )
    counts = np.zeros(n_entries, dtype=np.int64)
    ids = rows.column("entry_id").to_numpy()
    if len(ids) and (ids.min() < 0 or ids.max() >= n_entries):
        raise storage.StageInputError(
            f"entry ids outside 0..{n_entries - 1} in the matched pool: it was matched against a "
            "different metadata list than the metadata.json beside it"
        )
    counts[ids] = rows.column("count").to_numpy()
    return counts


def entry_languages(languages: list[dict], n_entries: int) -> list[str]:
    """The language of every entry id, from the match stage's ``metadata_languages.json``."""
    out = [""] * n_entries
    for block in languages:
        out[block["offset"] : block["offset"] + block["entries"]] = [block["lang"]] * block[
            "entries"
        ]
    return out


class CountStage(Stage):
    name = "count"
    help = "count entries, margins and distinct signatures of a matched pool"
    options = CountConfig

    def resolve_inputs(self) -> dict[str, str]:
        inputs = super().resolve_inputs()
        config = self.config
        self.entries: list[str] = storage.read_json(storage.join(config.input, "metadata.json"))
        check_metadata_hash(config.input, self.entries, self.lineage)
        return inputs

    def compute(self, tmp: str) -> dict:
        """Count entries, margins and signatures of the matched pool ``config.input``."""
        config, spark, entries = self.config, self.spark, self.entries
        languages_file = storage.join(config.input, "metadata_languages.json")
        languages = storage.read_json(languages_file) if storage.exists(languages_file) else None
        pool = spark.read.parquet(storage.spark_url(storage.join(config.input, "pool")))
        missing = [m for m in config.margins if m not in pool.columns]
        if missing:
            raise storage.StageInputError(
                f"{config.input}: margin column {missing[0]!r} is not in the matched pool; "
                f"columns are {[c for c in pool.columns if c != 'entry_ids']}"
            )
        margins = list(dict.fromkeys(config.margins))
        attribute_cols = [c for c in (GROUPS_COL, LABELS_COL) if c in pool.columns]
        pool = pool.select(
            "entry_ids", *[F.col(m).cast("string").alias(m) for m in margins], *attribute_cols
        )
        signatures = signature_table(pool, margins + attribute_cols).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        try:
            signatures.write.parquet(storage.spark_url(storage.join(tmp, "signatures")))
            counts = entry_count_vector(signatures, len(entries))
            columns = {
                "entry_id": pa.array(np.arange(len(entries), dtype=np.int32)),
                "entry": pa.array(entries, pa.string()),
                "count": pa.array(counts),
            }
            if languages is not None:
                columns["lang"] = pa.array(entry_languages(languages, len(entries)), pa.string())
            _write_table(pa.table(columns), storage.join(tmp, "entry_counts.parquet"))
            histogram = (
                signatures.groupBy(F.size("entry_ids").cast("int").alias("k"))
                .agg(F.sum("multiplicity").alias("samples"))
                .orderBy("k")
                .toArrow()
            )
            _write_table(histogram, storage.join(tmp, "matches_histogram.parquet"))
            margin_summary = {m: write_margin_counts(signatures, m, tmp) for m in margins}
            n_signatures = signatures.count()
        finally:
            signatures.unpersist()
        summary = count_summary(config, entries, counts, histogram, margin_summary, n_signatures)
        summary.seconds = self.seconds()
        storage.write_json(storage.join(tmp, "metadata.json"), entries)
        if languages is not None:
            storage.write_json(storage.join(tmp, "metadata_languages.json"), languages)
        attributes_file = storage.join(config.input, ATTRIBUTES_FILE)
        if attribute_cols and storage.exists(attributes_file):
            storage.write_json(
                storage.join(tmp, ATTRIBUTES_FILE), storage.read_json(attributes_file)
            )
        return summary.to_json()

    def log_done(self, summary: dict) -> None:
        s = CountSummary.from_json(summary)
        log.info("count: %d samples, %d signatures -> %s", s.samples, s.signatures, self.output)

    @classmethod
    def describe(cls, result: StageResult) -> str:
        s = result.record(CountSummary)
        lines = [
            f"count: {s.samples:,} samples, {s.matched:,} matched, "
            f"{s.entries_observed:,} of {s.entries:,} entries observed, "
            f"{s.signatures:,} distinct signatures"
            + (" (up to date, skipped)" if result.skipped else ""),
            "  top entries:",
        ]
        top = s.top_entries[:10]
        width = max((len(e.entry) for e in top), default=5)
        for e in top:
            lines.append(f"    {e.entry:<{width}}  {e.count:>10,}")
        hist = ", ".join(f"{k}: {v:,}" for k, v in list(s.matches_per_sample.items())[:8])
        lines.append(f"  matches per sample: {hist}")
        lines.append(f"  output     {result.output}")
        return "\n".join(lines)


def check_metadata_hash(matched: str, entries: list[str], lineage: dict) -> None:
    """The ``metadata.json`` beside a matched pool is the list it was matched against."""
    recorded = (lineage.get("metadata") or {}).get("fingerprint")
    if recorded and recorded != entries_fingerprint(entries):
        raise LineageError(
            f"{matched}: its metadata.json ({len(entries):,} entries) is not the metadata list "
            f"the pool was matched against ({(lineage['metadata'].get('url'))}, "
            f"{recorded[:12]}); the directory was altered: rerun match"
        )


def write_margin_counts(signatures: DataFrame, m: str, tmp: str) -> dict[str, int]:
    """Per-level samples and per-(level, entry) counts of margin ``m``; returns the former."""
    per_level = (
        signatures.groupBy(m).agg(F.sum("multiplicity").alias("samples")).orderBy(m).toArrow()
    )
    _write_table(per_level, storage.join(tmp, "margin_counts", f"{m}.parquet"))
    per_level_entry = (
        signatures.select(m, F.explode("entry_ids").alias("entry_id"), "multiplicity")
        .groupBy(m, "entry_id")
        .agg(F.sum("multiplicity").alias("count"))
        .orderBy(m, "entry_id")
        .toArrow()
    )
    _write_table(per_level_entry, storage.join(tmp, "margin_entry_counts", f"{m}.parquet"))
    return {
        str(level): int(n)
        for level, n in zip(
            per_level.column(m).to_pylist(), per_level.column("samples").to_pylist()
        )
    }


def count_summary(
    config: CountConfig,
    entries: list[str],
    counts: np.ndarray,
    histogram: pa.Table,
    margin_summary: dict,
    n_signatures: int,
) -> CountSummary:
    """The summary: totals, top entries, per-margin level counts."""
    k = histogram.column("k").to_numpy()
    samples = histogram.column("samples").to_numpy()
    n = int(samples.sum())
    if n == 0:
        raise storage.StageInputError(f"{config.input}: the matched pool has no rows")
    top = np.argsort(-counts, kind="stable")[: config.top]
    return CountSummary(
        input=config.input,
        samples=n,
        matched=int(samples[k > 0].sum()),
        unmatched=int(samples[k == 0].sum()),
        total_matches=int((k * samples).sum()),
        entries=len(entries),
        entries_observed=int((counts > 0).sum()),
        signatures=int(n_signatures),
        matches_per_sample={str(int(a)): int(b) for a, b in zip(k, samples)},
        top_entries=[
            TopEntry(entry_id=int(j), entry=entries[j], count=int(counts[j]))
            for j in top
            if counts[j] > 0
        ],
        margins=margin_summary,
    )


def run_count(spark: SparkSession, config: CountConfig, force: bool = False) -> StageResult:
    """Count entries, margins and signatures of the matched pool ``config.input``."""
    return CountStage(config, spark).run(force)


STAGE = CountStage
