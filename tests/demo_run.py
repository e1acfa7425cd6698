"""A small whole demo run for tests that read a run's outputs (inspect, readers, training).

``demo_run`` runs ``curate run`` on a 3,000-row demo pool (demo-pool, match with a pandas index
column in the pool, count with the ``source`` margin, balance by rake to 600 samples, select,
download from the demo's loopback image server), once per test session. ``metaclip_run`` adds a
second run directory with a metaclip balance and select over the same matched pool, for
comparisons.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation.cli import run_command
from curation.shards.demo_server import Handler
from curation.stages.balance import BalanceConfig, run_balance
from curation.stages.select import SelectConfig, run_select

ENTRIES = [f"w{i}" for i in range(300)] + ["hot dog", "New York", "the", "water"]


@dataclass
class DemoRun:
    dir: Path
    rows: int


@pytest.fixture(scope="session")
def demo_image_server() -> Iterator[str]:
    """The demo's image server on a free loopback port; yields its URL prefix for images."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/images/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def demo_run(spark, tmp_path_factory, demo_image_server) -> DemoRun:
    root = tmp_path_factory.mktemp("demo-run")
    (root / "meta.json").write_text(json.dumps(ENTRIES))
    run = root / "run"
    # demo-pool first, then the pool rewritten through pandas with a (non-default) index, as a
    # user's pandas-made pool would be: match must drop the index column.
    config = root / "run.yaml"
    config.write_text(
        f"run:\n  dir: {run}\n  stages: [demo-pool]\n"
        f"demo:\n  rows: 3000\n  files: 2\n  metadata: {root / 'meta.json'}\n  vocabulary: 0\n"
        f"  url_prefix: {demo_image_server}\n"
    )
    run_command(["run", "--config", str(config)])
    frame = pd.concat(pd.read_parquet(p) for p in sorted((run / "pool").glob("*.parquet")))
    frame.index = np.arange(len(frame)) * 2 + 7  # not a RangeIndex: pyarrow stores it as a column
    (root / "pandas-pool").mkdir()
    frame.to_parquet(root / "pandas-pool" / "pool.parquet")
    config.write_text(
        f"run:\n  dir: {run}\n  pool: {root / 'pandas-pool'}\n"
        "  stages: [match, count, balance, select, download]\n"
        f"match:\n  metadata: {root / 'meta.json'}\n"
        "count:\n  margins: [source]\n"
        "balance:\n  method: rake\n  target_size: 600\n  margins: [source]\n"
        "select:\n  seed: 5\n"
        "download:\n  image_size: 32\n  samples_per_shard: 200\n  timeout: 5\n"
    )
    run_command(["run", "--config", str(config)])
    return DemoRun(run, len(frame))


@pytest.fixture(scope="session")
def metaclip_run(spark, demo_run, tmp_path_factory) -> Path:
    """A second run directory: metaclip (cap 20) balance and select of the same matched pool."""
    run = tmp_path_factory.mktemp("metaclip-run")
    balance = run_balance(
        spark,
        BalanceConfig(
            input=str(demo_run.dir / "matched"),
            counts=str(demo_run.dir / "counts"),
            output=str(run / "balance"),
            method="metaclip",
            cap=20,
        ),
    ).output
    run_select(
        spark,
        SelectConfig(
            input=str(demo_run.dir / "matched"), weights=balance, output=str(run / "selected")
        ),
    )
    return run
