"""Deterministic selection: hashed uniforms, keep/repeat decisions, DataComp subset files.

Definition of the hashed uniform (fixed; changing it changes every selection):

    u(uid, seed) = (H >> 11) · 2⁻⁵³,
    H = int.from_bytes(BLAKE2b(uid.encode("utf-8"), digest_size=8,
                               key=seed.to_bytes(8, "little")).digest(), "little")

i.e. the top 53 bits of a keyed 64-bit BLAKE2b of the uid's UTF-8 bytes, with the seed
(0 ≤ seed < 2⁶⁴) as the 8-byte little-endian key. u ∈ [0, 1) is a multiple of 2⁻⁵³, exactly
representable as a float64, and depends only on (uid, seed): the same on any machine, Spark
partitioning or rerun. Non-string uids (e.g. integers) are hashed through ``str(uid)``.
The per-epoch coin of :mod:`curation.training` is the same hash with the 16-byte key
``seed.to_bytes(8, "little") + epoch.to_bytes(8, "little")`` (:func:`seed_key`).

Keep iff u_i < π_i (so P(keep) = π_i, and π_i = 1 always keeps, π_i = 0 never does).
With replacement: r_i = ⌊e_i⌋ + [u_i < e_i − ⌊e_i⌋] for expected repeats e_i, so E[r_i] = e_i.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

#: dtype of DataComp subset files: a structured array of the uid's two 64-bit halves.
UID_DTYPE = np.dtype("u8,u8")
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_SCALE = 2.0**-53


def _uid_strings(uids: pa.Array | pa.ChunkedArray | Sequence[object]) -> list[str]:
    if isinstance(uids, (pa.Array, pa.ChunkedArray)):
        if uids.null_count:
            raise ValueError("uid column contains nulls")
        vals = uids.to_pylist()
    else:
        vals = list(uids)
    out = []
    for v in vals:
        if v is None:
            raise ValueError("uid column contains nulls")
        out.append(v if isinstance(v, str) else str(v))
    return out


def hash_uniform(uids: pa.Array | pa.ChunkedArray | Sequence[object], seed: int) -> np.ndarray:
    """u_i ∈ [0, 1) from (uid_i, seed); see the module docstring for the exact definition."""
    return keyed_uniform(uids, seed_key(seed))


def seed_key(*numbers: int) -> bytes:
    """The BLAKE2b key of the hashed uniform: each number (0 ≤ n < 2⁶⁴) as 8 little-endian bytes,
    concatenated. ``seed_key(seed)`` is selection's key; ``seed_key(seed, epoch)`` is the
    per-epoch key of :mod:`curation.training`."""
    for n in numbers:
        if not 0 <= int(n) < 2**64:
            raise ValueError(f"{n}: seeds and epochs must lie in [0, 2**64)")
    return b"".join(int(n).to_bytes(8, "little") for n in numbers)


def keyed_uniform(uids: pa.Array | pa.ChunkedArray | Sequence[object], key: bytes) -> np.ndarray:
    """u_i = (H >> 11) · 2⁻⁵³ with H the keyed 64-bit BLAKE2b of uid_i's UTF-8 bytes (module
    docstring); ``key`` is at most 64 bytes (:func:`seed_key`)."""
    blake = hashlib.blake2b
    h = np.fromiter(
        (
            int.from_bytes(blake(s.encode("utf-8"), digest_size=8, key=key).digest(), "little")
            for s in _uid_strings(uids)
        ),
        dtype=np.uint64,
    )
    return (h >> np.uint64(11)).astype(np.float64) * _SCALE


def select_mask(u: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Keep iff u_i < π_i (boolean array)."""
    return np.asarray(u, dtype=np.float64) < np.asarray(pi, dtype=np.float64)


def draw_repeats(u: np.ndarray, expected_repeats: np.ndarray) -> np.ndarray:
    """r_i = ⌊e_i⌋ + [u_i < frac(e_i)] (``int64``): deterministic, E[r_i] = e_i, |r_i − e_i| < 1."""
    e = np.asarray(expected_repeats, dtype=np.float64)
    if np.any(e < 0) or not np.all(np.isfinite(e)):
        raise ValueError("expected repeats must be finite and non-negative")
    base = np.floor(e)
    return (base + (np.asarray(u, dtype=np.float64) < (e - base))).astype(np.int64)


def uid_halves(uids: pa.Array | pa.ChunkedArray | Sequence[object]) -> np.ndarray:
    """The uid's 128 bits as two ``uint64`` halves (dtype ``u8,u8``, DataComp's subset format).

    A uid of 32 hex digits (DataComp's convention, any case) gives
    ``(int(uid[:16], 16), int(uid[16:], 16))``. Any other uid is first replaced by the hex
    digest of its 128-bit BLAKE2b (``hashlib.blake2b(uid.encode(), digest_size=16)``), so every
    uid maps to a stable 128-bit value.
    """
    strs = _uid_strings(uids)
    out = np.empty(len(strs), dtype=UID_DTYPE)
    a = np.empty(len(strs), dtype=np.uint64)
    b = np.empty(len(strs), dtype=np.uint64)
    for i, s in enumerate(strs):
        if not _HEX32.match(s):
            s = hashlib.blake2b(s.encode("utf-8"), digest_size=16).hexdigest()
        a[i] = int(s[:16], 16)
        b[i] = int(s[16:], 16)
    out["f0"] = a
    out["f1"] = b
    return out


def sorted_subset(halves: Iterable[np.ndarray] | np.ndarray) -> np.ndarray:
    """Concatenate uid-halves arrays and sort them lexicographically (duplicates kept)."""
    if isinstance(halves, np.ndarray):
        arr = halves.astype(UID_DTYPE, copy=True)
    else:
        parts = [np.asarray(h, dtype=UID_DTYPE) for h in halves]
        arr = np.concatenate(parts) if parts else np.empty(0, dtype=UID_DTYPE)
    arr.sort(order=["f0", "f1"])
    return arr


def write_subset_npy(
    path: str | os.PathLike[str], halves: Iterable[np.ndarray] | np.ndarray
) -> int:
    """Write a DataComp subset file (sorted ``u8,u8`` array, ``.npy``); returns its length.

    Written to a temporary name and renamed, so a killed run never leaves a partial file.
    """
    arr = sorted_subset(halves)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    os.replace(tmp, path)
    return int(arr.size)
