"""A new user's first hour (issue 15): errors up front that name where the value came from, the
later and more explicit setting winning, the report after a failed stage, the metadata stage wired
into a run. None of these tests starts Spark."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation import storage
from curation.cli import option_schemas, run_command
from curation.config import ConfigError, apply_overrides, build_config
from curation.stages.balance import BalanceConfig
from curation.stages.run import RunSection, plan_run, plan_stages
from curation.storage import StageInputError

REPO = Path(__file__).resolve().parents[1]


def curate(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``curate ARGV`` in a fresh process whose Spark scratch directory would appear on start."""
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *argv]
        + ["--set", f"spark.local_dir={tmp_path / 'spark-scratch'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        timeout=300,
    )


def error_of(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), done.stderr
    return lines[-1]


def fake_output(path: Path, stage: str) -> str:
    """A committed stage output: just its manifest and ``_SUCCESS`` (enough for the checks)."""
    with storage.atomic_directory(str(path), {"stage": stage, "config": {}, "inputs": {}}) as tmp:
        storage.write_json(storage.join(tmp, "summary.json"), {})
    return str(path)


def test_a_set_typo_is_blamed_on_the_set_not_the_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"run:\n  dir: {tmp_path / 'run'}\nbalance:\n  method: rake\n  cap: 3\n")
    with pytest.raises(ConfigError) as err:
        run_command(["run", "--config", str(config), "--set", "balance.metod=metaclip"])
    assert str(err.value).startswith("--set 'balance.metod=metaclip': balance: unknown key 'metod'")
    assert str(config) not in str(err.value)
    with pytest.raises(ConfigError) as err:
        run_command(["balance", "--config", str(config), "--set", "balance.tol=lots"])
    assert str(err.value).startswith("--set 'balance.tol=lots': balance.tol: expected a number")
    with pytest.raises(ConfigError, match=r"^--set 'balanse.cap=3': unknown section 'balanse'"):
        run_command(["balance", "--config", str(config), "--set", "balanse.cap=3"])
    # a flag is blamed on the command line, not on the file that was also given
    with pytest.raises(ConfigError) as err:
        run_command(["balance", "--config", str(config), "--cap", "nan"])
    assert str(err.value).startswith("<command line>: balance.cap (--cap) = nan")


def test_a_config_without_run_pool_names_the_config_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"run:\n  dir: {tmp_path / 'run'}\nbalance:\n  cap: 5\n")
    with pytest.raises(ValueError) as err:
        run_command(["run", "--config", str(config)])
    assert str(err.value) == f"match needs run.pool (or match.input) in {config}"
    assert "--input" not in str(err.value)


def test_missing_paths_fail_before_spark_and_name_their_source(tmp_path):
    done = curate(tmp_path, "count", "--input", "no-such-dir", "--output", "counts")
    assert error_of(done) == "error: no-such-dir: no such file or directory (given as --input)"
    config = tmp_path / "run.yaml"
    config.write_text("run:\n  dir: run\n  pool: /no/such/pool\nbalance:\n  cap: 5\n")
    done = curate(tmp_path, "run", "--config", str(config))
    assert error_of(done) == (
        f"error: /no/such/pool: no such file or directory (given as run.pool at {config}:3)"
    )
    config.write_text("match:\n  input: nowhere.parquet\n  output: m\n")
    done = curate(tmp_path, "match", "--config", str(config))
    assert error_of(done) == (
        f"error: nowhere.parquet: no such file or directory (given as match.input at {config}:2)"
    )
    assert not (tmp_path / "spark-scratch").exists()  # no Spark session was started
    assert not (tmp_path / "run").exists() and not (tmp_path / "counts").exists()


