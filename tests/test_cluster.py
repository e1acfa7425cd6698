"""match → count → balance → select on a real Spark standalone cluster (a master and two workers
on 127.0.0.1, ``spark-submit --master spark://...`` of the ``jobs/`` entry points, the package
shipped with ``--py-files``), with one executor JVM SIGKILLed in the middle of the match. The
selection must equal, byte for byte, the one of a ``local[*]`` run of the same stages.

Run it alone with ``make test-cluster`` (``pytest -m cluster``); ``make test`` runs it too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.cluster import FAST_JVM, REPO, StandaloneCluster, start_cluster

ROWS = 120_000
FILES = 8  # eight input splits: eight match tasks, so an executor is busy when it is killed
METADATA = REPO / "metadata" / "default.json"
COUNT_ARGS = ["--margin", "source"]
# The solve runs on the driver (the same code on either side); metaclip keeps it cheap here.
BALANCE_ARGS = ["--method", "metaclip", "--target-size", "20000"]
SELECT_ARGS = ["--seed", "7"]

LOCAL_RUN = textwrap.dedent(
    """
    import sys
    from curation.spark import SparkConfig, get_spark
    from curation.stages.balance import BalanceConfig, run_balance
    from curation.stages.count import CountConfig, run_count
    from curation.stages.match import MatchConfig, run_match
    from curation.stages.select import SelectConfig, run_select

    pool, metadata, out, local_dir = sys.argv[1:5]
    spark = get_spark(SparkConfig(master="local[*]", local_dir=local_dir, driver_memory="1g"))
    m = run_match(spark, MatchConfig(input=pool, output=out + "/matched", metadata=metadata)).output
    c = run_count(spark, CountConfig(input=m, output=out + "/counts", margins=["source"])).output
    b = run_balance(spark, BalanceConfig(input=m, counts=c, output=out + "/balance",
                                         method="metaclip", target_size=20000)).output
    run_select(spark, SelectConfig(input=m, weights=b, output=out + "/selected", seed=7))
    spark.stop()
    """
)


def package_zip(path: Path) -> str:
    """``curation/`` as a zip for ``--py-files`` (how the README ships it to a cluster)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((REPO / "curation").rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, f.relative_to(REPO).as_posix())
    return str(path)


def selection(directory: Path) -> tuple[bytes, list[tuple[str, int]]]:
    """subset.npy's bytes and the sorted (uid, repeats) of the selected rows."""
    table = pq.read_table(directory / "selected", columns=["uid", "repeats"])
    rows = sorted(zip(table.column("uid").to_pylist(), table.column("repeats").to_pylist()))
    return (directory / "subset.npy").read_bytes(), rows


def matched_pool(directory: Path) -> list[tuple[str, tuple[int, ...]]]:
    table = pq.read_table(directory / "pool", columns=["uid", "entry_ids"])
    return sorted(
        zip(table.column("uid").to_pylist(), map(tuple, table.column("entry_ids").to_pylist()))
    )


def comparable(summary_file: Path) -> dict:
    """A stage summary without what legitimately differs between runs (paths, timings)."""
    summary = json.loads(summary_file.read_text())
    for key in ("seconds", "input"):
        summary.pop(key, None)
    return summary


def lost_executor_tasks(event_dir: Path) -> tuple[int, int]:
    """(executors removed, tasks ended by ExecutorLostFailure) in the event log of one app."""
    removed = lost = 0
    for log in (p for p in event_dir.rglob("*") if p.is_file()):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event.get("Event") == "SparkListenerExecutorRemoved":
                removed += 1
            elif event.get("Event") == "SparkListenerTaskEnd":
                reason = event.get("Task End Reason", {}).get("Reason")
                lost += reason == "ExecutorLostFailure"
    return removed, lost


@pytest.fixture
def cluster(tmp_path):
    started = start_cluster(tmp_path / "cluster", workers=2, cores=1, memory="1g")
    try:
        yield started
    finally:
        started.stop()


def submit_ok(cluster: StandaloneCluster, stage: str, args: list[str], timings: dict, **kw) -> str:
    began = time.monotonic()
    done = cluster.submit(REPO / "jobs" / f"{stage}.py", args, **kw)
    timings[stage] = round(time.monotonic() - began, 1)
    assert done.returncode == 0, f"{stage} failed on the cluster:\n{done.stderr[-4000:]}"
    return done.stdout


