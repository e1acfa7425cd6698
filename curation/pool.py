"""Reading a pool of image–text pairs: Parquet, CSV/TSV or JSONL, one file or a directory.

Column names differ between pools (LAION: ``URL``/``TEXT``; DataComp: ``uid``/``url``/``text``;
img2dataset: ``url``/``caption``), so each role is looked up among common names unless the user names
the column. After :func:`read_pool` the roles have the standard names ``caption``, ``url`` and, when
present, ``uid``; every other column is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from curation.storage import StageInputError, list_data_files, spark_url, url_to_fs

CAPTION_CANDIDATES = ("caption", "text", "TEXT", "Caption", "alt_text")
URL_CANDIDATES = ("url", "URL", "image_url")
UID_CANDIDATES = ("uid", "UID")

_FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".snappy", ".lz4")


def detect_format(name: str) -> str | None:
    """The pool format of a file name (``pool.csv.gz`` → ``csv``), or None for other files."""
    lowered = name.lower()
    for ext in _COMPRESSIONS:
        if lowered.endswith(ext):
            lowered = lowered[: -len(ext)]
            break
    for ext, fmt in _FORMATS.items():
        if lowered.endswith(ext):
            return fmt
    return None


def list_pool_files(url: str) -> tuple[list[str], str]:
    """The data files of a pool path and their common format; errors name the path."""
    _, names = list_data_files(url, "pool")
    formats = {}
    for name in names:
        fmt = detect_format(name)
        if fmt is not None:
            formats.setdefault(fmt, []).append(name)
    if not formats:
        raise StageInputError(
            f"{url}: no pool files found (looked for .parquet, .csv, .tsv, .jsonl, optionally "
            "compressed); an empty directory is not a pool"
        )
    if len(formats) > 1:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(formats.items()))
        raise StageInputError(f"{url}: mixed file formats ({kinds}); keep one format per pool")
    ((fmt, files),) = formats.items()
    return files, fmt


@dataclass(frozen=True)
class PoolColumns:
    """Which input columns play the roles of caption, url and uid."""

    caption: str
    url: str
    uid: str | None


def _pick(
    columns: list[str], given: str, candidates: tuple[str, ...], role: str, url: str
) -> str | None:
    if given:
        if given not in columns:
            raise StageInputError(
                f"{url}: the {role} column {given!r} does not exist; columns are {columns}"
            )
        return given
    for name in candidates:
        if name in columns:
            return name
    return None


def resolve_columns(
    columns: list[str], url: str, caption_col: str = "", url_col: str = "", uid_col: str = ""
) -> PoolColumns:
    caption = _pick(columns, caption_col, CAPTION_CANDIDATES, "caption", url)
    if caption is None:
        raise StageInputError(
            f"{url}: no caption column (looked for {', '.join(CAPTION_CANDIDATES)}); columns are "
            f"{columns}. Name it with --caption-col"
        )
    url_name = _pick(columns, url_col, URL_CANDIDATES, "url", url)
    if url_name is None:
        raise StageInputError(
            f"{url}: no url column (looked for {', '.join(URL_CANDIDATES)}); columns are {columns}. "
            "Name it with --url-col"
        )
    uid = _pick(columns, uid_col, UID_CANDIDATES, "uid", url)
    return PoolColumns(caption, url_name, uid)


def read_pool(
    spark: SparkSession,
    url: str,
    caption_col: str = "",
    url_col: str = "",
    uid_col: str = "",
) -> tuple[DataFrame, PoolColumns, str]:
    """Read a pool and rename its role columns to ``caption``, ``url`` and ``uid``.

    Returns the DataFrame, the original role columns, and the detected format.
    """
    files, fmt = list_pool_files(url)
    fs, _ = url_to_fs(url)
    paths = [spark_url(fs.unstrip_protocol(f)) for f in files]
    reader = spark.read
    if fmt == "parquet":
        df = reader.parquet(*paths)
    elif fmt in ("csv", "tsv"):
        df = reader.options(
            header=True,
            sep="\t" if fmt == "tsv" else ",",
            escape='"',
            multiLine=False,
            mode="PERMISSIVE",
            encoding="UTF-8",
        ).csv(paths)
    else:
        df = reader.json(paths, mode="PERMISSIVE")
    if "_corrupt_record" in df.columns:
        raise StageInputError(_corrupt_json_message(df, url))
    roles = resolve_columns(df.columns, url, caption_col, url_col, uid_col)
    renames = {roles.caption: "caption", roles.url: "url"}
    if roles.uid:
        renames[roles.uid] = "uid"
    for old, new in renames.items():
        if old != new and new in df.columns:
            raise StageInputError(
                f"{url}: column {new!r} exists besides the {new} column {old!r}; rename one of them"
            )
    df = df.withColumnsRenamed(renames)
    return df, roles, fmt


def _corrupt_json_message(df: DataFrame, url: str) -> str:
    """How many JSON lines Spark could not parse, and the first one with its file.

    Spark refuses queries that reference only ``_corrupt_record`` on a raw JSON scan, so the
    rows are cached first; this runs only on the way to an error.
    """
    cached = df.withColumn("_source_file", F.input_file_name()).cache()
    try:
        bad = cached.filter(F.col("_corrupt_record").isNotNull())
        n = bad.count()
        first = bad.select("_source_file", "_corrupt_record").first()
    finally:
        cached.unpersist()
    where = ""
    if first is not None:
        line = first["_corrupt_record"]
        line = line if len(line) <= 200 else line[:200] + "..."
        where = f", e.g. in {first['_source_file']}: {line!r}"
    return (
        f"{url}: {n} JSON line(s) could not be parsed (not JSON, or not valid UTF-8){where}; "
        "fix or remove them"
    )
