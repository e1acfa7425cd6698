"""The ``match`` stage: find the metadata entries in every caption of a pool.

Output directory (committed atomically, see :mod:`curation.storage`)::

    pool/           Parquet: every input column (but pandas' unnamed index, ``__index_level_N__``),
                    with the role columns renamed to caption/url/uid, plus ``uid: string`` (kept, or derived) and ``entry_ids: list<int32>`` (sorted,
                    distinct; empty when nothing matched)
    rejects/        Parquet: rows that cannot be matched, with ``reason`` and ``source_file``
    metadata.json   the metadata list used (entry id = position), so later stages need nothing else
    metadata_languages.json
                    with per-language lists only: [{lang, offset, entries, source}]
    summary.json    counts: input rows, matched, unmatched, rejects by reason, matches per sample

A row is rejected, never silently dropped, when its caption is null (``null_caption``), not valid
UTF-8 (``non_utf8``; in JSONL also a lone surrogate escape such as ``"\\ud800"``), not a string in JSONL (a number, list, object or boolean:
``caption_not_string``, JSONL pools only), empty or made only of white space and invisible format
characters such as U+200B, U+2060 or the BOM U+FEFF (``empty_caption``), or longer than
``max_caption_chars`` characters (``caption_too_long``). A caption holding U+FFFD, the mark of
bytes already lost upstream (a CSV with Latin-1 bytes reads that way), is matched like any other,
as MetaCLIP matches it: the rest of its text is readable. The summary counts such captions
(``replacement_char_captions``); ``reject_replacement_char`` rejects them as ``non_utf8``.

Duplicate uids: one row per uid is kept; every other copy is rejected as ``duplicate_uid`` (so
later stages, the DataComp subset file and the shard keys see each uid once). The copy kept is the
first in (source file path, url, caption) order, ties broken by a hash of the row's other scalar
columns: an order on the rows' content, so the choice is the same on any partitioning and rerun.
Without a uid column a duplicate is an exact repeat of a (url, caption) pair.

When the pool has no uid column, ``uid`` is derived as the 128-bit MD5 hex digest of
``utf8(url) + b"\\x00" + utf8(caption)`` (a null url counts as empty): the same pair always gets the
same uid, on any cluster.

Per-language lists (MetaCLIP 2): when ``--metadata`` is a directory of ``{lang}.json`` lists (the
``metadata`` stage's ``--lang-col`` output), each caption is matched against the list of its
``--lang-col`` value. The lists share one id space: in sorted language order, each language owns a
block of ids starting at its offset, and ``metadata.json`` is their concatenation. A caption whose
language has no list matches nothing (it is counted as unmatched).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version as _package_version

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import SparkFiles, StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, AtomicType, IntegerType, StructField, StructType

from curation import storage
from curation.attributes import (
    ATTRIBUTES_FILE,
    GROUPS_COL,
    LABELS_COL,
    AttributeMatcher,
    AttributeSpec,
    load_spec,
)
from curation.matching import KeyTable, LanguageMatcher, Matcher, cached_matcher, log_merges
from curation.metadata import (
    DEFAULT_METADATA,
    entries_fingerprint,
    is_metadata_directory,
    load_language_lists,
    load_metadata,
)
from curation.pool import POOL_FORMATS, READER_REASON, PoolFormat, ReaderOptions, read_pool
from curation.stages.base import Stage, StageResult, input_field, output_field
from curation.summaries import MatchSummary, MetadataListSummary

log = logging.getLogger(__name__)

REJECT_REASONS = ("null_caption", "non_utf8", "empty_caption", "caption_too_long", "duplicate_uid")
# Reasons only a JSONL reader gives; listed in the summary of JSONL pools only.
JSONL_REJECT_REASONS = ("caption_not_string",)
# A caption of nothing but white space and invisible format characters (category Cf: zero-width
# space, joiners, word joiner, BOM, soft hyphen, direction marks) shows nothing: empty_caption.
EMPTY_CAPTION = r"(?U)^[\s\p{Cf}]*$"
# The column pyarrow stores for a pandas DataFrame's unnamed index (``df.to_parquet`` without
# ``index=False``): row positions of the writer's frame, not data; dropped from the matched pool.
PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")


@dataclass
class MatchConfig:
    """Options of the ``match`` stage (``[match]`` in a config file)."""

    input: str = input_field(
        "pool", "pool: a file or directory of Parquet, CSV/TSV or JSONL (any fsspec URL)"
    )
    output: str = output_field("output directory of the matched pool")
    metadata: str = input_field(
        "metadata",
        "metadata list: MetaCLIP JSON array or one entry per line; or a directory of per-language {lang}.json lists (with --lang-col)",
        default=DEFAULT_METADATA,
    )
    caption_col: str = field(
        default="",
        metadata={
            "help": "caption column (default: the first of caption, text, TEXT, Caption, alt_text)"
        },
    )
    url_col: str = field(
        default="", metadata={"help": "url column (default: url, URL or image_url)"}
    )
    uid_col: str = field(
        default="",
        metadata={
            "help": "uid column (default: uid if present, else derived from url and caption)"
        },
    )
    lang_col: str = field(
        default="",
        metadata={
            "help": "language column; with a directory of per-language lists ({lang}.json) as --metadata, each caption is matched against its language's list"
        },
    )
    casefold: bool = field(
        default=False, metadata={"help": "fold case on both sides; entries that collide are merged"}
    )
    drop_duplicate_entries: bool = field(
        default=False,
        metadata={"help": "drop duplicate metadata entries (first kept) instead of failing"},
    )
    max_caption_chars: int = field(
        default=10_000,
        metadata={"min": 1, "help": "captions longer than this are rejected as caption_too_long"},
    )
    partitions: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "repartition the pool into this many tasks before matching (0: keep the input splits)",
        },
    )
    format: PoolFormat = field(
        default="auto",
        metadata={
            "help": f"pool format: {', '.join(POOL_FORMATS)}; auto detects it from the file names. "
            "cc3m-tsv: headerless caption<TAB>url (Conceptual Captions 3M); cc12m-tsv: headerless "
            "url<TAB>caption (CC12M)"
        },
    )
    header: bool = field(
        default=True,
        metadata={
            "help": "CSV/TSV: the first line names the columns; with --no-header name them with "
            "--columns"
        },
    )
    columns: list[str] = field(
        default_factory=list,
        metadata={
            "help": "CSV/TSV with --no-header: the column names in order, e.g. caption,url,uid "
            "(roles are then found by name as usual)"
        },
    )
    csv_multiline: bool = field(
        default=True,
        metadata={
            "help": "CSV/TSV: quoted fields may span lines (each file is then read by one task; "
            "--no-csv-multiline lets Spark split one large file whose fields never hold a newline)"
        },
    )
    attributes: str = field(
        default="",
        metadata={
            "help": "attribute file (YAML, see docs/balancing.md 'M4'): also detect its attribute groups and labels per caption, as attribute_groups and attribute_labels (list<int32>)"
        },
    )
    strip_entries: bool = field(
        default=False,
        metadata={
            "help": "strip leading/trailing white space and invisible characters from metadata "
            "entries (without it such entries are kept as written, with a warning)"
        },
    )
    reject_replacement_char: bool = field(
        default=False,
        metadata={
            "help": "reject captions holding U+FFFD (bytes lost upstream) as non_utf8; without it "
            "they are matched (the rest of the text is readable, as MetaCLIP matches it) and "
            "counted as replacement_char_captions"
        },
    )


def matcher_cache_dir() -> str:
    """Where built matchers are kept between runs: ``$CURATION_CACHE/matchers`` (default
    ``~/.cache/curation/matchers``). Building a 500k-entry automaton costs seconds; loading its
    pickle a fraction of that."""
    root = os.environ.get("CURATION_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "curation"
    )
    return os.path.join(root, "matchers")


def _private(path: str) -> bool:
    """Owned by this user and writable by no one else (a cached pickle must be ours)."""
    st = os.stat(path)
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def ship_matcher(
    spark: SparkSession, build: Callable[[], Matcher | LanguageMatcher], fingerprint: str
) -> str:
    """Make the matcher available to this session's workers; returns the file's name.

    The pickle is named by the fingerprint of the lists, options, pyahocorasick and Python
    versions, built only when it is not cached on disk yet, and registered with ``addFile`` once
    per Spark session. Workers load it from ``SparkFiles`` once per Python process (docs/spark.md,
    pitfalls 1 and 2).
    """
    name = f"matcher-{fingerprint}.pkl"
    if any(os.path.basename(f) == name for f in spark.sparkContext.listFiles):
        return name
    directory = matcher_cache_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not _private(directory):
        # A pickle is code: never load one that someone else could have written.
        log.warning("match: %s is writable by others; the matcher is not cached", directory)
        directory = tempfile.mkdtemp(prefix="curation-matcher-")
    path = os.path.join(directory, name)
    if not os.path.exists(path) or not _private(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        build().save(tmp)
        os.replace(tmp, path)
    spark.sparkContext.addFile(path)
    return name


def report_casefold_merges(entries: list[str]) -> None:
    """Warn about the entries case folding merges, on every run, also when the matcher is cached.

    The merges are kept next to the cached matchers (``merges-<fingerprint>.json``, keyed like
    the pickle on the entries, the option and the versions), so a run whose matcher is cached
    does not build the key table of the whole list on the driver again just to report them."""
    directory = matcher_cache_dir()
    path = os.path.join(directory, f"merges-{metadata_fingerprint(entries, True)}.json")
    if os.path.exists(path) and _private(path):
        with open(path) as f:
            merges = {int(k): v for k, v in json.load(f).items()}
        log_merges(entries, merges)
        return
    merges = KeyTable.build(entries, casefold=True).merges  # logs them
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if _private(directory):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(merges, f)
        os.replace(tmp, path)


def _match_partition(
    batches,
    matcher_file: str,
    caption_index: int,
    lang_index: int | None = None,
    reason_index: int | None = None,
):
    """mapInArrow body: append ``entry_ids`` to every Arrow batch.

    With ``reason_index``, a row whose reject reason is set is not matched (its ``entry_ids`` is
    empty): its caption may be null or not valid UTF-8, so it is masked out before decoding. The
    caption may arrive as binary; it is matched as text (the usable rows are valid UTF-8).
    """
    matcher = cached_matcher(SparkFiles.get(matcher_file))
    for batch in batches:
        captions = batch.column(caption_index)
        if reason_index is not None:
            reasons = batch.column(reason_index)
            if reasons.null_count < len(reasons):
                captions = pc.if_else(pc.is_null(reasons), captions, pa.scalar(None, captions.type))
        if not pa.types.is_string(captions.type):
            captions = captions.cast(pa.string())
        if lang_index is None:
            entry_ids = matcher.match_arrow(captions)
        else:
            langs = batch.column(lang_index).cast(pa.string())
            entry_ids = matcher.match_arrow(captions, langs)
        yield batch.append_column("entry_ids", entry_ids)


def _attribute_partition(batches, matcher_file: str, caption_index: int):
    """mapInArrow body: append ``attribute_groups`` and ``attribute_labels``."""
    matcher = cached_matcher(SparkFiles.get(matcher_file))
    for batch in batches:
        groups, labels = matcher.match_many(batch.column(caption_index).to_pylist())
        yield batch.append_column(GROUPS_COL, groups).append_column(LABELS_COL, labels)


def match_attributes(df: DataFrame, matcher_file: str) -> DataFrame:
    """Add the attribute groups and labels of every caption (:class:`AttributeMatcher`)."""
    ids = ArrayType(IntegerType(), False)
    schema = StructType(
        [
            *df.schema.fields,
            StructField(GROUPS_COL, ids, False),
            StructField(LABELS_COL, ids, False),
        ]
    )
    return df.mapInArrow(
        partial(
            _attribute_partition,
            matcher_file=matcher_file,
            caption_index=df.columns.index("caption"),
        ),
        schema,
    )


def reject_reason(
    caption: Column,
    max_chars: int,
    reader_reason: Column | None = None,
    reject_replacement_char: bool = False,
) -> Column:
    """The reason a caption cannot be matched, or null. Evaluated by Spark, in order;
    ``reader_reason`` is the reader's own verdict on the row (JSONL, :data:`READER_REASON`);
    ``reject_replacement_char``: a caption holding U+FFFD is ``non_utf8`` too."""
    raw = caption.cast("binary")
    text = caption.cast("string")
    reason = F.when(caption.isNull(), F.lit("null_caption"))
    if reader_reason is not None:
        reason = reason.when(reader_reason.isNotNull(), reader_reason)
    reason = reason.when(~F.call_function("is_valid_utf8", raw), F.lit("non_utf8"))
    if reject_replacement_char:
        reason = reason.when(F.instr(text, "\ufffd") > 0, F.lit("non_utf8"))
    reason = reason.when(F.regexp_like(text, F.lit(EMPTY_CAPTION)), F.lit("empty_caption"))
    return reason.when(F.char_length(text) > max_chars, F.lit("caption_too_long"))


def derived_uid(url: Column, caption: Column) -> Column:
    """MD5 hex of ``utf8(url) + b"\\x00" + utf8(caption)`` (see the module docstring)."""
    empty = F.lit(b"").cast("binary")
    return F.md5(
        F.concat(
            F.coalesce(url.cast("binary"), empty),
            F.lit(b"\x00"),
            F.coalesce(caption.cast("binary"), empty),
        )
    )


def ahocorasick_version() -> str:
    try:
        return _package_version("pyahocorasick")
    except Exception:  # noqa: BLE001 - an unusual install; the pickle is still keyed by content
        return "unknown"


def metadata_fingerprint(entries: list[str], casefold: bool) -> str:
    """Identifies a matcher pickle: the entries, the options, and the versions that shape it."""
    versions = f"{ahocorasick_version()} py{sys.version_info.major}.{sys.version_info.minor}"
    digest = hashlib.sha256((b"casefold " if casefold else b"exact ") + versions.encode())
    for entry in entries:
        digest.update(entry.encode() + b"\n")
    return digest.hexdigest()[:16]


def split_duplicate_uids(usable: DataFrame) -> tuple[DataFrame, DataFrame | None]:
    """``(kept, extra copies)``: one row per uid kept, the others returned to be rejected.

    The kept copy is the first in (source_file, url, caption, hash of the other scalar columns)
    order (see the module docstring). The common case, unique uids, costs one aggregation of a
    64-bit hash of the uid (no hash repeats, so no uid repeats; cheaper to group and shuffle than
    the strings); only when a hash repeats are the uids grouped, and only repeated uids ranked.
    """
    repeated_hash = (
        usable.groupBy(F.xxhash64("uid").alias("_h"))
        .agg(F.count(F.lit(1)).alias("_copies"))
        .filter(F.col("_copies") > 1)
    )
    if repeated_hash.isEmpty():
        return usable, None
    repeated = (
        usable.groupBy("uid")
        .agg(F.count(F.lit(1)).alias("_copies"))
        .filter(F.col("_copies") > 1)
        .select("uid", F.lit(True).alias("_dup"))
    )
    if repeated.isEmpty():
        return usable, None
    marked = usable.join(repeated, "uid", "left").select(*usable.columns, "_dup")
    single = marked.filter(F.col("_dup").isNull()).drop("_dup")
    scalars = [f.name for f in usable.schema.fields if isinstance(f.dataType, AtomicType)]
    order = Window.partitionBy("uid").orderBy("source_file", "url", "caption", F.xxhash64(*scalars))
    ranked = (
        marked.filter(F.col("_dup").isNotNull())
        .drop("_dup")
        .withColumn("_copy", F.row_number().over(order))
    )
    kept = single.unionByName(ranked.filter(F.col("_copy") == 1).drop("_copy"))
    return kept, ranked.filter(F.col("_copy") > 1).drop("_copy")


def prepare(
    df: DataFrame, has_uid: bool, max_chars: int, reject_replacement_char: bool = False
) -> DataFrame:
    """Add ``uid`` (kept or derived), the reject ``reason`` and ``source_file`` columns."""
    uid = derived_uid(F.col("url"), F.col("caption"))
    if has_uid:
        uid = F.coalesce(F.col("uid").cast("string"), uid)
    from_reader = F.col(READER_REASON) if READER_REASON in df.columns else None
    return df.withColumns(
        {
            "uid": uid,
            "reason": reject_reason(
                F.col("caption"), max_chars, from_reader, reject_replacement_char
            ),
            "source_file": F.input_file_name(),
        }
    ).drop(READER_REASON)


def match_pool(df: DataFrame, matcher_file: str, lang_col: str = "") -> DataFrame:
    """``df`` plus ``entry_ids``, matched by ``mapInArrow``. When ``df`` has the reject ``reason``
    (:func:`prepare`), rows with a reason are passed through unmatched (empty ``entry_ids``), so
    one pass over the pool serves the matched rows, the rejects and the counts."""
    if "reason" not in df.columns:
        df = df.withColumn("caption", F.col("caption").cast("string"))
    schema = StructType(
        [*df.schema.fields, StructField("entry_ids", ArrayType(IntegerType(), False), False)]
    )
    return df.mapInArrow(
        partial(
            _match_partition,
            matcher_file=matcher_file,
            caption_index=df.columns.index("caption"),
            lang_index=df.columns.index(lang_col) if lang_col else None,
            reason_index=df.columns.index("reason") if "reason" in df.columns else None,
        ),
        schema,
    )


@dataclass
class LoadedMetadata:
    """The list(s) a match run uses: entries in the shared id space, the matcher, and a summary."""

    entries: list[str]
    build: Callable[[], Matcher | LanguageMatcher]
    summary: dict
    languages: list[dict] | None = None


def load_matcher(config: MatchConfig) -> LoadedMetadata:
    """One list, or a directory of per-language lists sharing one id space (MetaCLIP 2)."""
    if not is_metadata_directory(config.metadata):
        metadata = load_metadata(
            config.metadata,
            drop_duplicates=config.drop_duplicate_entries,
            strip=config.strip_entries,
        )
        if config.casefold:
            report_casefold_merges(metadata.entries)
        return LoadedMetadata(
            metadata.entries,
            partial(Matcher, metadata.entries, casefold=config.casefold),
            metadata.summary(),
        )
    if not config.lang_col:
        raise ValueError(
            f"{config.metadata} is a directory of per-language lists: name the pool's language "
            "column with --lang-col"
        )
    lists = load_language_lists(
        config.metadata, drop_duplicates=config.drop_duplicate_entries, strip=config.strip_entries
    )
    languages, offset = [], 0
    for lang, m in lists.items():  # sorted by language, as LanguageMatcher assigns offsets
        languages.append({"lang": lang, "offset": offset, "entries": len(m), "source": m.source})
        offset += len(m)
    build = partial(
        LanguageMatcher, {lang: m.entries for lang, m in lists.items()}, config.casefold
    )
    entries = [e for m in lists.values() for e in m.entries]
    summary = {
        "source": config.metadata,
        "entries": len(entries),
        "languages": languages,
        "unmatchable_entries": sum(len(m.unmatchable) for m in lists.values()),
    }
    punctuation = sum(len(m.punctuation) for m in lists.values())
    if punctuation:
        summary["punctuation_entries"] = punctuation
    padded = sum(len(m.padded) for m in lists.values())
    if padded:
        summary["padded_entries"] = padded
        summary["padded_entries_stripped"] = config.strip_entries
    return LoadedMetadata(entries, build, summary, languages)


def drop_pandas_index(df: DataFrame) -> DataFrame:
    """``df`` without pandas' unnamed index columns (:data:`PANDAS_INDEX`)."""
    stray = [c for c in df.columns if PANDAS_INDEX.match(c)]
    if stray:
        log.info("match: dropping pandas index column(s) %s", ", ".join(stray))
    return df.drop(*stray)


