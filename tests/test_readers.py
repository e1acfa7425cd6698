"""Faithful readers (issue 12): every row and value of a pool arrives as written, or is rejected
with a reason, or the read fails before any work with an error naming the file, the column and
the fix. Real files, a real local Spark session; rows of ``docs/failure-modes.md``."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.cli import main
from curation.config import ConfigError, load_config_file
from curation.matching import naive_match
from curation.metadata import MetadataError, check_entries, load_metadata
from curation.shards.keys import split_member_name
from curation.shards.tario import iter_samples
from curation.stages.match import MatchConfig, run_match
from curation.storage import StageInputError
from tests.servers import InputSample, selection_row, write_input_shards, write_selected

ENTRIES = ["cat", "dog", "hot dog", "red"]


@pytest.fixture
def meta(tmp_path) -> str:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(ENTRIES))
    return str(path)


def rows_of(directory: str | Path, name: str = "pool") -> list[dict]:
    return pq.read_table(os.path.join(directory, name)).to_pylist()


def cli(capsys, *argv: str) -> tuple[int, list[str], str]:
    """Run ``curate argv`` in this process: (exit code, stderr lines, stdout)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def match(spark, tmp_path, pool, meta, **options):
    return run_match(
        spark, MatchConfig(input=str(pool), output=str(tmp_path / "out"), metadata=meta, **options)
    )


# --- CSV / TSV ------------------------------------------------------------------------------


def multiline_caption(i: int) -> str:
    """Scraped captions: line breaks, commas and quotes inside one field."""
    return f'a red cat {i}, "quoted"\nof transalpine\n slender-waisted, dog'


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_quoted_newlines_in_csv_and_tsv_give_whole_captions_and_no_fragment_rows(
    spark, tmp_path, meta, fmt
):
    path = tmp_path / f"pool.{fmt}"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerow(["uid", "url", "caption"])
        for i in range(1000):
            writer.writerow([f"id{i}", f"http://x/{i}.jpg", multiline_caption(i)])
    result = match(spark, tmp_path, path, meta)
    pool = rows_of(result.output)
    assert result.summary["input_rows"] == 1000 and result.summary["rejected"] == 0
    assert sorted(r["uid"] for r in pool) == sorted(f"id{i}" for i in range(1000))
    for row in pool:
        i = int(row["uid"][2:])
        assert row["caption"] == multiline_caption(i) and row["url"] == f"http://x/{i}.jpg"
        assert row["entry_ids"] == naive_match(multiline_caption(i), ENTRIES)


