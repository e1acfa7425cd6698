"""The bad-input matrix of ``docs/failure-modes.md``: one test per row that no other test file
covers, each asserting the exact outcome (an error naming the file, row or entry, or the row
counted in the rejects table). Rows covered elsewhere are named in the table."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.cli import main
from curation.demo import generate_captions
from curation.shards.tario import CorruptTarError, scan_tar
from curation.stages.balance import BalanceConfig, BalanceConfigError, run_balance
from curation.stages.match import MatchConfig, run_match
from curation.storage import StageInputError
from tests.pipeline import match_and_count
from tests.servers import InputSample, selection_row, write_input_shards, write_selected

ENTRIES = ["cat", "dog", "hot dog", "red"]


@pytest.fixture
def meta(tmp_path) -> str:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(ENTRIES))
    return str(path)


def rows_of(directory: str | Path, name: str) -> list[dict]:
    return pq.read_table(os.path.join(directory, name)).to_pylist()


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``curate argv`` in this process (on the test session); (exit code, stderr lines)."""
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


# --- pool columns and captions --------------------------------------------------------------


def test_missing_url_column_names_the_file_and_the_columns(spark, tmp_path, meta):
    path = tmp_path / "pool.csv"
    path.write_text("caption,source\na cat,web\n")
    with pytest.raises(StageInputError) as err:
        run_match(spark, MatchConfig(input=str(path), output=str(tmp_path / "o"), metadata=meta))
    assert str(err.value) == (
        f"{path}: no url column (looked for url, URL, image_url); columns are "
        "['caption', 'source']. Name it with --url-col"
    )
    assert not (tmp_path / "o").exists()


def test_a_100_kb_caption_is_rejected_as_too_long_and_kept_in_the_rejects(spark, tmp_path, meta):
    long_caption = "a red cat " * 10_000  # 100,000 characters
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": ["u-long", "u-ok"], "caption": [long_caption, "a cat"]}), path)
    result = run_match(
        spark, MatchConfig(input=str(path), output=str(tmp_path / "o"), metadata=meta)
    )
    [reject] = rows_of(result.output, "rejects")
    assert reject["url"] == "u-long" and reject["reason"] == "caption_too_long"
    assert reject["caption"] == long_caption  # the row itself, whole
    assert reject["source_file"].endswith("pool.parquet")
    assert [r["url"] for r in rows_of(result.output, "pool")] == ["u-ok"]
    assert result.summary["rejects_by_reason"]["caption_too_long"] == 1
    assert result.summary["input_rows"] == 2 and result.summary["usable_rows"] == 1


def test_non_utf8_bytes_in_a_csv_are_counted_as_non_utf8(spark, tmp_path, meta):
    path = tmp_path / "pool.csv"
    path.write_bytes(b"url,caption\nu1,a cat\nu2,caf\xe9 dog\n")  # Latin-1 in a UTF-8 file
    # The CSV reader turns the bad byte into U+FFFD: matched by default, and counted.
    lenient = run_match(
        spark, MatchConfig(input=str(path), output=str(tmp_path / "l"), metadata=meta)
    )
    assert sorted(r["url"] for r in rows_of(lenient.output, "pool")) == ["u1", "u2"]
    assert lenient.summary["replacement_char_captions"] == 1
    assert lenient.summary["rejects_by_reason"]["non_utf8"] == 0
    result = run_match(
        spark,
        MatchConfig(
            input=str(path),
            output=str(tmp_path / "o"),
            metadata=meta,
            reject_replacement_char=True,
        ),
    )
    [reject] = rows_of(result.output, "rejects")
    assert (reject["url"], reject["reason"]) == ("u2", "non_utf8")
    assert reject["source_file"] == f"file://{path}"
    assert result.summary["rejects_by_reason"]["non_utf8"] == 1
    assert [r["url"] for r in rows_of(result.output, "pool")] == ["u1"]


def test_a_non_utf8_jsonl_line_is_an_error_naming_the_file_and_the_line(spark, tmp_path, meta):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(
        b'{"url": "u1", "caption": "a cat"}\n{"url": "u2", "caption": "caf\xe9 dog"}\n'
    )
    with pytest.raises(StageInputError) as err:
        run_match(spark, MatchConfig(input=str(path), output=str(tmp_path / "o"), metadata=meta))
    message = str(err.value)
    assert message.startswith(
        f"{path}: 1 JSON line(s) could not be parsed (not JSON, or not valid UTF-8), "
        f"e.g. in file://{path}: "
    )
    assert '"u2"' in message and message.endswith("; fix or remove them")
    assert not (tmp_path / "o").exists()


# --- duplicate uids -------------------------------------------------------------------------


