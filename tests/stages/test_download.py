"""``download``: img2dataset on the test session against a loopback image server, then the
shard set read back with the real ``webdataset`` library."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from pyspark import SparkContext

from curation.shards.verify import verify_shard_set
from curation.stages.download import DownloadConfig, failure_reason, run_download
from curation.storage import StageInputError
from tests.servers import image_server, selection_row, write_selected  # noqa: F401


def test_failure_reasons():
    assert failure_reason("failed_to_download", "HTTP Error 404: Not Found") == "http_404"
    assert failure_reason("failed_to_download", "The read operation timed out") == "timeout"
    assert failure_reason("failed_to_download", "<urlopen error timed out>") == "timeout"
    assert failure_reason("failed_to_resize", "cannot identify image") == "decode_error"
    assert (
        failure_reason("failed_to_download", "<urlopen error [Errno 111] Connection refused>")
        == "connection_error"
    )


def build_selection(tmp_path, server):
    """10 good images (6 JPEG, 4 PNG; some repeated), 3 missing, 1 slow, 1 corrupt, 1 no url."""
    rows, i = [], 0
    for kind, n in [("jpg", 6), ("png", 4), ("missing", 3), ("slow", 1), ("corrupt", 1)]:
        for _ in range(n):
            rows.append(selection_row(i, server.url(f"/{kind}/{i}"), repeats=1 + (i % 4 == 0)))
            i += 1
    rows.append(selection_row(i, None))
    return write_selected(tmp_path / "selected", rows), rows


def test_download_counts_match_what_was_served(spark, tmp_path, image_server):  # noqa: F811
    import webdataset as wds

    selected, rows = build_selection(tmp_path, image_server)
    by_uid = {r["uid"]: r for r in rows}
    context = SparkContext._active_spark_context
    before = Counter(image_server.served)
    out = tmp_path / "set"
    config = DownloadConfig(
        input=selected,
        output=str(out),
        samples_per_shard=4,
        shuffle=True,
        image_size=48,
        resize_mode="border",
        timeout=2,
        download_shard_size=5,
        thread_count=4,
        keep_raw=True,
    )
    result = run_download(spark, config)

    # img2dataset ran on our session and left it running
    assert SparkContext._active_spark_context is context
    assert spark.range(3).count() == 3
    served = Counter()
    for (_path, status), n in (image_server.served - before).items():
        served[status] += n
    assert served == {"ok": 10, "404": 3, "slow": 1, "corrupt": 1}

    d = result.stats["download"]
    assert d["urls"] == 16 and d["successes"] == served["ok"]
    assert d["failures_by_reason"] == {"http_404": 3, "decode_error": 1, "no_url": 1, "timeout": 1}
    rejects = pq.read_table(out / "_rejects.parquet").to_pylist()
    assert Counter(r["reason"] for r in rejects) == {
        "http_404": 3,
        "timeout": 1,
        "decode_error": 1,
        "no_url": 1,
    }

    sizes = json.loads((out / "sizes.json").read_text())
    arrived = {
        u for u, r in by_uid.items() if "/jpg/" in (r["url"] or "") or "/png/" in (r["url"] or "")
    }
    expected_samples = sum(by_uid[u]["repeats"] for u in arrived)
    assert sum(sizes.values()) == expected_samples == result.stats["written_samples"]
    assert list(sizes) == [f"{n:05d}.tar" for n in range(len(sizes))]
    repeats, weights = Counter(), 0.0
    for name, n in sizes.items():
        samples = list(wds.WebDataset(str(out / name), shardshuffle=False).decode("pil"))
        assert len(samples) == n
        for s in samples:
            meta = s["json"]
            assert s["jpg"].size == (48, 48)
            assert s["txt"] == by_uid[meta["uid"]]["caption"]
            assert "." not in s["__key__"]
            assert meta["entry_ids"] == by_uid[meta["uid"]]["entry_ids"]
            assert meta["inclusion_prob"] == by_uid[meta["uid"]]["inclusion_prob"]
            repeats[meta["uid"]] += 1
            weights += meta["weight"]
    assert dict(repeats) == {u: by_uid[u]["repeats"] for u in arrived}
    total = sum(r["weight"] * r["repeats"] for r in rows)
    assert weights == pytest.approx(total)  # renormalised over what arrived
    assert (out / "_SUCCESS").exists() and (out / "_work" / "raw").is_dir()
    assert verify_shard_set(str(out)) == {"shards": len(sizes), "samples": expected_samples}

    # up to date: skipped, nothing fetched again
    after = Counter(image_server.served)
    assert run_download(spark, config).skipped
    # another shard size reshards the kept raw downloads: still nothing fetched again
    config.samples_per_shard, config.keep_raw = 3, False
    regrouped = run_download(spark, config)
    assert Counter(image_server.served) == after
    assert not regrouped.skipped and regrouped.stats["written_samples"] == expected_samples
    assert max(json.loads((out / "sizes.json").read_text()).values()) == 3
    assert not (out / "_work").exists()


def _failing_download(tmp_path, rows, **options) -> DownloadConfig:
    selected = write_selected(tmp_path / "selected", rows)
    defaults = {"samples_per_shard": 4, "image_size": 32, "timeout": 2, "thread_count": 2}
    return DownloadConfig(
        input=selected,
        output=str(tmp_path / "set"),
        download_shard_size=5,
        **{**defaults, **options},
    )


def test_a_rerun_after_a_failed_download_retries_the_failed_urls(
    spark,
    tmp_path,
    image_server,  # noqa: F811
):
    rows = [
        selection_row(0, image_server.url("/flaky1/0")),
        selection_row(1, image_server.url("/flaky2/1")),
    ]
    config = _failing_download(tmp_path, rows, max_retries=2)
    with pytest.raises(StageInputError) as err:
        run_download(spark, config)
    assert "none of the 2 selected URLs could be downloaded" in str(err.value)
    assert "Rerun the same command to retry the URLs that failed (2 of --max-retries 2" in str(
        err.value
    )
    # The rerun retries both: /flaky1/0 answers now, /flaky2/1 fails once more.
    result = run_download(spark, config)
    assert result.stats["download"]["successes"] == 1
    assert result.stats["download"]["retry_rounds"] == 1
    assert result.stats["download"]["failures_by_reason"] == {"http_503": 1}
    assert sum(result.sizes.values()) == 1
    rejects = pq.read_table(tmp_path / "set" / "_rejects.parquet").to_pylist()
    assert [(r["uid"], r["reason"]) for r in rejects] == [(rows[1]["uid"], "http_503")]
    served = Counter()
    for (path, _status), n in image_server.served.items():
        served[path] += n
    assert served["/flaky1/0"] == 2 and served["/flaky2/1"] == 2


def test_retries_stop_at_max_retries_and_the_error_says_so(
    spark,
    tmp_path,
    image_server,  # noqa: F811
):
    rows = [selection_row(0, image_server.url("/missing/900"))]
    config = _failing_download(tmp_path, rows, max_retries=1)
    messages = []
    for _ in range(3):
        with pytest.raises(StageInputError) as err:
            run_download(spark, config)
        messages.append(str(err.value))
    assert "(1 of --max-retries 1 retries left)" in messages[0]
    for message in messages[1:]:
        assert "The failed URLs were retried 1 time(s) (--max-retries 1)" in message
        assert "--force to start over" in message
    # first run + one retry; the third run fetched nothing
    assert image_server.served[("/missing/900", "404")] == 2


def test_an_unshuffled_download_is_in_uid_order(spark, tmp_path, image_server):  # noqa: F811
    import webdataset as wds

    rows = [
        selection_row(i, image_server.url(f"/jpg/{i}"), repeats=1 + (i % 3 == 0)) for i in range(12)
    ]
    config = _failing_download(tmp_path, rows, thread_count=8)
    result = run_download(spark, config)
    keys = []
    for name in result.sizes:
        keys += [
            s["json"]["uid"]
            for s in wds.WebDataset(str(tmp_path / "set" / name), shardshuffle=False).decode()
        ]
    expected = sorted(r["uid"] for r in rows for _ in range(r["repeats"]))
    assert keys == expected
