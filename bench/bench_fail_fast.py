"""How long ``curate`` takes to refuse a bad config or a bad path (issue 15: "fail in under 2 s").

    python bench/bench_fail_fast.py [--repeats 5]

Each case runs ``curate`` in a fresh process (as a user does) and must exit with status 2 and one
``error:`` line, without starting Spark; the table gives the median and the worst wall time, and
the median CPU time (user + system) of the process, which a busy machine does not inflate. Not a
test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cases(work: Path) -> list[tuple[str, list[str]]]:
    """(what, argv) of each bad invocation; the config files are written into ``work``."""
    pool = work / "pool.parquet"
    pool.write_bytes(b"")
    typo = work / "typo.yaml"
    typo.write_text(f"run:\n  dir: {work / 'run'}\n  pool: {pool}\nbalance:\n  target_sise: 5\n")
    no_pool = work / "no-pool.yaml"
    no_pool.write_text(f"run:\n  dir: {work / 'run'}\nbalance:\n  cap: 5\n")
    missing = work / "missing.yaml"
    missing.write_text(f"run:\n  dir: {work / 'run'}\n  pool: {work / 'nowhere'}\n")
    good = work / "good.yaml"
    good.write_text(f"run:\n  dir: {work / 'run'}\n  pool: {pool}\nbalance:\n  cap: 5\n")
    return [
        ("run: unknown key in the file", ["run", "--config", str(typo)]),
        ("run: --set typo", ["run", "--config", str(good), "--set", "balance.metod=rake"]),
        ("run: no run.pool", ["run", "--config", str(no_pool)]),
        ("run: pool not found", ["run", "--config", str(missing)]),
        ("count: --input not found", ["count", "--input", str(work / "x"), "--output", "o"]),
        ("balance: NaN cap", ["balance", "--cap", "nan"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"{'case':<32} {'median s':>9} {'worst s':>8} {'CPU s':>6}  error")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for what, case in cases(work):
            times, cpu, error = [], [], ""
            for _ in range(args.repeats):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "curation.cli", *case],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=work,
                )
                times.append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
                if done.returncode != 2 or "Spark" in done.stderr:
                    print(f"{what}: unexpected outcome {done.returncode}: {done.stderr[-500:]}")
                    return 1
            shown = error if len(error) <= 90 else error[:87] + "..."
            print(
                f"{what:<32} {statistics.median(times):>9.2f} {max(times):>8.2f} "
                f"{statistics.median(cpu):>6.2f}  {shown}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