def test_no_header_with_named_columns(spark, tmp_path, meta, capsys):
    path = tmp_path / "pool.csv"
    path.write_text('a cat,http://x/0.jpg,u0\n"a red\ndog",http://x/1.jpg,u1\n')
    code, err, _ = cli(
        capsys,
        "match",
        "--input",
        str(path),
        "--output",
        str(tmp_path / "out"),
        "--metadata",
        meta,
        "--no-header",
        "--columns",
        "caption,url,uid",
    )
    assert code == 0, err
    pool = {r["uid"]: r for r in rows_of(tmp_path / "out")}
    assert pool["u0"]["caption"] == "a cat" and pool["u1"]["caption"] == "a red\ndog"
    assert pool["u1"]["url"] == "http://x/1.jpg" and pool["u1"]["entry_ids"] == [1, 3]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["columns"] == {"caption": "caption", "url": "url", "uid": "uid"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--no-header"], "--no-header needs --columns with the files' column names in order"),
        (["--columns", "caption,url"], "--columns names the columns of headerless files"),
        (
            ["--no-header", "--columns", "caption,url"],
            "2 column names given (caption, url) but the files' first line has 3 fields",
        ),
        (["--format", "cc3m-tsv", "--columns", "url,caption"], "--format cc3m-tsv fixes the"),
        (["--format", "parquet", "--no-header"], "apply to CSV/TSV files, not parquet"),
        (["--format", "jsonl"], "--format jsonl does not fit its 1 .csv file(s)"),
    ],
)
def test_bad_header_and_column_options_are_named(spark, tmp_path, meta, capsys, flags, message):
    path = tmp_path / "pool.csv"
    path.write_text("a cat,http://x/0.jpg,u0\n")
    out = str(tmp_path / "out")
    code, err, _ = cli(capsys, "match", "--input", str(path), "--output", out, *flags)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "fmt, lines",
    [
        ("cc3m-tsv", ["{caption}\t{url}"]),
        ("cc12m-tsv", ["{url}\t{caption}"]),
    ],
)
def test_headerless_cc3m_and_cc12m_files_by_format_name_alone(
    spark, tmp_path, meta, capsys, fmt, lines
):
    captions = ['"the" red cat', "a dog's day", 'hot dog with "mustard', "sunset over hills"]
    path = tmp_path / "Train_GCC-training.tsv"
    with open(path, "w", encoding="utf-8") as f:
        for i, caption in enumerate(captions):
            f.write(lines[0].format(caption=caption, url=f"http://x/{i}.jpg") + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"match:\n  format: {fmt}\n")
    out = str(tmp_path / "out")
    code, err, _ = cli(
        capsys, "match", "--config", str(config), "--input", str(path), "--output", out,
        "--metadata", meta,
    )  # fmt: skip
    assert code == 0, err
    pool = {r["url"]: r for r in rows_of(out)}
    assert [pool[f"http://x/{i}.jpg"]["caption"] for i in range(4)] == captions  # quotes as data
    assert pool["http://x/2.jpg"]["entry_ids"] == [1, 2]
    summary = json.loads((Path(out) / "summary.json").read_text())
    assert summary["input_rows"] == 4 and summary["input_format"] == fmt


def test_match_help_lists_the_reader_options(capsys):
    with pytest.raises(SystemExit):
        main(["match", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--format", "cc3m-tsv", "--no-header", "--columns", "--no-csv-multiline"):
        assert flag in text
    assert "--strip-entries" in text


# --- Parquet --------------------------------------------------------------------------------


def test_parquet_files_with_different_columns_are_merged(spark, tmp_path, meta):
    (tmp_path / "pool").mkdir()
    first = [{"url": f"a{i}", "caption": "a cat"} for i in range(500)]
    second = [{"url": f"b{i}", "caption": "a dog", "lang": "en"} for i in range(500)]
    pq.write_table(pa.Table.from_pylist(first), tmp_path / "pool" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(second), tmp_path / "pool" / "b.parquet")
    result = match(spark, tmp_path, tmp_path / "pool", meta)
    pool = rows_of(result.output)
    assert len(pool) == 1000
    langs = {r["url"][0]: set() for r in pool}
    for r in pool:
        langs[r["url"][0]].add(r["lang"])
    assert langs == {"a": {None}, "b": {"en"}}


@pytest.mark.parametrize(
    "column, first, second, types",
    [
        ("uid", ["u0", "u1"], [7, 8], ("string", "bigint")),
        ("caption", ["a cat", "a dog"], [1, 2], ("string", "bigint")),
        ("caption", ["a cat", "a dog"], [["a", "cat"], ["dog"]], ("string", "array<string>")),
        ("caption", ["a cat", "a dog"], [{"t": "cat"}, {"t": "x"}], ("string", "struct<t:string>")),
    ],
)
def test_a_column_typed_differently_in_two_parquet_files_names_both(
    spark, tmp_path, meta, capsys, column, first, second, types
):
    (tmp_path / "pool").mkdir()
    base = {"uid": ["u0", "u1"], "url": ["x", "y"], "caption": ["a cat", "a dog"]}
    a, b = tmp_path / "pool" / "a.parquet", tmp_path / "pool" / "b.parquet"
    pq.write_table(pa.table({**base, column: first}), a)
    pq.write_table(pa.table({**base, column: second}), b)
    out = str(tmp_path / "out")
    code, err, _ = cli(capsys, "match", "--input", str(tmp_path / "pool"), "--output", out)
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        f"error: {tmp_path / 'pool'}: column {column!r} is {types[0]} in file://{a} but "
        f"{types[1]} in file://{b}; every file of a pool must give a column one type: rewrite one "
        "of them with the other type (e.g. pyarrow's table.cast), or keep them in separate pools"
    )
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "captions, type_name",
    [
        ([1, 2], "bigint"),
        ([["a", "cat"], ["dog"]], "array<string>"),
        ([{"t": "cat"}], "struct<t:string>"),
    ],
)
def test_a_caption_column_that_is_not_text_is_named_with_the_fix(
    spark, tmp_path, meta, captions, type_name
):
    path = tmp_path / "pool.parquet"
    pq.write_table(
        pa.table({"url": [f"u{i}" for i in range(len(captions))], "caption": captions}), path
    )
    with pytest.raises(StageInputError) as err:
        match(spark, tmp_path, path, meta)
    assert str(err.value) == (
        f"{path}: the caption column 'caption' is {type_name}, not text; name the column that "
        "holds the captions with --caption-col, or write the captions as strings"
    )
    assert not (tmp_path / "out").exists()


