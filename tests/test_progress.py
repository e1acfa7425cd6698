"""Progress: bars over the driver's single-process loops, and Spark's console progress bar."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from curation import progress
from curation.balancing import run_method
from curation.balancing.synthetic import synthetic_table
from curation.spark import SparkConfig, show_progress


@pytest.fixture(scope="module")
def table():
    return synthetic_table(3000, 200, mean_k=2.5, margin_levels=3, seed=3)


def test_a_rake_solve_advances_the_bar_once_per_iteration(table, monkeypatch, capsys):
    monkeypatch.setenv("CURATION_PROGRESS", "1")
    with progress.bar("balance: rake", unit="iter") as bar:
        result = run_method(table, "rake", t=12.0, tol=1e-6)
    assert bar is not None
    assert result.info["iterations"] > 5
    assert bar.n == result.info["iterations"]
    assert "kkt_err=" in bar.postfix  # shown with the count
    assert "balance: rake" in capsys.readouterr().err


def test_a_balance_solve_with_a_margin_advances_the_bar(table, monkeypatch):
    monkeypatch.setenv("CURATION_PROGRESS", "1")
    with progress.bar("balance: balance") as bar:
        result = run_method(table, "balance", t=12.0, margins=["lang"], tol=1e-9)
    assert bar.n == len(result.history) > 1


def test_nothing_is_drawn_without_a_bar_or_when_switched_off(table, monkeypatch, capsys):
    monkeypatch.setenv("CURATION_PROGRESS", "1")
    run_method(table, "rake", t=12.0)  # the library alone never draws
    monkeypatch.setenv("CURATION_PROGRESS", "0")
    with progress.bar("balance: rake") as bar:
        run_method(table, "rake", t=12.0)
    assert bar is None
    assert capsys.readouterr().err == ""


def test_nested_bars_keep_counting_on_the_outer_one(monkeypatch):
    monkeypatch.setenv("CURATION_PROGRESS", "1")
    with progress.bar("outer") as outer:
        progress.tick(2)
        with progress.bar("inner") as inner:
            progress.tick(3)
    assert inner is outer and outer.n == 5


def test_spark_progress_setting(monkeypatch):
    monkeypatch.setenv("CURATION_PROGRESS", "0")
    assert show_progress(SparkConfig(progress="on"))
    assert not show_progress(SparkConfig(progress="auto"))
    monkeypatch.setenv("CURATION_PROGRESS", "1")
    assert show_progress(SparkConfig(progress="auto"))
    assert not show_progress(SparkConfig(progress="off"))


SLOW_JOB = textwrap.dedent(
    """
    import sys, time
    from curation.spark import SparkConfig, get_spark
    spark = get_spark(SparkConfig(master="local[2]", progress=sys.argv[1]))
    n = spark.range(0, 8, numPartitions=8).rdd.map(lambda x: (time.sleep(0.4), x)[1]).count()
    print(n)
    """
)


@pytest.mark.parametrize("setting", ["on", "off"])
def test_spark_console_progress_bar_follows_the_setting(setting, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env.pop("CURATION_PROGRESS", None)
    run = subprocess.run(
        [sys.executable, "-c", SLOW_JOB, setting],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "8"
    drawn = "[Stage 0:" in run.stderr
    assert drawn == (setting == "on"), run.stderr[-2000:]
