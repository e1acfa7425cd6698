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
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MIB = 1024 * 1024
GENERATOR_VERSION = 1


def make_jpeg(rng: np.random.Generator, side: int) -> bytes:
    from PIL import Image

    arr = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def generate(data: Path, shards: int, per_shard: int, side: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.storage import atomic_directory

    if (data / "done").exists():
        return
    shutil.rmtree(data, ignore_errors=True)
    (data / "shards").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pool = [make_jpeg(rng, side) for _ in range(64)]  # reused: generation is not the point
    rows = []
    for s in range(shards):
        meta_rows = []
        with tarfile.open(data / "shards" / f"{s:05d}.tar", "w") as tf:
            for i in range(per_shard):
                n = s * per_shard + i
                key, uid = f"{n:09d}", f"{n:032x}"
                caption = f"benchmark caption {n}"
                meta = json.dumps({"key": key, "uid": uid, "caption": caption}).encode()
                for ext, blob in (("jpg", pool[n % 64]), ("txt", caption.encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
                meta_rows.append({"key": key, "uid": uid, "caption": caption, "status": "success"})
                rows.append(
                    {
                        "uid": uid,
                        "url": f"http://bench.invalid/{n}.jpg",
                        "caption": caption,
                        "entry_ids": [n % 100],
                        "weight": 1.0,
                        "inclusion_prob": 1.0,
                        "repeats": 1,
                    }
                )
        pq.write_table(pa.Table.from_pylist(meta_rows), data / "shards" / f"{s:05d}.parquet")
    with atomic_directory(str(data / "selected"), {"stage": "select", "bench": True}) as tmp:
        os.makedirs(f"{tmp}/selected")
        pq.write_table(pa.Table.from_pylist(rows), f"{tmp}/selected/part-00000.parquet")
    (data / "done").touch()


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
    key = f"v{GENERATOR_VERSION}-s{args.shards}-n{args.per_shard}-x{args.side}-r{args.seed}"
    data = work / "data" / key
    t = time.perf_counter()
    generate(data, args.shards, args.per_shard, args.side, args.seed)
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
        t = time.perf_counter()
        result = run_reshard(spark, config, force=True)
        os.sync()
        record(f"{name} ({args.master})", time.perf_counter() - t)
        results["runs"][f"{name} ({args.master})"]["phases"] = result.stats["timings"]
    spark.stop()
    results["load_average_end"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results in {work / 'results.json'} (load average {results['load_average']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
