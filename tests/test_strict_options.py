"""Strict options, degenerate results, Spark's root causes and concurrent runs (issue 12).

- every numeric option of every stage has a declared range; NaN, inf and values outside it are
  refused with the option's name and the range, before any Spark session starts;
- a balancing whose result is degenerate (NaN/inf, or fewer than one sample expected) fails and
  commits nothing; a selection of 0 samples is committed with a loud warning;
- a Spark job that fails on a real I/O error shows the root cause without ``--debug``;
- two runs on one output: the second gets "in use", and neither removes the other's work area.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import typing
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import storage
from curation.balancing.degenerate import DegenerateResultError
from curation.cli import (
    build_parser,
    describe_exception,
    load_stage,
    main,
    run_command,
)
from curation.config import ConfigError, describe_range, out_of_range
from curation.demo import generate_captions
from curation.pipeline import ORDER, SECTIONS
from curation.selection import hash_uniform
from curation.spark import SparkConfig
from curation.stages.balance import BalanceConfig, run_balance
from curation.stages.select import SelectConfig, run_select
from tests.pipeline import match_and_count

REPO = Path(__file__).resolve().parents[1]
ENTRIES = [f"w{i}" for i in range(50)]


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``curate argv`` in this process; (exit code, stderr lines)."""
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


# --- strict options: ranges declared once, checked when options are loaded ------------------


def _option_classes() -> list[tuple[str, str, type]]:
    """(command, section, options dataclass) of every subcommand, and Spark's settings."""
    out = []
    for name in ORDER:
        out.append((name, SECTIONS[name], load_stage(name).options))
    out.append(("balance", "spark", SparkConfig))
    return out


def _numeric_fields() -> list[tuple[str, str, dataclasses.Field, type]]:
    found = []
    for name, section, cls in _option_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float):
                found.append((name, section, f, hints[f.name]))
    return found


def _bad_values(f: dataclasses.Field, kind: type) -> list[str]:
    """Values outside the range of ``f``: NaN and ±inf for numbers, and just past each bound."""
    bad = ["nan", "inf", "-inf"] if kind is float else []
    step = 1 if kind is int else 1e-9
    meta = f.metadata
    if "min" in meta:
        bad.append(str(meta["min"] - step) if kind is float else str(meta["min"] - 1))
    if "above" in meta:
        bad.append(str(meta["above"]))
    if "max" in meta:
        bad.append(str(meta["max"] + step))
    if "below" in meta:
        bad.append(str(meta["below"]))
    return bad


def test_every_numeric_option_has_a_range_that_its_default_satisfies():
    fields = _numeric_fields()
    assert len(fields) > 40  # every stage's counts, sizes, seeds, caps, tolerances ...
    for _command, section, f, kind in fields:
        default = f.default
        assert describe_range(f, kind), f"{section}.{f.name}"
        assert out_of_range(default, f, kind) is None, f"{section}.{f.name}: default {default}"
        if kind is int:  # no count, size, seed, limit or retry count of this tool is negative
            assert "min" in f.metadata or "above" in f.metadata, f"{section}.{f.name}"


BAD_OPTIONS = [
    (command, section, f, value)
    for command, section, f, kind in _numeric_fields()
    for value in _bad_values(f, kind)
]


@pytest.mark.parametrize(
    ("command", "section", "field", "value"),
    BAD_OPTIONS,
    ids=[f"{s}.{f.name}={v}" for _, s, f, v in BAD_OPTIONS],
)
def test_a_value_outside_the_range_is_refused_with_the_option_and_the_range(
    capsys, command, section, field, value
):
    flag = "--" + field.name.replace("_", "-")
    if section == "spark":  # Spark's settings come from the config file or --set
        argv = [command, "--set", f"spark.{field.name}={value}"]
    else:
        argv = [command, f"{flag}={value}"]
    code, err = cli(capsys, *argv)
    assert code == 2 and len(err) == 1, err
    named = (
        f"{section}.{field.name} = "
        if section == "spark"
        else f"{section}.{field.name} ({flag}) = "
    )
    assert named in err[0], err[0]
    assert "; allowed: " in err[0] and describe_range(field, type(field.default)) in err[0]


