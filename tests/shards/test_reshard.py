"""``reshard`` and the shard library: keys, tar scanning/writing, the plan, and the Spark stage on
local disk and on an S3 API server, read back with the real ``webdataset`` library."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.shards.keys import member_name, sample_key, sanitize_key, split_member_name
from curation.shards.layout import read_selection, validate_selection
from curation.shards.plan import (
    Candidate,
    check_unique_keys,
    plan_in_memory,
    shuffle_key,
    weight_scale,
)
from curation.shards.tario import ScanCounts, TarWriter, iter_samples, scan_tar
from curation.shards.verify import verify_shard_set
from curation.stages.reshard import ReshardConfig, run_reshard
from curation.storage import StageInputError
from tests.servers import (  # noqa: F401 - fixtures
    InputSample,
    caption_of,
    s3_server,
    selection_row,
    uid_of,
    write_input_shards,
    write_selected,
)

REPO = Path(__file__).resolve().parents[2]

# --- keys -----------------------------------------------------------------------------------


def test_safe_uids_are_their_own_keys_and_others_are_sanitised_uniquely():
    assert sanitize_key("0123abcdef" * 3) == "0123abcdef" * 3
    hostile = ["a.b", "a/b", "../x", "a-1", "x" * 200, "ünï", "a b", ".", "a\\b", "a\x00b"]
    keys = [sanitize_key(u) for u in hostile]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert "." not in k and "/" not in k and "\\" not in k and "-" not in k and len(k) <= 96
    # distinct uids that differ only in unsafe characters still get distinct keys
    assert sanitize_key("a.b") != sanitize_key("a/b")
    with pytest.raises(ValueError):
        sanitize_key("")


def test_a_uid_spelled_like_a_sanitised_key_keeps_its_own_sample():
    """``a.b`` sanitises to ``a_b_<16 hex>``; a uid spelled exactly like that used to pass
    unchanged, so two samples shared one key and webdataset merged them."""
    sanitised = sanitize_key("a.b")
    assert sanitised.startswith("a_b_") and len(sanitised) == len("a_b_") + 16
    lookalike = sanitised
    assert sanitize_key(lookalike) != sanitised
    assert sanitize_key(lookalike).startswith(sanitised + "_")
    check_unique_keys(["a.b", lookalike, "0123abcdef" * 3, "plain_key"])
    assert sanitize_key("plain_key") == "plain_key"  # an ordinary safe uid is still its own key
    assert sanitize_key("x_0123456789ABCDEF") == "x_0123456789ABCDEF"  # not lower-case hex
    # Planned in one shard set, the two are two samples with two keys.
    candidates = [
        Candidate(0, n, f"k{n}", uid, ["jpg"], [0], [1], None)
        for n, uid in enumerate(["a.b", lookalike])
    ]
    selection = {u: {"caption": u, "repeats": 1, "weight": 1.0} for u in ("a.b", lookalike)}
    shards, _ = plan_in_memory(candidates, selection, 10, False, 0)
    keys = [s.key for s in shards[0]]
    assert len(keys) == 2 and len(set(keys)) == 2


def test_repeat_keys_and_member_names():
    assert sample_key("abc", 0, 1) == "abc"
    assert [sample_key("abc", j, 3) for j in range(3)] == ["abc-0", "abc-1", "abc-2"]
    # a uid that looks like a repeat key is sanitised, so it cannot collide with one
    assert sanitize_key("abc-1") != "abc-1"
    assert member_name("abc-1", "jpg") == "abc-1.jpg"
    for key, ext in [("../a", "jpg"), ("a.b", "jpg"), ("a", "../jpg"), ("a", "j/pg")]:
        with pytest.raises(ValueError):
            member_name(key, ext)


def test_split_member_name_follows_webdataset_and_refuses_escapes():
    assert split_member_name("000123.jpg") == ("000123", "jpg")
    assert split_member_name("dir/abc.seg.PNG") == ("dir/abc", "seg.png")
    for bad in ["../a.jpg", "/abs/a.jpg", "a/../b.jpg", "noext", ".hidden", "a\\b.jpg", "a.j/pg"]:
        assert split_member_name(bad) is None, bad


# --- tar scanning and writing ---------------------------------------------------------------


def test_scan_locates_member_bytes_and_skips_hostile_members(tmp_path):
    [path] = write_input_shards(
        tmp_path,
        [[InputSample(1, "000000001"), InputSample(2, "000000002", fmt="png")]],
        hostile=True,
    )
    raw = Path(path).read_bytes()
    counts = ScanCounts()
    with open(path, "rb") as f:
        samples = list(scan_tar(f, counts))
    assert [s.key for s in samples] == ["000000001", "000000002"]
    assert counts.non_regular_members == 2 and counts.bad_member_names == 2
    with tarfile.open(path) as tf:
        for s in samples:
            for ext, off, size in zip(s.exts, s.offsets, s.sizes):
                assert raw[off : off + size] == tf.extractfile(f"{s.key}.{ext}").read()
    assert samples[0].meta["uid"] == uid_of(1) and samples[1].image_ext() == "png"


def _tarfile_reference(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [],
        [("a.jpg", b"")],
        [("a.jpg", b"x" * 511), ("a.txt", b"y" * 512), ("a.json", b"z" * 513)],
        [("k" * 99 + ".j", b"1"), ("é.txt", "ü".encode()), ("x" * 150 + ".json", b"{}")],
        [(f"k{i}.jpg", bytes([i % 256]) * (i * 37)) for i in range(300)],
    ],
)
def test_tar_writer_writes_what_tarfile_writes(members):
    buf = io.BytesIO()
    with TarWriter(buf) as w:
        for name, data in members:
            w.add(name, data)
    assert buf.getvalue() == _tarfile_reference(members)


def test_tar_writer_output_reads_back():
    buf = io.BytesIO()
    with TarWriter(buf) as w:
        w.add_sample("k1", [("jpg", b"\xff\xd8x"), ("txt", "é".encode())])
        w.add_sample("k2-0", [("json", b"{}")])
    got = list(iter_samples(io.BytesIO(buf.getvalue())))
    assert got == [("k1", {"jpg": b"\xff\xd8x", "txt": "é".encode()}), ("k2-0", {"json": b"{}"})]


# --- the plan -------------------------------------------------------------------------------


def _candidates(n_per_src: list[int]) -> list[Candidate]:
    out, i = [], 0
    for src, n in enumerate(n_per_src):
        for seq in range(n):
            out.append(Candidate(src, seq, f"k{i}", uid_of(i), ["jpg"], [0], [1], None))
            i += 1
    return out


def _selection(n: int, repeats=lambda i: 1 + (i % 3 == 0)) -> dict:
    return {uid_of(i): selection_row(i, f"u{i}", repeats(i)) for i in range(n)}


def test_plan_has_exact_shard_sizes_repeats_and_a_partition_free_shuffle():
    sel = _selection(20)
    shards, scale = plan_in_memory(_candidates([12, 10]), sel, 4, True, 7)
    sizes = [len(s) for s in shards]
    total = sum(int(r["repeats"]) for r in sel.values())
    assert sum(sizes) == total and all(n == 4 for n in sizes[:-1]) and 0 < sizes[-1] <= 4
    written = Counter(s.uid for shard in shards for s in shard)
    assert written == {u: int(r["repeats"]) for u, r in sel.items()}
    keys = [s.key for shard in shards for s in shard]
    assert len(set(keys)) == len(keys)
    # the same samples split into other input shards give the same order when shuffled
    again, _ = plan_in_memory(_candidates([5, 5, 5, 7]), sel, 4, True, 7)
    assert [[s.key for s in sh] for sh in again] == [[s.key for s in sh] for sh in shards]
    other_seed, _ = plan_in_memory(_candidates([12, 10]), sel, 4, True, 8)
    assert [s.key for sh in other_seed for s in sh] != keys
    unshuffled, _ = plan_in_memory(_candidates([12, 10]), sel, 4, False, 7)
    assert [s.src_key for s in unshuffled[0]][:2] in (["k0", "k0"], ["k0", "k1"])
    assert scale == pytest.approx(1.0)  # everything arrived


def test_weights_are_renormalised_over_what_arrived():
    sel = _selection(10, repeats=lambda i: 1)
    shards, scale = plan_in_memory(_candidates([5]), sel, 10, False, 0)  # uids 0..4 arrived
    w = [r["weight"] for r in sel.values()]
    assert scale == pytest.approx(sum(w) / sum(w[:5]))
    assert weight_scale(Decimal(3), Decimal(0)) == 1.0
    assert shuffle_key(1, "a", 0) != shuffle_key(2, "a", 0) and len(shuffle_key(1, "a", 0)) == 16


def test_bad_selections_are_refused_with_the_row(tmp_path):
    row = selection_row(1, "u")
    dup = write_selected(tmp_path / "dup", [row, dict(row)])
    with pytest.raises(StageInputError, match="more than once"):
        read_selection(dup)
    with pytest.raises(StageInputError, match="repeats < 1"):
        validate_selection(pa.Table.from_pylist([{**row, "repeats": 0}]), "x")
    (tmp_path / "nosel").mkdir()
    with pytest.raises(StageInputError, match="incomplete"):
        read_selection(str(tmp_path / "nosel"))


# --- the Spark stage, local -----------------------------------------------------------------


def make_pool(root: Path, *, n_shards: int = 3, per_shard: int = 10, hostile: bool = True):
    """Input shards of ``n_shards * per_shard`` samples and a selection over them.

    Selected: every sample except i % 5 == 4, plus 3 uids that are not in the input; repeats
    of 2 or 3 for some. Sample 3 has its uid only in the .parquet; sample 7 has no image.
    """
    shards = []
    i = 0
    for _ in range(n_shards):
        shard = []
        for _ in range(per_shard):
            shard.append(
                InputSample(
                    i,
                    f"{i:09d}",
                    fmt="png" if i % 4 == 1 else "jpg",
                    uid_in_json=i != 3,
                    with_image=i != 7,
                )
            )
            i += 1
        shards.append(shard)
    write_input_shards(root / "shards", shards, hostile=hostile)
    rows = [
        selection_row(k, f"http://example.invalid/{k}.jpg", repeats=1 + (k % 6 == 0) + (k % 9 == 0))
        for k in range(i)
        if k % 5 != 4
    ]
    rows += [selection_row(10_000 + k, f"http://example.invalid/m{k}") for k in range(3)]
    selected = write_selected(root / "selected", rows)
    return root / "shards", selected, {r["uid"]: r for r in rows}


def read_shard_set(directory: Path) -> dict:
    """Every shard read with the real webdataset library: per shard, the decoded samples."""
    import webdataset as wds

    sizes = json.loads((directory / "sizes.json").read_text())
    out = {}
    for name in sizes:
        ds = wds.WebDataset(str(directory / name), shardshuffle=False).decode("pil")
        out[name] = list(ds)
    return {"sizes": sizes, "shards": out}


def check_shard_set(directory: Path, selection: dict, k: int, expect_missing: set[str]):
    got = read_shard_set(directory)
    sizes, shards = got["sizes"], got["shards"]
    names = list(sizes)
    assert names == [f"{n:05d}.tar" for n in range(len(names))]  # no gaps
    assert all(sizes[n] == k for n in names[:-1]) and 0 < sizes[names[-1]] <= k
    repeats = Counter()
    keys = []
    for name, samples in shards.items():
        assert len(samples) == sizes[name]
        table = pq.read_table(directory / name.replace(".tar", ".parquet")).to_pylist()
        assert [r["key"] for r in table] == [s["__key__"] for s in samples]
        for s in samples:
            meta = s["json"]
            uid = meta["uid"]
            image = s.get("jpg") or s.get("png")
            assert image is not None and image.size == (40, 30)
            image.load()
            assert s["txt"] == selection[uid]["caption"]
            assert "." not in s["__key__"] and s["__key__"] == meta["key"]
            assert meta["entry_ids"] == selection[uid]["entry_ids"]
            repeats[uid] += 1
            keys.append(s["__key__"])
    assert len(keys) == len(set(keys))
    expected = {u: r["repeats"] for u, r in selection.items() if u not in expect_missing}
    assert dict(repeats) == expected
    return got


def test_reshard_local_shuffled(spark, tmp_path):
    shards, selected, selection = make_pool(tmp_path)
    missing = {uid_of(7)} | {uid_of(10_000 + k) for k in range(3)}
    out = tmp_path / "out"
    config = ReshardConfig(
        input=str(shards), selected=selected, output=str(out), samples_per_shard=4, shuffle=True
    )
    result = run_reshard(spark, config)
    got = check_shard_set(out, selection, 4, missing)
    s = result.stats
    assert s["input_samples"] == 30 and s["missing_uids"] == 4 and s["rejects"] == 4
    assert s["input_samples_dropped"] == {
        "no_image": 1,
        "no_uid": 0,
        "duplicate_uid": 0,
        "not_selected": 6,
    }
    assert s["input_members_skipped"]["bad_name"] == 2
    assert s["input_members_skipped"]["non_regular"] == 2
    assert (out / "_SUCCESS").exists() and not (out / "_work").exists()
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path.parent / "escape.jpg").exists()
    rejects = pq.read_table(out / "_rejects.parquet").to_pylist()
    assert {r["uid"] for r in rejects} == missing
    # renormalised weights: over written samples they sum to the selection's total
    total_sel = sum(r["weight"] * r["repeats"] for r in selection.values())
    total_out = sum(x["json"]["weight"] for sh in got["shards"].values() for x in sh)
    assert total_out == pytest.approx(total_sel)
    # the Spark plan equals the in-process reference plan (same shards, same order)
    ref = reference_plan(shards, selection, 4, True, 0)
    assert [[x["__key__"] for x in got["shards"][n]] for n in got["sizes"]] == ref
    # a rerun is skipped
    assert run_reshard(spark, config).skipped


def reference_plan(shards: Path, selection: dict, k: int, shuffle: bool, seed: int):
    cands = []
    for src, path in enumerate(sorted(shards.glob("*.tar"))):
        uid_map = {
            r["key"]: r["uid"] for r in pq.read_table(path.with_suffix(".parquet")).to_pylist()
        }
        with open(path, "rb") as f:
            for s in scan_tar(f):
                if s.image_ext() is None:
                    continue
                uid = (s.meta or {}).get("uid") or uid_map.get(s.key)
                cands.append(Candidate(src, s.seq, s.key, uid, s.exts, s.offsets, s.sizes, None))
    plan, _ = plan_in_memory(cands, selection, k, shuffle, seed)
    return [[s.key for s in shard] for shard in plan]


def test_reshard_unshuffled_keeps_input_order(spark, tmp_path):
    shards, selected, selection = make_pool(tmp_path, hostile=False)
    out = tmp_path / "out"
    run_reshard(
        spark,
        ReshardConfig(input=str(shards), selected=selected, output=str(out), samples_per_shard=7),
    )
    got = read_shard_set(out)
    assert [[x["__key__"] for x in got["shards"][n]] for n in got["sizes"]] == reference_plan(
        shards, selection, 7, False, 0
    )


# --- on an S3 API server --------------------------------------------------------------------


def test_reshard_s3_in_and_out(spark, tmp_path, s3_server):  # noqa: F811
    shards, selected, selection = make_pool(tmp_path, hostile=False)
    fs = s3_server.fs()
    fs.put(str(shards) + "/", "test/in/shards/", recursive=True)
    fs.put(selected + "/", "test/in/selected/", recursive=True)
    o = s3_server.options
    config = ReshardConfig(
        input="s3://test/in/shards",
        selected="s3://test/in/selected",
        output="s3://test/out/set",
        samples_per_shard=5,
        shuffle=True,
        seed=3,
        s3_endpoint_url=o.endpoint_url,
        s3_key=o.key,
        s3_secret=o.secret,
        s3_region=o.region,
    )
    result = run_reshard(spark, config)
    local = tmp_path / "from-s3"
    fs.invalidate_cache()
    fs.get("test/out/set/", str(local) + "/", recursive=True)
    missing = {uid_of(7)} | {uid_of(10_000 + k) for k in range(3)}
    check_shard_set(local, selection, 5, missing)
    assert (local / "_SUCCESS").exists()
    assert verify_shard_set("s3://test/out/set")["samples"] == result.stats["written_samples"]
    assert not [p for p in fs.find("test/out") if ".tmp-" in p or "/_work" in p]
    manifest = (local / "_manifest.json").read_text() + (local / "_stats.json").read_text()
    assert "testing" not in manifest and o.endpoint_url not in manifest
    assert result.stats["written_samples"] == sum(
        json.loads((local / "sizes.json").read_text()).values()
    )


# --- kill and resume ------------------------------------------------------------------------

KILLED_RUN = textwrap.dedent(
    """
    import sys
    from curation.spark import SparkConfig, get_spark
    from curation.stages.reshard import ReshardConfig, run_reshard
    spark = get_spark(SparkConfig(master="local[2]", local_dir=sys.argv[4], driver_memory="1g"))
    run_reshard(spark, ReshardConfig(input=sys.argv[1], selected=sys.argv[2], output=sys.argv[3],
                                     samples_per_shard=2, shuffle=True, seed=11))
    """
)


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose environment holds ``marker`` (the killed run's driver, its
    JVM and the Python workers, which pyspark's daemon moves to a process group of their own):
    a whole-machine crash, as far as this run is concerned. Returns how many were found."""
    needle = marker.encode()
    found = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                found += 1
        except (OSError, PermissionError):
            continue
    return found


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.suffix in (".tar", ".parquet") or p.name == "sizes.json"
    }


