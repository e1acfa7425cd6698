"""The ``curate`` command, config files and overrides, and the spark-submit entry points."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.cli import build_parser, main, run_command
from curation.config import ConfigError
from curation.matching import naive_match
from curation.stages.count import CountConfig
from curation.stages.match import MatchConfig

REPO = Path(__file__).resolve().parents[1]


def help_text(*argv: str) -> str:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    return ""


def test_every_option_is_listed_with_its_default(capsys):
    for command, cls in (("match", MatchConfig), ("count", CountConfig)):
        help_text(command)
        out = capsys.readouterr().out
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            if field.metadata.get("repeatable"):
                flag = flag.removesuffix("s")
            assert flag in out, f"{command}: {flag} missing from --help"
        assert out.count("(default:") >= len(dataclasses.fields(cls))


@pytest.fixture
def small_pool(tmp_path):
    (tmp_path / "meta.txt").write_text("cat\ndog\nhot dog\n")
    rows = [
        {"url": "u1", "text": "a cat"},
        {"url": "u2", "text": "hot dog!"},
        {"url": "u3", "text": "Cat"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    return tmp_path


def test_config_file_overrides_and_flags(spark, small_pool, capsys):
    config = small_pool / "run.yaml"
    config.write_text(
        f"match:\n  input: {small_pool / 'pool.parquet'}\n  output: {small_pool / 'wrong'}\n"
        f"  metadata: {small_pool / 'meta.txt'}\n  caption_col: text\n"
    )
    result = run_command(
        [
            "match",
            "--config",
            str(config),
            "--set",
            "match.casefold=true",
            "--output",
            str(small_pool / "out"),
        ]
    )
    assert result.output == str(small_pool / "out")  # the explicit flag wins over the file
    assert result.summary["casefold"] is True  # --set wins over the default
    rows = {
        r["url"]: r["entry_ids"] for r in pq.read_table(small_pool / "out" / "pool").to_pylist()
    }
    assert rows == {"u1": [0], "u2": [1, 2], "u3": [0]}
    assert not (small_pool / "wrong").exists()


def test_toml_errors_name_the_line(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        '[spark]\nmaster = "local[1]"\n\n[match]\ninput = "x"\nmax_caption_chars = "many"\n'
    )
    with pytest.raises(
        ConfigError,
        match=r"run.toml: match.max_caption_chars: expected an integer, got 'many' \(line 6\)",
    ):
        run_command(["match", "--config", str(config), "--output", "y"])


def test_toml_config(spark, small_pool):
    config = small_pool / "run.toml"
    config.write_text(
        f'[match]\ninput = "{small_pool / "pool.parquet"}"\noutput = "{small_pool / "out"}"\n'
        f'metadata = "{small_pool / "meta.txt"}"\ncaption_col = "text"\nmax_caption_chars = 50\n'
    )
    assert run_command(["match", "--config", str(config)]).summary["input_rows"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("match:\n  captionn_col: text\n", "run.yaml: match: unknown key 'captionn_col' (line 2)"),
        (
            "# comment\nmatch:\n  casefold: true\n  max_caption_chars: lots\n",
            "run.yaml: match.max_caption_chars: expected an integer, got 'lots' (line 4)",
        ),
        (
            "match:\n  casefold: maybe\n",
            "match.casefold: expected true or false, got 'maybe' (line 2)",
        ),
        ("match: [1, 2]\n", "match (line 1): expected a mapping"),
    ],
)
def test_config_errors_name_the_key_and_file(tmp_path, content, message):
    config = tmp_path / "run.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError) as err:
        run_command(["match", "--config", str(config), "--input", "x", "--output", "y"])
    assert message in str(err.value)


def test_errors_are_one_clear_line(spark, small_pool, capsys):
    pq.write_table(pa.table({"url": ["u"], "title": ["a cat"]}), small_pool / "titles.parquet")
    code = main(
        [
            "match",
            "--input",
            str(small_pool / "titles.parquet"),
            "--output",
            str(small_pool / "out"),
            "--metadata",
            str(small_pool / "meta.txt"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "no caption column" in err[0]
    assert "Traceback" not in capsys.readouterr().err


def test_spark_submit_runs_the_match_and_count_jobs(tmp_path):
    """The spark-submit entry points, in their own JVM, with spark-submit's master."""
    entries = ["cat", "dog", "red"]
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    captions = ["a red cat", "dog", "nothing", "red, red dog."]
    pq.write_table(
        pa.table({"url": [f"u{i}" for i in range(4)], "caption": captions}),
        tmp_path / "pool.parquet",
    )
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONPATH": str(REPO),
    }
    common = [str(spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false"]
    subprocess.run(
        [
            *common,
            str(REPO / "jobs" / "match.py"),
            "--input",
            str(tmp_path / "pool.parquet"),
            "--output",
            str(tmp_path / "m"),
            "--metadata",
            str(tmp_path / "meta.json"),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    done = subprocess.run(
        [
            *common,
            str(REPO / "jobs" / "count.py"),
            "--input",
            str(tmp_path / "m"),
            "--output",
            str(tmp_path / "c"),
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "count: 4 samples, 3 matched" in done.stdout
    counts = pq.read_table(tmp_path / "c" / "entry_counts.parquet").column("count").to_pylist()
    assert counts == [sum(j in naive_match(c, entries) for c in captions) for j in range(3)]


def test_curate_run_runs_every_stage_then_skips_what_is_up_to_date(spark, tmp_path):
    entries = [f"w{i}" for i in range(300)]
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"run:\n  dir: {tmp_path / 'run'}\n  stages: [demo-pool, match, count, balance, select]\n"
        f"demo:\n  rows: 3000\n  files: 2\n  metadata: {tmp_path / 'meta.json'}\n  vocabulary: 200\n"
        f"match:\n  metadata: {tmp_path / 'meta.json'}\n"
        "count:\n  margins: [source]\n"
        "balance:\n  method: metaclip\n  cap: 20\n"
    )
    first = run_command(["run", "--config", str(config)])
    assert [s["stage"] for s in first.stages] == [
        "demo-pool",
        "match",
        "count",
        "balance",
        "select",
    ]
    assert not any(s["skipped"] for s in first.stages)
    for name in ("pool", "matched", "counts", "balance", "selected"):
        assert (tmp_path / "run" / name / "_SUCCESS").exists(), name
    again = run_command(["run", "--config", str(config)])
    assert all(s["skipped"] for s in again.stages)
    changed = run_command(["run", "--config", str(config), "--set", "balance.cap=10"])
    assert {s["stage"]: s["skipped"] for s in changed.stages} == {
        "demo-pool": True,
        "match": True,
        "count": True,
        "balance": False,
        "select": False,
    }
    summary = json.loads((tmp_path / "run" / "balance" / "summary.json").read_text())
    assert summary["t"] == 10


def test_curate_run_rejects_unknown_sections_and_stages(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("run:\n  dir: x\nbalanse:\n  cap: 3\n")
    with pytest.raises(ConfigError, match=r"unknown section 'balanse' \(line 3\)"):
        run_command(["run", "--config", str(config)])
    config.write_text("run:\n  dir: x\n  stages: [match, cont]\n")
    with pytest.raises(ConfigError, match="unknown stage 'cont'"):
        run_command(["run", "--config", str(config)])
