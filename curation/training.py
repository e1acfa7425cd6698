"""Training on a curated shard set: the per-epoch keep draw, the epoch size, the loader.

A set selected with ``--all-eligible`` holds every sample with π_i > 0 once, each with its
``inclusion_prob`` in its ``.json``. Training then draws a fresh subset every epoch (MetaCLIP 2
style) by keeping sample i in epoch e iff

    coin(uid_i, seed, e) < π_i,
    coin(uid, seed, e) = (H >> 11) · 2⁻⁵³,
    H = int.from_bytes(BLAKE2b(uid.encode("utf-8"), digest_size=8,
                               key=seed.to_bytes(8, "little") + epoch.to_bytes(8, "little")
                               ).digest(), "little")

which is the ``select`` stage's hashed uniform (:mod:`curation.selection`) with the epoch appended
to its key. So P(keep in epoch e) = π_i; the coin depends only on (uid, seed, epoch), hence it is
the same in every dataloader worker, node and rerun (no process-local RNG, no Python ``hash``),
and draws of different epochs, and the ``select`` draw, are independent of one another.

    import webdataset as wds
    from curation.training import balanced_webdataset, epoch_size

    n = epoch_size("runs/demo/shards", online=True)          # Σ π_i: samples per epoch
    ds = balanced_webdataset("runs/demo/shards/{00000..00019}.tar", epoch=3, seed=0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from curation import storage
from curation.selection import keyed_uniform, seed_key

SIZES = "sizes.json"


def epoch_coin(uid: str, epoch: int, seed: int = 0) -> float:
    """coin(uid, seed, epoch) ∈ [0, 1) of the module docstring."""
    return float(keyed_uniform([uid], seed_key(seed, epoch))[0])


def _metadata(sample: Mapping[str, Any]) -> Mapping[str, Any]:
    """The sample's ``.json``: raw bytes or text (before ``decode``) or a decoded dict."""
    meta = sample.get("json")
    if meta is None:
        raise KeyError(
            f"sample {sample.get('__key__')!r} has no .json member: the keep draw needs its uid "
            "and inclusion_prob (shards written by curate download/reshard carry them)"
        )
    if isinstance(meta, (bytes, bytearray, str)):
        meta = json.loads(meta)
    return meta


def keep_with_probability(epoch: int, seed: int = 0) -> Callable[[Mapping[str, Any]], bool]:
    """A webdataset ``select`` predicate: keep a sample iff coin(uid, seed, epoch) < its
    ``inclusion_prob`` (both read from its ``.json``; a sample without ``inclusion_prob`` is
    kept, π = 1). Works before or after ``.decode()``."""
    key = seed_key(seed, epoch)

    def keep(sample: Mapping[str, Any]) -> bool:
        meta = _metadata(sample)
        pi = meta.get("inclusion_prob", 1.0)
        return bool(keyed_uniform([meta["uid"]], key)[0] < pi)

    return keep


def epoch_size(shards_dir: str, online: bool = False) -> int:
    """Samples per epoch of the shard set in ``shards_dir`` (local path or fsspec URL).

    ``online=False``: every sample, Σ of ``sizes.json`` (open_clip's ``--train-num-samples``
    when training on the set as it is). ``online=True``: the expected number kept by
    :func:`keep_with_probability`, round(Σ_i π_i) over the per-shard ``.parquet`` files of the
    shards ``sizes.json`` lists.
    """
    sizes_url = storage.join(shards_dir, SIZES)
    if not storage.exists(sizes_url):
        raise FileNotFoundError(
            f"{sizes_url}: not found; is {shards_dir} a shard set written by curate download or "
            "reshard (and did that stage finish)?"
        )
    sizes: dict[str, int] = storage.read_json(sizes_url)
    if not online:
        return int(sum(sizes.values()))
    import pyarrow.parquet as pq

    total = 0.0
    for tar in sorted(sizes):
        url = storage.join(shards_dir, os.path.splitext(tar)[0] + ".parquet")
        fs, path = storage.url_to_fs(url)
        with fs.open(path, "rb") as f:
            column = pq.read_table(f, columns=["inclusion_prob"]).column("inclusion_prob")
        total += float(column.to_numpy().sum())
    return int(round(total))


def balanced_webdataset(
    urls: str | Sequence[str],
    epoch: int,
    seed: int = 0,
    *,
    resampled: bool = False,
    shardshuffle: int | bool | None = 100,
    decode: str | None = "pil",
    to_tuple: Sequence[str] | None = ("jpg", "txt"),
    **webdataset_args: Any,
) -> Any:
    """``webdataset.WebDataset(urls, …).select(keep_with_probability(epoch, seed))``, then
    ``.decode(decode)`` and ``.to_tuple(*to_tuple)`` (each skipped when None).

    Build one per epoch (the keep draw depends on it). ``shardshuffle`` and ``resampled`` go to
    ``WebDataset`` as they are (webdataset's shard shuffle is seeded per worker; the keep draw
    does not depend on the order). Extra keyword arguments also go to ``WebDataset``.
    """
    import webdataset as wds

    dataset = wds.WebDataset(
        urls, resampled=resampled, shardshuffle=shardshuffle, **webdataset_args
    ).select(keep_with_probability(epoch, seed))
    if decode is not None:
        dataset = dataset.decode(decode)
    if to_tuple is not None:
        dataset = dataset.to_tuple(*to_tuple)
    return dataset
