"""Reading a pool of image–text pairs: Parquet, CSV/TSV or JSONL, one file or a directory.

Column names differ between pools (LAION: ``URL``/``TEXT``; DataComp: ``uid``/``url``/``text``;
img2dataset: ``url``/``caption``), so each role is looked up among common names unless the user names
the column. After :func:`read_pool` the roles have the standard names ``caption``, ``url`` and, when
present, ``uid``; every other column is kept as it is.

Readers keep every row and every value as written (:class:`ReaderOptions`):

- CSV/TSV: quoted fields may span lines (``multiLine``; a CR LF inside a quoted field is read as
  LF); headerless files get their column names from ``columns``. The named formats ``cc3m-tsv``
  (``caption<TAB>url``, Conceptual Captions 3M) and ``cc12m-tsv`` (``url<TAB>caption``, CC12M) are
  headerless, unquoted TSV with one record per line.
- Parquet: files whose schemas differ are merged (a column missing from a file is null there); a
  column typed differently in two files is an error naming both files, the column and both types.
  The caption column must hold text (string or binary).
- JSONL: a row whose caption is a number, list, object or boolean gets the reader's reject reason
  ``caption_not_string``; a row whose line holds a lone UTF-16 surrogate escape (``"\\ud800"``,
  which has no UTF-8 form: Spark would write ``?``) gets ``non_utf8``. The reason travels in the
  column :data:`READER_REASON`, which the match stage turns into a rejects row.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, get_args

import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DataType,
    MapType,
    StringType,
    StructField,
    StructType,
    VariantType,
)

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

# Named layouts of headerless TSV files: their columns, in order.
NAMED_TSV_LAYOUTS = {"cc3m-tsv": ("caption", "url"), "cc12m-tsv": ("url", "caption")}
PoolFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl", "cc3m-tsv", "cc12m-tsv"]
POOL_FORMATS: tuple[str, ...] = get_args(PoolFormat)

# A hidden column of JSONL pools: the reader's reject reason of the row, or null.
READER_REASON = "_reader_reason"
# A UTF-16 surrogate escape without its partner (``\ud800`` alone), not itself escaped (an even
# number of backslashes before it): it has no UTF-8 form.
LONE_SURROGATE = (
    r"(?<!\\)(?:\\\\)*(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


@dataclass(frozen=True)
class ReaderOptions:
    """How to read the pool's files (the match stage's ``format``, ``header``, ``columns``,
    ``csv_multiline`` options)."""

    format: str = "auto"
    header: bool = True
    columns: tuple[str, ...] = ()
    csv_multiline: bool = True

    @classmethod
    def of(
        cls, format: str, header: bool, columns: list[str] | tuple[str, ...], csv_multiline: bool
    ) -> ReaderOptions:
        """Checked options; ``columns`` items may be comma-separated lists (``caption,url``)."""
        names = tuple(n.strip() for item in columns for n in item.split(",") if n.strip())
        if format not in POOL_FORMATS:
            raise ValueError(f"--format {format!r}: choose one of {', '.join(POOL_FORMATS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"--columns {','.join(names)}: a column is named twice")
        if format in NAMED_TSV_LAYOUTS and names:
            fixed = ",".join(NAMED_TSV_LAYOUTS[format])
            raise ValueError(
                f"--format {format} fixes the columns ({fixed}); drop --columns, or use "
                "--format tsv --no-header --columns ..."
            )
        if _family(format) in ("parquet", "jsonl") and (names or not header):
            raise ValueError(f"--no-header and --columns apply to CSV/TSV files, not {format}")
        if names and header:
            raise ValueError("--columns names the columns of headerless files: add --no-header")
        if not header and not names and format not in NAMED_TSV_LAYOUTS:
            raise ValueError(
                "--no-header needs --columns with the files' column names in order, "
                "e.g. --columns caption,url"
            )
        return cls(format, header, names, csv_multiline)


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


def _family(fmt: str) -> str:
    return "csv" if fmt in ("csv", "tsv", *NAMED_TSV_LAYOUTS) else fmt


def list_pool_files(url: str, format: str = "auto") -> tuple[list[str], str]:
    """The data files of a pool path and their common format (``format`` when named; it must fit
    the files' extensions: a CSV/TSV format for .csv/.tsv files); errors name the path."""
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
    if format != "auto":
        if _family(format) != _family(fmt):
            raise StageInputError(
                f"{url}: --format {format} does not fit its {len(files)} .{fmt} file(s)"
            )
        fmt = format
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
    options: ReaderOptions | None = None,
) -> tuple[DataFrame, PoolColumns, str]:
    """Read a pool and rename its role columns to ``caption``, ``url`` and ``uid``.

    Returns the DataFrame, the original role columns, and the format (detected or named). A
    JSONL pool's frame also holds :data:`READER_REASON` (see the module docstring).
    """
    options = options or ReaderOptions()
    files, fmt = list_pool_files(url, options.format)
    if _family(fmt) != "csv" and (options.columns or not options.header):
        raise StageInputError(
            f"{url}: --no-header and --columns apply to CSV/TSV files, not to its {fmt} files"
        )
    fs, _ = url_to_fs(url)
    paths = [spark_url(fs.unstrip_protocol(f)) for f in files]
    if fmt == "parquet":
        df = _read_parquet(spark, url, files, paths)
    elif fmt == "jsonl":
        df = spark.read.json(paths, mode="PERMISSIVE")
    else:
        df = _read_delimited(spark, url, paths, fmt, options)
    if "_corrupt_record" in df.columns:
        raise StageInputError(_corrupt_json_message(df, url))
    roles = resolve_columns(df.columns, url, caption_col, url_col, uid_col)
    if fmt == "jsonl":
        df = _json_rows(spark, paths, df, roles.caption)
    renames = {roles.caption: "caption", roles.url: "url"}
    if roles.uid:
        renames[roles.uid] = "uid"
    for old, new in renames.items():
        if old != new and new in df.columns:
            raise StageInputError(
                f"{url}: column {new!r} exists besides the {new} column {old!r}; rename one of them"
            )
    df = df.withColumnsRenamed(renames)
    caption_type = df.schema["caption"].dataType
    if not isinstance(caption_type, (StringType, BinaryType)):
        raise StageInputError(
            f"{url}: the caption column {roles.caption!r} is {caption_type.simpleString()}, not "
            "text; name the column that holds the captions with --caption-col, or write the "
            "captions as strings"
        )
    return df, roles, fmt


