"""Lineage between stages: every manifest records what its inputs were made from, and a stage
refuses inputs that do not belong together, naming both (real stage runs on tiny pools)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import storage
from curation.demo import generate_captions
from curation.metadata import entries_fingerprint
from curation.stages.balance import BalanceConfig, run_balance
from curation.stages.base import LineageError
from curation.stages.count import CountConfig, run_count
from curation.stages.download import DownloadConfig, run_download
from curation.stages.match import MatchConfig, run_match
from curation.stages.reshard import ReshardConfig, run_reshard
from curation.stages.select import SelectConfig, run_select
from tests.servers import InputSample, uid_of, write_input_shards

ENTRIES = [f"w{i}" for i in range(120)]
OTHER_ENTRIES = ["w0", "zebra", *ENTRIES[1:60]]  # another list: ids shift
ROWS = 600


def _pool(root: Path, name: str, seed: int, first_uid: int) -> str:
    captions, source = generate_captions(ENTRIES, ROWS, seed=seed, exponent=1.1)
    rows = [
        {"uid": uid_of(first_uid + i), "url": f"http://x/{i}", "caption": c, "source": str(s)}
        for i, (c, s) in enumerate(zip(captions, source))
    ]
    path = root / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _run(spark, root: Path, name: str, pool: str, metadata: str) -> dict[str, str]:
    """match, count, balance (metaclip, cap 5) and select of ``pool`` below ``root/name``."""
    d = root / name
    out = {"matched": str(d / "matched"), "counts": str(d / "counts")}
    run_match(spark, MatchConfig(input=pool, output=out["matched"], metadata=metadata))
    run_count(spark, CountConfig(input=out["matched"], output=out["counts"]))
    out["balance"] = str(d / "balance")
    run_balance(
        spark,
        BalanceConfig(input=out["matched"], counts=out["counts"], output=out["balance"], cap=5),
    )
    out["selected"] = str(d / "selected")
    run_select(
        spark, SelectConfig(input=out["matched"], weights=out["balance"], output=out["selected"])
    )
    return out


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Run A and run B (two pools, one list) and run C (pool A, another list; match and count)."""
    root = tmp_path_factory.mktemp("lineage")
    (root / "meta.json").write_text(json.dumps(ENTRIES))
    (root / "other.json").write_text(json.dumps(OTHER_ENTRIES))
    pool_a = _pool(root, "pool-a", seed=1, first_uid=0)
    pool_b = _pool(root, "pool-b", seed=2, first_uid=10_000)
    runs = {
        "A": _run(spark, root, "A", pool_a, str(root / "meta.json")),
        "B": _run(spark, root, "B", pool_b, str(root / "meta.json")),
    }
    c = {"matched": str(root / "C" / "matched"), "counts": str(root / "C" / "counts")}
    run_match(
        spark, MatchConfig(input=pool_a, output=c["matched"], metadata=str(root / "other.json"))
    )
    run_count(spark, CountConfig(input=c["matched"], output=c["counts"]))
    runs["C"] = c
    runs["root"] = {"dir": str(root)}
    return runs


def _manifest(url: str) -> dict:
    return json.loads(Path(url, storage.MANIFEST).read_text())


def test_manifests_record_the_lineage_of_their_inputs(runs):
    a = runs["A"]
    metadata = {
        "url": str(Path(runs["root"]["dir"]) / "meta.json"),
        "fingerprint": entries_fingerprint(ENTRIES),
    }
    assert _manifest(a["matched"])["lineage"]["metadata"] == metadata
    lineage = _manifest(a["selected"])["lineage"]
    assert list(lineage) == ["metadata", "matched", "counts", "balance"]
    for name in ("matched", "counts", "balance"):
        assert lineage[name] == {"url": a[name], "fingerprint": storage.fingerprint(a[name])}
    assert lineage["metadata"] == metadata


