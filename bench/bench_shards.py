"""Benchmark of ``reshard``: MB/s and samples/s against a plain single-process tar copy.

Run with ``make bench-shards`` (``ARGS="--shards 4 --per-shard 500"`` for a quick check) or
``.venv/bin/python bench/bench_shards.py --help``. Not a test: it prints a table and writes
``<workdir>/results.json``; nothing is asserted. On a shared machine the numbers are provisional.

1. Generates (seeded, cached in ``<workdir>/data/<key>/``) img2dataset-style input shards of real
   JPEGs made with Pillow (noise images, so they do not compress away), with a ``.txt``, a
   ``.json`` holding the uid, and a ``.parquet`` per shard, plus a committed selection that keeps
   every sample once.
2. Baselines in this process: ``cp`` of every input tar (the disk's ceiling: bytes moved, no
   parsing) and a ``tarfile`` copy that reads every member and writes it to a new tar (what any
   single-process resharder must at least do).
3. ``reshard`` on a fresh ``local[2]`` session, unshuffled and shuffled, cold then warm; MB/s is
   input tar bytes / wall seconds of ``run_reshard`` (scan, plan, fetch, write, commit). The
   stage's own phase timings (``_stats.json`` ``timings``) go to ``results.json`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._data import IMAGE_GENERATOR_VERSION, generate_image_shards  # noqa: E402
from bench._monitor import ProcessMonitor  # noqa: E402

MIB = 1024 * 1024


def input_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "shards").glob("*.tar"))


def bench_cp(data: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    for p in sorted((data / "shards").glob("*.tar")):
        shutil.copyfile(p, out / p.name)
    os.sync()
    return time.perf_counter() - t


def bench_tar_copy(data: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    for p in sorted((data / "shards").glob("*.tar")):
        with tarfile.open(p, "r|") as src, tarfile.open(out / p.name, "w|") as dst:
            for info in src:
                f = src.extractfile(info)
                dst.addfile(info, f)
    os.sync()
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=8, help="input shards")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per input shard")
    parser.add_argument("--side", type=int, default=96, help="image side in pixels")
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="output shard size")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "shards"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(args.workdir)
    key = f"v{IMAGE_GENERATOR_VERSION}-s{args.shards}-n{args.per_shard}-x{args.side}-r{args.seed}"
    data = work / "data" / key
    t = time.perf_counter()
    generate_image_shards(data, args.shards, args.per_shard, args.side, args.seed)
    gen_s = time.perf_counter() - t
    size = input_bytes(data)
    samples = args.shards * args.per_shard
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
        "input": {"shards": args.shards, "samples": samples, "mib": round(size / MIB, 1)},
        "generate_seconds": round(gen_s, 1),
        "runs": {},
    }

    def record(name: str, seconds: float) -> None:
        results["runs"][name] = {
            "seconds": round(seconds, 2),
            "mib_per_s": round(size / MIB / seconds, 1),
            "samples_per_s": round(samples / seconds),
        }
        r = results["runs"][name]
        print(
            f"{name:28s} {r['seconds']:8.2f} s {r['mib_per_s']:8.1f} MiB/s {r['samples_per_s']:9,d} samples/s"
        )

    record("cp (disk ceiling)", bench_cp(data, work / "out-cp"))
    record("tarfile copy, 1 process", bench_tar_copy(data, work / "out-tar"))

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from curation.spark import SparkConfig, get_spark
    from curation.stages.reshard import ReshardConfig, run_reshard

    spark = get_spark(
        SparkConfig(master=args.master, local_dir=str(work / "spark-local"), driver_memory="2g")
    )
    monitor = ProcessMonitor()
    monitor.start()
    for name, shuffle in (
        ("reshard cold", False),
        ("reshard warm", False),
        ("reshard shuffled", True),
    ):
        out = work / "out-reshard"
        config = ReshardConfig(
            input=str(data / "shards"),
            selected=str(data / "selected"),
            output=str(out),
            samples_per_shard=args.samples_per_shard,
            shuffle=shuffle,
            seed=1,
        )
        monitor.begin()
        t = time.perf_counter()
        result = run_reshard(spark, config, force=True)
        os.sync()
        record(f"{name} ({args.master})", time.perf_counter() - t)
        run = results["runs"][f"{name} ({args.master})"]
        run["phases"] = result.stats["timings"]
        run["processes"] = monitor.end()
    monitor.stop()
    spark.stop()
    results["load_average_end"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results in {work / 'results.json'} (load average {results['load_average']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
