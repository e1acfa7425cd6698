"""Synthetic signature tables with MetaCLIP-like statistics (tests and benchmarks).

Entries are drawn from a Zipf law (a few very frequent head entries, a long tail), each signature
holds 1 + Poisson(mean_k − 1) distinct entries, and multiplicities follow a Zipf law too.
"""

from __future__ import annotations

import numpy as np

from .signatures import SignatureTable


def synthetic_table(
    n_signatures: int,
    n_entries: int,
    *,
    mean_k: float = 3.0,
    max_k: int = 64,
    zipf_exponent: float = 1.0,
    multiplicity_exponent: float = 2.5,
    max_multiplicity: int = 1000,
    n_unmatched: int = 0,
    margin_levels: int = 0,
    seed: int = 0,
) -> SignatureTable:
    """A random signature table (vectorised; ~1 s per million signatures).

    ``n_unmatched`` adds that many empty signatures; ``margin_levels`` > 0 adds a margin column
    ``"lang"`` whose level distribution is skewed and depends on the signature's first entry.
    """
    rng = np.random.default_rng(seed)
    s = n_signatures
    k = np.minimum(1 + rng.poisson(max(mean_k - 1.0, 0.0), size=s), max_k)
    p = 1.0 / np.power(np.arange(1, n_entries + 1, dtype=np.float64), zipf_exponent)
    p /= p.sum()
    perm = rng.permutation(n_entries).astype(np.int32)
    nnz = int(k.sum())
    ids = perm[np.searchsorted(np.cumsum(p), rng.random(nnz), side="right").clip(0, n_entries - 1)]
    rows = np.repeat(np.arange(s, dtype=np.int64), k)
    order = np.lexsort((ids, rows))
    rows, ids = rows[order], ids[order]
    keep = np.ones(nnz, dtype=bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])
    rows, ids = rows[keep], ids[keep]
    k = np.bincount(rows, minlength=s)
    if n_unmatched:
        k = np.concatenate([k, np.zeros(n_unmatched, dtype=k.dtype)])
    indptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
    mult = np.minimum(rng.zipf(multiplicity_exponent, size=k.size), max_multiplicity)
    codes: dict[str, np.ndarray] = {}
    levels: dict[str, list[str]] = {}
    if margin_levels > 0:
        first = np.where(k > 0, np.concatenate([ids, [0]])[np.minimum(indptr[:-1], ids.size)], 0)
        q = 1.0 / np.arange(1, margin_levels + 1) ** 1.5
        q /= q.sum()
        base = np.searchsorted(np.cumsum(q), rng.random(k.size), side="right")
        base = np.minimum(base, margin_levels - 1)
        # half of the signatures take a level tied to their first entry: margin and entries correlate
        tied = rng.random(k.size) < 0.5
        code = np.where(tied, first % margin_levels, base).astype(np.int32)
        codes["lang"] = code
        levels["lang"] = [f"l{i:02d}" for i in range(margin_levels)]
    return SignatureTable(indptr, ids.astype(np.int32), mult, n_entries, codes, levels)