class MatchStage(Stage):
    name = "match"
    help = "match captions against a metadata list (MetaCLIP semantics) and add entry_ids"
    options = MatchConfig

    def validate(self) -> None:
        super().validate()
        if self.config.max_caption_chars <= 0:
            raise ValueError("match: max_caption_chars must be positive")

    @classmethod
    def check(cls, config: MatchConfig) -> None:
        reader_options(config)  # before Spark starts
        if config.attributes:
            load_spec(config.attributes)  # a bad attribute file fails before Spark starts

    def own_lineage(self) -> dict[str, dict]:
        """The metadata list by content, so that later stages can tell lists apart."""
        self.loaded = load_matcher(self.config)
        lineage = {
            "metadata": {
                "url": self.config.metadata,
                "fingerprint": entries_fingerprint(self.loaded.entries),
            }
        }
        self.attributes: AttributeSpec | None = None
        if self.config.attributes:
            self.attributes = load_spec(self.config.attributes)
            lineage["attributes"] = {
                "url": self.config.attributes,
                "fingerprint": attributes_fingerprint(self.attributes),
            }
        return lineage

    def compute(self, tmp: str) -> dict:
        """Match ``config.input`` against ``config.metadata`` into ``tmp``."""
        config, spark, loaded = self.config, self.spark, self.loaded
        df, roles, fmt = read_pool(
            spark,
            config.input,
            config.caption_col,
            config.url_col,
            config.uid_col,
            reader_options(config),
        )
        df = drop_pandas_index(df)
        if config.lang_col and config.lang_col not in df.columns:
            raise storage.StageInputError(
                f"{config.input}: the language column {config.lang_col!r} does not exist; "
                f"columns are {df.columns}"
            )
        fingerprint = metadata_fingerprint(
            [f"{lang['lang']}:{lang['offset']}" for lang in loaded.languages or []]
            + loaded.entries,
            config.casefold,
        )
        matcher_file = ship_matcher(spark, loaded.build, fingerprint)
        lang_col = config.lang_col if loaded.languages is not None else ""
        prepared = prepare(
            df, roles.uid is not None, config.max_caption_chars, config.reject_replacement_char
        )
        if config.partitions:
            prepared = prepared.repartition(config.partitions)
        # One scan of the pool: every row goes through the matcher once (rejects unmatched) and the
        # result is persisted; the duplicate check, the counts and both writes read the persisted
        # rows, never the input again (docs/spark.md, "One scan of the pool").
        matched = match_pool(prepared, matcher_file, lang_col).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            summary = self._write_outputs(tmp, prepared.columns, matched, roles, fmt)
        finally:
            matched.unpersist()
        if summary.input_rows == 0:
            raise storage.StageInputError(f"{config.input}: the pool is empty (0 rows)")
        summary.seconds = self.seconds()
        storage.write_json(storage.join(tmp, "metadata.json"), loaded.entries)
        if loaded.languages is not None:
            storage.write_json(storage.join(tmp, "metadata_languages.json"), loaded.languages)
        if self.attributes is not None:
            storage.write_json(storage.join(tmp, ATTRIBUTES_FILE), self.attributes.to_dict())
            summary.attributes = attribute_summary(spark, tmp, self.attributes)
        return summary.to_json()

    def _write_outputs(
        self, tmp: str, columns: list[str], matched: DataFrame, roles, fmt: str
    ) -> MatchSummary:
        """Write ``pool/`` and ``rejects/`` from the persisted ``matched`` rows and count them."""
        usable = matched.filter(F.col("reason").isNull())
        kept, duplicates = split_duplicate_uids(usable)  # the first job: it fills the cache
        counts = count_rows(matched, duplicates)
        good = [c for c in columns if c not in ("reason", "source_file")]
        pool = kept.select(
            *[F.col(c).cast("string").alias(c) if c == "caption" else c for c in good], "entry_ids"
        )
        if self.attributes is not None:
            spec = self.attributes
            attribute_file = ship_matcher(
                self.spark, partial(AttributeMatcher, spec), "attr-" + attributes_fingerprint(spec)
            )
            pool = match_attributes(pool, attribute_file)
        pool.write.parquet(storage.spark_url(storage.join(tmp, "pool")))
        rejects = matched.filter(F.col("reason").isNotNull()).select(*columns)
        if duplicates is not None:
            rejects = rejects.unionByName(
                duplicates.select(*columns).withColumn("reason", F.lit("duplicate_uid"))
            )
        rejects = rejects.withColumn(
            "caption", F.call_function("make_valid_utf8", F.col("caption").cast("binary"))
        )
        rejects.write.parquet(storage.spark_url(storage.join(tmp, "rejects")))
        return summarize(counts, self.loaded.summary, roles, fmt, self.config)

    def log_done(self, summary: dict) -> None:
        log.info(
            "match: %d rows, %d matched, %d rejected in %.1f s -> %s",
            summary["input_rows"],
            summary["matched"],
            summary["rejected"],
            summary["seconds"],
            self.output,
        )

    @classmethod
    def describe(cls, result: StageResult) -> str:
        s = result.summary
        rejects = ", ".join(f"{k} {v}" for k, v in s["rejects_by_reason"].items() if v) or "none"
        lines = [
            f"match: {s['input_rows']:,} rows ({s['input_format']}) against "
            f"{s['metadata']['entries']:,} entries"
            + (" (up to date, skipped)" if result.skipped else ""),
            f"  matched    {s['matched']:,} ({s['matched_share']:.1%} of usable rows), "
            f"{s['total_matches']:,} matches",
            f"  unmatched  {s['unmatched']:,}",
            f"  rejected   {s['rejected']:,} ({rejects})",
        ]
        if s.get("replacement_char_captions"):
            lines.append(
                f"  U+FFFD     {s['replacement_char_captions']:,} usable captions hold U+FFFD "
                "(matched; --reject-replacement-char rejects them)"
            )
        lines += [
            f"  pool       {storage.join(result.output, 'pool')}",
            f"  rejects    {storage.join(result.output, 'rejects')}",
        ]
        return "\n".join(lines)


