"""Counting a corpus with Spark: unigram counts, bigram counts and bigram PMI, per language.

The work is one ``mapInArrow`` pass and one aggregation:

1. every Arrow batch of texts is tokenised (:mod:`.tokenize`) in the Python worker, and counts are
   pre-aggregated inside the task (a ``Counter`` per task, flushed every
   :data:`FLUSH_AT` distinct keys), so what is shuffled is one row per distinct n-gram and task;
2. ``groupBy(kind, lang, w1, sep, w2).sum(n)`` gives the exact corpus counts. Sums of integers
   do not depend on the partitioning, so the result is the same on any cluster.

Pointwise mutual information, as MetaCLIP computed it (NLTK's ``BigramAssocMeasures.pmi`` on a
``BigramCollocationFinder(word_fd, bigram_fd)``, Manning & Schütze §5.4), in **bits** (log base 2)::

    PMI(w1, w2) = log2(n(w1 w2) · N) − log2(n(w1) · n(w2))

with ``n(·)`` the corpus counts and ``N`` the total number of unigram tokens (``word_fd.N()``) of
the bigram's language. MetaCLIP kept Wikipedia bigrams with PMI ≥ 30. Since ``n(w1 w2) ≤ min(n(w1),
n(w2))``, ``PMI ≤ log2(N / max(n(w1), n(w2)))``: a bigram can only reach a threshold θ when both of
its words occur at most ``N / 2^θ`` times, and when itself occurs at most that often. The job uses
this bound to drop the frequent words (the skewed join keys: "the", "of") before the two joins; it
changes no result. It also shows what θ = 30 means: a corpus of N tokens can produce no bigram at
all unless log2(N) ≥ 30, i.e. N ≥ 2^30 ≈ 1.07 billion tokens (English Wikipedia has about 3–4
billion), and at that size the bigrams that pass are rare pairs whose words (almost) only occur
together. On a smaller corpus, lower the threshold (log2(N) is reported in the summary).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ByteType, LongType, StringType, StructField, StructType

from curation.metadata_build.tokenize import bigram_keys, scan
from curation.pool import detect_format
from curation.storage import StageInputError, list_data_files, spark_url

# Distinct keys a task holds before it emits its partial counts (bounds worker memory).
FLUSH_AT = 400_000
KIND_STAT, KIND_UNIGRAM, KIND_BIGRAM = 0, 1, 2
# A language value must be usable as a file name: {lang}.json.
LANG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
UNDETERMINED = "und"  # BCP 47's code for rows whose language column is null or empty
TEXT_CANDIDATES = ("text", "caption", "content", "sentence", "TEXT")
_TEXT_EXTENSIONS = (".txt", ".text")
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".snappy", ".lz4", ".deflate")

COUNT_SCHEMA = StructType(
    [
        StructField("kind", ByteType(), False),
        StructField("lang", StringType(), False),
        StructField("w1", StringType(), False),
        StructField("sep", StringType(), True),
        StructField("w2", StringType(), True),
        StructField("n", LongType(), False),
    ]
)
# Stat rows (kind 0): w1 names the statistic; for "bad_lang", w2 holds the rejected value.
STAT_ROWS, STAT_EMPTY, STAT_BAD_LANG = "rows", "empty_rows", "bad_lang"


# --- reading ------------------------------------------------------------------------------------


def table_format(name: str) -> str | None:
    """The format of a data file from its name: parquet, csv, tsv, jsonl, text, or None."""
    fmt = detect_format(name)
    if fmt is not None:
        return fmt
    lowered = name.lower()
    for ext in _COMPRESSIONS:
        if lowered.endswith(ext):
            lowered = lowered[: -len(ext)]
            break
    return "text" if lowered.endswith(_TEXT_EXTENSIONS) else None


def list_table_files(url: str, what: str, fmt: str = "auto") -> tuple[list[str], str]:
    """The data files under ``url`` (a file or a directory) and their common format."""
    fs, names = list_data_files(url, what)
    if fmt != "auto":
        if not names:
            raise StageInputError(f"{url}: {what} has no files")
        return [fs.unstrip_protocol(n) for n in names], fmt
    formats: dict[str, list[str]] = {}
    for name in names:
        found = table_format(name)
        if found is not None:
            formats.setdefault(found, []).append(name)
    if not formats:
        raise StageInputError(
            f"{url}: no {what} files found (looked for .txt, .parquet, .jsonl, .csv, .tsv, "
            "optionally compressed); name the format of files without these extensions with "
            "the format option (e.g. --corpus-format text)"
        )
    if len(formats) > 1:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(formats.items()))
        raise StageInputError(f"{url}: mixed file formats ({kinds}); keep one format per {what}")
    ((found, files),) = formats.items()
    return [fs.unstrip_protocol(f) for f in files], found


def read_table(
    spark: SparkSession, url: str, what: str, fmt: str = "auto"
) -> tuple[DataFrame, str]:
    """Read text (one row per line, column ``value``), Parquet, JSONL, CSV or TSV (with header)."""
    files, fmt = list_table_files(url, what, fmt)
    paths = [spark_url(f) for f in files]
    if fmt == "text":
        df = spark.read.text(paths)
    elif fmt == "parquet":
        df = spark.read.parquet(*paths)
    elif fmt in ("csv", "tsv"):
        df = spark.read.options(
            header=True,
            sep="\t" if fmt == "tsv" else ",",
            escape='"',
            mode="PERMISSIVE",
            encoding="UTF-8",
        ).csv(paths)
    elif fmt == "jsonl":
        df = spark.read.json(paths, mode="PERMISSIVE")
        if "_corrupt_record" in df.columns:
            raise StageInputError(
                f"{url}: some JSON lines of the {what} could not be parsed; fix or remove them"
            )
    else:
        raise StageInputError(
            f"{url}: unknown {what} format {fmt!r} (text, parquet, jsonl, csv, tsv)"
        )
    return df, fmt


def pick_column(
    columns: list[str], given: str, candidates: tuple[str, ...], role: str, url: str
) -> str:
    """The column playing ``role``: ``given`` if named (it must exist), else the first candidate."""
    if given:
        if given not in columns:
            raise StageInputError(
                f"{url}: the {role} column {given!r} does not exist; columns are {columns}"
            )
        return given
    for name in candidates:
        if name in columns:
            return name
    raise StageInputError(
        f"{url}: no {role} column (looked for {', '.join(candidates)}); columns are {columns}. "
        f"Name it with the {role} column option"
    )


def column(name: str) -> Column:
    """A column by its exact name (dots and backticks in it are not parsed)."""
    return F.col("`" + name.replace("`", "``") + "`")


def language_column(df: DataFrame, lang_col: str, url: str) -> Column:
    """The ``lang`` column: the language column as a string, or ``""`` without one."""
    if not lang_col:
        return F.lit("").alias("lang")
    if lang_col not in df.columns:
        raise StageInputError(
            f"{url}: the language column {lang_col!r} does not exist; columns are {df.columns}"
        )
    return column(lang_col).cast("string").alias("lang")


def clean_language(lang: str | None) -> str | None:
    """A row's language key: ``und`` for null/empty, the trimmed value if it is a valid name, else None."""
    if lang is None or not lang.strip():
        return UNDETERMINED
    lang = lang.strip()
    return lang if LANG_PATTERN.match(lang) else None


