"""``curation.training``: the per-epoch keep draw, the epoch size and the webdataset pipeline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import binom

from curation.training import (
    balanced_webdataset,
    epoch_coin,
    epoch_size,
    keep_with_probability,
)
from tests.demo_run import demo_image_server, demo_run  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 50


def coin_by_hand(uid: str, seed: int, epoch: int) -> float:
    """The coin of curation.training's docstring, written out with hashlib."""
    key = seed.to_bytes(8, "little") + epoch.to_bytes(8, "little")
    h = hashlib.blake2b(uid.encode("utf-8"), digest_size=8, key=key).digest()
    return (int.from_bytes(h, "little") >> 11) * 2.0**-53


def sample_of(uid: str, pi: float) -> dict:
    """A sample as webdataset yields it before decoding: the .json member as bytes."""
    return {"__key__": uid, "json": json.dumps({"uid": uid, "inclusion_prob": pi}).encode()}


def test_coin_is_the_documented_keyed_hash():
    for uid in ("a", "ünï", "0" * 32, "x-1"):
        for seed, epoch in ((0, 0), (7, 3), (2**64 - 1, 2**40)):
            assert epoch_coin(uid, epoch, seed) == coin_by_hand(uid, seed, epoch)
    with pytest.raises(ValueError, match="seeds and epochs"):
        epoch_coin("a", -1)


def test_keep_rate_per_sample_over_50_epochs_is_binomial_in_pi():
    pis = np.repeat([0.02, 0.1, 0.3, 0.5, 0.9, 1.0, 0.0], 300)
    uids = [f"s{i:05d}" for i in range(len(pis))]
    kept = np.zeros(len(pis), dtype=np.int64)
    per_epoch = []
    for epoch in range(EPOCHS):
        keep = keep_with_probability(epoch, seed=11)
        mask = np.array([keep(sample_of(u, p)) for u, p in zip(uids, pis)])
        kept += mask
        per_epoch.append(mask)
    # Each sample's keeps ~ Bin(50, π): every one inside the two-sided band of level 1e-3 / n.
    alpha = 1e-3 / len(pis)
    low, high = binom.ppf(alpha / 2, EPOCHS, pis), binom.isf(alpha / 2, EPOCHS, pis)
    outside = np.flatnonzero((kept < low) | (kept > high))
    assert not outside.size, [(uids[i], pis[i], kept[i]) for i in outside[:5]]
    assert kept[pis == 1.0].tolist() == [EPOCHS] * 300 and kept[pis == 0.0].sum() == 0
    # Pooled over the 300 samples of one π: Bin(15,000, π), within 4.5 standard deviations.
    for p in (0.02, 0.1, 0.3, 0.5, 0.9):
        n = 300 * EPOCHS
        assert abs(kept[pis == p].sum() - n * p) <= 4.5 * np.sqrt(n * p * (1 - p)), p
    # A fresh draw every epoch: two epochs agree on about π² + (1 − π)² of the samples at π.
    same = (per_epoch[0] == per_epoch[1])[pis == 0.5].mean()
    assert 0.4 < same < 0.6


def test_filter_reads_decoded_samples_and_needs_the_json():
    keep = keep_with_probability(3, seed=1)
    uid = "abc"
    decoded = {"__key__": uid, "json": {"uid": uid, "inclusion_prob": 0.5}}
    assert keep(decoded) == keep(sample_of(uid, 0.5)) == (coin_by_hand(uid, 1, 3) < 0.5)
    with pytest.raises(KeyError, match="no .json member"):
        keep({"__key__": uid, "jpg": b""})


WORKER = """
import json, sys
from curation.training import keep_with_probability, epoch_coin
uids = [f"u{i}" for i in range(3000)]
coins = [[epoch_coin(u, e, 9) for u in uids] for e in range(3)]
keep = keep_with_probability(2, 9)
decisions = [keep({"json": json.dumps({"uid": u, "inclusion_prob": 0.37})}) for u in uids]
print(json.dumps({"coins": coins, "decisions": decisions}))
"""


def test_two_worker_processes_agree_on_every_coin():
    results = []
    for hash_seed in ("1", "2"):  # Python's own str hash differs between them
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, "-c", WORKER], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    assert results[0] == results[1]
    assert results[0]["coins"][2][:5] == [coin_by_hand(f"u{i}", 9, 2) for i in range(5)]
    assert 0.3 < np.mean(results[0]["decisions"]) < 0.45


def shard_samples(shards: Path) -> dict[str, tuple[str, float]]:
    """key → (uid, inclusion_prob) of every sample of the shard set, from its per-shard Parquet."""
    out = {}
    for name in json.loads((shards / "sizes.json").read_text()):
        t = pq.read_table(shards / name.replace(".tar", ".parquet")).to_pydict()
        out.update(zip(t["key"], zip(t["uid"], t["inclusion_prob"])))
    return out


def test_balanced_webdataset_reads_the_demo_shards(demo_run):  # noqa: F811
    shards = demo_run.dir / "shards"
    sizes = json.loads((shards / "sizes.json").read_text())
    samples = shard_samples(shards)
    assert epoch_size(str(shards)) == sum(sizes.values()) == len(samples)
    assert epoch_size(str(shards), online=True) == round(sum(p for _, p in samples.values()))
    last = max(sizes).removesuffix(".tar")
    urls = str(shards / f"{{00000..{last}}}.tar")
    for epoch in (0, 1):
        dataset = balanced_webdataset(urls, epoch, seed=4, to_tuple=("jpg", "json", "__key__"))
        got = {}
        for image, meta, key in dataset:
            assert image.size == (32, 32)
            got[key] = meta
        want = {k for k, (uid, p) in samples.items() if coin_by_hand(uid, 4, epoch) < p}
        assert set(got) == want and 0 < len(want) < len(samples)
        assert all(got[k]["uid"] == samples[k][0] for k in got)
    plain = balanced_webdataset(urls, 0, decode=None, to_tuple=None)
    first = next(iter(plain))
    assert isinstance(first["json"], bytes) and "jpg" in first


def test_epoch_size_without_sizes_json_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="sizes.json: not found"):
        epoch_size(str(tmp_path))
