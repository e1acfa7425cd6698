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
}


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
    args = parser.parse_args(argv)
    names = list(VARIANTS)
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        names = [n for n in names if any(n.startswith(w) for w in wanted)]
    baseline = next(iter(VARIANTS))
    names = [baseline, *[n for n in names if n != baseline], baseline]

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
