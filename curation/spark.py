"""Building (or reusing) the Spark session.

Under ``spark-submit`` the session that spark-submit configured is reused as it is. Otherwise a local
in-process session is started (``local[*]`` unless told otherwise) with the settings measured in
``docs/spark.md``: Python workers run this interpreter (pitfall 4), Spark gets its own
``spark.local.dir`` (pitfall 6), the loopback address is fixed (pitfall 7), the UI is off, and file
splits are small enough that a pool of a few files still makes several tasks per core (pitfall 3).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Quiet Spark's JVM logging by default (errors only); see the file for why.
LOG4J2_PROPERTIES = Path(__file__).resolve().parent / "conf" / "log4j2.properties"


@dataclass
class SparkConfig:
    """Spark settings of a run (``spark.*`` in the config file)."""

    master: str = field(
        default="local[*]",
        metadata={"help": "Spark master when not under spark-submit (local[*], spark://host:port)"},
    )
    app_name: str = field(default="curation", metadata={"help": "Spark application name"})
    local_dir: str = field(
        default="",
        metadata={"help": "scratch directory for shuffle and spill (default: a fresh temp dir)"},
    )
    driver_memory: str = field(default="4g", metadata={"help": "driver memory for local runs"})
    max_partition_bytes: str = field(
        default="32m",
        metadata={"help": "spark.sql.files.maxPartitionBytes: the largest input split per task"},
    )
    shuffle_partitions: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "spark.sql.shuffle.partitions (0: 4 x the default parallelism)",
        },
    )
    log_level: str = field(
        default="FATAL",
        metadata={
            "help": "Spark's own log level (curate reports failures itself; --debug sets WARN)"
        },
    )
    progress: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={
            "help": "Spark's console progress bar (stages and tasks, on stderr); auto: on when "
            "stderr is a terminal (CURATION_PROGRESS=1/0 forces it)"
        },
    )
    conf: dict[str, str] = field(
        default_factory=dict, metadata={"help": "extra spark.* settings, passed as they are"}
    )


def show_progress(config: SparkConfig) -> bool:
    """Whether Spark's console progress bar is on (see ``SparkConfig.progress``)."""
    if config.progress != "auto":
        return config.progress == "on"
    from curation import progress

    return progress.enabled()


def under_spark_submit() -> bool:
    """True when this driver was launched by spark-submit (its Python runner opens the gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(config: SparkConfig | None = None) -> SparkSession:
    """Return the active Spark session, or start a local one configured as described above."""
    config = config or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if under_spark_submit():
        # spark-submit decided master, memory and the rest; keep its settings and add only
        # the SQL settings, which are per session.
        spark = SparkSession.builder.appName(config.app_name).getOrCreate()
        spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        spark.sparkContext.setLogLevel(config.log_level)
        return spark
    # Workers start `python3` from PATH unless told otherwise; they must run this interpreter.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # pyarrow >= 2 needs this for Arrow's timezone handling on Java 17 (PySpark docs).
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    local_dir = config.local_dir or tempfile.mkdtemp(prefix="curation-spark-")
    java_options = f"-Dlog4j2.configurationFile=file:{LOG4J2_PROPERTIES}"
    builder = (
        SparkSession.builder.master(config.master)
        .appName(config.app_name)
        .config("spark.ui.enabled", "false")
        # The bar is drawn by the driver JVM on stderr, independently of log levels and the UI.
        .config("spark.ui.showConsoleProgress", str(show_progress(config)).lower())
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.local.dir", local_dir)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.files.maxPartitionBytes", config.max_partition_bytes)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.python.worker.reuse", "true")
        # Output folders hold only Parquet (and Spark's empty _SUCCESS): the checksumming local
        # file system writes a hidden ``.<file>.crc`` beside every file, which Polars (and any
        # reader that lists the folder as it is) takes for data, and that no reader checks.
        .config("spark.hadoop.fs.file.impl", "org.apache.hadoop.fs.RawLocalFileSystem")
    )
    if config.shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(config.log_level)
    if not config.shuffle_partitions and "spark.sql.shuffle.partitions" not in config.conf:
        # The default of 200 makes hundreds of tiny tasks on a laptop; AQE coalesces further.
        parallelism = spark.sparkContext.defaultParallelism
        spark.conf.set("spark.sql.shuffle.partitions", str(max(4, 4 * parallelism)))
    log.info(
        "Spark %s session on %s (%d cores)",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    return spark


#: A Java exception as (class name, message).
JavaError = tuple[str, str]


def java_causes(exc: BaseException) -> list[JavaError]:
    """The Java exception behind a Py4J error (``Py4JJavaError.java_exception``, or the origin of
    a PySpark exception converted from Java) and its causes, outermost first. Empty when there
    is none, or when the JVM can no longer be asked (the text of the error is parsed then)."""
    throwable = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    chain: list[JavaError] = []
    while throwable is not None and len(chain) < 32:
        try:
            chain.append((str(throwable.getClass().getName()), str(throwable.getMessage() or "")))
            throwable = throwable.getCause()  # Java returns null, never itself, at the end
        except Exception:  # noqa: BLE001 - a closed gateway: describe what was read so far
            break
    return chain


def quiet_pyspark_loggers() -> None:
    """Silence PySpark's JSON log records of failed queries (``DataFrameQueryContextLogger``: one
    line of about 10 kB, the full Java stack trace, for every AnalysisException): curate reports
    the error itself, in one line; ``--debug`` keeps them."""
    from pyspark.logger import PySparkLogger

    for name in ("DataFrameQueryContextLogger", "SQLQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
