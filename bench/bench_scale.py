"""Scaling benchmark of the whole pipeline: match → count → balance (rake) → select.

Run with ``make bench-scale`` (1M, 2M and 4M captions, 500k entries, ``local[2]``) or
``.venv/bin/python bench/bench_scale.py --sizes 0.25M,0.5M,1M`` for a smaller run. Not a test: it
prints a table and writes ``<workdir>/results.json``; nothing is asserted.

For each size it generates (seeded, cached in ``<workdir>/data/``; the same 500k-entry list for
every size) a pool of that many captions, ``--rows-per-file`` rows per Parquet file so the number
of input tasks grows with the pool, and runs the four stages in one Spark session, after a warm-up
pass of ``match`` on a small pool (``--warmup-rows``) so that the JVM's start-up cost and
the workers' automaton load do not land on the first size. Per stage it records the wall time, the
CPU seconds of every process kind (driver, JVM, Python workers; ``bench/_monitor.py``), the peak RSS
of each kind and the share of the machine other processes kept busy meanwhile.

Linearity: for each stage, CPU seconds per million rows at each size ÷ the same at the smallest
size. 1.00 is linear; above 1.10 the stage costs more per row as the pool grows. CPU seconds are
the figure to compare on a shared machine; wall seconds are printed with the contention share.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._data import ensure_data  # noqa: E402 - after the path insert
from bench._monitor import ProcessMonitor  # noqa: E402

STAGES = ("match", "count", "balance", "select")


def parse_size(text: str) -> int:
    """``4000000``, ``4M``, ``0.25M`` or ``500k`` as a number of rows."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = float(text[:-1] if scale != 1 else text)
    rows = int(round(number * scale))
    if rows <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of rows")
    return rows


