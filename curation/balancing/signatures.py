"""The distinct-signature table of the ``count`` stage, in CSR form.

Each row r of the table is one distinct signature: a sorted set of entry ids S_r (possibly
empty: the unmatched samples), the values of the extra margin columns, and the number of pool
samples m_r that have exactly that signature (its multiplicity). Every balancing method works
on this table with rows weighted by multiplicity; the per-sample result is a function of the
signature only, so it extends to the pool without a join (see :mod:`curation.balancing.params`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

#: Level name used for a null value of a margin column.
NULL_LEVEL = "<null>"


def list_array_to_csr(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(indptr int64[n+1], indices int32[nnz])`` of an Arrow ``list<int>`` column.

    Null lists are read as empty lists. Slicing offsets are handled (``indptr[0] == 0``).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise TypeError(f"entry_ids must be a list<int32> column, got {arr.type}")
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar([], type=arr.type))
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    indptr = offsets - offsets[0]
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if values.null_count:
        raise ValueError("entry_ids contains null entry ids")
    indices = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int32)
    return indptr, indices


def encode_margin(
    values: pa.Array | pa.ChunkedArray | Sequence[str | None], levels: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Encode a categorical column as ``int32`` codes.

    With ``levels=None`` the levels are the sorted distinct values (nulls become
    :data:`NULL_LEVEL`). With given ``levels`` (e.g. broadcast from the driver), a value that
    is not among them raises ``ValueError``.
    """
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(list(values), type=pa.string())
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    values = pc.fill_null(values, NULL_LEVEL)
    if levels is None:
        uniq = pc.unique(values).to_pylist()
        levels = sorted(uniq)
    levels = list(levels)
    codes = pc.index_in(values, value_set=pa.array(levels, type=pa.string()))
    if codes.null_count:
        bad = pc.filter(values, pc.is_null(codes)).to_pylist()[:5]
        raise ValueError(f"margin values not among the known levels: {bad}")
    out = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int32)
    return out, levels