def test_the_issues_options_are_refused_in_words(capsys):
    for argv, message in [
        (
            ["balance", "--cap", "nan"],
            "<command line>: balance.cap (--cap) = nan: not a finite number; "
            "allowed: a finite number >= 0",
        ),
        (
            ["balance", "--target-fraction", "inf", "--with-replacement"],
            "<command line>: balance.target_fraction (--target-fraction) = inf: not a finite "
            "number; allowed: a finite number >= 0",
        ),
        (
            ["balance", "--tol=-1"],
            "<command line>: balance.tol (--tol) = -1.0: below the minimum; "
            "allowed: a finite number with 0 <= x < 1",
        ),
        (
            ["balance", "--max-iter=-5"],
            "<command line>: balance.max_iter (--max-iter) = -5: below the minimum; "
            "allowed: an integer >= 0",
        ),
        (
            ["select", "--seed", str(2**64)],
            f"<command line>: select.seed (--seed) = {2**64}: too large; "
            "allowed: an integer with 0 <= x < 2**64",
        ),
        (
            ["download", "--encode-quality", "300"],
            "<command line>: download.encode_quality (--encode-quality) = 300: above the "
            "maximum; allowed: an integer with 0 <= x <= 101",
        ),
    ]:
        code, err = cli(capsys, *argv)
        assert (code, err) == (2, [f"error: {message}"])


