"""Benchmark of the run report (``curate report``) on a large run: wall time and peak RSS.

    python bench/bench_report.py --run RUN_DIR [--scale K] [--copies-per-row-group G] [--workdir DIR]

Not a test: it prints one line and writes ``<workdir>/results.json``; nothing is asserted.

``RUN_DIR`` is a committed run (``curate run``, or ``bench/identical_outputs.py run``). With
``--scale K`` the run is copied to ``<workdir>/run-xK`` and its count stage's distinct-signature
table is replicated K times (the same rows, so the margins, the entries and each balance run's
parameters still fit; every expected count is K times larger). The signature table is what the
report reads row by row (the margin "after" table rescoring); the other tables it reads are
bounded by the number of entries or margin levels. So memory should stay flat as K grows, and time
grow linearly. By default each copy is a row group of its own (K row groups a file, far smaller
than Spark's); a file's footer, which a Parquet reader holds while it reads the file, has one
entry per row group, so at large K it adds a little per row. ``--copies-per-row-group G`` writes
G copies to a row group (to ``<workdir>/run-xK-gG``).

The report runs in this process; a ``/proc`` monitor (``bench/_monitor.py``) records its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._monitor import ProcessMonitor  # noqa: E402


def scaled_copy(run: Path, scale: int, out: Path, per_group: int = 1) -> Path:
    """``run`` copied to ``out`` with each signature Parquet file's rows repeated ``scale`` times,
    ``per_group`` copies to a row group (``scale / per_group`` row groups: no reader has to hold
    more than one row group at once; a file's footer holds one entry per row group)."""
    if (out / ".done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("report", "shards*", "resharded"))
    signatures = out / "counts" / "signatures"
    for path in sorted(signatures.glob("*.parquet")):
        table = pq.read_table(path)
        group = pa.concat_tables([table] * per_group).combine_chunks()
        with pq.ParquetWriter(path.with_suffix(".tmp"), table.schema) as writer:
            for _ in range(scale // per_group):
                writer.write_table(group, row_group_size=group.num_rows)
            if scale % per_group:
                rest = pa.concat_tables([table] * (scale % per_group)).combine_chunks()
                writer.write_table(rest, row_group_size=rest.num_rows)
        path.with_suffix(".tmp").replace(path)
    (out / ".done").touch()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a committed run directory")
    parser.add_argument("--scale", type=int, default=1, help="replicate the signature table K×")
    parser.add_argument(
        "--copies-per-row-group",
        type=int,
        default=1,
        help="copies of a signature file's rows in each row group of the scaled copy (1: one "
        "row group per copy, as many row groups as --scale; Spark writes row groups of ~128 MiB)",
    )
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "report"))
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run)
    if args.scale > 1:
        per_group = max(1, min(args.copies_per_row_group, args.scale))
        name = f"run-x{args.scale}" + (f"-g{per_group}" if per_group > 1 else "")
        run = scaled_copy(run, args.scale, work / name, per_group)
    signatures = run / "counts" / "signatures"
    rows = row_groups = 0
    for path in signatures.glob("*.parquet"):  # one footer at a time: each holds every row group
        footer = pq.read_metadata(path)
        rows, row_groups = rows + footer.num_rows, row_groups + footer.num_row_groups
    del footer

    from curation.report import build_report

    monitor = ProcessMonitor()
    monitor.start()
    monitor.begin()
    started = time.perf_counter()
    report = build_report(str(run))
    seconds = time.perf_counter() - started
    processes = monitor.end()
    monitor.stop()
    driver = processes["by_kind"].get("driver", {})
    result = {
        "run": str(run),
        "signature_rows": rows,
        "signature_row_groups": row_groups,
        "balance_runs": len(report.summary.get("balance", [])),
        "seconds": round(seconds, 2),
        "peak_rss_mib": max(driver.get("peak_rss_mib", 0), driver.get("peak_hwm_mib", 0)),
        "load_average": os.getloadavg(),
        "cpu": processes["cpu"],
    }
    (work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"report: {rows:,} signature rows ({row_groups:,} row groups), "
        f"{result['balance_runs']} balance runs: "
        f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"(others kept {processes['cpu']['others_share_of_machine']:.0%} of the machine busy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