@dataclass(frozen=True, eq=False)
class SignatureTable:
    """Distinct signatures in CSR form (rows = signatures, columns = entries).

    Attributes:
        indptr: ``int64[s+1]``; row r's entries are ``indices[indptr[r]:indptr[r+1]]``.
        indices: ``int32[nnz]``; sorted, distinct entry ids per row, in ``[0, n_entries)``.
        multiplicity: ``int64[s]``; number of pool samples with the signature (> 0).
        n_entries: m, the number of metadata entries (the length of every per-entry vector).
        margin_codes: per margin column, ``int32[s]`` codes into ``margin_levels[col]``.
        margin_levels: per margin column, the level names (code = position).
    """

    indptr: np.ndarray
    indices: np.ndarray
    multiplicity: np.ndarray
    n_entries: int
    margin_codes: Mapping[str, np.ndarray] = field(default_factory=dict)
    margin_levels: Mapping[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(self.indices, dtype=np.int32)
        mult = np.ascontiguousarray(self.multiplicity, dtype=np.int64)
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "multiplicity", mult)
        s = mult.shape[0]
        if indptr.shape != (s + 1,) or indptr[0] != 0 or indptr[-1] != indices.shape[0]:
            raise ValueError("indptr must have s+1 entries, start at 0 and end at nnz")
        if np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        if np.any(mult <= 0):
            raise ValueError("multiplicities must be positive")
        if indices.size:
            if indices.min() < 0 or indices.max() >= self.n_entries:
                raise ValueError(f"entry ids must lie in [0, {self.n_entries})")
            # strictly increasing inside each row: a non-positive step is only allowed at row starts
            steps = np.diff(indices)
            row_start = np.zeros(indices.size, dtype=bool)
            row_start[indptr[:-1][np.diff(indptr) > 0]] = True
            if np.any((steps <= 0) & ~row_start[1:]):
                raise ValueError("entry ids must be sorted and distinct within each signature")
        codes = {k: np.ascontiguousarray(v, dtype=np.int32) for k, v in self.margin_codes.items()}
        levels = {k: list(v) for k, v in self.margin_levels.items()}
        if set(codes) != set(levels):
            raise ValueError("margin_codes and margin_levels must have the same columns")
        for k, c in codes.items():
            if c.shape != (s,):
                raise ValueError(f"margin {k!r}: codes must have one value per signature")
            if c.size and (c.min() < 0 or c.max() >= len(levels[k])):
                raise ValueError(f"margin {k!r}: codes out of range")
        object.__setattr__(self, "margin_codes", codes)
        object.__setattr__(self, "margin_levels", levels)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrow(
        cls,
        table: pa.Table,
        n_entries: int,
        margin_cols: Sequence[str] = (),
        *,
        entry_col: str = "entry_ids",
        multiplicity_col: str = "multiplicity",
    ) -> SignatureTable:
        """Build from the ``count`` stage's signature table (``entry_ids``, margins, ``multiplicity``).

        Margin levels are the sorted distinct values; nulls become :data:`NULL_LEVEL`.
        Signatures are not required to be distinct (duplicates simply add up).
        """
        for col in (entry_col, multiplicity_col, *margin_cols):
            if col not in table.column_names:
                raise KeyError(f"signature table has no column {col!r}")
        indptr, indices = list_array_to_csr(table.column(entry_col))
        mult = table.column(multiplicity_col)
        if mult.null_count:
            raise ValueError("multiplicity contains nulls")
        mult = np.asarray(mult.to_numpy(), dtype=np.int64)
        codes: dict[str, np.ndarray] = {}
        levels: dict[str, list[str]] = {}
        for col in margin_cols:
            codes[col], levels[col] = encode_margin(table.column(col))
        return cls(indptr, indices, mult, int(n_entries), codes, levels)

    @classmethod
    def from_lists(
        cls,
        rows: Sequence[Sequence[int]],
        multiplicity: Sequence[int] | None = None,
        n_entries: int | None = None,
        margins: Mapping[str, Sequence[str]] | None = None,
    ) -> SignatureTable:
        """Build from Python lists (tests, small examples). Rows are sorted and de-duplicated."""
        rows = [sorted(set(int(j) for j in r)) for r in rows]
        k = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
        indices = np.array([j for r in rows for j in r], dtype=np.int32)
        if n_entries is None:
            n_entries = int(indices.max()) + 1 if indices.size else 0
        mult = np.ones(len(rows), np.int64) if multiplicity is None else np.asarray(multiplicity)
        codes: dict[str, np.ndarray] = {}
        levels: dict[str, list[str]] = {}
        for col, vals in (margins or {}).items():
            codes[col], levels[col] = encode_margin(list(vals))
        return cls(indptr, indices, mult, n_entries, codes, levels)

    def to_arrow(self) -> pa.Table:
        """The table in the ``count`` stage's layout: ``entry_ids`` list<int32>, the margin
        columns (level names as strings; :data:`NULL_LEVEL` back to null), ``multiplicity``."""
        offsets = pa.array(self.indptr.astype(np.int32 if self.nnz < 2**31 else np.int64))
        lists = (pa.ListArray if self.nnz < 2**31 else pa.LargeListArray).from_arrays(
            offsets, pa.array(self.indices, type=pa.int32())
        )
        cols: dict[str, pa.Array] = {"entry_ids": lists}
        for col, codes in self.margin_codes.items():
            names = pa.array(self.margin_levels[col], type=pa.string())
            vals = names.take(pa.array(codes))
            cols[col] = pc.if_else(pc.equal(vals, NULL_LEVEL), pa.scalar(None, pa.string()), vals)
        cols["multiplicity"] = pa.array(self.multiplicity, type=pa.int64())
        return pa.table(cols)

    # ------------------------------------------------------------------ basic properties
    @property
    def n_signatures(self) -> int:
        """s, the number of rows."""
        return int(self.multiplicity.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @cached_property
    def k(self) -> np.ndarray:
        """k_r = |S_r|, entries per signature (``int64[s]``)."""
        return np.diff(self.indptr)

    @property
    def margin_names(self) -> tuple[str, ...]:
        return tuple(self.margin_codes)

    @cached_property
    def n_samples(self) -> int:
        """n = Σ_r m_r, the pool size."""
        return int(self.multiplicity.sum())

    @cached_property
    def n_matched(self) -> int:
        """Number of pool samples with k_i > 0."""
        return int(self.multiplicity[self.k > 0].sum())

    @cached_property
    def matrix(self) -> sp.csr_array:
        """The 0/1 incidence matrix A (s × m) as a SciPy CSR array (built once, cached)."""
        data = np.ones(self.nnz, dtype=np.float64)
        return sp.csr_array(
            (data, self.indices, self.indptr), shape=(self.n_signatures, self.n_entries)
        )

    def entry_counts(self) -> np.ndarray:
        """c_j = Σ_{r: j ∈ S_r} m_r as ``int64[m]`` (zero for unobserved entries)."""
        w = np.repeat(self.multiplicity.astype(np.float64), self.k)
        c = np.bincount(self.indices, weights=w, minlength=self.n_entries)
        return np.rint(c).astype(np.int64)

    def entry_sums(self, row_values: np.ndarray) -> np.ndarray:
        """Per-entry sums Σ_{r ∋ j} v_r = (Aᵀ v)_j for a per-signature vector v (``float64[m]``)."""
        return self.matrix.T @ np.asarray(row_values, dtype=np.float64)

    def row_sums(self, entry_values: np.ndarray) -> np.ndarray:
        """Per-signature sums Σ_{j ∈ S_r} v_j = (A v)_r for a per-entry vector v (``float64[s]``)."""
        return self.matrix @ np.asarray(entry_values, dtype=np.float64)

    def margin_counts(self, col: str, row_values: np.ndarray | None = None) -> np.ndarray:
        """Σ over signatures of each level of margin ``col`` of ``row_values`` (default m_r)."""
        w = self.multiplicity if row_values is None else row_values
        return np.bincount(
            self.margin_codes[col],
            weights=np.asarray(w, dtype=np.float64),
            minlength=len(self.margin_levels[col]),
        )

    def k_histogram(self) -> dict[int, int]:
        """Number of pool samples per k (matches per sample)."""
        h = np.bincount(self.k, weights=self.multiplicity.astype(np.float64))
        return {int(i): int(round(v)) for i, v in enumerate(h) if v > 0}

    # ------------------------------------------------------------------ transformations
    def with_unmatched_entry(self) -> SignatureTable:
        """Return a copy where every empty signature holds the pseudo-entry ``<unmatched>``.

        The pseudo-entry gets id ``m`` (= ``self.n_entries``); the new table has m + 1 entries.
        This is how ``keep_unmatched`` is implemented by every method.
        """
        indptr, indices = add_unmatched_entry(self.indptr, self.indices, self.n_entries)
        return SignatureTable(
            indptr,
            indices,
            self.multiplicity,
            self.n_entries + 1,
            self.margin_codes,
            self.margin_levels,
        )

    def subset(self, rows: np.ndarray) -> SignatureTable:
        """Rows selected by a boolean mask or index array (margins kept)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        k = self.k[idx]
        indptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
        starts = self.indptr[idx]
        pos = np.repeat(starts - indptr[:-1], k) + np.arange(indptr[-1])
        return SignatureTable(
            indptr,
            self.indices[pos],
            self.multiplicity[idx],
            self.n_entries,
            {c: v[idx] for c, v in self.margin_codes.items()},
            self.margin_levels,
        )


def add_unmatched_entry(
    indptr: np.ndarray, indices: np.ndarray, unmatched_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``unmatched_id`` into every empty row of a CSR structure (vectorised)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    empty = np.diff(indptr) == 0
    if not empty.any():
        return indptr, np.asarray(indices, dtype=np.int32)
    new_indices = np.insert(
        np.asarray(indices, dtype=np.int32), indptr[:-1][empty], np.int32(unmatched_id)
    )
    shift = np.concatenate([[0], np.cumsum(empty)])
    return indptr + shift, new_indices
