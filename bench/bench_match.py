"""Benchmark of the ``match`` stage: Spark end to end vs the bare Aho–Corasick loop vs the naive rule.

Run with ``make bench-match`` (``ARGS="--rows 100000 --entries 50000"`` for a quick check) or
``.venv/bin/python bench/bench_match.py --help``. Not a test: it prints a table and writes
``<workdir>/results.json``; nothing is asserted. Numbers carry about ±15 % noise, more when the
machine is shared.

What it does, in order:

1. Generates (seeded, vectorised, cached in ``<workdir>/data/<key>/``) a MetaCLIP-like metadata list
   (unigrams, bigrams of common unigrams, a few trigrams, mixed case, digits, hyphens, some CJK) as a
   MetaCLIP JSON array, and a pool of captions of ~100 characters that draw entries with a Zipf law
   between non-entry filler words, as Parquet files with ``uid``, ``url``, ``caption``, ``width`` and
   ``height``.
2. Runs ``curation.stages.match.run_match`` twice on a fresh ``local[2]`` session: cold (the
   session's first job) and warm (same session, another output directory, ``force=True``).
   Captions/s = rows / wall seconds of ``run_match`` (read, reject checks, uid, match, Parquet
   write, rejects, summary). A background thread polls ``/proc`` every 0.2 s for the processes
   descended from this one (the JVM, the ``pyspark.daemon`` and the Python workers it forks) and
   records their peak RSS.
3. Stops Spark, then runs the same captions through ``Matcher.match_many`` in this process (the
   per-core ceiling), with build time, pickle size and load time.
4. Times ``naive_match`` (entry by entry) on a sample, within a time budget, extrapolates its
   captions/s and checks it agrees with the automaton on that sample.
5. With ``--profile``: extra Spark runs that split the stage into parts (read only, match without
   writing, caption-only match, rejects pass), vary the split size and the Arrow batch size, and
   record per task, inside the Python worker, automaton load time, time waiting for input and
   time matching.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._data import ensure_data  # noqa: E402 - after the path insert
from bench._monitor import CpuWindow, ProcessMonitor, rss_mib  # noqa: E402

NOISE = "±15 %"
MIB = 1024 * 1024

log = logging.getLogger("bench_match")


# --------------------------------------------------------------------------------------------------
# Spark measurements
# --------------------------------------------------------------------------------------------------


class PhaseTimer:
    """Wraps a few driver-side functions of the match stage to time them (no effect on results)."""

    def __init__(self) -> None:
        import curation.stages.match as stage

        self.stage = stage
        self.times: dict[str, float] = {}
        self._orig = {}
        for name in ("load_metadata", "Matcher", "ship_matcher", "summarize", "read_pool"):
            self._orig[name] = getattr(stage, name)
            setattr(stage, name, self._wrap(name, self._orig[name]))

    def _wrap(self, name, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t

        return timed

    def take(self) -> dict[str, float]:
        out, self.times = self.times, {}
        return {k: round(v, 2) for k, v in out.items()}

    def restore(self) -> None:
        for name, fn in self._orig.items():
            setattr(self.stage, name, fn)


def _probe_partition(batches, matcher_file: str, caption_index: int):
    """mapInArrow body for profiling: match like the stage, yield one row of timings per task."""
    import os as _os
    import time as _time

    import pyarrow as _pa
    from pyspark import SparkFiles

    from curation.matching import cached_matcher, is_matcher_cached

    t0 = _time.perf_counter()
    path = SparkFiles.get(matcher_file)
    cached = is_matcher_cached(path)
    matcher = cached_matcher(path)
    load = _time.perf_counter() - t0
    wait = match = match_cpu = 0.0
    rows = n_batches = matches = 0
    it = iter(batches)
    while True:
        t = _time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        wait += _time.perf_counter() - t
        t = _time.perf_counter()
        c = _time.thread_time()
        ids = matcher.match_arrow(batch.column(caption_index))
        match += _time.perf_counter() - t
        match_cpu += _time.thread_time() - c
        rows += batch.num_rows
        n_batches += 1
        matches += len(ids.values)
    yield _pa.RecordBatch.from_pylist(
        [
            {
                "pid": _os.getpid(),
                "cached": cached,
                "load_s": load,
                "wait_s": wait,
                "match_s": match,
                "match_cpu_s": match_cpu,
                "total_s": _time.perf_counter() - t0,
                "rows": rows,
                "batches": n_batches,
                "matches": matches,
            }
        ]
    )


def profile_spark(spark, data: dict, workdir: Path, rows: int, monitor: ProcessMonitor) -> dict:
    """Split the stage into parts and vary its knobs (see ``--profile``)."""
    from pyspark.sql import functions as F

    from curation.matching import Matcher
    from curation.metadata import load_metadata
    from curation.pool import read_pool
    from curation.stages.match import match_pool, metadata_fingerprint, prepare, ship_matcher

    out: dict = {}
    metadata = load_metadata(data["metadata"])
    matcher_file = ship_matcher(
        spark, Matcher(metadata.entries), metadata_fingerprint(metadata.entries, False)
    )

    def good_rows():
        df, roles, _ = read_pool(spark, data["pool"])
        prepared = prepare(df, roles.uid is not None, 10_000)
        return prepared, prepared.filter(F.col("reason").isNull()).drop("reason", "source_file")

    def measure(fn) -> dict:
        """Wall time and CPU seconds per process kind (robust to other users' load)."""
        monitor.begin()
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
        m = monitor.end()
        cpu = {k: v["cpu_seconds"] for k, v in sorted(m["by_kind"].items()) if v["cpu_seconds"]}
        return {
            "seconds": round(wall, 2),
            "captions_per_s": round(rows / wall),
            "cpu_seconds": cpu,
            "captions_per_cpu_s": round(rows / max(sum(cpu.values()), 1e-9)),
            "others_share_of_machine": m["cpu"]["others_share_of_machine"],
        }

    prepared, good = good_rows()
    out["input_partitions"] = good.rdd.getNumPartitions()
    out["max_partition_bytes"] = spark.conf.get("spark.sql.files.maxPartitionBytes")
    out["arrow_max_records_per_batch"] = spark.conf.get(
        "spark.sql.execution.arrow.maxRecordsPerBatch"
    )
    print(f"  profile: {out['input_partitions']} input tasks", flush=True)
    experiments = {
        "read_prepare_noop (JVM only)": lambda: good.write.format("noop").mode("overwrite").save(),
        "match_noop (no Parquet write)": lambda: (
            match_pool(good, matcher_file).write.format("noop").mode("overwrite").save()
        ),
        "match_caption_only_noop (no pass-through)": lambda: (
            match_pool(good.select("caption"), matcher_file)
            .write.format("noop")
            .mode("overwrite")
            .save()
        ),
        "match_write_parquet (pool only)": lambda: (
            match_pool(good, matcher_file)
            .write.mode("overwrite")
            .parquet(str(workdir / "profile-pool"))
        ),
        "match_write_parquet_no_dictionary": lambda: (
            match_pool(good, matcher_file)
            .write.mode("overwrite")
            .option("parquet.enable.dictionary", "false")
            .parquet(str(workdir / "profile-pool"))
        ),
        "rejects_pass": lambda: (
            prepared.filter(F.col("reason").isNotNull())
            .write.mode("overwrite")
            .parquet(str(workdir / "profile-rejects"))
        ),
    }
    for name, fn in experiments.items():
        out[name] = measure(fn)
        print(f"  profile: {name:45s} {out[name]}", flush=True)

    # In-worker timings per task.
    caption_index = good.columns.index("caption")
    from functools import partial

    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StructField,
        StructType,
    )

    schema = StructType(
        [
            StructField("pid", LongType()),
            StructField("cached", BooleanType()),
            *[
                StructField(n, DoubleType())
                for n in ("load_s", "wait_s", "match_s", "match_cpu_s", "total_s")
            ],
            *[StructField(n, LongType()) for n in ("rows", "batches", "matches")],
        ]
    )
    probe = partial(_probe_partition, matcher_file=matcher_file, caption_index=caption_index)
    t = time.perf_counter()
    tasks = [r.asDict() for r in good.mapInArrow(probe, schema).collect()]
    wall = time.perf_counter() - t
    out["probe"] = {
        "wall_seconds": round(wall, 2),
        "tasks": len(tasks),
        "worker_pids": len({r["pid"] for r in tasks}),
        "automaton_loads": sum(1 for r in tasks if not r["cached"]),
        "load_s_total": round(sum(r["load_s"] for r in tasks), 2),
        "wait_s_total": round(sum(r["wait_s"] for r in tasks), 2),
        "match_s_total": round(sum(r["match_s"] for r in tasks), 2),
        "task_s_total": round(sum(r["total_s"] for r in tasks), 2),
        "rows_per_task": sorted(r["rows"] for r in tasks),
        "batches_total": sum(r["batches"] for r in tasks),
        "match_cpu_s_total": round(sum(r["match_cpu_s"] for r in tasks), 2),
        "python_match_captions_per_cpu_s": round(
            sum(r["rows"] for r in tasks) / max(sum(r["match_cpu_s"] for r in tasks), 1e-9)
        ),
        "python_match_captions_per_s_per_worker": round(
            sum(r["rows"] for r in tasks) / max(sum(r["match_s"] for r in tasks), 1e-9)
        ),
    }
    print(f"  profile: probe {out['probe']}", flush=True)

    # Knobs: Arrow batch size and split size (both runtime SQL settings).
    default_batch = out["arrow_max_records_per_batch"]
    out["arrow_batch"] = {}
    for n in (2_000, 50_000):
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(n))
        out["arrow_batch"][n] = measure(experiments["match_noop (no Parquet write)"])
        print(f"  profile: arrow batch {n:>6}: {out['arrow_batch'][n]}", flush=True)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", default_batch)
    default_split = out["max_partition_bytes"]
    out["split_size"] = {}
    for size in ("8m", "128m"):
        spark.conf.set("spark.sql.files.maxPartitionBytes", size)
        _, g = good_rows()
        n_tasks = g.rdd.getNumPartitions()
        res = measure(
            lambda g=g: match_pool(g, matcher_file).write.format("noop").mode("overwrite").save()
        )
        out["split_size"][size] = {"tasks": n_tasks, **res}
        print(f"  profile: maxPartitionBytes {size}: {out['split_size'][size]}", flush=True)
    spark.conf.set("spark.sql.files.maxPartitionBytes", default_split)
    return out


