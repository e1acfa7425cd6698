"""The ``match`` stage's JVM-side settings, one at a time, on one warm Spark session.

    python bench/bench_match_knobs.py [--rows 1000000 --entries 500000] [--variants a,b]

Uses the data of ``bench_match.py`` (same cache, same generator). After one untimed warm-up run of
the stage, it runs ``run_match`` once per variant (a set of Spark SQL or Parquet settings changed
for that run only) and records the CPU seconds per process kind, the wall time, the contention and
the size of ``pool/``. The baseline runs first and last, to show the drift of the machine meanwhile.
Not a test; prints a table and writes ``<workdir>/knobs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._data import ensure_data  # noqa: E402 - after the path insert
from bench._monitor import ProcessMonitor  # noqa: E402

DICT_ENTRY_IDS = "parquet.enable.dictionary#entry_ids.list.element"
# name -> (Spark SQL settings, Hadoop settings for the Parquet writer)
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "baseline (snappy, dictionary on, Arrow batch 10k)": ({}, {}),
    "Arrow batch 2k": ({"spark.sql.execution.arrow.maxRecordsPerBatch": "2000"}, {}),
    "Arrow batch 50k": ({"spark.sql.execution.arrow.maxRecordsPerBatch": "50000"}, {}),
    "no dictionary on entry_ids": ({}, {DICT_ENTRY_IDS: "false"}),
    "no dictionary at all": ({}, {"parquet.enable.dictionary": "false"}),
    "codec zstd": ({"spark.sql.parquet.compression.codec": "zstd"}, {}),
    "codec lz4_raw": ({"spark.sql.parquet.compression.codec": "lz4_raw"}, {}),
    "codec uncompressed": ({"spark.sql.parquet.compression.codec": "uncompressed"}, {}),
    "two scans (the stage before issue 17)": ({}, {}),
    "cache uncompressed": ({"spark.sql.inMemoryColumnarStorage.compressed": "false"}, {}),
}
TWO_SCANS = "two scans (the stage before issue 17)"


def two_scan_stage():
    """The stage as it was before issue 17 (for an A/B in one session): a duplicate check over
    the input, the pool written from a second scan, the rejects from a third, and the summary
    counts read back from the written Parquet."""
    from pyspark.sql import functions as F

    from curation import storage
    from curation.stages import match as m

    class TwoScanMatchStage(m.MatchStage):
        def _write_outputs(self, tmp, columns, matched, roles, fmt):
            prepared = matched.select(*columns)  # not used: the input is scanned again below
            del prepared
            config, spark = self.config, self.spark
            df, roles, fmt = m.read_pool(spark, config.input)
            prepared = m.prepare(df, roles.uid is not None, config.max_caption_chars)
            kept, duplicates = m.split_duplicate_uids(prepared.filter(F.col("reason").isNull()))
            good = kept.drop("reason", "source_file")
            m.match_pool(good, self._matcher_file).write.parquet(
                storage.spark_url(storage.join(tmp, "pool"))
            )
            rejects = prepared.filter(F.col("reason").isNotNull())
            if duplicates is not None:
                rejects = rejects.unionByName(
                    duplicates.withColumn("reason", F.lit("duplicate_uid"))
                )
            rejects = rejects.withColumn(
                "caption", F.call_function("make_valid_utf8", F.col("caption").cast("binary"))
            )
            rejects.write.parquet(storage.spark_url(storage.join(tmp, "rejects")))
            pool = spark.read.parquet(storage.spark_url(storage.join(tmp, "pool")))
            back = spark.read.parquet(storage.spark_url(storage.join(tmp, "rejects")))
            replaced = F.instr(F.col("caption"), "\ufffd") > 0
            rows = (
                pool.groupBy(F.size("entry_ids").alias("k"))
                .agg(F.count("*").alias("n"), F.count(F.when(replaced, 1)).alias("fffd"))
                .collect()
            )
            by_reason = {
                r["reason"]: int(r["n"])
                for r in back.groupBy("reason").agg(F.count("*").alias("n")).collect()
            }
            counts = m.RowCounts(
                {int(r["k"]): int(r["n"]) for r in rows},
                sum(int(r["fffd"]) for r in rows),
                by_reason,
            )
            return m.summarize(counts, self.loaded.summary, roles, fmt, config)

    return TwoScanMatchStage


def shipped_matcher(spark) -> str:
    """The name of the matcher pickle registered with this session (by the warm-up run)."""
    names = [os.path.basename(f) for f in spark.sparkContext.listFiles]
    return next(n for n in names if n.startswith("matcher-") and not n.startswith("matcher-attr"))


def directory_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*.parquet")) / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", default="bench/out/match")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--row-group", type=int, default=50_000)
    parser.add_argument("--variants", default="", help="comma-separated subset of the names")
    parser.add_argument(
        "--sequence",
        default="",
        help="run exactly these variants in this order (name prefixes, comma separated; e.g. "
        "'baseline,two scans,baseline,two scans' for an interleaved A/B)",
    )
    args = parser.parse_args(argv)
    names = list(VARIANTS)
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        names = [n for n in names if any(n.startswith(w) for w in wanted)]
    baseline = next(iter(VARIANTS))
    others = sorted((n for n in names if n != baseline), key=lambda n: n != TWO_SCANS)
    names = [baseline, *others, baseline]
    if args.sequence:
        names = [
            next(n for n in VARIANTS if n.startswith(w.strip())) for w in args.sequence.split(",")
        ]

    data = ensure_data(args)
    from curation.spark import SparkConfig, get_spark
    from curation.stages.match import MatchConfig, run_match

    workdir = Path(args.workdir)
    local_dir = workdir / "spark-local-knobs"
    shutil.rmtree(local_dir, ignore_errors=True)
    spark = get_spark(
        SparkConfig(master=args.master, app_name="bench-match-knobs", local_dir=str(local_dir))
    )
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    monitor = ProcessMonitor()
    monitor.start()
    rows: list[dict] = []
    try:
        output = workdir / "knobs-out"
        config = MatchConfig(input=data["pool"], output=str(output), metadata=data["metadata"])
        run_match(spark, config, force=True)  # warm-up
        for name in names:
            sql, hconf = VARIANTS[name]
            saved = {k: spark.conf.get(k, None) for k in sql}
            for k, v in sql.items():
                spark.conf.set(k, v)
            for k, v in hconf.items():
                hadoop.set(k, v)
            try:
                monitor.begin()
                t = time.perf_counter()
                if name == TWO_SCANS:
                    stage = two_scan_stage()(config, spark)
                    # the matcher file the stage ships, for the second scan's match_pool
                    stage._matcher_file = shipped_matcher(spark)
                    # compute() persists nothing that is read: the base class' mapInArrow result
                    # is never evaluated (its only reader is replaced above)
                    stage.run(True)
                else:
                    run_match(spark, config, force=True)
                wall = time.perf_counter() - t
                m = monitor.end()
            finally:
                for k, v in saved.items():
                    spark.conf.unset(k) if v is None else spark.conf.set(k, v)
                for k in hconf:
                    hadoop.unset(k)
            cpu = {k: v["cpu_seconds"] for k, v in sorted(m["by_kind"].items())}
            row = {
                "variant": name,
                "seconds": round(wall, 1),
                "cpu_seconds": cpu,
                "cpu_total": round(sum(cpu.values()), 2),
                "pool_mib": directory_mib(output / "pool"),
                "others_share_of_machine": m["cpu"]["others_share_of_machine"],
                "loadavg": round(os.getloadavg()[0], 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        monitor.stop()
        spark.stop()
    (workdir / "knobs.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'variant':<50} {'wall s':>7} {'CPU s':>6} {'JVM':>5} {'workers':>7} {'driver':>6} "
          f"{'pool MiB':>8} {'others':>6}")  # fmt: skip
    for r in rows:
        c = r["cpu_seconds"]
        print(
            f"{r['variant']:<50} {r['seconds']:>7.1f} {r['cpu_total']:>6.1f} {c.get('jvm', 0):>5.1f} "
            f"{c.get('worker', 0):>7.1f} {c.get('driver', 0):>6.1f} {r['pool_mib']:>8.1f} "
            f"{r['others_share_of_machine']:>6.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