# --- JSONL ----------------------------------------------------------------------------------


def test_jsonl_lone_surrogates_are_non_utf8_and_non_string_captions_are_rejected(
    spark, tmp_path, meta
):
    lines = [
        '{"url": "ok", "caption": "a cat"}',
        '{"url": "pair", "caption": "a dog \\ud83d\\ude00"}',  # a valid pair: one emoji
        '{"url": "escaped", "caption": "red \\\\ud800"}',  # the text \ud800, not a surrogate
        '{"url": "lone", "caption": "cat \\ud800 dog"}',
        '{"url": "lone-low", "caption": "cat \\udc00"}',
        '{"url": "number", "caption": 42}',
        '{"url": "list", "caption": ["a", "cat"]}',
        '{"url": "object", "caption": {"text": "a cat"}}',
        '{"url": "bool", "caption": true}',
        '{"url": "null", "caption": null}',
        "",
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = match(spark, tmp_path, path, meta)
    pool = {r["url"]: r for r in rows_of(result.output)}
    assert sorted(pool) == ["escaped", "ok", "pair"]
    assert pool["pair"]["caption"] == "a dog \U0001f600" and pool["pair"]["entry_ids"] == [1]
    assert pool["escaped"]["caption"] == "red \\ud800" and pool["escaped"]["entry_ids"] == [3]
    rejects = {r["url"]: r for r in rows_of(result.output, "rejects")}
    assert {u: r["reason"] for u, r in rejects.items()} == {
        "lone": "non_utf8",
        "lone-low": "non_utf8",
        "number": "caption_not_string",
        "list": "caption_not_string",
        "object": "caption_not_string",
        "bool": "caption_not_string",
        "null": "null_caption",
    }
    assert rejects["number"]["caption"] == "42"  # the JSON text, for a look
    assert rejects["object"]["caption"] == '{"text":"a cat"}'
    assert "_reader_reason" not in rejects["lone"] and "_reader_reason" not in pool["ok"]
    s = result.summary
    assert s["rejects_by_reason"]["caption_not_string"] == 4
    assert s["rejects_by_reason"]["non_utf8"] == 2 and s["rejects_by_reason"]["null_caption"] == 1
    assert s["input_rows"] == 10 and s["usable_rows"] == 3


def test_jsonl_whose_captions_are_all_numbers_rejects_every_row(spark, tmp_path, meta):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"url": "a", "caption": 1}\n{"url": "b", "caption": 2}\n')
    result = match(spark, tmp_path, path, meta)
    assert rows_of(result.output) == []
    rejects = {r["url"]: r for r in rows_of(result.output, "rejects")}
    assert {u: (r["reason"], r["caption"]) for u, r in rejects.items()} == {
        "a": ("caption_not_string", "1"),
        "b": ("caption_not_string", "2"),
    }