def test_a_folder_of_another_stage_says_what_it_is_and_what_was_expected(tmp_path):
    matched = fake_output(tmp_path / "matched", "match")
    counts = fake_output(tmp_path / "counts", "count")
    with pytest.raises(StageInputError) as err:
        run_command(["select", "--input", matched, "--weights", counts, "--output", "s"])
    assert str(err.value) == (
        f"{counts}: is the output of the count stage (counts); --weights takes a balance "
        "output (output of balance)"
    )
    with pytest.raises(StageInputError) as err:
        run_command(["count", "--input", counts, "--output", str(tmp_path / "c2")])
    assert str(err.value) == (
        f"{counts}: is the output of the count stage (counts); --input takes a matched pool "
        "(output of match)"
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(StageInputError) as err:
        run_command(["select", "--input", matched, "--weights", str(plain), "--output", "s"])
    assert str(err.value) == (
        f"{plain}: is not the output of a stage (it has no _manifest.json); --weights takes a "
        "balance output (output of balance)"
    )


def test_a_later_more_explicit_size_option_replaces_the_files():
    """The README's own example: the file sets target_fraction, --set gives a cap."""
    schemas = option_schemas()
    data = {"balance": {"method": "rake", "target_fraction": 0.25, "tol": 0.01}}
    merged = apply_overrides(data, ["balance.method=metaclip", "balance.cap=20000"], schemas)
    assert merged["balance"] == {"method": "metaclip", "cap": 20000, "tol": 0.01}
    # options of one group given in one layer are kept together (the stage checks them)
    both = apply_overrides(data, ["balance.cap=5", "balance.target_size=100"], schemas)
    assert both["balance"] == {"method": "rake", "cap": 5, "target_size": 100, "tol": 0.01}
    # a flag replaces what the file and --set gave
    args = argparse.Namespace(target_size="300")
    config = build_config(BalanceConfig, "balance", args, both, "run.yaml")
    assert (config.cap, config.target_size, config.target_fraction) == (0.0, 300, 0.0)
    # an option of no group stays as the file has it
    assert build_config(BalanceConfig, "balance", args, both, "run.yaml").tol == 0.01


def test_the_report_is_the_last_stage_of_a_default_run():
    run = RunSection(dir="r", pool="p")
    assert plan_stages(run, {}) == ["match", "count", "balance", "select", "report"]
    assert plan_stages(run, {"download": {}}) == [
        "match",
        "count",
        "balance",
        "select",
        "download",
        "report",
    ]
    assert plan_stages(RunSection(dir="r", stages=["count", "match"]), {}) == ["match", "count"]


def test_after_a_failed_stage_the_report_says_which_stage_failed(tmp_path, capsys):
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("cat\n\ndog\n")  # an empty entry: an error when the list is read
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"run:\n  dir: {run_dir}\n  stages: [demo-pool, report]\n"
        f"demo:\n  rows: 100\n  metadata: {bad_list}\n"
    )
    with pytest.raises(ValueError, match="line 2: empty entry"):
        run_command(["run", "--config", str(config)])
    out = capsys.readouterr().out
    assert "demo-pool failed; writing the report of what this run has so far" in out
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["failed_stage"]["stage"] == "demo-pool"
    assert "line 2: empty entry" in summary["failed_stage"]["error"]
    page = (run_dir / "report" / "index.html").read_text()
    assert "The last curate run failed in the demo-pool stage" in page
    assert "a stage in progress, or one that was killed" not in page
    record = json.loads((run_dir / "_run.json").read_text())
    assert record["failed"]["stage"] == "demo-pool"
    # without a report stage, the command to write it is printed
    config.write_text(
        f"run:\n  dir: {run_dir}\n  stages: [demo-pool]\n"
        f"demo:\n  rows: 100\n  metadata: {bad_list}\n"
    )
    with pytest.raises(ValueError):
        run_command(["run", "--config", str(config)])
    assert f"curate report --run {run_dir}" in capsys.readouterr().out


def test_the_metadata_stage_of_a_run_feeds_match(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a cat\n")
    pool = tmp_path / "pool.parquet"
    pool.write_text("")
    run_dir = tmp_path / "run"
    data = {
        "run": {"dir": str(run_dir), "pool": str(pool)},
        "metadata": {"corpus": str(corpus), "output": str(tmp_path / "my-list.json")},
        "balance": {"cap": 5},
    }
    planned = plan_run(data, "run.yaml", {})
    assert list(planned)[:2] == ["metadata", "match"]
    assert planned["match"].config.metadata == str(tmp_path / "my-list.json")
    # per-language lists: a directory below run.dir, and the language column goes along
    data["metadata"] = {"corpus": str(corpus), "lang_col": "lang"}
    planned = plan_run(data, "run.yaml", {})
    assert planned["metadata"].config.output == f"{run_dir}/metadata"
    assert planned["match"].config.metadata == f"{run_dir}/metadata"
    assert planned["match"].config.lang_col == "lang"


def test_the_license_is_an_spdx_expression_that_setuptools_takes_without_a_warning():
    """setuptools >= 77 warns about a ``project.license`` table (and License classifiers); the
    SPDX string needs setuptools >= 77 in the build requirements."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    classifiers = project["project"].get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert "setuptools>=77" in project["build-system"]["requires"]
