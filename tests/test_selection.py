"""Deterministic selection: hashed uniforms, keep/repeat decisions, DataComp subset files."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from curation.selection import (
    UID_DTYPE,
    draw_repeats,
    hash_uniform,
    select_mask,
    uid_halves,
    write_subset_npy,
)

UIDS = [f"{i * 2654435761 % 2**128:032x}" for i in range(20_000)]


def test_hash_uniform_definition_is_pinned():
    """The exact definition (changing it would change every selection ever made)."""
    uid, seed = "0123456789abcdef0123456789abcdef", 42
    h = hashlib.blake2b(uid.encode(), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    expect = (int.from_bytes(h, "little") >> 11) / 2**53
    assert hash_uniform([uid], seed)[0] == expect
    assert hash_uniform(pa.array([uid]), seed)[0] == expect
    assert hash_uniform([12], 0)[0] == hash_uniform(["12"], 0)[0]


def test_hash_uniform_deterministic_seeded_and_uniform():
    u1 = hash_uniform(UIDS, 7)
    u2 = hash_uniform(pa.chunked_array([UIDS[:5000], UIDS[5000:]]), 7)
    assert np.array_equal(u1, u2)  # any chunking / partitioning
    assert np.array_equal(u1[123:456], hash_uniform(UIDS[123:456], 7))
    u3 = hash_uniform(UIDS, 8)
    assert np.mean(u1 == u3) < 1e-3
    assert np.all((u1 >= 0) & (u1 < 1))
    assert stats.kstest(u1, "uniform").pvalue > 1e-3
    assert stats.kstest(u3, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u1, u3)[0, 1]) < 0.05


def test_select_mask_and_selection_rate():
    u = hash_uniform(UIDS, 1)
    pi = np.linspace(0, 1, len(UIDS))
    keep = select_mask(u, pi)
    assert not keep[0] and keep[-1]  # π = 0 never, π = 1 always
    assert abs(keep.sum() - pi.sum()) < 4 * np.sqrt(np.sum(pi * (1 - pi)))
    assert np.array_equal(select_mask(u, np.ones_like(u)), np.ones(len(u), bool))
    seed2 = select_mask(hash_uniform(UIDS, 2), pi)
    assert not np.array_equal(keep, seed2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 20), min_size=1, max_size=50))
def test_draw_repeats_bounds(e):
    e = np.array(e)
    u = hash_uniform([str(i) for i in range(e.size)], 5)
    r = draw_repeats(u, e)
    assert r.dtype == np.int64
    assert np.all((r >= np.floor(e)) & (r <= np.ceil(e)))


def test_draw_repeats_mean():
    e = np.full(len(UIDS), 2.3)
    r = draw_repeats(hash_uniform(UIDS, 3), e)
    assert set(np.unique(r)) == {2, 3}
    assert abs(r.mean() - 2.3) < 0.02
    with pytest.raises(ValueError):
        draw_repeats(np.zeros(1), np.array([-1.0]))


def test_uid_halves_hex_and_fallback(tmp_path):
    uid = "00000000000000ff0000000000000001"
    h = uid_halves([uid, uid.upper()])
    assert h.dtype == UID_DTYPE == np.dtype("u8,u8")
    assert h[0].tolist() == (255, 1) and h[1].tolist() == (255, 1)
    other = uid_halves(["not-a-hex-uid"])[0].tolist()
    d = hashlib.blake2b(b"not-a-hex-uid", digest_size=16).hexdigest()
    assert other == (int(d[:16], 16), int(d[16:], 16))
    big = uid_halves(["ffffffffffffffffffffffffffffffff"])[0].tolist()
    assert big == (2**64 - 1, 2**64 - 1)


def test_write_subset_npy_sorted_and_partition_independent(tmp_path):
    halves = uid_halves(UIDS[:3000])
    p1, p2 = tmp_path / "a.npy", tmp_path / "b.npy"
    assert write_subset_npy(p1, halves) == 3000
    write_subset_npy(p2, [halves[2000:], halves[:700], halves[700:2000]])
    assert p1.read_bytes() == p2.read_bytes()
    arr = np.load(p1)
    assert arr.dtype == np.dtype("u8,u8")
    keys = [tuple(x) for x in arr.tolist()]
    assert keys == sorted(keys)
    assert not list(tmp_path.glob("*.tmp-*"))