def test_duplicate_uids_keep_the_first_copy_and_reject_the_others(spark, tmp_path, meta):
    (tmp_path / "pool").mkdir()
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"uid": "x", "url": "x-a", "caption": "a cat"},
                {"uid": "y", "url": "y2", "caption": "a dog"},
                {"uid": "y", "url": "y1", "caption": "red"},
                {"uid": "z", "url": "z", "caption": "hot dog"},
            ]
        ),
        tmp_path / "pool" / "a.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist([{"uid": "x", "url": "x-b", "caption": "a red dog"}]),
        tmp_path / "pool" / "b.parquet",
    )
    outputs = []
    for partitions in (1, 3):
        result = run_match(
            spark,
            MatchConfig(
                input=str(tmp_path / "pool"),
                output=str(tmp_path / f"o{partitions}"),
                metadata=meta,
                partitions=partitions,
            ),
        )
        kept = sorted((r["uid"], r["url"]) for r in rows_of(result.output, "pool"))
        # first file first, then url order: x from a.parquet, y's copy with url y1
        assert kept == [("x", "x-a"), ("y", "y1"), ("z", "z")]
        rejects = sorted(
            (r["uid"], r["url"], r["reason"], r["source_file"].rsplit("/", 1)[-1])
            for r in rows_of(result.output, "rejects")
        )
        assert rejects == [
            ("x", "x-b", "duplicate_uid", "b.parquet"),
            ("y", "y2", "duplicate_uid", "a.parquet"),
        ]
        s = result.summary
        assert s["input_rows"] == 5 and s["usable_rows"] == 3 and s["rejected"] == 2
        assert s["rejects_by_reason"]["duplicate_uid"] == 2
        assert "duplicate_uid 2" in result.report()
        outputs.append(kept)
    assert outputs[0] == outputs[1]


def test_exact_duplicate_pairs_without_a_uid_column_are_counted_once(spark, tmp_path, meta):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": ["u", "u", "u"], "caption": ["a cat", "a cat", "a dog"]}), path)
    result = run_match(
        spark, MatchConfig(input=str(path), output=str(tmp_path / "o"), metadata=meta)
    )
    assert sorted(r["caption"] for r in rows_of(result.output, "pool")) == ["a cat", "a dog"]
    assert [r["reason"] for r in rows_of(result.output, "rejects")] == ["duplicate_uid"]


# --- unreadable Parquet ---------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "not_parquet":
        path.write_bytes(b"this is not a parquet file " * 20)
    else:  # pages overwritten, footer intact: fails while the data is read, not the schema
        damaged = bytearray(data)
        for i in range(64, len(data) // 2, 7):
            damaged[i] = 0xAB
        path.write_bytes(bytes(damaged))


@pytest.mark.parametrize("how", ["truncated", "not_parquet", "damaged_pages"])
def test_an_unreadable_parquet_file_is_named_in_one_line(spark, tmp_path, meta, capsys, how):
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table({"url": ["a"], "caption": ["a cat"]}), tmp_path / "pool" / "a.parquet")
    bad = tmp_path / "pool" / "b.parquet"
    pq.write_table(
        pa.table(
            {"url": [f"u{i}" for i in range(5000)], "caption": [f"cat {i}" for i in range(5000)]}
        ),
        bad,
    )
    _damage(bad, how)
    code, err = cli(
        capsys,
        "match",
        "--input",
        str(tmp_path / "pool"),
        "--output",
        str(tmp_path / "o"),
        "--metadata",
        meta,
    )
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: cannot read file://{bad}: "), err[0]
    assert "the file is corrupt, truncated or unreadable: replace or remove it" in err[0]
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("o.tmp-*"))


# --- balance: caps, target sizes, infeasible targets ----------------------------------------


@pytest.fixture(scope="module")
def counted(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-balance")
    entries = [f"w{i}" for i in range(50)]
    captions, source = generate_captions(entries, 800, seed=1, exponent=1.2)
    rows = [
        {"uid": f"{i:032x}", "url": f"u{i}", "caption": c, "source": "abc"[s]}
        for i, (c, s) in enumerate(zip(captions, source))
        if c and c.strip() and len(c) < 1000
    ]
    matched, counts = match_and_count(spark, root, rows, entries)
    return root, matched, counts.output, counts.summary["matched"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"cap": 0.0},
            "nothing fixes the output: give --cap T, --target-size N, --target-fraction F or "
            "--tail-share P (0 means not given: a cap or size of 0 would keep nothing)",
        ),
        ({"target_size": -5}, "the target size must be positive"),
        ({"target_fraction": -0.5}, "the target size must be positive"),
    ],
)
def test_a_zero_cap_or_a_negative_target_is_refused(spark, counted, options, message):
    root, matched, counts, _ = counted
    out = root / f"b-{uuid.uuid4().hex[:6]}"
    with pytest.raises(BalanceConfigError) as err:
        run_balance(spark, BalanceConfig(input=matched, counts=counts, output=str(out), **options))
    assert str(err.value) == message
    assert not out.exists()