def test_every_job_script_starts(tmp_path):
    """``python jobs/<stage>.py`` (what spark-submit runs) puts jobs/ first on sys.path, where
    jobs/select.py once shadowed the standard library's ``select`` and broke every job."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for job in sorted((REPO / "jobs").glob("*.py")):
        done = subprocess.run(
            [sys.executable, str(job), "--help"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and done.stdout.startswith("usage: curate "), (
            f"{job.name}: {done.stderr[-2000:]}"
        )


@pytest.mark.cluster
def test_cluster_run_with_a_killed_executor_equals_local(tmp_path, cluster):
    started = time.monotonic()
    timings: dict[str, float] = {}
    from curation.stages.demo_pool import DemoPoolConfig, write_demo_pool

    pool = tmp_path / "pool"
    write_demo_pool(
        DemoPoolConfig(output=str(pool), rows=ROWS, files=FILES, seed=5, metadata=str(METADATA))
    )
    py_files = package_zip(tmp_path / "curation.zip")
    timings["pool"] = round(time.monotonic() - started, 1)
    out = tmp_path / "cluster-run"
    events = tmp_path / "events"
    events.mkdir()

    # match, with worker 0's executor killed while the match tasks run
    match = cluster.submit(
        REPO / "jobs" / "match.py",
        ["--input", str(pool), "--output", str(out / "matched"), "--metadata", str(METADATA)],
        conf={
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": f"file://{events}",
            "spark.eventLog.compress": "false",
            "spark.eventLog.rolling.enabled": "false",
            # one task per input file (docs/spark.md, pitfall 3), not two tasks for the eight
            "spark.sql.files.maxPartitionBytes": "2m",
        },
        py_files=py_files,
        background=True,
    )
    match_log = cluster.root / "match.out"
    killed = None
    try:
        deadline = time.monotonic() + 600  # hang guard
        while time.monotonic() < deadline and match.poll() is None:
            # a running write task has an attempt directory: two means both executors are busy
            running = list(out.glob("matched.tmp-*/pool/_temporary/*/_temporary/attempt_*"))
            victims = cluster.executor_pids(0)
            if len(running) >= 2 and victims:
                os.kill(victims[0], signal.SIGKILL)
                killed = victims[0]
                break
            time.sleep(0.05)
        if killed is None:
            pytest.fail(
                f"the match ended (code {match.poll()}) or never started before the kill:\n"
                + match_log.read_text(errors="replace")[-4000:]
            )
        assert match.poll() is None
        match.wait(timeout=900)  # hang guard
    finally:
        if match.poll() is None:
            match.kill()
            match.wait()
    assert match.returncode == 0, (
        "match failed after the executor kill:\n" + match_log.read_text(errors="replace")[-4000:]
    )
    timings["match"] = round(time.monotonic() - started - timings["pool"], 1)
    removed, lost = lost_executor_tasks(events)
    assert removed >= 1  # the driver saw the executor go ...
    assert lost >= 1  # ... with a match task running on it, which was run again elsewhere
    assert not list(out.glob("matched.tmp-*"))

    submit_ok(
        cluster,
        "count",
        ["--input", str(out / "matched"), "--output", str(out / "counts"), *COUNT_ARGS],
        timings=timings,
        py_files=py_files,
    )
    submit_ok(
        cluster,
        "balance",
        [
            "--input",
            str(out / "matched"),
            "--counts",
            str(out / "counts"),
            "--output",
            str(out / "balance"),
            *BALANCE_ARGS,
        ],
        timings=timings,
        py_files=py_files,
    )
    submit_ok(
        cluster,
        "select",
        [
            "--input",
            str(out / "matched"),
            "--weights",
            str(out / "balance"),
            "--output",
            str(out / "selected"),
            *SELECT_ARGS,
        ],
        timings=timings,
        py_files=py_files,
    )
    cluster.stop()  # free the cores for the local run

    timings["cluster"] = round(time.monotonic() - started, 1)
    # The same snapshot of the package as the cluster's (the zip): the tree may change meanwhile.
    local = tmp_path / "local-run"
    env = {
        **os.environ,
        "PYTHONPATH": py_files,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "JAVA_TOOL_OPTIONS": FAST_JVM,
    }
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOCAL_RUN,
            str(pool),
            str(METADATA),
            str(local),
            str(tmp_path / "sl"),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=900,  # hang guard
    )

    timings["local"] = round(time.monotonic() - started - timings["cluster"], 1)
    print(f"timings: {timings}")
    subset_cluster, rows_cluster = selection(out / "selected")
    subset_local, rows_local = selection(local / "selected")
    assert len(rows_local) > 1000
    assert subset_cluster == subset_local  # byte for byte
    assert rows_cluster == rows_local
    assert np.load(out / "selected" / "subset.npy").dtype == np.dtype("u8,u8")
    assert matched_pool(out / "matched") == matched_pool(local / "matched")
    # the driver-side solve saw the same table in the same order: the same bits
    assert (out / "balance" / "params.json").read_bytes() == (
        local / "balance" / "params.json"
    ).read_bytes()
    for stage in ("matched", "counts", "selected"):
        assert comparable(out / stage / "summary.json") == comparable(
            local / stage / "summary.json"
        ), stage
    # a hang guard only: a loaded two-core machine takes several times the ~120 s of an idle one
    assert time.monotonic() - started < 1800, f"hang guard: the run took over 30 min ({timings})"