# --- counting -----------------------------------------------------------------------------------


COUNT_SCHEMA_ARROW = pa.schema(
    [
        pa.field("kind", pa.int8(), False),
        pa.field("lang", pa.string(), False),
        pa.field("w1", pa.string(), False),
        pa.field("sep", pa.string()),
        pa.field("w2", pa.string()),
        pa.field("n", pa.int64(), False),
    ]
)


def _emit(stats: Counter, grams: dict[str, tuple[Counter, Counter]]) -> pa.RecordBatch:
    kinds, langs, w1s, seps, w2s, ns = [], [], [], [], [], []
    for (lang, name, value), n in stats.items():
        kinds.append(KIND_STAT)
        langs.append(lang)
        w1s.append(name)
        seps.append(None)
        w2s.append(value)
        ns.append(n)
    for lang, (unigrams, bigrams) in grams.items():
        k = len(unigrams)
        kinds += [KIND_UNIGRAM] * k
        langs += [lang] * k
        w1s += unigrams.keys()
        seps += [None] * k
        w2s += [None] * k
        ns += unigrams.values()
        k = len(bigrams)
        kinds += [KIND_BIGRAM] * k
        langs += [lang] * k
        for w1, sep, w2 in bigrams:
            w1s.append(w1)
            seps.append(sep)
            w2s.append(w2)
        ns += bigrams.values()
    return pa.RecordBatch.from_arrays(
        [
            pa.array(kinds, pa.int8()),
            pa.array(langs, pa.string()),
            pa.array(w1s, pa.string()),
            pa.array(seps, pa.string()),
            pa.array(w2s, pa.string()),
            pa.array(ns, pa.int64()),
        ],
        schema=COUNT_SCHEMA_ARROW,
    )