# --- invisible captions ---------------------------------------------------------------------


def test_captions_of_only_zero_width_bom_or_white_space_are_empty(spark, tmp_path, meta):
    invisible = {
        "zwsp": "\u200b",
        "zwnj-zwj": "\u200c\u200d",
        "word-joiner": "\u2060",
        "bom": "\ufeff",
        "nbsp": "\u00a0",
        "mixed": " \u200b\t\ufeff\u3000",
    }
    rows = [{"url": u, "caption": c} for u, c in invisible.items()]
    rows += [{"url": "visible", "caption": "\u200bcat\ufeff"}, {"url": "x", "caption": "a"}]
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = match(spark, tmp_path, path, meta)
    rejects = {r["url"]: r["reason"] for r in rows_of(result.output, "rejects")}
    assert rejects == {u: "empty_caption" for u in invisible}
    assert sorted(r["url"] for r in rows_of(result.output)) == ["visible", "x"]
    assert result.summary["rejects_by_reason"]["empty_caption"] == len(invisible)
    assert result.summary["unmatched"] == 2  # '\u200bcat\ufeff' is not ' cat '


# --- tar shards -----------------------------------------------------------------------------


def test_split_member_name_drops_a_leading_dot_slash():
    assert split_member_name("./000123.jpg") == ("000123", "jpg")
    assert split_member_name("././dir/abc.json") == ("dir/abc", "json")
    for bad in ["./../a.jpg", ".//abs.jpg", "a/./b.jpg", "./", "./.hidden"]:
        assert split_member_name(bad) is None, bad


def _shard_contents(directory: Path) -> dict[str, dict[str, bytes]]:
    found: dict[str, dict[str, bytes]] = {}
    for tar in sorted(directory.glob("*.tar")):
        with open(tar, "rb") as f:
            for key, members in iter_samples(f):
                found[f"{tar.name}/{key}"] = members
    return found


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
def test_reshard_reads_tars_written_with_tar_dash_c_dot(spark, tmp_path, capsys):
    shards = [[InputSample(i, f"{i:09d}") for i in range(n, n + 4)] for n in (0, 4)]
    plain = write_input_shards(tmp_path / "plain", shards)
    (tmp_path / "dotted").mkdir()
    for path in plain:  # the same members, archived by `tar -C dir .`
        unpacked = tmp_path / "unpacked" / Path(path).stem
        unpacked.mkdir(parents=True)
        with tarfile.open(path) as tf:
            tf.extractall(unpacked, filter="data")
        target = tmp_path / "dotted" / Path(path).name
        subprocess.run(
            ["tar", "--sort=name", "-C", str(unpacked), "-cf", str(target), "."], check=True
        )
        shutil.copy(Path(path).with_suffix(".parquet"), target.with_suffix(".parquet"))
        with tarfile.open(target) as tf:
            assert tf.getnames()[1].startswith("./0000")
    selected = write_selected(
        tmp_path / "sel", [selection_row(i, f"http://x/{i}") for i in range(8)]
    )
    outputs = {}
    for name in ("plain", "dotted"):
        code, err, _ = cli(
            capsys, "reshard", "--input", str(tmp_path / name), "--selected", selected,
            "--output", str(tmp_path / f"out-{name}"), "--samples-per-shard", "3",
        )  # fmt: skip
        assert code == 0, err
        stats = json.loads((tmp_path / f"out-{name}" / "_stats.json").read_text())
        outputs[name] = (_shard_contents(tmp_path / f"out-{name}"), stats)
    contents, stats = outputs["dotted"]
    assert len(contents) == 8 and contents == outputs["plain"][0]
    assert stats["input_samples"] == stats["written_samples"] == 8
    assert stats["input_members_skipped"]["bad_name"] == 0 and stats["missing_uids"] == 0


# --- metadata entries with white space at an end --------------------------------------------