def data_for(args: argparse.Namespace, rows: int) -> dict:
    files = max(2, -(-rows // args.rows_per_file))
    ns = argparse.Namespace(
        rows=rows,
        entries=args.entries,
        seed=args.seed,
        files=files,
        row_group=args.row_group,
        workdir=args.workdir,
    )
    return ensure_data(ns)


def run_pipeline(
    spark, data: dict, out: Path, args: argparse.Namespace, monitor=None, stages=STAGES
) -> dict:
    """The stages on one pool; per stage wall, CPU by kind, peak RSS by kind."""
    from curation.stages.balance import BalanceConfig, run_balance
    from curation.stages.count import CountConfig, run_count
    from curation.stages.match import MatchConfig, run_match
    from curation.stages.select import SelectConfig, run_select

    shutil.rmtree(out, ignore_errors=True)
    matched, counts, weights = str(out / "matched"), str(out / "counts"), str(out / "balance")
    configs = {
        "match": (
            run_match,
            MatchConfig(input=data["pool"], output=matched, metadata=data["metadata"]),
        ),
        "count": (run_count, CountConfig(input=matched, output=counts)),
        "balance": (
            run_balance,
            BalanceConfig(
                input=matched,
                counts=counts,
                output=weights,
                method="rake",
                target_fraction=args.target_fraction,
                max_iter=args.max_iter,
            ),
        ),
        "select": (
            run_select,
            SelectConfig(input=matched, weights=weights, output=str(out / "selected"), seed=1),
        ),
    }
    results = {}
    for stage, (run, config) in configs.items():
        if stage not in stages:
            continue
        if monitor is not None:
            monitor.begin()
        t = time.perf_counter()
        result = run(spark, config, force=True)
        wall = time.perf_counter() - t
        if monitor is None:
            continue
        m = monitor.end()
        kinds = m["by_kind"]
        results[stage] = {
            "seconds": round(wall, 2),
            "cpu_seconds": {k: v["cpu_seconds"] for k, v in sorted(kinds.items())},
            "cpu_total": round(sum(v["cpu_seconds"] for v in kinds.values()), 2),
            # sampled VmRSS (every 0.2 s), not VmHWM: the driver, the JVM and reused workers live
            # through every stage, and VmHWM is a process's high-water mark since it started
            "peak_rss_mib": {k: round(v["peak_rss_mib"]) for k, v in sorted(kinds.items())},
            "workers": kinds.get("worker", {}).get("processes", 0),
            "others_share_of_machine": m["cpu"]["others_share_of_machine"],
            "monitor_cpu_seconds": m["monitor_cpu_seconds"],
            "summary_rows": _summary_rows(stage, result.summary),
        }
    return results


def _summary_rows(stage: str, summary: dict) -> dict:
    """A few of the stage's own counts, to check every size did the expected work."""
    keys = {
        "match": ("input_rows", "matched", "total_matches"),
        "count": ("samples", "entries_with_samples", "signatures"),
        "balance": ("status", "iterations", "target_size", "expected_size"),
        "select": ("selected", "eligible"),
    }[stage]
    return {k: summary[k] for k in keys if k in summary}


def print_table(results: dict) -> None:
    sizes = results["sizes"]
    base = sizes[0]
    print()
    print("=" * 118)
    print(
        f"pipeline scaling on {results['params']['master']}, {results['params']['entries']:,} entries; "
        f"load average at start {results['loadavg_at_start']}, at end {results['loadavg_at_end']}"
    )
    header = (
        f"{'stage':<8} {'rows':>10} {'wall s':>8} {'s/M':>7} {'CPU s/M':>8} {'× lin':>6} "
        f"{'others':>7}  {'CPU s/M by kind':<34} {'peak RSS MiB driver/JVM/worker':>30}"
    )
    print(header)
    print("-" * 118)
    for stage in STAGES:
        base_cpu = results["runs"][str(base)][stage]["cpu_total"] / (base / 1e6)
        for rows in sizes:
            r = results["runs"][str(rows)][stage]
            million = rows / 1e6
            cpu_m = r["cpu_total"] / million
            kinds = ", ".join(
                f"{k} {v / million:.1f}" for k, v in r["cpu_seconds"].items() if v >= 0.05
            )
            rss = r["peak_rss_mib"]
            print(
                f"{stage:<8} {rows:>10,} {r['seconds']:>8.1f} {r['seconds'] / million:>7.1f} "
                f"{cpu_m:>8.1f} {cpu_m / base_cpu:>6.2f} {r['others_share_of_machine']:>7.0%}  "
                f"{kinds:<34} {rss.get('driver', 0):>9}/{rss.get('jvm', 0):>5}/{rss.get('worker', 0):>5}"
            )
    print("=" * 118)
    print("× lin: CPU seconds per million rows ÷ the same at the smallest size (1.00 = linear).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="1M,2M,4M",
        help="pool sizes, comma separated (e.g. 0.25M,0.5M,1M)",
    )
    parser.add_argument("--entries", type=int, default=500_000, help="metadata entries")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--workdir", default="bench/out/scale", help="data cache and outputs")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument(
        "--rows-per-file", type=int, default=125_000, help="rows per generated Parquet file"
    )
    parser.add_argument("--row-group", type=int, default=50_000, help="Parquet row group rows")
    parser.add_argument(
        "--target-fraction", type=float, default=0.3, help="balance: rake to this share of matched"
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=0,
        help="balance: rake's pass limit (0: the stage's default); a fixed limit makes the "
        "balance work per size comparable",
    )
    parser.add_argument(
        "--warmup-rows", type=int, default=50_000, help="rows of the untimed warm-up pass (0: none)"
    )
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting"
    )
    parser.add_argument("--keep-outputs", action="store_true", help="keep the stage outputs")
    args = parser.parse_args(argv)
    args.sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    if not args.sizes:
        parser.error("--sizes needs at least one size")
    if any("=" not in item for item in args.conf):
        parser.error("--conf takes KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "params": {k: v for k, v in vars(args).items()},
        "sizes": args.sizes,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "runs": {},
    }
    datasets = {}
    for rows in ([args.warmup_rows] if args.warmup_rows else []) + args.sizes:
        t = time.perf_counter()
        datasets[rows] = data_for(args, rows)
        print(f"data {rows:,} rows: {time.perf_counter() - t:.1f} s", flush=True)

    from curation.spark import SparkConfig, get_spark

    local_dir = workdir / "spark-local"
    shutil.rmtree(local_dir, ignore_errors=True)
    conf = dict(item.split("=", 1) for item in args.conf)
    spark = get_spark(
        SparkConfig(master=args.master, app_name="bench-scale", local_dir=str(local_dir), conf=conf)
    )
    monitor = ProcessMonitor()
    monitor.start()
    try:
        if args.warmup_rows:
            t = time.perf_counter()
            # match only: the JVM's JIT warm-up and the workers' automaton load are the fixed
            # costs; a balance on a small pool with 500k entries is slow and warms nothing new
            run_pipeline(
                spark, datasets[args.warmup_rows], workdir / "run-warmup", args, None, ("match",)
            )
            print(
                f"warm-up ({args.warmup_rows:,} rows): {time.perf_counter() - t:.1f} s", flush=True
            )
        for rows in args.sizes:
            out = workdir / f"run-{rows}"
            res = run_pipeline(spark, datasets[rows], out, args, monitor)
            results["runs"][str(rows)] = res
            print(
                f"{rows:,} rows: "
                + ", ".join(
                    f"{s} {r['seconds']:.0f} s / {r['cpu_total']:.0f} CPU-s" for s, r in res.items()
                ),
                flush=True,
            )
            if not args.keep_outputs:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        monitor.stop()
        spark.stop()
        shutil.rmtree(workdir / "run-warmup", ignore_errors=True)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = workdir / "results.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    history = workdir / "history"
    history.mkdir(exist_ok=True)
    shutil.copy(out, history / f"{time.strftime('%Y%m%dT%H%M%S')}.json")
    print_table(results)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