def count_batches(
    batches: Iterator[pa.RecordBatch], multilingual: bool, flush_at: int = FLUSH_AT
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: batches of ``(text, lang)`` in, partial counts (``COUNT_SCHEMA``) out."""
    stats: Counter = Counter()
    grams: dict[str, tuple[Counter, Counter]] = {}
    lang_keys: dict[str | None, str | None] = {}
    held = 0
    for batch in batches:
        texts = batch.column(0).to_pylist()
        langs = batch.column(1).to_pylist() if multilingual else None
        for i, text in enumerate(texts):
            lang = ""
            if multilingual:
                raw = langs[i]
                if raw in lang_keys:
                    lang = lang_keys[raw]
                else:
                    lang = clean_language(raw)
                    if len(lang_keys) < 10_000:  # a garbage column must not grow the cache
                        lang_keys[raw] = lang
                if lang is None:
                    stats[("", STAT_BAD_LANG, raw[:100])] += 1
                    continue
            if not text or text.isspace():
                stats[(lang, STAT_EMPTY, None)] += 1
                continue
            stats[(lang, STAT_ROWS, None)] += 1
            counters = grams.get(lang)
            if counters is None:
                counters = grams[lang] = (Counter(), Counter())
            tokens, links = scan(text)
            counters[0].update(tokens)
            counters[1].update(bigram_keys(tokens, links))
        held = sum(len(u) + len(b) for u, b in grams.values())
        if held >= flush_at:
            yield _emit(stats, grams)
            stats.clear()
            grams.clear()
    if stats or grams:
        yield _emit(stats, grams)


def count_ngrams_spark(df: DataFrame, partitions: int = 0) -> DataFrame:
    """Exact corpus counts of ``df(text, lang)``: one row per (kind, lang, w1, sep, w2) with ``n``."""
    multilingual = "lang" in df.columns
    df = df.select(
        F.col("text").cast("string").alias("text"),
        F.col("lang").cast("string").alias("lang")
        if multilingual
        else F.lit(None).cast("string").alias("lang"),
    )
    if partitions:
        df = df.repartition(partitions)
    partial_counts = df.mapInArrow(partial(count_batches, multilingual=multilingual), COUNT_SCHEMA)
    return partial_counts.groupBy("kind", "lang", "w1", "sep", "w2").agg(F.sum("n").alias("n"))


# --- statistics and candidates ------------------------------------------------------------------


@dataclass
class LanguageStats:
    """What the corpus holds for one language (``""`` without a language column)."""

    rows: int = 0
    empty_rows: int = 0
    tokens: int = 0  # N: the total unigram count
    distinct_unigrams: int = 0
    bigram_tokens: int = 0
    distinct_bigrams: int = 0

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "empty_rows": self.empty_rows,
            "tokens": self.tokens,
            "log2_tokens": round(math.log2(self.tokens), 3) if self.tokens else None,
            "distinct_unigrams": self.distinct_unigrams,
            "bigrams": self.bigram_tokens,
            "distinct_bigrams": self.distinct_bigrams,
        }


@dataclass
class CorpusStats:
    languages: dict[str, LanguageStats] = field(default_factory=dict)
    bad_lang_rows: int = 0
    bad_lang_examples: list[dict] = field(default_factory=list)


def corpus_stats(counts: DataFrame) -> CorpusStats:
    """Per-language rows, tokens and distinct n-grams (one small aggregation, collected)."""
    stats = CorpusStats()
    rows = (
        counts.groupBy(
            "kind", "lang", F.when(F.col("kind") == KIND_STAT, F.col("w1")).alias("stat")
        )
        .agg(F.sum("n").alias("n"), F.count("*").alias("distinct"))
        .collect()
    )
    for row in rows:
        kind, lang, n, distinct = row["kind"], row["lang"], int(row["n"]), int(row["distinct"])
        if kind == KIND_STAT and row["stat"] == STAT_BAD_LANG:
            stats.bad_lang_rows += n
            continue
        s = stats.languages.setdefault(lang, LanguageStats())
        if kind == KIND_STAT:
            if row["stat"] == STAT_ROWS:
                s.rows += n
            else:
                s.empty_rows += n
        elif kind == KIND_UNIGRAM:
            s.tokens, s.distinct_unigrams = n, distinct
        else:
            s.bigram_tokens, s.distinct_bigrams = n, distinct
    if stats.bad_lang_rows:
        examples = (
            counts.filter((F.col("kind") == KIND_STAT) & (F.col("w1") == STAT_BAD_LANG))
            .orderBy(F.desc("n"), "w2")
            .limit(20)
            .collect()
        )
        stats.bad_lang_examples = [{"value": r["w2"], "rows": int(r["n"])} for r in examples]
    return stats


def _limits_df(spark: SparkSession, limits: dict[str, int]) -> DataFrame:
    schema = StructType(
        [StructField("lang", StringType(), False), StructField("limit", LongType(), False)]
    )
    return spark.createDataFrame(sorted(limits.items()), schema)


def suspect(text: Column, max_chars: int, drop_unmatchable: bool) -> Column:
    """True for a text that the driver-side hygiene (``assemble.entry_problem``) might reject.

    Conservative on purpose: too long, a control or replacement character, no letter and no digit
    (so possibly all punctuation), or with ``drop_unmatchable`` one of MetaCLIP's split characters.
    """
    cond = (
        (F.char_length(text) > max_chars)
        | text.rlike("[\\x00-\\x1f\\x7f-\\x9f\\ufffd]")
        | ~text.rlike("[\\p{L}\\p{N}]")
    )
    if drop_unmatchable:
        cond = cond | text.rlike("[,.;:?!`]")
    return cond


@dataclass(frozen=True)
class Cap:
    """How many candidates of each language the driver may need (``None``: all of them).

    ``limits[lang]`` (or ``default`` for a language not listed) is the cap plus the number of
    entries the language's list holds before this source: a candidate is either new (counts toward
    the cap) or already listed, so that many clean candidates always suffice.
    """

    limits: dict[str, int]
    default: int
    max_chars: int = 256
    drop_unmatchable: bool = False


def top_per_language(df: DataFrame, text: str, order: list, cap: Cap | None) -> DataFrame:
    """The rows the driver needs: every suspect row, and the first ``limit`` clean rows per language.

    Without a cap, every row. This bounds what is collected without a ``collect_list`` of a hot key;
    the driver applies the exact cap (:class:`curation.metadata_build.assemble.ListBuilder`).
    """
    if cap is None:
        return df
    flagged = df.withColumn("_suspect", suspect(F.col(text), cap.max_chars, cap.drop_unmatchable))
    rank = F.row_number().over(Window.partitionBy("lang").orderBy(*order))
    clean = (
        flagged.filter(~F.col("_suspect"))
        .join(F.broadcast(_limits_df(df.sparkSession, cap.limits)), "lang", "left")
        .withColumn("_rank", rank)
        .filter(F.col("_rank") <= F.coalesce(F.col("limit"), F.lit(cap.default)))
        .drop("_rank", "limit")
    )
    return clean.unionByName(flagged.filter(F.col("_suspect"))).drop("_suspect")


def per_language_counts(df: DataFrame) -> dict[str, int]:
    return {
        r["lang"]: int(r["n"]) for r in df.groupBy("lang").agg(F.count("*").alias("n")).collect()
    }


@dataclass
class UnigramCandidates:
    rows: list[tuple[str, str, int]]  # (lang, token, n)
    above_threshold: dict[str, int]  # per language: unigrams with n >= min_count


def unigram_candidates(
    counts: DataFrame, min_count: int, cap: Cap | None = None
) -> UnigramCandidates:
    """Unigrams with ``n ≥ min_count``, ranked by ``n`` descending then token."""
    uni = counts.filter((F.col("kind") == KIND_UNIGRAM) & (F.col("n") >= min_count)).select(
        "lang", F.col("w1").alias("token"), "n"
    )
    above = per_language_counts(uni) if cap is not None else None
    picked = top_per_language(uni, "token", [F.desc("n"), F.asc("token")], cap)
    rows = [(r["lang"], r["token"], int(r["n"])) for r in picked.collect()]
    if above is None:
        above = dict(Counter(lang for lang, _, _ in rows))
    return UnigramCandidates(rows, above)


@dataclass(frozen=True)
class BigramCandidate:
    lang: str
    w1: str
    sep: str
    w2: str
    n: int
    n1: int
    n2: int
    pmi: float

    @property
    def text(self) -> str:
        return f"{self.w1}{self.sep}{self.w2}"


@dataclass
class BigramCandidates:
    rows: list[BigramCandidate]
    above_threshold: dict[str, int]  # per language: bigrams with n >= min_count and PMI >= min_pmi


def _scored_bigrams(
    counts: DataFrame, langs: dict[str, int], min_pmi: float, min_count: int
) -> DataFrame:
    """Bigrams with ``n ≥ min_count`` and ``PMI ≥ min_pmi``, with their word counts, PMI and
    text (lang, w1, sep, w2, n, n1, n2, pmi, text)."""
    spark = counts.sparkSession
    # A bigram (and each of its words) needs n · 2^θ ≤ N to reach PMI θ; the slack absorbs rounding.
    scale = 2.0**min_pmi if min_pmi < 1000 else math.inf
    totals_df = spark.createDataFrame(
        sorted(langs.items()),
        StructType(
            [StructField("lang", StringType(), False), StructField("total", LongType(), False)]
        ),
    )
    reachable = F.col("n").cast("double") * F.lit(scale) <= F.col("total").cast("double") * F.lit(
        1 + 1e-9
    )
    words = (
        counts.filter(F.col("kind") == KIND_UNIGRAM)
        .join(F.broadcast(totals_df), "lang")
        .filter(reachable)
        .select("lang", F.col("w1").alias("token"), F.col("n").alias("nw"))
    )
    pairs = (
        counts.filter((F.col("kind") == KIND_BIGRAM) & (F.col("n") >= min_count))
        .join(F.broadcast(totals_df), "lang")
        .filter(reachable)
    )
    left = words.withColumnsRenamed({"token": "w1", "nw": "n1"})
    right = words.withColumnsRenamed({"token": "w2", "nw": "n2"})
    return (
        pairs.join(left, ["lang", "w1"])
        .join(right, ["lang", "w2"])
        .withColumn(
            "pmi",
            F.log2(F.col("n").cast("double") * F.col("total").cast("double"))
            - F.log2(F.col("n1").cast("double") * F.col("n2").cast("double")),
        )
        .filter(F.col("pmi") >= F.lit(float(min_pmi)))
        .select(
            "lang",
            "w1",
            "sep",
            "w2",
            "n",
            "n1",
            "n2",
            "pmi",
            F.concat("w1", "sep", "w2").alias("text"),
        )
    )


def bigram_candidates(
    counts: DataFrame,
    totals: dict[str, int],
    min_pmi: float,
    min_count: int,
    cap: Cap | None = None,
) -> BigramCandidates:
    """Bigrams with ``n ≥ min_count`` and ``PMI ≥ min_pmi`` (see the module docstring), ranked by
    PMI descending, then ``n`` descending, then text."""
    langs = {lang: n for lang, n in totals.items() if n > 0}
    if not langs:
        return BigramCandidates([], {})
    scored = _scored_bigrams(counts, langs, min_pmi, min_count)
    above = None
    if cap is not None:
        scored = scored.persist()
        above = per_language_counts(scored)
    try:
        picked = top_per_language(scored, "text", [F.desc("pmi"), F.desc("n"), F.asc("text")], cap)
        rows = [
            BigramCandidate(
                r["lang"],
                r["w1"],
                r["sep"],
                r["w2"],
                int(r["n"]),
                int(r["n1"]),
                int(r["n2"]),
                float(r["pmi"]),
            )
            for r in picked.collect()
        ]
    finally:
        if cap is not None:
            scored.unpersist()
    if above is None:
        above = dict(Counter(b.lang for b in rows))
    return BigramCandidates(rows, above)