def test_padded_metadata_entries_are_warned_about_counted_and_kept(tmp_path, caplog):
    entries = ["cat", " cat", "dog ", "red\u00a0", "\u200bblue", "green", "sky\ufeff"]
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING, logger="curation.metadata"):
        loaded = load_metadata(str(path))
    assert loaded.entries == entries  # ids stay stable: nothing changed without the flag
    assert loaded.padded == [
        (2, " cat"),
        (3, "dog "),
        (4, "red\u00a0"),
        (5, "\u200bblue"),
        (7, "sky\ufeff"),
    ]
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(
        f"{path}: 5 entries have leading or trailing white space or invisible characters "
        "(line 2 ' cat', line 3 'dog ', line 4 'red\\xa0', line 5 '\\u200bblue', line 7 'sky\\ufeff'); "
        "kept as written"
    )
    assert "pass --strip-entries to strip them" in warning
    assert loaded.summary()["padded_entries"] == 5
    assert "padded_entries" not in check_entries(["cat", "dog"]).summary()  # clean list: as before


def test_strip_entries_strips_them_and_a_stripped_repeat_is_a_duplicate(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(["dog ", "\u200bblue", "red"]))
    assert load_metadata(str(path), strip=True).entries == ["dog", "blue", "red"]
    path.write_text(json.dumps(["cat", " cat"]))
    with pytest.raises(MetadataError, match="line 2 repeats line 1"):
        load_metadata(str(path), strip=True)
    path.write_text(json.dumps(["cat", "\u200b\ufeff"]))
    with pytest.raises(MetadataError, match="line 2: empty entry"):
        load_metadata(str(path))


def test_match_records_padded_entries_and_strips_only_when_asked(spark, tmp_path, capsys):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(["cat", "dog ", "\u00a0red"]))
    pool = tmp_path / "pool.parquet"
    pq.write_table(
        pa.table({"url": ["a", "b"], "caption": ["a dog and a red cat", "dog  day"]}), pool
    )
    found = {}
    for flag in ("--no-strip-entries", "--strip-entries"):
        out = tmp_path / f"out{flag}"
        code, err, _ = cli(
            capsys,
            "match",
            "--input",
            str(pool),
            "--output",
            str(out),
            "--metadata",
            str(meta),
            flag,
        )
        assert code == 0, err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["metadata"]["padded_entries"] == 2
        found[flag] = (
            json.loads((out / "metadata.json").read_text()),
            {r["url"]: r["entry_ids"] for r in rows_of(out)},
            summary["metadata"]["padded_entries_stripped"],
        )
    # as written, 'dog ' matches only a double space; stripped, ids stay and it matches 'dog'
    assert found["--no-strip-entries"] == (
        ["cat", "dog ", "\u00a0red"],
        {"a": [0], "b": [1]},
        False,
    )
    assert found["--strip-entries"] == (["cat", "dog", "red"], {"a": [0, 1, 2], "b": [1]}, True)


# --- config files ---------------------------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nmatch: {casefold: true}\n"


def test_a_yaml_alias_bomb_is_refused_with_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    with pytest.raises(ConfigError) as err:
        load_config_file(str(path))
    assert str(err.value) == (
        f"{path}: the YAML aliases (*name) expand it to more than 100,000 values (an alias "
        "bomb?); write the values out, or use fewer nested aliases"
    )
    code, lines, _ = cli(capsys, "match", "--config", str(path), "--input", "x", "--output", "y")
    assert code == 2 and lines == [f"error: {err.value}"]
    code, lines, _ = cli(capsys, "run", "--config", str(path))
    assert code == 2 and lines == [f"error: {err.value}"]
    cyclic = tmp_path / "cycle.yaml"
    cyclic.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="refers to a node that contains it"):
        load_config_file(str(cyclic))


def test_ordinary_yaml_aliases_still_work(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "base: &base {casefold: true, partitions: 3}\nmatch:\n  <<: *base\n  input: p\n"
    )
    assert load_config_file(str(path))["match"] == {"casefold": True, "partitions": 3, "input": "p"}
