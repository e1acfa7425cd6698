"""Titles with page views (MetaCLIP's Wikipedia-title source), aggregated with Spark.

MetaCLIP summed English Wikipedia page views over 26 sampled days of the hourly ``pageviews`` dumps
(``metaclip/build_metadata.py:wiki_title``) and kept titles with at least 70 views, dropping every
title that contains ``:`` (namespaces such as ``File:`` and ``Category:``). Here the input is any
table of titles and views (Parquet, CSV/TSV with a header, JSONL): rows of one title are summed,
``_`` becomes a space (MediaWiki writes spaces as underscores in titles and URLs), surrounding white
space is stripped, and titles with ``views ≥ min_views`` are kept unless they contain ``:``.

MetaCLIP added an hourly row to the sum only when it held at least 50 views (``int(count / 50) >
0``); to reproduce that on raw pageview dumps, drop those rows before giving the file here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from curation.metadata_build.corpus import (
    LANG_PATTERN,
    UNDETERMINED,
    Cap,
    column,
    language_column,
    pick_column,
    read_table,
    top_per_language,
)

TITLE_CANDIDATES = ("title", "page_title", "page", "entry")
VIEWS_CANDIDATES = ("views", "view_count", "pageviews", "page_views", "count")


@dataclass
class TitleResult:
    candidates: list[tuple[str, str, int]]  # (lang, title, views)
    rows: int = 0
    bad_rows: int = 0  # null or empty title, or views that are not a number
    distinct_titles: int = 0
    above_threshold: int = 0
    colon_titles: dict[str, int] = field(default_factory=dict)  # per language: rejected for ":"
    colon_examples: list[dict] = field(default_factory=list)
    bad_lang_rows: int = 0


def _as_count(column: Column) -> Column:
    """A views value as a whole number (``"70"``, ``70.0``), or null when it is not a finite number."""
    value = column.try_cast("double")
    finite = value.isNotNull() & ~F.isnan(value) & (F.abs(value) < 9.0e18)
    return F.when(finite, F.floor(value).cast("long"))


def read_titles(
    spark: SparkSession,
    url: str,
    title_col: str = "",
    views_col: str = "",
    lang_col: str = "",
    fmt: str = "auto",
) -> DataFrame:
    """The titles table as ``(lang, title, views)``; ``views`` is null where it is not a number."""
    df, fmt = read_table(spark, url, "titles file", fmt)
    if fmt == "text":
        raise ValueError(
            f"{url}: a titles file needs title and views columns: give Parquet, CSV/TSV with a header, or JSONL"
        )
    title = pick_column(df.columns, title_col, TITLE_CANDIDATES, "title", url)
    views = pick_column(df.columns, views_col, VIEWS_CANDIDATES, "views", url)
    return df.select(
        language_column(df, lang_col, url),
        F.trim(F.regexp_replace(column(title).cast("string"), "_", " ")).alias("title"),
        _as_count(column(views)).alias("views"),
    )


def title_candidates(
    titles: DataFrame,
    min_views: int,
    cap: Cap | None = None,
    multilingual: bool = False,
) -> TitleResult:
    """Sum views per (lang, title) and keep titles with ``views ≥ min_views`` and no ``:``."""
    if multilingual:
        lang = F.when(
            F.col("lang").isNull() | (F.trim("lang") == ""), F.lit(UNDETERMINED)
        ).otherwise(F.trim("lang"))
        titles = titles.withColumn("lang", lang).withColumn(
            "bad_lang", ~F.col("lang").rlike(LANG_PATTERN.pattern)
        )
    else:
        titles = titles.withColumn("bad_lang", F.lit(False))
    bad = F.col("title").isNull() | (F.col("title") == "") | F.col("views").isNull()
    flagged = titles.withColumn("bad", bad)
    counts = flagged.agg(
        F.count("*").alias("rows"),
        F.sum(F.col("bad").cast("long")).alias("bad_rows"),
        F.sum((~F.col("bad") & F.col("bad_lang")).cast("long")).alias("bad_lang_rows"),
    ).first()
    summed = (
        flagged.filter(~F.col("bad") & ~F.col("bad_lang"))
        .groupBy("lang", "title")
        .agg(F.sum("views").alias("views"))
        .persist()
    )
    try:
        kept = summed.filter(F.col("views") >= min_views)
        per_lang = (
            kept.groupBy("lang")
            .agg(
                F.count("*").alias("above"),
                F.sum(F.col("title").contains(":").cast("long")).alias("colon"),
            )
            .collect()
        )
        result = TitleResult(
            candidates=[],
            rows=int(counts["rows"] or 0),
            bad_rows=int(counts["bad_rows"] or 0),
            bad_lang_rows=int(counts["bad_lang_rows"] or 0),
            distinct_titles=summed.count(),
            above_threshold=sum(int(r["above"]) for r in per_lang),
            colon_titles={r["lang"]: int(r["colon"]) for r in sorted(per_lang) if r["colon"]},
        )
        if result.colon_titles:
            examples = (
                kept.filter(F.col("title").contains(":"))
                .orderBy(F.desc("views"), "lang", "title")
                .limit(20)
            )
            result.colon_examples = [
                {"entry": r["title"], "lang": r["lang"], "views": int(r["views"])}
                for r in examples.collect()
            ]
        usable = kept.filter(~F.col("title").contains(":"))
        usable = top_per_language(usable, "title", [F.desc("views"), F.asc("title")], cap)
        result.candidates = [(r["lang"], r["title"], int(r["views"])) for r in usable.collect()]
    finally:
        summed.unpersist()
    return result
