"""The ``count`` stage must equal a pure-Python recount of the naive matches of the captions."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.demo import generate_captions
from curation.matching import naive_match
from curation.stages.count import CountConfig, run_count
from curation.stages.demo_pool import DemoPoolConfig, write_demo_pool
from curation.stages.match import MatchConfig, run_match
from curation.storage import StageInputError


def recount(signatures_per_row: list[tuple[tuple[int, ...], str]], n_entries: int) -> dict:
    """Every marginal the count stage writes, recomputed with Counters."""
    entry = Counter(j for s, _ in signatures_per_row for j in s)
    return {
        "entry": [entry.get(j, 0) for j in range(n_entries)],
        "signatures": Counter(signatures_per_row),
        "histogram": Counter(len(s) for s, _ in signatures_per_row),
        "margin": Counter(m for _, m in signatures_per_row),
        "margin_entry": Counter((m, j) for s, m in signatures_per_row for j in s),
    }


def check_counts(out: str, expected: dict, margin: str) -> None:
    counts = pq.read_table(os.path.join(out, "entry_counts.parquet"))
    assert counts.schema.names == ["entry_id", "entry", "count"]
    assert counts.schema.field("entry_id").type == pa.int32()
    assert counts.column("entry_id").to_pylist() == list(range(len(expected["entry"])))
    assert counts.column("count").to_pylist() == expected["entry"]

    signatures = pq.read_table(os.path.join(out, "signatures")).to_pylist()
    got = Counter({(tuple(r["entry_ids"]), r[margin]): r["multiplicity"] for r in signatures})
    assert len(signatures) == len(got)  # distinct
    assert got == expected["signatures"]

    histogram = pq.read_table(os.path.join(out, "matches_histogram.parquet")).to_pylist()
    assert {r["k"]: r["samples"] for r in histogram} == dict(expected["histogram"])

    levels = pq.read_table(os.path.join(out, "margin_counts", f"{margin}.parquet")).to_pylist()
    assert {r[margin]: r["samples"] for r in levels} == dict(expected["margin"])
    pairs = pq.read_table(os.path.join(out, "margin_entry_counts", f"{margin}.parquet")).to_pylist()
    assert {(r[margin], r["entry_id"]): r["count"] for r in pairs} == dict(expected["margin_entry"])

    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["samples"] == sum(expected["histogram"].values())
    assert summary["entries_observed"] == sum(1 for c in expected["entry"] if c)
    top = summary["top_entries"][0]
    assert top["count"] == max(expected["entry"])


def test_counts_equal_a_recount_of_the_demo_pool(spark, tmp_path):
    entries = [f"w{i}" for i in range(300)] + ["hot dog", "New York", "the"]
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    captions, source = generate_captions(entries, 3000, seed=7, exponent=1.1)
    captions = [c for c in captions if c and c.strip() and len(c) < 10_000]
    sources = ["web-a", "web-b", "web-c"]
    rows = [
        {"url": f"http://x/{i}", "caption": c, "source": sources[i % 3]}
        for i, c in enumerate(captions)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    matched = run_match(
        spark,
        MatchConfig(
            input=str(tmp_path / "pool.parquet"),
            output=str(tmp_path / "m"),
            metadata=str(tmp_path / "meta.json"),
        ),
    ).output
    out = run_count(
        spark, CountConfig(input=matched, output=str(tmp_path / "c"), margins=["source"])
    ).output
    expected = recount(
        [(tuple(naive_match(r["caption"], entries)), r["source"]) for r in rows], len(entries)
    )
    assert expected["histogram"][0] > 0 and max(expected["entry"]) > 100  # head and unmatched exist
    check_counts(out, expected, "source")


def test_counts_equal_a_recount_on_real_captions(spark, tmp_path, real_captions):
    from tests.test_matching import realistic_entries

    rows, n = [], 0
    for name in ("coco_val2017", "flickr8k", "multi30k_de"):
        for caption in real_captions.get(name, [])[:2000]:
            rows.append({"url": f"http://x/{n}", "caption": caption, "set": name})
            n += 1
    if not rows:
        pytest.skip("none of coco_val2017, flickr8k, multi30k_de is present")
    entries = realistic_entries([r["caption"] for r in rows], np.random.default_rng(1))
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    matched = run_match(
        spark,
        MatchConfig(
            input=str(tmp_path / "pool.parquet"),
            output=str(tmp_path / "m"),
            metadata=str(tmp_path / "meta.json"),
        ),
    ).output
    out = run_count(
        spark, CountConfig(input=matched, output=str(tmp_path / "c"), margins=["set"])
    ).output
    expected = recount(
        [(tuple(naive_match(r["caption"], entries)), r["set"]) for r in rows], len(entries)
    )
    check_counts(out, expected, "set")


def test_count_refuses_an_incomplete_matched_pool(spark, tmp_path):
    (tmp_path / "m" / "pool").mkdir(parents=True)
    with pytest.raises(StageInputError, match="incomplete .no _SUCCESS marker"):
        run_count(spark, CountConfig(input=str(tmp_path / "m"), output=str(tmp_path / "c")))
    with pytest.raises(StageInputError, match="not found"):
        run_count(spark, CountConfig(input=str(tmp_path / "nope"), output=str(tmp_path / "c")))


def test_unknown_margin_column_is_named(spark, tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(["cat"]))
    pq.write_table(pa.Table.from_pylist([{"url": "u", "caption": "a cat"}]), tmp_path / "p.parquet")
    matched = run_match(
        spark,
        MatchConfig(
            input=str(tmp_path / "p.parquet"),
            output=str(tmp_path / "m"),
            metadata=str(tmp_path / "meta.json"),
        ),
    ).output
    with pytest.raises(
        StageInputError, match="margin column 'language' is not in the matched pool"
    ):
        run_count(
            spark, CountConfig(input=matched, output=str(tmp_path / "c"), margins=["language"])
        )


def test_demo_pool_is_deterministic_and_zipf_like(tmp_path):
    entries = [f"e{i}" for i in range(2000)]
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    a, src_a = generate_captions(entries, 5000, seed=3, exponent=1.1)
    b, src_b = generate_captions(entries, 5000, seed=3, exponent=1.1)
    c, _ = generate_captions(entries, 5000, seed=4, exponent=1.1)
    assert a == b and np.array_equal(src_a, src_b) and a != c
    counts = sorted(
        Counter(j for x in a if x for j in naive_match(x, entries)).values(), reverse=True
    )
    assert counts[0] > 20 * counts[len(counts) // 2]  # a heavy head over the median entry
    config = DemoPoolConfig(
        output=str(tmp_path / "pool"),
        rows=5000,
        files=3,
        seed=3,
        metadata=str(tmp_path / "meta.json"),
    )
    write_demo_pool(config)
    files = sorted(p for p in os.listdir(tmp_path / "pool") if p.endswith(".parquet"))
    assert len(files) == 3
    first = [open(tmp_path / "pool" / f, "rb").read() for f in files]
    config.output = str(tmp_path / "pool2")
    write_demo_pool(config)
    assert first == [open(tmp_path / "pool2" / f, "rb").read() for f in files]  # byte-identical