def _read_delimited(
    spark: SparkSession, url: str, paths: list[str], fmt: str, options: ReaderOptions
) -> DataFrame:
    """CSV/TSV. Quoted fields may span lines unless ``csv_multiline`` is off (which lets Spark
    split one large file between tasks); the named layouts are unquoted, one record a line."""
    named = NAMED_TSV_LAYOUTS.get(fmt)
    columns = named or options.columns
    df = spark.read.options(
        header=options.header and not named,
        sep="," if fmt == "csv" else "\t",
        quote="" if named else '"',
        escape='"',
        multiLine=options.csv_multiline and not named,
        mode="PERMISSIVE",
        encoding="UTF-8",
    ).csv(paths)
    if not columns:
        return df
    if len(columns) != len(df.columns):
        raise StageInputError(
            f"{url}: {len(columns)} column names given ({', '.join(columns)}) but the files' first "
            f"line has {len(df.columns)} fields; name every column, in order"
            + (" (is this the format named?)" if named else "")
        )
    return df.toDF(*columns)


def _read_parquet(spark: SparkSession, url: str, files: list[str], paths: list[str]) -> DataFrame:
    """Parquet files with their schemas merged; a column typed differently in two files is an
    error naming both (found by reading the footers, only on the way to that error)."""
    if len(paths) == 1:
        return spark.read.parquet(*paths)
    try:
        return spark.read.option("mergeSchema", "true").parquet(*paths)
    except Exception as exc:  # noqa: BLE001 - Py4J/Spark error types vary by version
        lines = str(exc).strip().splitlines()
        if not any("CANNOT_MERGE_SCHEMAS" in ln or "merging schema" in ln for ln in lines):
            # A footer that cannot be read (a corrupt or truncated file): read as before, so
            # the file fails where Spark names it (see curation.cli.describe_exception).
            return spark.read.parquet(*paths)
    raise StageInputError(schema_conflict_message(url, files) or _unmergeable(url, lines))


def _unmergeable(url: str, spark_message: list[str]) -> str:
    """The error when the footers show no conflict that Spark saw (its own words, shortened)."""
    cause = " ".join(ln.strip() for ln in spark_message[:6] if not ln.strip().startswith("at "))
    return (
        f"{url}: the Parquet files' schemas cannot be merged ({cause[:400]}); give each column "
        "one type in every file"
    )


def _spark_type(arrow_type) -> DataType | str:
    from pyspark.sql.pandas.types import from_arrow_type

    try:
        return from_arrow_type(arrow_type)
    except Exception:  # noqa: BLE001 - types Spark's Arrow conversion lacks: compare by name
        return str(arrow_type)


def _conflicts(a: DataType | str, b: DataType | str) -> bool:
    """True when Spark cannot merge the types ``a`` and ``b`` of one column (structs merge field
    by field, arrays and maps by their element types; other types must be equal)."""
    if isinstance(a, StructType) and isinstance(b, StructType):
        other = {f.name: f.dataType for f in b.fields}
        return any(f.name in other and _conflicts(f.dataType, other[f.name]) for f in a.fields)
    if isinstance(a, ArrayType) and isinstance(b, ArrayType):
        return _conflicts(a.elementType, b.elementType)
    if isinstance(a, MapType) and isinstance(b, MapType):
        return _conflicts(a.keyType, b.keyType) or _conflicts(a.valueType, b.valueType)
    return a != b