@pytest.mark.slow
def test_killed_reshard_resumes_to_the_same_shard_set(spark, tmp_path):
    shards, selected, _ = make_pool(tmp_path, n_shards=2, per_shard=10, hostile=False)
    killed = tmp_path / "killed"
    marker = f"CURATION_KILL_TEST={os.getpid()}-{time.time_ns()}"
    env = {
        **os.environ,
        "CURATION_SHARD_WRITE_DELAY": "0.15",
        "PYTHONPATH": str(REPO),
        marker.split("=")[0]: marker.split("=")[1],
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RUN,
            str(shards),
            selected,
            str(killed),
            str(tmp_path / "sl"),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if killed.is_dir() and len(list(killed.glob("*.tar"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for _ in range(50):
            if not kill_marked(marker):
                break
            time.sleep(0.1)
        proc.wait(timeout=30)
    done_before = {p.name for p in killed.glob("*.tar")}
    assert done_before and not (killed / "_SUCCESS").exists()
    config = dict(input=str(shards), selected=selected, samples_per_shard=2, shuffle=True, seed=11)
    resumed = run_reshard(spark, ReshardConfig(output=str(killed), **config))
    assert resumed.stats["resumed"] and resumed.stats["shards_skipped_as_done"] >= len(done_before)
    clean = tmp_path / "clean"
    run_reshard(spark, ReshardConfig(output=str(clean), **config))
    a, b = snapshot(killed), snapshot(clean)
    assert list(a) == list(b) and a == b
    assert not [p for p in killed.iterdir() if ".tmp-" in p.name]
    for name, data in a.items():
        if name.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tf:  # whole, not truncated
                assert len(tf.getmembers()) % 3 == 0


def test_integer_uids_are_read_as_strings(tmp_path):
    import pyarrow.parquet as pq_

    from curation.storage import atomic_directory

    with atomic_directory(str(tmp_path / "sel"), {"stage": "select"}) as tmp:
        os.makedirs(f"{tmp}/selected")
        pq_.write_table(
            pa.table(
                {"uid": [7, 8], "caption": ["a", "b"], "repeats": pa.array([1, 2], pa.int64())}
            ),
            f"{tmp}/selected/part-0.parquet",
        )
    table = read_selection(str(tmp_path / "sel"))
    assert table.column("uid").to_pylist() == ["7", "8"]
    assert table.schema.field("repeats").type == pa.int32()
    assert table.column("weight").null_count == 2
