"""The reshard plan: which selected sample goes where, as a pure function of its inputs.

Every written sample is a pair (uid, j) with ``0 <= j < repeats``. Its place in the output is
decided by an *order key* that depends only on the sample, never on how the work was split:

- shuffled: ``shuffle_key(seed, uid, j)``, the first 16 hex digits of
  ``sha256(f"{seed}\\0{uid}\\0{j}")``, ties broken by (uid, j). Any tool can recompute it;
  :mod:`curation.shards.engine` computes the same value with Spark's ``sha2``;
- not shuffled: (input shard index, position in that shard, j), i.e. input order; or, for
  ``download`` (whose raw shards hold samples in the order img2dataset's threads finished),
  (uid, j).

Sorting by the order key gives every sample a rank; output shard ``rank // K`` holds it, at
position ``rank % K``. Shard contents are therefore a pure function of (input shards, selection,
K, shuffle, seed), so a killed run that is resumed writes exactly what an uninterrupted run writes.

Weights are renormalised over what arrived: with ``w`` the selected weight and ``r`` the repeats,
``scale = sum_selected(r * w) / sum_arrived(r * w)``, both sums taken exactly (decimal, 18
digits), so the scale does not depend on summation order either.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from curation.shards.keys import sample_key, sanitize_key

SHUFFLE_KEY_HEX = 16
DECIMAL_QUANTUM = Decimal("1e-18")

# Fields of the selection written into each sample's .json (besides uid, key, caption).
SELECTION_FIELDS = ("url", "weight", "inclusion_prob", "entry_ids", "repeats")


def shuffle_key(seed: int, uid: str, repeat_index: int) -> str:
    """The order key of copy ``repeat_index`` of ``uid`` in a shuffled shard set."""
    text = f"{seed}\x00{uid}\x00{repeat_index}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).hexdigest()[:SHUFFLE_KEY_HEX]


def shard_width(n_shards: int) -> int:
    """Digits in shard names: 5 (img2dataset's ``00000.tar``) or more for huge sets."""
    return max(5, len(str(max(n_shards - 1, 0))))


def shard_name(index: int, n_shards: int) -> str:
    return f"{index:0{shard_width(n_shards)}d}"


def n_shards(n_samples: int, samples_per_shard: int) -> int:
    if samples_per_shard < 1:
        raise ValueError("samples per shard must be at least 1")
    return math.ceil(n_samples / samples_per_shard)


def exact(value: float) -> Decimal:
    """A weight as the exact decimal Spark's ``cast(decimal(38,18))`` gives."""
    return Decimal(repr(float(value))).quantize(DECIMAL_QUANTUM, rounding=ROUND_HALF_UP)


def weight_scale(sum_selected: Decimal, sum_arrived: Decimal) -> float:
    """The factor that makes the arrived samples' weights sum to the selected samples' sum."""
    if sum_arrived <= 0:
        return 1.0
    with localcontext() as ctx:
        ctx.prec = 34
        return float(Decimal(sum_selected) / Decimal(sum_arrived))


@dataclass
class PlannedSample:
    """One sample of one output shard, with everything needed to write it."""

    shard: int
    rank: int
    uid: str
    repeat_index: int
    repeats: int
    src: int
    src_key: str
    exts: list[str]
    offsets: list[int]
    sizes: list[int]
    meta_json: str | None
    caption: str
    url: str | None
    weight: float | None
    inclusion_prob: float | None
    entry_ids: list[int] | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return sample_key(self.uid, self.repeat_index, self.repeats)


def output_members(
    sample: PlannedSample, data: dict[str, bytes], scale: float, source_name: str
) -> list[tuple[str, bytes]]:
    """The members of one output sample, in a fixed order: copied members, ``txt``, ``json``.

    The ``.txt`` is the *selected* caption (the selection is the source of truth for text);
    the ``.json`` is the input's metadata with the curation fields set on top.
    """
    members = [(ext, data[ext]) for ext in sorted(data) if ext not in ("txt", "json")]
    members.append(("txt", sample.caption.encode("utf-8")))
    members.append(("json", output_json(sample, scale, source_name)))
    return members


def output_json(sample: PlannedSample, scale: float, source_name: str) -> bytes:
    """The sample's ``.json``: input metadata, then uid, key, weights, entry ids, provenance."""
    meta: dict[str, Any] = {}
    if sample.meta_json:
        try:
            loaded = json.loads(sample.meta_json)
            if isinstance(loaded, dict):
                meta = loaded
        except ValueError:
            meta = {}
    meta.update(
        {
            "key": sample.key,
            "uid": sample.uid,
            "caption": sample.caption,
            "url": sample.url if sample.url is not None else meta.get("url"),
            "weight": None if sample.weight is None else sample.weight * scale,
            "weight_selected": sample.weight,
            "inclusion_prob": sample.inclusion_prob,
            "entry_ids": sample.entry_ids,
            "repeats": sample.repeats,
            "repeat_index": sample.repeat_index,
            "source": {"shard": source_name, "key": sample.src_key},
        }
    )
    meta.update(sample.extra)
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Candidate:
    """An input sample that may be written: its location and resolved uid."""

    src: int
    seq: int
    key: str
    uid: str
    exts: list[str]
    offsets: list[int]
    sizes: list[int]
    meta_json: str | None


def plan_in_memory(
    candidates: Iterable[Candidate],
    selection: dict[str, dict[str, Any]],
    samples_per_shard: int,
    shuffle: bool,
    seed: int,
) -> tuple[list[list[PlannedSample]], float]:
    """The whole plan computed in one process: the reference the Spark plan must equal.

    ``selection`` maps uid to its selected row (caption, url, weight, inclusion_prob,
    entry_ids, repeats). An input uid seen twice keeps its first occurrence in (src, seq) order.
    Returns the shards (lists of samples in rank order) and the weight scale.
    """
    first: dict[str, Candidate] = {}
    for c in sorted(candidates, key=lambda c: (c.src, c.seq)):
        if c.uid in selection and c.uid not in first:
            first[c.uid] = c
    check_unique_keys(list(first))
    expanded = []
    for uid, c in first.items():
        row = selection[uid]
        for j in range(int(row["repeats"])):
            order = (shuffle_key(seed, uid, j), uid, j) if shuffle else (c.src, c.seq, j)
            expanded.append((order, c, row, j))
    expanded.sort(key=lambda t: t[0])
    sum_sel = sum(
        (exact(r["weight"] or 0.0) * int(r["repeats"]) for r in selection.values()), Decimal(0)
    )
    sum_arr = sum(
        (exact(selection[u]["weight"] or 0.0) * int(selection[u]["repeats"]) for u in first),
        Decimal(0),
    )
    scale = weight_scale(sum_sel, sum_arr)
    shards: list[list[PlannedSample]] = [
        [] for _ in range(n_shards(len(expanded), samples_per_shard))
    ]
    for rank, (_, c, row, j) in enumerate(expanded):
        shards[rank // samples_per_shard].append(
            PlannedSample(
                shard=rank // samples_per_shard,
                rank=rank,
                uid=c.uid,
                repeat_index=j,
                repeats=int(row["repeats"]),
                src=c.src,
                src_key=c.key,
                exts=list(c.exts),
                offsets=list(c.offsets),
                sizes=list(c.sizes),
                meta_json=c.meta_json,
                caption=row["caption"],
                url=row.get("url"),
                weight=row.get("weight"),
                inclusion_prob=row.get("inclusion_prob"),
                entry_ids=row.get("entry_ids"),
            )
        )
    return shards, scale


def check_unique_keys(uids: Sequence[str]) -> None:
    """Refuse uids of which two sanitise to the same key. :func:`sanitize_key` makes this
    impossible short of a 64-bit SHA-256 prefix collision; the in-memory planner checks it
    anyway (the Spark plan relies on the construction, as collecting every key would not scale)."""
    seen: dict[str, str] = {}
    for uid in uids:
        key = sanitize_key(uid)
        other = seen.setdefault(key, uid)
        if other != uid:
            raise ValueError(f"uids {other!r} and {uid!r} both map to key {key!r}")