def run_match(spark: SparkSession, config: MatchConfig, force: bool = False) -> StageResult:
    """Match ``config.input`` against ``config.metadata`` and commit the result to ``config.output``."""
    return MatchStage(config, spark).run(force)


@dataclass
class RowCounts:
    """What the summary counts: pool rows per number of matches, pool captions holding U+FFFD,
    and rejected rows per reason."""

    per_k: dict[int, int]
    replacement_char: int
    by_reason: dict[str, int]


def count_rows(matched: DataFrame, duplicates: DataFrame | None) -> RowCounts:
    """Counts of the rows the stage writes, from the persisted ``matched`` rows (one aggregation
    over them; rows of ``duplicates`` move from the pool's counts to ``duplicate_uid``)."""
    replaced = F.instr(F.col("caption").cast("string"), "\ufffd") > 0
    k = F.size("entry_ids").alias("k")

    def grouped(df: DataFrame, *keys) -> list:
        return (
            df.groupBy(*keys)
            .agg(F.count("*").alias("n"), F.count(F.when(replaced, 1)).alias("fffd"))
            .collect()
        )

    per_k: dict[int, int] = {}
    by_reason: dict[str, int] = {}
    fffd = 0
    for r in grouped(matched, "reason", k):
        if r["reason"] is None:
            per_k[int(r["k"])] = per_k.get(int(r["k"]), 0) + int(r["n"])
            fffd += int(r["fffd"])
        else:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + int(r["n"])
    if duplicates is not None:
        for r in grouped(duplicates, k):
            per_k[int(r["k"])] -= int(r["n"])
            fffd -= int(r["fffd"])
            by_reason["duplicate_uid"] = by_reason.get("duplicate_uid", 0) + int(r["n"])
    return RowCounts({k: n for k, n in per_k.items() if n}, fffd, by_reason)