@pytest.mark.parametrize(
    ("method", "eligible"),
    [
        ("metaclip", "eligible samples"),
        ("balance", "samples with positive weight"),
        ("rake", "eligible samples"),
    ],
)
def test_a_target_above_the_matched_pool_without_replacement_is_refused(
    spark, counted, method, eligible
):
    root, matched, counts, n_matched = counted
    out = root / f"b-big-{method}"
    with pytest.raises(BalanceConfigError) as err:
        run_balance(
            spark,
            BalanceConfig(
                input=matched,
                counts=counts,
                output=str(out),
                method=method,
                target_size=n_matched + 10,
            ),
        )
    assert str(err.value) == (
        f"infeasible target: target size {n_matched + 10} exceeds the {n_matched} {eligible}; "
        "use sampling with replacement"
    )
    assert not out.exists()


def test_a_target_above_the_matched_pool_with_replacement(spark, counted):
    """metaclip and balance repeat samples; rake needs the cap that fixes its shape."""
    root, matched, counts, n_matched = counted
    n = 3 * n_matched
    for method in ("metaclip", "balance"):
        result = run_balance(
            spark,
            BalanceConfig(
                input=matched,
                counts=counts,
                output=str(root / f"rep-{method}"),
                method=method,
                target_size=n,
                with_replacement=True,
            ),
        )
        params = json.loads((Path(result.output) / "params.json").read_text())
        assert params["repeat_scale"] is not None and result.summary["target_size"] == n
    with pytest.raises(BalanceConfigError) as err:
        run_balance(
            spark,
            BalanceConfig(
                input=matched,
                counts=counts,
                output=str(root / "rep-rake"),
                method="rake",
                target_size=n,
                with_replacement=True,
            ),
        )
    assert str(err.value).startswith(
        f"infeasible target: --method rake solves its cap from the target size, and no cap "
        f"reaches {n} samples from {n_matched:,} matched ones"
    )
    assert "with --with-replacement give the cap as well (--cap T" in str(err.value)
    result = run_balance(
        spark,
        BalanceConfig(
            input=matched,
            counts=counts,
            output=str(root / "rep-rake"),
            method="rake",
            cap=20.0,
            target_size=n,
            with_replacement=True,
        ),
    )
    assert json.loads((Path(result.output) / "params.json").read_text())["repeat_scale"]


def test_an_infeasible_rake_target_is_committed_with_the_unmet_targets_named(
    spark, counted, caplog
):
    """Source c holds ~10 % of the pool; a uniform margin over 90 % of it cannot be met."""
    root, matched, counts, _ = counted
    with caplog.at_level("WARNING", logger="curation"):
        result = run_balance(
            spark,
            BalanceConfig(
                input=matched,
                counts=counts,
                output=str(root / "b-infeasible"),
                method="rake",
                target_fraction=0.9,
                margins=["source"],
                margin_target="uniform",
            ),
        )
    s = result.summary
    assert s["status"] == "infeasible" and (Path(result.output) / "_SUCCESS").exists()
    unmet = s["unmet_targets"]
    assert unmet["status"] == "infeasible" and unmet["entries"] > 0 and unmet["margin_levels"] >= 1
    assert all(e.startswith("w") for e in unmet["examples"])
    assert s["info"]["certificate"]["found"]  # infeasibility is proven, not guessed
    line = f"{unmet['entries']:,} entries (e.g. {unmet['examples'][0]!r}"
    assert line in result.report() and "the targets are infeasible" in result.report()
    assert line in caplog.text


# --- reshard: corrupt and truncated input tars ----------------------------------------------


def _tar(samples: int = 4) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(samples):
            for ext, data in (
                ("jpg", b"x" * 3000),
                ("json", json.dumps({"uid": f"u{i}"}).encode()),
            ):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Stream(io.RawIOBase):
    """A forward-only file, as an object store's read stream."""

    def __init__(self, data: bytes):
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        data = self._b.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


SAMPLE = 512 + 3072 + 512 + 512  # one sample: jpg header + data, json header + data


