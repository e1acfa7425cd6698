"""The ``match`` stage on a real local Spark session: formats, schema, uids, rejects, errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.matching import naive_match
from curation.metadata import MetadataError
from curation.stages.match import MatchConfig, run_match
from curation.storage import StageInputError

ENTRIES = ["cat", "dog", "hot dog", "New York", "猫", "red", "a"]
ROWS = [
    {"url": "http://x/0.jpg", "caption": "a cat, a dog and a hot dog.", "lang": "en"},
    {"url": "http://x/1.jpg", "caption": "New York at night", "lang": "en"},
    {"url": "http://x/2.jpg", "caption": "我的猫", "lang": "zh"},
    {"url": "http://x/3.jpg", "caption": "nothing to see", "lang": "en"},
    {"url": "http://x/4.jpg", "caption": "Red dogs", "lang": "en"},
    {"url": "http://x/5.jpg", "caption": "a red\tcat", "lang": "en"},
]


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(ENTRIES))
    return str(path)


def write_pool(path, rows, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt in ("csv", "tsv", "csv.gz"):
        opener = gzip.open if fmt.endswith(".gz") else open
        with opener(path, "wt", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(
                f, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ","
            )
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def read(directory, name="pool"):
    return pq.read_table(os.path.join(directory, name)).to_pylist()


def by_url(rows):
    return {r["url"]: r for r in rows}


def md5_uid(url, caption):
    return hashlib.md5(url.encode() + b"\x00" + caption.encode()).hexdigest()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "csv.gz"])
def test_every_format_gives_the_naive_sets_and_derived_uids(spark, tmp_path, metadata, fmt):
    pool = write_pool(tmp_path / f"pool.{fmt}", ROWS, fmt)
    result = run_match(
        spark, MatchConfig(input=pool, output=str(tmp_path / "out"), metadata=metadata)
    )
    out = by_url(read(result.output))
    assert len(out) == len(ROWS)
    for row in ROWS:
        got = out[row["url"]]
        assert got["entry_ids"] == naive_match(row["caption"], ENTRIES)
        assert got["uid"] == md5_uid(row["url"], row["caption"])
        assert got["caption"] == row["caption"] and got["lang"] == row["lang"]
    assert result.summary["input_format"] == fmt.removesuffix(".gz")
    assert (
        result.summary["matched"] == 4 and result.summary["unmatched"] == 2
    )  # "Red dogs": case kept, whole words


def test_output_schema_and_metadata_copy(spark, tmp_path, metadata):
    pool = write_pool(tmp_path / "pool.parquet", ROWS, "parquet")
    out = run_match(
        spark, MatchConfig(input=pool, output=str(tmp_path / "out"), metadata=metadata)
    ).output
    schema = pq.read_schema(next((tmp_path / "out" / "pool").glob("*.parquet")))
    assert schema.names == ["url", "caption", "lang", "uid", "entry_ids"]
    entry_ids = schema.field("entry_ids").type
    assert pa.types.is_list(entry_ids) and entry_ids.value_type == pa.int32()
    assert schema.field("uid").type == pa.string()
    assert json.loads((tmp_path / "out" / "metadata.json").read_text()) == ENTRIES
    for name in ("_SUCCESS", "_manifest.json", "summary.json", "rejects"):
        assert os.path.exists(os.path.join(out, name))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_laion_column_names_given_uids_and_a_directory(spark, tmp_path, metadata):
    rows = [{"uid": f"u{i}", "URL": r["url"], "TEXT": r["caption"]} for i, r in enumerate(ROWS)]
    write_pool(tmp_path / "pool" / "a.parquet", rows[:3], "parquet")
    write_pool(tmp_path / "pool" / "b.parquet", rows[3:], "parquet")
    (tmp_path / "pool" / "_SUCCESS").write_text("")
    result = run_match(
        spark,
        MatchConfig(input=str(tmp_path / "pool"), output=str(tmp_path / "out"), metadata=metadata),
    )
    out = {r["uid"]: r for r in read(result.output)}
    assert sorted(out) == [f"u{i}" for i in range(len(ROWS))]
    assert out["u0"]["entry_ids"] == naive_match(ROWS[0]["caption"], ENTRIES)
    assert result.summary["columns"] == {"caption": "TEXT", "url": "URL", "uid": "uid"}


def test_rejects_are_counted_and_kept_never_dropped(spark, tmp_path, metadata):
    bad_bytes = b"caf\xe9 cat"  # Latin-1, not UTF-8
    rows = [
        {"url": "http://x/ok", "caption": b"a cat"},
        {"url": "http://x/null", "caption": None},
        {"url": "http://x/empty", "caption": b""},
        {"url": "http://x/space", "caption": b" \t\n "},
        {"url": "http://x/long", "caption": b"cat " * 30},
        {"url": "http://x/latin1", "caption": bad_bytes},
        {"url": "http://x/fffd", "caption": "caf\ufffd cat".encode()},
    ]
    path = tmp_path / "pool.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            rows, schema=pa.schema([("url", pa.string()), ("caption", pa.binary())])
        ),
        path,
    )
    result = run_match(
        spark,
        MatchConfig(
            input=str(path), output=str(tmp_path / "out"), metadata=metadata, max_caption_chars=100
        ),
    )
    rejects = by_url(read(result.output, "rejects"))
    assert {u: r["reason"] for u, r in rejects.items()} == {
        "http://x/null": "null_caption",
        "http://x/empty": "empty_caption",
        "http://x/space": "empty_caption",
        "http://x/long": "caption_too_long",
        "http://x/latin1": "non_utf8",
    }
    assert rejects["http://x/latin1"]["caption"] == "caf\ufffd cat"  # readable copy, lossy
    assert all(r["source_file"].endswith("pool.parquet") for r in rejects.values())
    # U+FFFD marks bytes lost upstream; the rest is readable: matched, as MetaCLIP does, and counted
    matched = by_url(read(result.output))
    assert sorted(matched) == ["http://x/fffd", "http://x/ok"]
    assert matched["http://x/fffd"]["entry_ids"] == naive_match("caf\ufffd cat", ENTRIES)
    s = result.summary
    assert s["input_rows"] == 7 and s["usable_rows"] == 2 and s["rejected"] == 5
    assert s["replacement_char_captions"] == 1
    assert s["rejects_by_reason"] == {
        "null_caption": 1,
        "non_utf8": 1,
        "empty_caption": 2,
        "caption_too_long": 1,
        "duplicate_uid": 0,
    }
    assert "1 usable captions hold U+FFFD" in result.report()
    strict = run_match(
        spark,
        MatchConfig(
            input=str(path),
            output=str(tmp_path / "strict"),
            metadata=metadata,
            max_caption_chars=100,
            reject_replacement_char=True,
        ),
    )
    assert by_url(read(strict.output, "rejects"))["http://x/fffd"]["reason"] == "non_utf8"
    assert strict.summary["rejects_by_reason"]["non_utf8"] == 2
    assert strict.summary["replacement_char_captions"] == 0


def test_missing_caption_column_names_the_file_and_columns(spark, tmp_path, metadata):
    pool = write_pool(tmp_path / "pool.csv", [{"url": "u", "title": "a cat"}], "csv")
    with pytest.raises(
        StageInputError, match=r"pool\.csv: no caption column .*\['url', 'title'\].*--caption-col"
    ):
        run_match(spark, MatchConfig(input=pool, output=str(tmp_path / "out"), metadata=metadata))
    assert not (tmp_path / "out").exists()


def test_missing_url_column_and_wrong_column_name(spark, tmp_path, metadata):
    pool = write_pool(tmp_path / "pool.jsonl", [{"caption": "a cat"}], "jsonl")
    with pytest.raises(StageInputError, match="no url column"):
        run_match(spark, MatchConfig(input=pool, output=str(tmp_path / "out"), metadata=metadata))
    with pytest.raises(StageInputError, match="the caption column 'text' does not exist"):
        run_match(
            spark,
            MatchConfig(
                input=pool, output=str(tmp_path / "out"), metadata=metadata, caption_col="text"
            ),
        )


def test_empty_directory_and_empty_pool(spark, tmp_path, metadata):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageInputError, match="no pool files found"):
        run_match(
            spark,
            MatchConfig(
                input=str(tmp_path / "empty"), output=str(tmp_path / "out"), metadata=metadata
            ),
        )
    path = tmp_path / "zero.parquet"
    pq.write_table(
        pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), path
    )
    with pytest.raises(StageInputError, match=r"zero\.parquet: the pool is empty \(0 rows\)"):
        run_match(
            spark, MatchConfig(input=str(path), output=str(tmp_path / "out"), metadata=metadata)
        )
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_bad_metadata_fails_before_any_output(spark, tmp_path):
    pool = write_pool(tmp_path / "pool.parquet", ROWS, "parquet")
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\n\ndog\n")
    with pytest.raises(MetadataError, match=r"bad\.txt: line 2: empty entry"):
        run_match(spark, MatchConfig(input=pool, output=str(tmp_path / "out"), metadata=str(bad)))
    assert not (tmp_path / "out").exists()


def test_rerun_is_skipped_until_config_or_input_changes(spark, tmp_path, metadata):
    pool = write_pool(tmp_path / "pool.parquet", ROWS, "parquet")
    config = MatchConfig(input=pool, output=str(tmp_path / "out"), metadata=metadata)
    first = run_match(spark, config)
    assert not first.skipped
    assert run_match(spark, config).skipped
    config.casefold = True
    again = run_match(spark, config)
    assert not again.skipped
    assert by_url(read(again.output))["http://x/4.jpg"]["entry_ids"] == naive_match(
        "Red dogs", ENTRIES, casefold=True
    )


def test_casefold_and_repartition(spark, tmp_path, metadata):
    pool = write_pool(tmp_path / "pool.parquet", ROWS, "parquet")
    out = run_match(
        spark,
        MatchConfig(
            input=pool, output=str(tmp_path / "out"), metadata=metadata, casefold=True, partitions=3
        ),
    ).output
    for row in ROWS:
        assert by_url(read(out))[row["url"]]["entry_ids"] == naive_match(
            row["caption"], ENTRIES, casefold=True
        )


def test_per_language_lists_share_one_id_space(spark, tmp_path):
    lists = {"de": ["Katze", "Hund", "rot"], "en": ["cat", "dog", "red"], "zh": ["猫", "红色"]}
    (tmp_path / "meta").mkdir()
    for lang, entries in lists.items():
        (tmp_path / "meta" / f"{lang}.json").write_text(json.dumps(entries, ensure_ascii=False))
    (tmp_path / "meta" / "summary.json").write_text(
        "{}"
    )  # the metadata stage's summary: not a list
    rows = [
        {"url": "1", "caption": "eine rote Katze, ein Hund", "lang": "de"},
        {"url": "2", "caption": "a red cat", "lang": "en"},
        {"url": "3", "caption": "a cat named Hund", "lang": "de"},  # English words, German list
        {"url": "4", "caption": "我的红色猫", "lang": "zh"},
        {"url": "5", "caption": "un chat rouge, cat", "lang": "fr"},  # no French list
        {"url": "6", "caption": "cat", "lang": None},
    ]
    pool = write_pool(tmp_path / "pool.parquet", rows, "parquet")
    config = MatchConfig(input=pool, output=str(tmp_path / "out"), metadata=str(tmp_path / "meta"))
    with pytest.raises(
        ValueError, match="directory of per-language lists: name the pool's language column"
    ):
        run_match(spark, config)
    config.lang_col = "lang"
    result = run_match(spark, config)
    offsets = {"de": 0, "en": 3, "zh": 6}
    out = by_url(read(result.output))
    for row in rows:
        lang = row["lang"]
        want = (
            [offsets[lang] + j for j in naive_match(row["caption"], lists[lang])]
            if lang in lists
            else []
        )
        assert out[row["url"]]["entry_ids"] == want, row
    assert json.loads((tmp_path / "out" / "metadata.json").read_text()) == [
        e for lang in ("de", "en", "zh") for e in lists[lang]
    ]
    languages = json.loads((tmp_path / "out" / "metadata_languages.json").read_text())
    assert [(b["lang"], b["offset"], b["entries"]) for b in languages] == [
        ("de", 0, 3),
        ("en", 3, 3),
        ("zh", 6, 2),
    ]

    from curation.stages.count import CountConfig, run_count

    counts = run_count(spark, CountConfig(input=result.output, output=str(tmp_path / "c"))).output
    table = pq.read_table(os.path.join(counts, "entry_counts.parquet")).to_pylist()
    assert [(r["lang"], r["entry"], r["count"]) for r in table if r["count"]] == [
        ("de", "Katze", 1),
        ("de", "Hund", 2),
        ("en", "cat", 1),
        ("en", "red", 1),
        ("zh", "猫", 1),
        ("zh", "红色", 1),
    ]
