"""Atomic stages: a stage SIGKILLed in the middle leaves nothing the next stage accepts, and the
rerun's output equals an uninterrupted run's.

The killed runs are real ``curate`` processes (their own driver, JVM and Python workers); the
reference and the reruns use the test session. The commit itself (rename, marker) is checked at
every intermediate state on an object-store-like file system, where a "rename" is a copy of every
file followed by deletes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import storage
from curation.stages.balance import BalanceConfig, run_balance
from curation.stages.count import CountConfig, run_count
from curation.stages.match import MatchConfig, run_match
from curation.storage import StageInputError
from tests.cluster import FAST_JVM, MARKER_VAR, reap_marked

REPO = Path(__file__).resolve().parents[1]
CURATE = Path(sys.executable).parent / "curate"
METADATA = REPO / "metadata" / "default.json"
ROWS = 100_000


@pytest.fixture(scope="module")
def reference(spark, tmp_path_factory):
    """The demo pool, and its uninterrupted match and count (on the test session)."""
    from curation.stages.demo_pool import DemoPoolConfig, write_demo_pool

    root = tmp_path_factory.mktemp("atomic")
    pool = root / "pool"
    write_demo_pool(
        DemoPoolConfig(output=str(pool), rows=ROWS, files=4, seed=3, metadata=str(METADATA))
    )
    matched = run_match(
        spark, MatchConfig(input=str(pool), output=str(root / "m"), metadata=str(METADATA))
    ).output
    counts = run_count(
        spark, CountConfig(input=matched, output=str(root / "c"), margins=["source"])
    ).output
    return root, pool, Path(matched), Path(counts)


def kill_mid_stage(argv: list[str], ready, root: Path, timeout: float = 120) -> None:
    """Run ``curate argv`` and SIGKILL its driver as soon as ``ready()`` holds (then reap the
    JVM and Python workers it leaves, found by a marker in their environment)."""
    marker = f"{os.getpid()}-{time.time_ns()}"
    env = {
        **os.environ,
        MARKER_VAR: marker,
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "JAVA_TOOL_OPTIONS": FAST_JVM,
    }
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    proc = subprocess.Popen(
        [str(CURATE), *argv, "--master", "local[2]", "--set", f"spark.local_dir={root / 'sl'}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        if proc.poll() is not None:
            pytest.fail(f"the stage ended before the kill:\n{proc.stderr.read().decode()[-3000:]}")
        assert ready(), "the stage never reached the point of the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stderr.close()
        # the JVM exits when its driver goes; orphans are reaped here
        reap_marked(marker, tries=100, grace=30)


def pool_rows(directory: Path) -> list[tuple[str, tuple[int, ...]]]:
    table = pq.read_table(directory / "pool", columns=["uid", "entry_ids"])
    return sorted(
        zip(table.column("uid").to_pylist(), map(tuple, table.column("entry_ids").to_pylist()))
    )


def summary(directory: Path) -> dict:
    s = json.loads((directory / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in ("seconds", "input")}


def test_killed_match_leaves_no_output_and_the_rerun_equals_an_uninterrupted_run(spark, reference):
    root, pool, matched, counts = reference
    out = root / "killed-m"
    kill_mid_stage(
        ["match", "--input", str(pool), "--output", str(out), "--metadata", str(METADATA)],
        lambda: any(root.glob("killed-m.tmp-*/pool/_temporary")),  # tasks are writing the pool
        root,
    )
    assert not out.exists() and list(root.glob("killed-m.tmp-*"))  # only the temporary is left
    with pytest.raises(StageInputError, match="matched pool not found"):
        run_count(spark, CountConfig(input=str(out), output=str(root / "c-of-killed")))
    assert not (root / "c-of-killed").exists()

    rerun = run_match(spark, MatchConfig(input=str(pool), output=str(out), metadata=str(METADATA)))
    assert not rerun.skipped
    assert not list(root.glob("killed-m.tmp-*"))  # the rerun removed the leftover
    assert pool_rows(out) == pool_rows(matched)
    assert summary(out) == summary(matched)
    rejects = [pq.read_table(d / "rejects", columns=["uid", "reason"]) for d in (out, matched)]
    assert sorted(rejects[0].to_pylist(), key=str) == sorted(rejects[1].to_pylist(), key=str)


def test_killed_count_leaves_no_output_and_the_rerun_equals_an_uninterrupted_run(spark, reference):
    root, _, matched, counts = reference
    out = root / "killed-c"
    kill_mid_stage(
        ["count", "--input", str(matched), "--output", str(out), "--margin", "source"],
        lambda: any(root.glob("killed-c.tmp-*")),
        root,
    )
    assert not out.exists()
    with pytest.raises(StageInputError, match="counts not found"):
        run_balance(
            spark,
            BalanceConfig(input=str(matched), counts=str(out), output=str(root / "b"), cap=10.0),
        )
    rerun = run_count(spark, CountConfig(input=str(matched), output=str(out), margins=["source"]))
    assert not rerun.skipped and not list(root.glob("killed-c.tmp-*"))
    for name in ("entry_counts.parquet", "matches_histogram.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(counts / name)), name
    signatures = [
        sorted(pq.read_table(d / "signatures").to_pylist(), key=str) for d in (out, counts)
    ]
    assert signatures[0] == signatures[1]
    assert summary(out) == summary(counts)


def test_a_stage_directory_without_its_marker_is_refused(spark, tmp_path):
    """A directory that holds everything but ``_SUCCESS`` (a kill between the move and the
    marker) is incomplete for every later stage."""
    out = tmp_path / "m"
    (out / "pool").mkdir(parents=True)
    (out / "metadata.json").write_text("[]")
    (out / "_manifest.json").write_text("{}")
    for run in (
        lambda: run_count(spark, CountConfig(input=str(out), output=str(tmp_path / "c"))),
        lambda: run_balance(
            spark,
            BalanceConfig(input=str(out), counts=str(out), output=str(tmp_path / "b"), cap=5),
        ),
    ):
        with pytest.raises(StageInputError, match=r"incomplete \(no _SUCCESS marker\)"):
            run()


# --- the commit, at every intermediate state ------------------------------------------------


class WatchedStore(dict):
    """fsspec's in-memory store, checking an invariant after every change (a kill can happen
    between any two of them)."""

    def __init__(self, check):
        super().__init__()
        self.check = check
        self.changes = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.changes += 1
        self.check(self)

    def __delitem__(self, key):
        super().__delitem__(key)
        self.changes += 1
        self.check(self)


def files_under(store: dict, prefix: str) -> dict[str, bytes]:
    return {
        k[len(prefix) + 1 :]: bytes(v.getbuffer())
        for k, v in store.items()
        if k.startswith(prefix + "/")
    }


def write_version(url: str, version: str) -> None:
    with storage.atomic_directory(url, {"version": version}) as tmp:
        for name in ("a.parquet", "pool/part-0.parquet", "pool/part-1.parquet", "zz.json"):
            storage.write_bytes(storage.join(tmp, name), f"{version}:{name}".encode())


def test_commit_on_an_object_store_never_shows_a_marker_beside_partial_files(monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    complete: list[dict[str, bytes]] = []
    seen_with_marker = []

    def check(store):
        here = files_under(store, "/bucket/out")
        if storage.SUCCESS in here:
            seen_with_marker.append(here)
            assert any(here == version for version in complete), sorted(here)

    store = WatchedStore(check)
    monkeypatch.setattr(MemoryFileSystem, "store", store)
    monkeypatch.setattr(MemoryFileSystem, "pseudo_dirs", [""])
    # expected final contents of each version (with manifest and marker)
    for version in ("v1", "v2"):
        expected = {
            name: f"{version}:{name}".encode()
            for name in ("a.parquet", "pool/part-0.parquet", "pool/part-1.parquet", "zz.json")
        }
        expected[storage.MANIFEST] = (
            json.dumps({"version": version}, indent=2, ensure_ascii=False) + "\n"
        ).encode()
        expected[storage.SUCCESS] = b""
        complete.append(expected)

    write_version("memory://bucket/out", "v1")  # first commit: nothing there before
    write_version("memory://bucket/out", "v2")  # replacing a committed output
    assert files_under(store, "/bucket/out") == complete[1]
    assert store.changes > 20 and seen_with_marker  # every step was checked
    assert not [k for k in store if ".tmp-" in k]