def summarize(
    counts: RowCounts, metadata_summary: dict, roles, fmt: str, config: MatchConfig
) -> MatchSummary:
    """The stage's summary from the counts of the rows it wrote."""
    per_k, by_reason = counts.per_k, counts.by_reason
    usable = sum(per_k.values())
    rejected = sum(by_reason.values())
    reasons = REJECT_REASONS + (JSONL_REJECT_REASONS if fmt == "jsonl" else ())
    matched = usable - per_k.get(0, 0)
    return MatchSummary(
        input=config.input,
        input_format=fmt,
        columns={"caption": roles.caption, "url": roles.url, "uid": roles.uid or "(derived)"},
        metadata=MetadataListSummary.from_json(metadata_summary),
        casefold=config.casefold,
        input_rows=usable + rejected,
        usable_rows=usable,
        matched=matched,
        unmatched=per_k.get(0, 0),
        matched_share=matched / usable if usable else 0.0,
        rejected=rejected,
        rejects_by_reason={reason: by_reason.get(reason, 0) for reason in reasons},
        matches_per_sample={str(k): per_k[k] for k in sorted(per_k)},
        total_matches=sum(k * n for k, n in per_k.items()),
        replacement_char_captions=counts.replacement_char,
    )


def attributes_fingerprint(spec: AttributeSpec) -> str:
    """Identifies an attribute matcher: the resolved spec and the versions that shape it."""
    payload = json.dumps({k: v for k, v in spec.to_dict().items() if k != "source"}, sort_keys=True)
    return metadata_fingerprint([payload], spec.casefold)


def attribute_summary(spark: SparkSession, directory: str, spec: AttributeSpec) -> dict:
    """Captions per attribute group and per label in the matched pool."""
    pool = spark.read.parquet(storage.spark_url(storage.join(directory, "pool")))
    per = {}
    for col, names in ((GROUPS_COL, spec.group_names), (LABELS_COL, list(spec.labels))):
        rows = pool.select(F.explode(col).alias("id")).groupBy("id").count().collect()
        counts = {int(r["id"]): int(r["count"]) for r in rows}
        per[col] = {name: counts.get(i, 0) for i, name in enumerate(names)}
    return {"file": spec.source, "groups": per[GROUPS_COL], "labels": per[LABELS_COL]}


def reader_options(config: MatchConfig) -> ReaderOptions:
    """The pool reader's options, checked (an error names the option and the fix)."""
    return ReaderOptions.of(config.format, config.header, config.columns, config.csv_multiline)


STAGE = MatchStage