def test_balance_refuses_counts_of_another_pool(spark, runs, tmp_path):
    a, b = runs["A"], runs["B"]
    out = tmp_path / "balance"
    with pytest.raises(LineageError) as err:
        run_balance(
            spark, BalanceConfig(input=a["matched"], counts=b["counts"], output=str(out), cap=5)
        )
    message = str(err.value)
    assert "do not belong together" in message and "matched pool" in message
    assert a["matched"] in message and b["matched"] in message and b["counts"] in message
    assert not out.exists() and not list(tmp_path.glob("balance.tmp-*"))


def test_balance_refuses_counts_made_with_another_metadata_list(spark, runs, tmp_path):
    """Before: IndexError deep in the scoring (the ids of the two lists differ)."""
    a, c = runs["A"], runs["C"]
    with pytest.raises(LineageError) as err:
        run_balance(
            spark,
            BalanceConfig(
                input=a["matched"], counts=c["counts"], output=str(tmp_path / "b"), cap=5
            ),
        )
    message = str(err.value)
    assert "metadata list" in message and "other.json" in message and "meta.json" in message
    assert c["counts"] in message and a["matched"] in message


def test_select_refuses_weights_of_another_run(spark, runs, tmp_path):
    a, b = runs["A"], runs["B"]
    out = tmp_path / "selected"
    with pytest.raises(LineageError) as err:
        run_select(spark, SelectConfig(input=a["matched"], weights=b["balance"], output=str(out)))
    message = str(err.value)
    assert "--weights " + b["balance"] in message and a["matched"] in message
    assert b["matched"] in message and not out.exists()


def test_count_refuses_a_matched_pool_with_another_metadata_list(spark, runs, tmp_path):
    """The list beside the pool is not the one it was matched against (a copied-over file)."""
    altered = tmp_path / "matched"
    shutil.copytree(runs["A"]["matched"], altered)
    (altered / "metadata.json").write_text(json.dumps(OTHER_ENTRIES))
    with pytest.raises(LineageError, match=r"not the metadata list the pool was matched against"):
        run_count(spark, CountConfig(input=str(altered), output=str(tmp_path / "counts")))
    assert not (tmp_path / "counts").exists()


def test_an_input_from_the_wrong_stage_is_refused(spark, runs, tmp_path):
    a = runs["A"]
    with pytest.raises(LineageError, match=r"is the output of the balance stage.*--counts takes"):
        run_balance(
            spark,
            BalanceConfig(
                input=a["matched"], counts=a["balance"], output=str(tmp_path / "b"), cap=5
            ),
        )
    with pytest.raises(LineageError, match=r"is the output of the balance stage.*--input takes"):
        run_download(spark, DownloadConfig(input=a["balance"], output=str(tmp_path / "shards")))
    assert not (tmp_path / "shards").exists()


def test_reshard_refuses_shards_of_another_pool_and_takes_another_selection_of_its_own(
    spark, runs, tmp_path
):
    a, b = runs["A"], runs["B"]
    uids = pq.read_table(Path(a["selected"], "selected"), columns=["uid"]).column("uid")
    index = {uid_of(i): i for i in range(ROWS)}
    present = sorted(index[u] for u in uids.to_pylist())
    write_input_shards(tmp_path / "raw", [[InputSample(i, f"{i:09d}") for i in present]])
    shards_a = str(tmp_path / "shards-a")
    run_reshard(
        spark, ReshardConfig(input=str(tmp_path / "raw"), selected=a["selected"], output=shards_a)
    )
    assert _manifest(shards_a)["lineage"]["matched"]["url"] == a["matched"]
    with pytest.raises(LineageError) as err:
        run_reshard(
            spark,
            ReshardConfig(input=shards_a, selected=b["selected"], output=str(tmp_path / "mixed")),
        )
    message = str(err.value)
    assert shards_a in message and b["selected"] in message and a["matched"] in message
    assert not (tmp_path / "mixed").exists()
    # Another selection of pool A (another seed) from the same shards is fine.
    again = str(tmp_path / "selected-seed-1")
    run_select(spark, SelectConfig(input=a["matched"], weights=a["balance"], output=again, seed=1))
    result = run_reshard(
        spark, ReshardConfig(input=shards_a, selected=again, output=str(tmp_path / "regrouped"))
    )
    assert result.stats["written_samples"] > 0
