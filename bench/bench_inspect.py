"""Benchmark of ``curate inspect``: wall time and peak RSS of each question on a large run.

    python bench/bench_inspect.py --run RUN [--compare-with OTHER_RUN] [--out results.json]
    python bench/bench_inspect.py --build RUN --rows 10000000   # make the run first (long)

Not a test: it prints a table and writes JSON; nothing is asserted. Each question runs as
``curate inspect ...`` in a fresh process (``python -m curation.cli``), so its time includes the
interpreter, imports and Polars' scans, as a user sees it, and its peak RSS
(``getrusage(RUSAGE_CHILDREN)``, measured per question in a child of a fresh wrapper process)
is its own; so is its CPU time (user + system), which depends less than the wall time on what
else runs on the machine. The goal (issue 16): each ≤ 5 s and < 1 GiB on a 10M-row run.

``--build`` writes a demo run with ``curate run``: demo-pool (``--rows`` captions, the default
metadata list), match, count with the ``source`` margin, balance by rake to 10 % of the rows,
select. On a 2-core machine a 10M-row run takes about half an hour.

The questions: ``entries`` (top 20 by count; all entries sorted by residual), ``captions`` of
the most frequent entry and of a tail entry (all, ``--selected``, ``--dropped``), ``sample`` of
a selected and of a dropped uid, ``compare`` with ``--compare-with`` (default: the run itself).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3

# Runs one command in a child process and prints its wall time and the child's peak RSS.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": done.returncode, "seconds": wall, "rss": usage.ru_maxrss * 1024,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}))
"""


def build(run: Path, rows: int) -> None:
    config = run.parent / f"{run.name}.yaml"
    config.write_text(
        f"run:\n  dir: {run}\n  stages: [demo-pool, match, count, balance, select]\n"
        f"demo:\n  rows: {rows}\n  files: {max(8, rows // 250_000)}\n  seed: 0\n"
        "count:\n  margins: [source]\n"
        f"balance:\n  method: rake\n  target_size: {rows // 10}\n"
        "select:\n  seed: 0\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), SPARK_LOCAL_IP="127.0.0.1")
    subprocess.run(
        [sys.executable, "-m", "curation.cli", "run", "--config", str(config)], check=True, env=env
    )


def measure(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "curation.cli", "inspect", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def pick_examples(run: Path) -> dict[str, str]:
    """A head and a tail entry, a selected and a dropped uid (read with Polars, not timed)."""
    import polars as pl

    from curation.inspect import RunOutputs

    out = RunOutputs.find(str(run))
    ef = out.entry_factors().filter(pl.col("count") > 0).sort("count").collect()
    cap = out.cap or 1.0
    tail = ef.filter(pl.col("count") <= cap)
    selected = out.selection().select("uid").head(1).collect()["uid"][0]
    dropped = (
        out.pool()
        .select("uid")
        .head(100_000)
        .join(out.selection().select("uid"), on="uid", how="anti")
        .head(1)
        .collect()["uid"][0]
    )
    return {
        "head": ef["entry"][-1],
        "tail": (tail if tail.height else ef)["entry"][-1],
        "selected_uid": selected,
        "dropped_uid": dropped,
    }


def questions(run: str, other: str, ex: dict[str, str]) -> list[tuple[str, list[str]]]:
    r = ["--run", run]
    return [
        ("entries --top 20", ["entries", *r, "--top", "20"]),
        ("entries --sort residual --top 0", ["entries", *r, "--sort", "residual", "--top", "0"]),
        (f"captions --entry {ex['head']!r}", ["captions", *r, "--entry", ex["head"]]),
        (
            f"captions --entry {ex['head']!r} --selected",
            ["captions", *r, "--entry", ex["head"], "--selected"],
        ),
        (
            f"captions --entry {ex['head']!r} --dropped",
            ["captions", *r, "--entry", ex["head"], "--dropped"],
        ),
        (f"captions --entry {ex['tail']!r}", ["captions", *r, "--entry", ex["tail"]]),
        ("sample --uid <selected>", ["sample", *r, "--uid", ex["selected_uid"]]),
        ("sample --uid <dropped>", ["sample", *r, "--uid", ex["dropped_uid"]]),
        ("compare", ["compare", run, other]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run directory to query")
    parser.add_argument("--build", help="write a demo run here first (then query it)")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the built run")
    parser.add_argument("--compare-with", default="", help="second run for compare")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each question (best kept)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "inspect" / "results.json"))
    args = parser.parse_args()
    if args.build:
        build(Path(args.build).resolve(), args.rows)
    run = str(Path(args.build or args.run).resolve())
    examples = pick_examples(Path(run))
    results = []
    for name, q in questions(run, args.compare_with or run, examples):
        runs = [measure(q) for _ in range(args.repeat)]
        best = min(runs, key=lambda m: m["seconds"])
        if best["rc"] != 0:
            print(f"{name}: failed: {best['stderr']}", file=sys.stderr)
        keys = ("rc", "seconds", "cpu_seconds", "rss")
        results.append({"question": name, **{k: best[k] for k in keys}})
        print(
            f"{name:60s} {best['seconds']:6.2f} s wall {best['cpu_seconds']:6.2f} s CPU "
            f"{best['rss'] / 2**20:7.0f} MiB",
            flush=True,
        )
    rows = json.loads((Path(run) / "selected" / "summary.json").read_text())
    report = {
        "run": run,
        "examples": examples,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "selected": rows.get("selected"),
        "results": results,
        "goal": {"seconds": 5.0, "rss_bytes": GIB},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