def test_a_config_file_value_is_refused_with_its_file_and_line(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("balance:\n  method: rake\n  tol: .nan\n")
    with pytest.raises(ConfigError) as err:
        run_command(["balance", "--config", str(yaml_file)])
    assert str(err.value) == (
        f"{yaml_file}: balance.tol (line 3) (--tol) = nan: not a finite number; "
        "allowed: a finite number with 0 <= x < 1"
    )
    toml_file = tmp_path / "run.toml"
    toml_file.write_text("[select]\nseed = -3\n")
    with pytest.raises(ConfigError, match=r"select\.seed \(line 2\) \(--seed\) = -3: below"):
        run_command(["select", "--config", str(toml_file)])
    with pytest.raises(ConfigError, match=r"balance\.cap \(--cap\) = inf: not a finite"):
        run_command(["balance", "--set", "balance.cap=.inf"])


def test_curate_run_checks_every_stage_before_the_first_one_runs(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    run_dir = tmp_path / "run"
    config.write_text(
        f"run:\n  dir: {run_dir}\n  pool: {tmp_path / 'no-such-pool'}\n"
        "balance:\n  cap: 10\n  max_iter: -5\n"
    )
    code, err = cli(capsys, "run", "--config", str(config))
    # Without the check up front, match would have run first (and failed on the missing pool).
    assert code == 2 and err == [
        f"error: {config}: balance.max_iter (line 6) (--max-iter) = -5: below the minimum; "
        "allowed: an integer >= 0"
    ]
    config.write_text(
        f"run:\n  dir: {run_dir}\n  pool: {tmp_path / 'no-such-pool'}\n"
        "balance:\n  cap: 10\n  tail_share: 0.5\n"
    )
    code, err = cli(capsys, "run", "--config", str(config))
    assert code == 2 and err == [
        f"error: {config}: balance: give either --cap or --tail-share, not both"
    ]
    assert not run_dir.exists()


def test_a_refused_option_never_starts_spark(tmp_path):
    """In a fresh process: the Spark session would create its scratch directory on start."""
    scratch = tmp_path / "spark-scratch"
    for argv, message in [
        (["balance", "--cap", "nan"], "balance.cap (--cap) = nan: not a finite number"),
        (["balance", "--cap", "5", "--tail-share", "0.5"], "give either --cap or --tail-share"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "curation.cli", *argv, "--input", "m", "--counts", "c"]
            + ["--output", str(tmp_path / "b"), "--set", f"spark.local_dir={scratch}"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=tmp_path,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr
        assert message in done.stderr
        assert "Spark" not in done.stderr and not scratch.exists()
        assert not (tmp_path / "b").exists()


def test_help_lists_each_numeric_options_range(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["balance", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--tol TOL solver tolerance" in out
    assert "(default: 0.0; allowed: a finite number with 0 <= x < 1)" in out
    assert "(default: 0; allowed: an integer >= 0)" in out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0; allowed: an integer with 0 <= x < 2**64)" in out


# --- degenerate results: fail and commit nothing ---------------------------------------------


@pytest.fixture(scope="module")
def counted(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    captions, source = generate_captions(ENTRIES, 800, seed=1, exponent=1.2)
    rows = [
        {"uid": f"{i:032x}", "url": f"u{i}", "caption": c, "source": "abc"[s]}
        for i, (c, s) in enumerate(zip(captions, source))
        if c and c.strip()
    ]
    matched, counts = match_and_count(spark, root, rows, ENTRIES)
    return root, matched, counts.output


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(out.name + ".tmp-*"))


@pytest.mark.parametrize(
    ("options", "cause"),
    [
        (
            {"cap": 1e-9},
            "the expected output size is 5e-08 samples (fewer than one) (from --cap 1e-09)",
        ),
        (
            {"cap": 1e-9, "execution": "spark"},
            "the expected output size is 5e-08 samples (fewer than one) (from --cap 1e-09)",
        ),
        ({"method": "rake", "cap": 1e-9}, "samples (fewer than one) (from --cap 1e-09)"),
        (
            {"target_fraction": 1e-6, "with_replacement": True},
            "the expected number of copies is 0.00071 (fewer than one sample) "
            "(from --target-fraction 1e-06)",
        ),
    ],
    ids=["metaclip-driver", "metaclip-spark", "rake", "with-replacement"],
)
def test_a_balance_expected_to_keep_nothing_fails_and_commits_nothing(
    spark, counted, options, cause
):
    root, matched, counts = counted
    out = root / f"b-{uuid.uuid4().hex[:6]}"
    with pytest.raises(DegenerateResultError) as err:
        run_balance(spark, BalanceConfig(input=matched, counts=counts, output=str(out), **options))
    message = str(err.value)
    assert message.startswith("degenerate balancing result: ") and cause in message, message
    assert "raise the cap (--cap, --tail-share) or the target" in message
    assert message.endswith("Nothing was written")
    assert _nothing_written(out)


def test_nan_probabilities_fail_and_an_earlier_output_stays(spark, counted):
    """A NaN cap reaches the solver through the Python API (the command line refuses it)."""
    root, matched, counts = counted
    out = root / "b-kept"
    run_balance(spark, BalanceConfig(input=matched, counts=counts, output=str(out), cap=5.0))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(DegenerateResultError) as err:
        run_balance(
            spark,
            BalanceConfig(input=matched, counts=counts, output=str(out), cap=float("nan")),
            force=True,
        )
    assert str(err.value).startswith(
        "degenerate balancing result: 50 of 50 entry factors are NaN or infinite (from --cap nan)"
    )
    assert sorted(p.name for p in out.iterdir()) == before  # the committed output is untouched
    assert json.loads((out / "summary.json").read_text())["t"] == 5.0
    assert not list(root.glob("b-kept.tmp-*"))


def test_the_command_line_reports_a_degenerate_result_in_one_line(spark, counted, capsys):
    root, matched, counts = counted
    out = root / "b-cli"
    code, err = cli(
        capsys, "balance", "--input", matched, "--counts", counts, "--output", str(out),
        "--cap", "1e-9",
    )  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: degenerate balancing result: the expected output size")
    assert _nothing_written(out)


def test_a_selection_of_zero_samples_is_committed_with_a_loud_warning(spark, counted, caplog):
    root, matched, counts = counted
    weights = run_balance(
        spark,
        BalanceConfig(input=matched, counts=counts, output=str(root / "b-two"), target_size=2),
    ).output
    table = pq.read_table(os.path.join(weights, "weights"))
    uids, pi = table.column("uid"), table.column("inclusion_prob").to_numpy()
    assert pi.sum() == pytest.approx(2, rel=1e-3)
    # The draw is a function of (uid, seed): find a seed whose draw keeps nothing.
    seed = next(s for s in range(1000) if not np.any(hash_uniform(uids, s) < pi))
    out = root / "s-empty"
    with caplog.at_level(logging.WARNING, logger="curation"):
        result = run_select(
            spark, SelectConfig(input=matched, weights=weights, output=str(out), seed=seed)
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected"] == 0 and (out / storage.SUCCESS).exists()
    assert summary["warning"].startswith("0 samples selected (expected 2): ")
    assert "rerun balance with a larger --cap or --target-size" in summary["warning"]
    assert any(
        r.levelno == logging.WARNING and "0 samples selected" in r.getMessage()
        for r in caplog.records
    )
    assert f"WARNING    {summary['warning']}" in result.report()


# --- Spark errors: the root cause without --debug --------------------------------------------


@pytest.fixture(scope="module")
def wide_pool(spark, tmp_path_factory):
    """A matched pool whose selection is several MB (random captions do not compress)."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    rows = [
        {
            "uid": f"{i:032x}",
            "url": f"http://x/{i}",
            "caption": f"a w{i % 50} " + rng.bytes(60).hex(),
            "source": "a",
        }
        for i in range(30_000)
    ]
    matched, counts = match_and_count(spark, root, rows, ENTRIES)
    weights = run_balance(
        spark, BalanceConfig(input=matched, counts=counts.output, output=str(root / "b"), cap=1e9)
    ).output
    return root, matched, weights


def test_a_failed_spark_write_shows_its_root_cause_without_debug(wide_pool):
    """A real write failure: the process may write no file above 1.5 MB (RLIMIT_FSIZE), so the
    kernel answers EFBIG ("File too large") while Spark writes the selection's Parquet parts."""
    root, matched, weights = wide_pool
    out = root / "s-limited"
    limit = 1536 * 1024  # above the native libraries Spark unpacks (zstd-jni: 1.0 MB)
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from curation.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "select", "--input", matched, "--weights", weights]
        + ["--output", str(out), "--all-eligible", "--master", "local[1]"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Task failed while writing rows to file:{out}.tmp-"), last
    assert last.endswith("; cause: IOException: File too large (rerun with --debug for details)"), (
        last
    )
    assert len(last) < 400
    assert not any(line.startswith('{"ts"') for line in done.stderr.splitlines())
    assert _nothing_written(out)


def test_a_column_typed_differently_between_files_is_not_called_corrupt(spark, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"uid": ["a", "b"], "caption": ["x", "y"]}), pool / "a.parquet")
    pq.write_table(pa.table({"uid": [1, 2], "caption": ["x", "y"]}), pool / "b.parquet")
    with pytest.raises(Exception) as err:  # Py4JJavaError: Spark's own failure, untranslated
        spark.read.parquet(storage.spark_url(str(pool))).collect()
    assert describe_exception(err.value) == (
        f"cannot read file://{pool}/b.parquet: Data type mismatches when reading Parquet column "
        "[uid]. Expected Spark type string, actual Parquet type INT64 (the pool's files disagree "
        "on this column's type: give it the same type in every file)"
    )


def test_pysparks_json_record_of_a_failed_query_is_silenced_without_debug(spark, capsys):
    from pyspark.errors import AnalysisException
    from pyspark.logger import PySparkLogger
    from pyspark.sql import functions as F

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = PySparkLogger.getLogger("DataFrameQueryContextLogger")  # the logger PySpark uses
    handler = Keep()
    logger.addHandler(handler)
    try:
        main(["balance", "--cap", "nan"])  # any command line sets the logging up
        with pytest.raises(AnalysisException):
            spark.range(1).select(F.col("id").cast("binary")).collect()
        assert records == []  # without the setting: one ~10 kB JSON line on stderr
    finally:
        logger.removeHandler(handler)
    capsys.readouterr()


# --- two runs on one output at the same time -------------------------------------------------


def test_a_second_run_on_an_output_in_use_is_refused_and_removes_nothing(tmp_path):
    """A real second process holds the output's work area; this run is refused with "in use",
    the other run's work area survives, and the other run then commits its own output."""
    out = tmp_path / "out"
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, time
                from curation.storage import atomic_directory
                with atomic_directory({str(out)!r}, {{"stage": "test"}}) as tmp:
                    open(os.path.join(tmp, "part.txt"), "w").write("first")
                    open({str(ready)!r}, "w").write(tmp)
                    while not os.path.exists({str(go)!r}):
                        time.sleep(0.05)
                """
            ),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        for _ in range(1200):  # hang guard only (the holder starts in about a second)
            if ready.exists() and ready.read_text():
                break
            assert holder.poll() is None, "the holder process died"
            time.sleep(0.05)
        holders_area = Path(ready.read_text())
        with pytest.raises(storage.OutputNotOursError) as err:
            with storage.atomic_directory(str(out), {"stage": "test"}) as tmp:
                Path(tmp, "part.txt").write_text("second")
        assert str(err.value).startswith(f"{out}: in use by another run (process {holder.pid}")
        assert (holders_area / "part.txt").read_text() == "first"
        assert [p.name for p in tmp_path.glob("out.tmp-*")] == [holders_area.name]
    finally:
        go.write_text("")
        holder.wait(timeout=120)
    assert holder.returncode == 0
    assert (out / "part.txt").read_text() == "first" and (out / storage.SUCCESS).exists()
    assert not (out / storage.OWNER).exists() and not list(tmp_path.glob("out.tmp-*"))