def _type_name(t: DataType | str) -> str:
    return t if isinstance(t, str) else t.simpleString()


def schema_conflict_message(url: str, files: list[str]) -> str | None:
    """``<pool>: column 'uid' is string in <file a> but bigint in <file b>; ...`` for the first
    column typed differently in two files (footers read in file order), or None."""
    fs, _ = url_to_fs(url)

    def schema(path: str):
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)

    with ThreadPoolExecutor(max_workers=16) as pool:
        schemas = list(pool.map(schema, files))
    first: dict[str, tuple[str, DataType | str]] = {}
    for path, arrow_schema in zip(files, schemas):
        for field in arrow_schema:
            seen = first.setdefault(field.name, (path, _spark_type(field.type)))
            here = _spark_type(field.type)
            if not _conflicts(seen[1], here):
                continue
            return (
                f"{url}: column {field.name!r} is {_type_name(seen[1])} in "
                f"{fs.unstrip_protocol(seen[0])} but {_type_name(here)} in "
                f"{fs.unstrip_protocol(path)}; every file of a pool must give a column one type: "
                f"rewrite one of them with the other type (e.g. pyarrow's table.cast), or keep "
                "them in separate pools"
            )
    return None


def _json_rows(spark: SparkSession, paths: list[str], df: DataFrame, caption: str) -> DataFrame:
    """``df`` (``spark.read.json``) when every caption is a JSON string and no line holds a lone
    surrogate escape; else the lines parsed again with its schema (the same values), plus
    :data:`READER_REASON`: ``non_utf8`` for a lone surrogate, ``caption_not_string`` for a
    caption that is a JSON number, list, object or boolean.

    Both checks read the lines as text, since they need the JSON as written: once parsed, a number
    is indistinguishable from its text and a lone surrogate has become ``?``. The first pass parses
    the caption only and stops at the first offending line; clean pools, the common case, are then
    read as they always were.
    """
    line = F.col("value")
    caption_type = df.schema[caption].dataType
    lines = spark.read.text(paths).filter(F.regexp_like(line, F.lit(r"\S")))  # as read.json
    only_caption = StructType([StructField(caption, caption_type)])
    first_pass = _json_reason(line, F.from_json(line, only_caption)[caption], caption, caption_type)
    if lines.filter(first_pass.isNotNull()).isEmpty():
        return df
    parsed = lines.select(line, F.from_json(line, df.schema).alias("_row"))
    reason = _json_reason(line, F.col("_row")[caption], caption, caption_type)
    rows = parsed.select("_row.*", reason.alias(READER_REASON))
    if isinstance(caption_type, StringType):
        return rows
    text = F.col(f"`{caption}`")  # no caption is a string: kept as JSON text for the rejects
    as_text = (
        F.to_json(text)
        if isinstance(caption_type, (StructType, ArrayType, MapType))
        else text.cast("string")
    )
    return rows.withColumn(caption, as_text)


def _json_reason(line: Column, value: Column, caption: str, caption_type: DataType) -> Column:
    """``non_utf8``, ``caption_not_string`` or null for a JSON ``line`` whose parsed caption is
    ``value``."""
    if isinstance(caption_type, StringType):
        not_string = _parsed_from_a_non_string(line, value, caption)
    else:  # no caption of the pool is a string: every non-null one is rejected
        not_string = value.isNotNull()
    # The regular expression is slow; most lines hold no \ud or \uD escape at all.
    maybe_surrogate = (F.instr(line, "\\ud") > 0) | (F.instr(line, "\\uD") > 0)
    lone_surrogate = maybe_surrogate & F.regexp_like(line, F.lit(LONE_SURROGATE))
    return F.when(lone_surrogate, F.lit("non_utf8")).when(not_string, F.lit("caption_not_string"))


def _parsed_from_a_non_string(line: Column, value: Column, caption: str) -> Column:
    """True when the caption string ``value`` came from a JSON number, list, object or boolean.

    Spark gives such a token's JSON text as the string, so only a text that reads as one (starts
    with a digit, ``-``, ``[`` or ``{``, or is ``true``/``false``) can have come from one; for
    those rows only, the caption is parsed again as a variant to see what it was.
    """
    first = F.substring(value, 1, 1)
    looks_like_json = first.isin("-", "[", "{", *"0123456789") | value.isin("true", "false")
    as_variant = F.from_json(line, StructType([StructField(caption, VariantType())]))
    kind = F.schema_of_variant(as_variant[caption])
    return looks_like_json & kind.isNotNull() & ~kind.isin("STRING", "VOID")


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