@pytest.mark.parametrize("seekable", [True, False], ids=["local-file", "stream"])
@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda b: b[: SAMPLE + 2000], "unreadable or truncated tar (unexpected end of data)"),
        (lambda b: b[: SAMPLE + 300], "truncated: the header at byte 4608 is cut short"),
        (
            lambda b: b[: 2 * SAMPLE],
            "truncated: the file ends at byte 9216 without the end-of-archive blocks",
        ),
        (  # one flipped byte in the second sample's header
            lambda b: b[:SAMPLE] + b"X" + b[SAMPLE + 1 :],
            "damaged header at byte 4608 (bad checksum)",
        ),
        (lambda b: b"not a tar at all " * 64, "damaged header at byte 0 (invalid header)"),
        (lambda b: b"", "empty file, not a tar"),
    ],
    ids=[
        "cut-in-data",
        "cut-in-header",
        "cut-between-samples",
        "damaged-header",
        "garbage",
        "empty",
    ],
)
def test_scan_refuses_corrupt_and_truncated_tars(cut, message, seekable):
    data = cut(_tar())
    f = io.BytesIO(data) if seekable else io.BufferedReader(_Stream(data))
    with pytest.raises(CorruptTarError) as err:
        list(scan_tar(f))
    assert str(err.value) == message


def test_scan_accepts_a_whole_tar_and_an_empty_archive():
    assert [s.key for s in scan_tar(io.BytesIO(_tar()))] == ["k0", "k1", "k2", "k3"]
    assert list(scan_tar(io.BytesIO(b"\0" * 10240))) == []


def test_reshard_names_a_truncated_input_shard(spark, tmp_path, capsys):
    shards = [[InputSample(i, f"{i:09d}") for i in range(n, n + 4)] for n in (0, 4)]
    paths = write_input_shards(tmp_path / "in", shards)
    data = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(data[: len(data) // 2])  # a download cut short
    selected = write_selected(
        tmp_path / "sel", [selection_row(i, f"http://x/{i}") for i in range(8)]
    )
    code, err = cli(
        capsys,
        "reshard",
        "--input",
        str(tmp_path / "in"),
        "--selected",
        selected,
        "--output",
        str(tmp_path / "out"),
        "--samples-per-shard",
        "3",
    )
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: StageInputError: {paths[1]}: corrupt input shard: "), err[0]
    assert "download it again or remove it from the input" in err[0]
    assert not (tmp_path / "out" / "_SUCCESS").exists()


# --- object store that refuses connections --------------------------------------------------


def test_an_s3_endpoint_that_refuses_connections_fails_fast_and_clearly(
    spark, tmp_path, capsys, caplog
):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    started = time.monotonic()
    code, err = cli(
        capsys,
        "reshard",
        "--input",
        "s3://bucket/shards",
        "--selected",
        "s3://bucket/selected",
        "--output",
        str(tmp_path / "out"),
        "--s3-endpoint-url",
        endpoint,
        "--s3-key",
        "AKIDEXAMPLE",
        "--s3-secret",
        secret,
        "--s3-retries",
        "2",
    )
    elapsed = time.monotonic() - started
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(
        f'error: EndpointConnectionError: Could not connect to the endpoint URL: "{endpoint}/'
    )
    assert "retried --s3-retries times: check --s3-endpoint-url and the network" in err[0]
    # a hang guard, generous for a loaded machine: 2 attempts with back-off take a few seconds,
    # botocore's default patience (retries with growing back-off, 60 s timeouts) takes minutes
    assert elapsed < 120, f"hang guard: {elapsed:.0f} s for 2 attempts against a closed port"
    assert secret not in err[0] and secret not in caplog.text
    assert not (tmp_path / "out").exists()


# --- security: pickles ----------------------------------------------------------------------


def test_a_cached_matcher_pickle_others_could_write_is_never_shipped(spark, tmp_path, monkeypatch):
    """The matcher cache holds pickles (code, when loaded): one that is writable by others, or
    in a directory writable by others, is rebuilt by us instead of being shipped to workers."""
    from curation.matching import Matcher
    from curation.stages.match import ship_matcher

    monkeypatch.setenv("CURATION_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "cache" / "matchers"
    directory.mkdir(parents=True)
    fingerprint = f"test-{uuid.uuid4().hex}"
    planted = directory / f"matcher-{fingerprint}.pkl"
    planted.write_bytes(b"planted: not ours")
    planted.chmod(0o666)
    name = ship_matcher(spark, lambda: Matcher(["cat"]), fingerprint)
    assert name == planted.name
    assert planted.read_bytes() != b"planted: not ours"  # rebuilt in place
    assert not planted.stat().st_mode & 0o022

    directory.chmod(0o777)  # a shared, world-writable cache: not used at all
    fingerprint = f"test-{uuid.uuid4().hex}"
    ship_matcher(spark, lambda: Matcher(["dog"]), fingerprint)
    assert not (directory / f"matcher-{fingerprint}.pkl").exists()
    shipped = [f for f in spark.sparkContext.listFiles if fingerprint in f]
    assert shipped and str(directory) not in shipped[0]