def bench_spark(args: argparse.Namespace, data: dict, monitor: ProcessMonitor) -> dict:
    from curation.spark import SparkConfig, get_spark
    from curation.stages.match import MatchConfig, run_match

    workdir = Path(args.workdir)
    local_dir = workdir / "spark-local"
    shutil.rmtree(local_dir, ignore_errors=True)
    local_dir.mkdir(parents=True)
    out: dict = {}
    t = time.perf_counter()
    conf = dict(item.split("=", 1) for item in args.conf)
    spark = get_spark(
        SparkConfig(master=args.master, app_name="bench-match", local_dir=str(local_dir), conf=conf)
    )
    out["session_start_seconds"] = round(time.perf_counter() - t, 2)
    out["cores"] = spark.sparkContext.defaultParallelism
    out["spark_version"] = spark.version
    out["max_partition_bytes"] = spark.conf.get("spark.sql.files.maxPartitionBytes")
    out["arrow_max_records_per_batch"] = spark.conf.get(
        "spark.sql.execution.arrow.maxRecordsPerBatch"
    )
    print(
        f"Spark {spark.version} on {args.master}: session started in {out['session_start_seconds']} s",
        flush=True,
    )
    timer = PhaseTimer()
    try:
        for run in ("cold", "warm"):
            output = workdir / f"run-{run}"
            shutil.rmtree(output, ignore_errors=True)
            config = MatchConfig(input=data["pool"], output=str(output), metadata=data["metadata"])
            monitor.begin()
            t = time.perf_counter()
            result = run_match(spark, config, force=True)
            seconds = time.perf_counter() - t
            mem = monitor.end()
            s = result.summary
            out[run] = {
                "seconds": round(seconds, 2),
                "captions_per_s": round(s["input_rows"] / seconds),
                "input_rows": s["input_rows"],
                "usable_rows": s["usable_rows"],
                "rejected": s["rejected"],
                "matched_share": round(s["matched_share"], 4),
                "total_matches": s["total_matches"],
                "matches_per_caption": round(s["total_matches"] / max(s["usable_rows"], 1), 2),
                "captions_per_cpu_s": round(
                    s["input_rows"] / max(mem["cpu"]["own_cpu_seconds"], 1e-9)
                ),
                "output_files": len(list((output / "pool").glob("*.parquet"))),
                "phases_seconds": timer.take(),
                "memory": mem,
            }
            print(
                f"  {run}: {seconds:.1f} s, {out[run]['captions_per_s']:,} captions/s, "
                f"phases {out[run]['phases_seconds']}",
                flush=True,
            )
    finally:
        timer.restore()
    if args.profile:
        out["profile"] = profile_spark(spark, data, workdir, out["cold"]["input_rows"], monitor)
    spark.stop()
    if not args.keep_outputs:  # ~200 MiB each; the data cache is kept
        for name in ("run-cold", "run-warm", "profile-pool", "profile-rejects", "spark-local"):
            shutil.rmtree(workdir / name, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------
# In-process loops
# --------------------------------------------------------------------------------------------------


def bench_bare(data: dict) -> tuple[dict, list[str], object]:
    from curation.matching import Matcher
    from curation.metadata import load_metadata

    out: dict = {}
    metadata = load_metadata(data["metadata"])
    entries = metadata.entries
    gc.collect()
    rss0 = rss_mib()
    t = time.perf_counter()
    matcher = Matcher(entries)
    out["build_seconds"] = round(time.perf_counter() - t, 2)
    out["build_rss_mib"] = round(rss_mib() - rss0, 1)
    t = time.perf_counter()
    blob = pickle.dumps(matcher, protocol=pickle.HIGHEST_PROTOCOL)
    out["pickle_dump_seconds"] = round(time.perf_counter() - t, 2)
    out["pickle_mib"] = round(len(blob) / MIB, 1)
    loads = []
    for _ in range(3):
        t = time.perf_counter()
        loaded = pickle.loads(blob)
        loads.append(time.perf_counter() - t)
        del loaded
    out["pickle_load_seconds"] = round(min(loads), 2)
    out["pickle_load_seconds_all"] = [round(x, 2) for x in loads]
    del blob
    t = time.perf_counter()
    column = pq.read_table(data["pool"], columns=["caption"]).column("caption")
    out["read_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    captions = column.to_pylist()
    out["to_pylist_seconds"] = round(time.perf_counter() - t, 2)
    del column
    gc.collect()
    window = CpuWindow()
    t = time.perf_counter()
    ids = matcher.match_many(captions)
    seconds = time.perf_counter() - t
    out["cpu"] = window.result()
    out["match_seconds"] = round(seconds, 2)
    out["rows"] = len(captions)
    out["captions_per_s"] = round(len(captions) / seconds)
    out["captions_per_cpu_s"] = round(len(captions) / max(out["cpu"]["own_cpu_seconds"], 1e-9))
    out["captions_per_s_incl_to_pylist"] = round(
        len(captions) / (seconds + out["to_pylist_seconds"])
    )
    out["total_matches"] = len(ids.values)
    out["matches_per_caption"] = round(len(ids.values) / len(captions), 2)
    lengths = np.diff(ids.offsets.to_numpy())
    out["matched_share"] = round(float((lengths > 0).mean()), 4)
    out["matches_per_caption_p50_p99_max"] = [
        int(np.median(lengths)),
        int(np.percentile(lengths, 99)),
        int(lengths.max()),
    ]
    out["process_rss_mib"] = round(rss_mib(), 1)
    return out, captions, (matcher, entries, ids)


def bench_naive(args: argparse.Namespace, captions: list[str], state) -> dict:
    from curation.matching import naive_match

    matcher, entries, ids = state
    rng = np.random.default_rng(args.seed + 1)
    sample = rng.choice(len(captions), size=min(args.naive_sample, len(captions)), replace=False)
    offsets = ids.offsets.to_numpy()
    values = ids.values.to_numpy()
    done = mismatches = 0
    window = CpuWindow()
    t = time.perf_counter()
    deadline = t + args.naive_seconds
    for i in sample:
        got = naive_match(captions[i], entries)
        expected = values[offsets[i] : offsets[i + 1]].tolist()
        mismatches += got != expected
        done += 1
        if time.perf_counter() > deadline:
            break
    seconds = time.perf_counter() - t
    return {
        "cpu": window.result(),
        "sample_requested": len(sample),
        "sample_timed": done,
        "seconds": round(seconds, 2),
        "captions_per_s": round(done / seconds, 2),
        "extrapolated": done < len(captions),
        "extrapolated_seconds_for_all_rows": round(len(captions) * seconds / done),
        "mismatches_vs_automaton": mismatches,
        "time_budget_seconds": args.naive_seconds,
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def machine_facts() -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "?"

    try:
        java = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30
        ).stderr.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        java = "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(mem_kib / MIB, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "java": java,
        "pyspark": version("pyspark"),
        "pyarrow": version("pyarrow"),
        "pyahocorasick": version("pyahocorasick"),
        "numpy": version("numpy"),
        "platform": platform.platform(),
    }


def print_table(r: dict) -> None:
    f, p, d, s, b, n = r["machine"], r["params"], r["data"], r["spark"], r["bare"], r["naive"]
    cores = s["cores"]

    def line(what: str, value: str, note: str = "") -> None:
        print(f"  {what:<40} {value:>14}  {note}")

    def busy(cpu: dict) -> str:
        return f"others kept {cpu['others_share_of_machine']:.0%} of the machine busy"

    print()
    print("=" * 110)
    print(f"match benchmark (numbers carry {NOISE} noise, more on a shared machine; see 'others')")
    print(
        f"machine: nproc {f['nproc']} ({f['cpu']}), {f['memory_gib']} GiB; load average at start "
        f"{f['loadavg_at_start']}, at end {r['loadavg_at_end']}"
    )
    print(
        f"versions: python {f['python']}, {f['java']}, pyspark {f['pyspark']}, pyarrow "
        f"{f['pyarrow']}, pyahocorasick {f['pyahocorasick']}, numpy {f['numpy']}"
    )
    generated = "cached" if d["cached"] else f"generated in {d['generate_seconds']} s"
    print(
        f"params: rows {p['rows']:,}, entries {p['entries']:,}, master {p['master']}, seed "
        f"{p['seed']}; pool {p['files']} Parquet files, {d['pool_bytes'] / MIB:.0f} MiB, "
        f"captions {d['caption_chars_mean']} chars mean (p50 {d['caption_chars_p50']}, p99 "
        f"{d['caption_chars_p99']}); data {generated}"
        + (f"; Spark conf {p['conf']}" if p.get("conf") else "")
    )
    print("-" * 110)
    line("Spark session start", f"{s['session_start_seconds']:.1f} s")
    for run in ("cold", "warm"):
        x = s[run]
        per_core = x["captions_per_s"] / cores
        line(
            f"match stage, {run}",
            f"{x['captions_per_s']:,} /s",
            f"run_match wall {x['seconds']:.1f} s for {x['input_rows']:,} rows; {busy(x['memory']['cpu'])}",
        )
        line(
            "  per core vs bare loop",
            f"{100 * per_core / b['captions_per_s']:.0f} %",
            f"{per_core:,.0f} /s per core (÷ {cores}) vs {b['captions_per_s']:,} /s; target >= 50 %",
        )
        kinds = x["memory"]["by_kind"]
        cpu_split = ", ".join(
            f"{k} {v['cpu_seconds']:.0f}"
            for k, v in sorted(kinds.items())
            if v["cpu_seconds"] >= 0.5
        )
        line(
            "  per CPU-second vs bare loop",
            f"{100 * x['captions_per_cpu_s'] / b['captions_per_cpu_s']:.0f} %",
            f"{x['captions_per_cpu_s']:,} captions per CPU-s (CPU s: {cpu_split}) vs "
            f"{b['captions_per_cpu_s']:,}",
        )
        ph = x["phases_seconds"]
        jobs = x["seconds"] - sum(ph.values())
        line(
            "  wall split",
            "",
            ", ".join(f"{k} {v:.1f}" for k, v in ph.items()) + f", Spark jobs {jobs:.1f} s",
        )
    line(
        "bare loop, Matcher.match_many",
        f"{b['captions_per_s']:,} /s",
        f"1 process, {b['match_seconds']:.1f} s for {b['rows']:,} captions; "
        f"{b['captions_per_cpu_s']:,} per CPU-s; {busy(b['cpu'])}",
    )
    line(
        "  automaton build",
        f"{b['build_seconds']:.2f} s",
        f"+{b['build_rss_mib']:.0f} MiB RSS; pickle {b['pickle_mib']:.0f} MiB, dump "
        f"{b['pickle_dump_seconds']:.2f} s, pickle.loads {b['pickle_load_seconds']:.2f} s (best of 3)",
    )
    line(
        "naive_match, entry by entry",
        f"{n['captions_per_s']:.2f} /s",
        f"EXTRAPOLATED from {n['sample_timed']} captions in {n['seconds']:.0f} s "
        f"(all rows: ~{n['extrapolated_seconds_for_all_rows'] / 3600:.0f} h); "
        f"{n['mismatches_vs_automaton']} mismatches vs automaton; {busy(n['cpu'])}",
    )
    line("  bare loop ÷ naive", f"{b['captions_per_s'] / n['captions_per_s']:,.0f} x")
    for run in ("cold", "warm"):
        m = s[run]["memory"]
        w, dmn = m["by_kind"].get("worker", {}), m["by_kind"].get("daemon", {})
        line(
            f"peak RSS per Python worker, {run}",
            f"{max(w.get('peak_rss_mib', 0), w.get('peak_hwm_mib', 0)):,.0f} MiB",
            f"{w.get('processes', 0)} workers seen, max {m['max_workers_alive']} at once "
            f"({m['max_workers_total_rss_mib']:,.0f} MiB together); daemon "
            f"{dmn.get('peak_hwm_mib', 0):,.0f} MiB; target < 2048 MiB",
        )
    for run in ("cold", "warm"):
        k = s[run]["memory"]["by_kind"]
        line(
            f"peak RSS driver (Python), {run}",
            f"{k.get('driver', {}).get('peak_rss_mib', 0):,.0f} MiB",
            f"JVM (driver + executor, local mode) {k.get('jvm', {}).get('peak_rss_mib', 0):,.0f} MiB",
        )
    line(
        "matches per caption (mean)",
        f"{s['warm']['matches_per_caption']:.2f}",
        f"from the stage's summary; bare loop {b['matches_per_caption']:.2f} (p50/p99/max "
        f"{b['matches_per_caption_p50_p99_max']}), {b['matched_share']:.1%} of captions match",
    )
    line(
        "tasks",
        f"{s['warm']['output_files']} files",
        f"written per run; maxPartitionBytes {s['max_partition_bytes']}, Arrow "
        f"maxRecordsPerBatch {s['arrow_max_records_per_batch']}, {cores} cores",
    )
    print("=" * 110)
    if "profile" in s:
        print("profile:")
        print(json.dumps(s["profile"], indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="captions in the pool")
    parser.add_argument("--entries", type=int, default=500_000, help="metadata entries")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--workdir", default="bench/out/match", help="data cache and outputs")
    parser.add_argument(
        "--naive-sample", type=int, default=2000, help="captions given to naive_match"
    )
    parser.add_argument(
        "--naive-seconds",
        type=float,
        default=60.0,
        help="time budget of the naive loop; it stops early and extrapolates",
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--files", type=int, default=8, help="Parquet files in the pool")
    parser.add_argument("--row-group", type=int, default=50_000, help="Parquet row group rows")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also split the Spark stage into parts and vary knobs",
    )
    parser.add_argument("--skip-spark", action="store_true", help="only run the in-process loops")
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting for the session (repeatable), e.g. to try a proposed change",
    )
    parser.add_argument(
        "--keep-outputs", action="store_true", help="keep the stage outputs (run-cold/, run-warm/)"
    )
    parser.add_argument(
        "--generate-only", action="store_true", help="only generate (and cache) the data"
    )
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.conf):
        parser.error("--conf takes KEY=VALUE")
    if args.rows <= 0 or args.entries <= 0 or args.files <= 0 or args.naive_sample <= 0:
        parser.error("--rows, --entries, --files and --naive-sample must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine_facts(), "params": vars(args).copy()}
    print(f"machine: {json.dumps(results['machine'])}", flush=True)
    t = time.perf_counter()
    data = ensure_data(args)
    results["data"] = data
    print(
        f"data: {'cached' if data['cached'] else 'generated'} in {time.perf_counter() - t:.1f} s "
        f"-> {data['directory']}",
        flush=True,
    )
    if args.generate_only:
        return 0
    if not args.skip_spark:
        monitor = ProcessMonitor()
        monitor.start()
        try:
            results["spark"] = bench_spark(args, data, monitor)
        finally:
            monitor.stop()
    print("bare loop ...", flush=True)
    bare, captions, state = bench_bare(data)
    results["bare"] = bare
    print(f"  {bare['captions_per_s']:,} captions/s", flush=True)
    print(
        f"naive loop (up to {args.naive_sample} captions or {args.naive_seconds:.0f} s) ...",
        flush=True,
    )
    results["naive"] = bench_naive(args, captions, state)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["noise"] = NOISE
    if "spark" in results:
        cores = results["spark"]["cores"]
        for run in ("cold", "warm"):
            x = results["spark"][run]
            x["per_core_captions_per_s"] = round(x["captions_per_s"] / cores)
            x["per_core_share_of_bare"] = round(
                x["captions_per_s"] / cores / bare["captions_per_s"], 3
            )
            x["cpu_efficiency_vs_bare"] = round(
                x["captions_per_cpu_s"] / bare["captions_per_cpu_s"], 3
            )
    out = workdir / "results.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if "spark" in results:
        print_table(results)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
