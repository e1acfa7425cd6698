"""Reproducible execution: the signature table as blocks, exact-binned sums, one set of kernels.

The quasi-Newton raking solver is path-dependent in the last bits: a one-ulp change of a
per-entry sum (a different summation order) grows to a different trajectory within a few hundred
iterations (``docs/balancing.md``, "Execution"). A parallel execution can therefore only agree
with another execution — the driver, another partitioning, a rerun — if every sum it makes is
*independent of the order of its terms*. This module provides that, with no Spark dependency:

* :class:`Binned` — a reproducible sum (Demmel & Nguyen's binned summation, simplified): with
  the largest |term| in bin T (bins of ``W_BITS`` bits on the absolute binary scale), every term
  is cut into ``K_BINS`` integer "digits" on the absolute bins T−K+1 … T (its bits below bin
  T−K+1 are dropped: at most 2^-(W(K−1)) = 2^-63 of the largest term each). Digit sums are
  sums of integers below 2^53, hence exact in any order; two partial sums merge exactly (align
  to the larger top, drop the bins that fall off). The value is Σ_k bin_k · 2^(W(T−K+1+k)),
  added from the lowest bin up. Exact while a column has fewer than 2^(53−W) = 2^32 terms.
  Column sums (n_j = Σ_{r∋j} m_r π_r) keep one T *per column*: π spans hundreds of binary
  orders of magnitude, and with one T for all columns a column of tiny terms summed to 0
  (found at 10M samples × 500k entries, where it broke the raking iteration).
* :class:`Block` — rows of the table as CSR arrays (+ multiplicities, margin codes), and the
  kernels ``_k_*`` that compute one block's partial of every primitive of :mod:`.operators`.
  Per-row quantities use fixed-order arithmetic (η_r by SciPy's sequential CSR matvec over the
  row's sorted entries, then ``<unmatched>``, then the margins in order), so a row gives the
  same bits in any block.
* :class:`BlockOperator` — the :mod:`.operators` protocols on top of a ``run(kernel, ...)``
  that evaluates a kernel on every block and merges the partials in block order;
  :class:`MemoryBlockOperator` runs it on the driver (a table split into any number of blocks),
  :class:`~curation.balancing.spark_operator.SparkOperator` on Spark. Both give bit-identical
  results for any partitioning, which the tests check.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .kernels import metaclip_log_survival, phi, phi_diff, probs
from .operators import PI_BINS, WEIGHT_FACTORS, AggregateStats, DualPoint, ScoreSums
from .params import ScoreParams, score_rows
from .signatures import SignatureTable
from .target_size import TargetSizeError

#: Bits per bin of the reproducible sums.
W_BITS = 21
#: Bins kept per sum (K·W = 84 bits below the top of the largest term).
K_BINS = 4
_DOWN = [2.0 ** (-W_BITS * k) for k in range(K_BINS)]
_UP = [2.0 ** (W_BITS * k) for k in range(K_BINS)]
#: Top bin of an empty (all-zero) sum.
NO_BIN = -(10**6)


# ---------------------------------------------------------------------------- binned sums
def _top_bin(x: np.ndarray) -> int:
    """Bin of the largest |x| (NO_BIN when all are 0): floor((e − 1)/W) for |x| ∈ [2^(e−1), 2^e)."""
    if x.size == 0:
        return NO_BIN
    mx = max(float(x.max()), -float(x.min()))
    if mx == 0.0:
        return NO_BIN
    if not np.isfinite(mx):
        return 0
    return (int(np.frexp(mx)[1]) - 1) // W_BITS


def _row_bins(x: np.ndarray) -> np.ndarray:
    """Per element, the bin of |x| (NO_BIN for 0; 0 for non-finite, like :func:`_top_bin`)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.frexp(x)[1].astype(np.int64)
    bins = (e - 1) // W_BITS
    bins[x == 0] = NO_BIN
    bins[~np.isfinite(x)] = 0
    return bins


def _digits(x: np.ndarray, top: int | np.ndarray) -> np.ndarray:
    """``(K, n)`` integer-valued digits of x on the absolute bins top−K+1 … top (sign kept,
    bits below the lowest bin dropped); every operation is exact. ``top``: one bin for all of
    x, or one per element. (One contiguous row per bin: half the time of an (n, K) layout.)"""
    lo = np.asarray(top, dtype=np.int64) - K_BINS + 1
    q = np.ldexp(np.asarray(x, dtype=np.float64), -W_BITS * lo)  # |q| < 2^(W·K)
    D = np.empty((K_BINS, q.size))
    tmp = np.empty(q.size)
    for k in range(K_BINS - 1, 0, -1):
        # powers of two: the products are exact (an underflow only hits digits that are 0)
        np.multiply(q, _DOWN[k], out=tmp)
        np.trunc(tmp, out=D[k])
        np.multiply(D[k], _UP[k], out=tmp)
        q -= tmp  # exact: the bits of q below bin k
    np.trunc(q, out=D[0])
    return D


@dataclass
class Binned:
    """A reproducible sum (scalar, or one per column): ``bins[k]`` holds the exact sum of the
    digits at absolute bin ``top − K + 1 + k``. Merge with :meth:`merge`, read with :meth:`value`.

    Column sums carry one ``top`` per column (an int array): a column's digits are cut at its
    own largest term, so a column whose terms are all far below another column's (a π of
    1e-20 next to multiplicities of 1000) keeps its full precision instead of rounding to 0."""

    top: int | np.ndarray  # int, or int64[q] (one per column)
    bins: np.ndarray  # (K,) or (K, q), integer-valued float64

    def merge(self, other: Binned) -> Binned:
        if np.ndim(self.top) == 0 and np.ndim(other.top) == 0:
            T = max(self.top, other.top)
            return Binned(T, _shift(self.bins, T - self.top) + _shift(other.bins, T - other.top))
        T = np.maximum(self.top, other.top)
        return Binned(T, _shift(self.bins, T - self.top) + _shift(other.bins, T - other.top))

    def value(self) -> Any:
        """Σ_k bins[k] · 2^(W(top − K + 1 + k)), added from the lowest bin up."""
        v = np.zeros(self.bins.shape[1:])
        top = np.asarray(self.top, dtype=np.int64)
        if np.any(top != NO_BIN):
            lo = np.where(top == NO_BIN, 0, top - K_BINS + 1)  # an empty column's bins are 0
            for k in range(K_BINS):
                v = v + np.ldexp(self.bins[k], W_BITS * (lo + k))
        return float(v) if v.ndim == 0 else v


def _shift(bins: np.ndarray, s: int | np.ndarray) -> np.ndarray:
    """The bins re-cut ``s`` bins higher (s ≥ 0; per column when s is an array): bins that
    fall below the new lowest bin are dropped."""
    if np.ndim(s) == 0:
        if s == 0:
            return bins
        out = np.zeros_like(bins)
        if s < K_BINS:
            out[: K_BINS - s] = bins[s:]
        return out
    s = np.asarray(s)
    out = np.zeros_like(bins)
    cols = np.arange(bins.shape[1])
    for k in range(K_BINS):
        src = k + s
        ok = src < K_BINS
        out[k, ok] = bins[src[ok], cols[ok]]
    return out


#: Incidences cut into digits at a time by :func:`binned_columns` (bounds its scratch memory:
#: K × 8 bytes per incidence, 128 MiB at 4M).
DIGIT_CHUNK = 1 << 22


def binned_columns(columns: np.ndarray, w: np.ndarray, size: int) -> Binned:
    """Reproducible ``np.bincount(columns, weights=w, minlength=size)`` with one top bin per
    column (the bin of the column's largest |w|): exact digit sums via ``bincount``, in chunks
    of :data:`DIGIT_CHUNK` incidences (integer-valued partial sums: exact in any grouping)."""
    columns = np.asarray(columns, dtype=np.int64)
    w = np.asarray(w, dtype=np.float64)
    tops = np.full(size, NO_BIN, dtype=np.int64)
    bins = np.zeros((K_BINS, size))
    if w.size:
        np.maximum.at(tops, columns, _row_bins(w))
    for start in range(0, w.size, DIGIT_CHUNK):
        c = columns[start : start + DIGIT_CHUNK]
        v = w[start : start + DIGIT_CHUNK]
        D = _digits(v, np.where(v == 0, 0, tops[c]))
        for k in range(K_BINS):
            bins[k] += np.bincount(c, weights=D[k], minlength=size)
    return Binned(tops, bins)


def _digit_totals(D: np.ndarray) -> np.ndarray:
    """Σ over elements of the ``(K, n)`` digits (integers < 2^W: exact in any order, so BLAS)."""
    return D @ np.ones(D.shape[1]) if D.shape[1] else np.zeros(K_BINS)


def binned_sum(x: np.ndarray) -> Binned:
    """Reproducible Σ x (any signs)."""
    x = np.asarray(x, dtype=np.float64)
    top = _top_bin(x)
    return Binned(top, _digit_totals(_digits(x, top)))


# ---------------------------------------------------------------------------- blocks
@dataclass
class Block:
    """One part of the signature table as NumPy arrays."""

    pid: int
    indptr: np.ndarray  # int64[s+1]
    indices: np.ndarray  # int32[nnz]
    mult: np.ndarray  # float64[s]
    codes: dict[str, np.ndarray]  # per margin column, int32[s]
    n_entries: int
    _csr: Any = field(default=None, repr=False, compare=False)

    @property
    def k(self) -> np.ndarray:
        return np.diff(self.indptr)

    def csr(self) -> sp.csr_array:
        """The 0/1 incidence matrix (s × m) of the block (built once per unpickled block)."""
        if self._csr is None:
            self._csr = sp.csr_array(
                (np.ones(self.indices.size), self.indices, self.indptr),
                shape=(self.mult.size, self.n_entries),
            )
        return self._csr

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_csr"] = None
        return d

    @classmethod
    def from_table(cls, table: SignatureTable, pid: int = 0) -> Block:
        return cls(
            pid=pid,
            indptr=table.indptr,
            indices=table.indices,
            mult=table.multiplicity.astype(np.float64),
            codes=dict(table.margin_codes),
            n_entries=table.n_entries,
        )


@dataclass(frozen=True)
class View:
    """The rows and columns a primitive works on: with the ``<unmatched>`` pseudo-entry (id
    ``uid`` = m, holding every empty row) or not, and the margin columns that are columns of the
    problem, as (column, offset, levels). Eligible ("live") rows: k_r > 0, or all rows."""

    keep_unmatched: bool
    uid: int
    n_columns: int
    margins: tuple[tuple[str, int, int], ...] = ()


def _eta(block: Block, lam: np.ndarray, view: View) -> np.ndarray:
    """η_r = ((Σ_{j∈S_r} λ_j, sequentially) + λ_m on empty rows with ``<unmatched>``) + μ_x …"""
    eta = block.csr() @ lam[: block.n_entries]
    if view.keep_unmatched:
        empty = block.k == 0
        eta[empty] += lam[view.uid]
    for col, off, _ in view.margins:
        eta += lam[off + block.codes[col]]
    return eta


def _live_mult(block: Block, view: View) -> np.ndarray:
    """m_r on the eligible rows, 0 elsewhere."""
    return block.mult if view.keep_unmatched else np.where(block.k > 0, block.mult, 0.0)


def _column_sums(block: Block, w: np.ndarray, view: View, total: bool = False) -> Any:
    """Reproducible Aᵀw over the view's columns (entries, ``<unmatched>``, margin levels);
    with ``total``, also the reproducible Σ w: (Aᵀw, Σw)."""
    # One top bin per column (a global one would round a column of tiny terms to 0 next to a
    # column of large ones): the digits are cut per incidence, at its column's top.
    w = np.asarray(w, dtype=np.float64)
    tops = np.full(view.n_columns, NO_BIN, dtype=np.int64)
    bins = np.zeros((K_BINS, view.n_columns))

    def put(off: int, part: Binned) -> None:
        size = part.bins.shape[1]
        tops[off : off + size] = part.top
        bins[:, off : off + size] = part.bins

    put(0, binned_columns(block.indices, np.repeat(w, block.k), block.n_entries))
    if view.keep_unmatched:
        empty = w[block.k == 0]
        put(view.uid, binned_columns(np.zeros(empty.size, np.int64), empty, 1))
    for col, off, size in view.margins:
        put(off, binned_columns(block.codes[col], w, size))
    if total:
        return Binned(tops, bins), binned_sum(w)
    return Binned(tops, bins)


# ---------------------------------------------------------------------------- kernels
def _k_facts(
    block: Block, *, margin_cols: Sequence[str], levels: Mapping[str, list[str]]
) -> dict[str, Any]:
    """Counts and pool facts (all integer-valued: exact)."""
    k = block.k
    m = block.mult
    matched = k > 0
    out: dict[str, Any] = {
        "counts": np.bincount(block.indices, weights=np.repeat(m, k), minlength=block.n_entries),
        "n_samples": float(m.sum()),
        "n_matched": float(m[matched].sum()),
        "n_signatures": float(m.size),
        "nnz": float(block.indices.size),
        "pad_k_hist": np.bincount(k, weights=m) if k.size else np.zeros(1),
    }
    for c in margin_cols:
        L = len(levels[c])
        out[f"levels_all:{c}"] = np.bincount(block.codes[c], weights=m, minlength=L)
        out[f"levels_matched:{c}"] = np.bincount(
            block.codes[c][matched], weights=m[matched], minlength=L
        )
    return out


def _k_point(
    block: Block, lam: np.ndarray, lam_ref: np.ndarray | None, *, capped: bool, view: View
) -> dict[str, Any]:
    """η, π = min(1, e^η); n = Aᵀ(m π), Σ m φ(η), Σ m π, and Σ m (φ(η) − φ(η_ref))."""
    eta = _eta(block, lam, view)
    m = _live_mult(block, view)
    n, size = _column_sums(block, m * probs(eta, capped), view, total=True)
    out = {"n": n, "sum_phi": binned_sum(m * phi(eta, capped)), "size": size}
    if lam_ref is not None:
        delta = _eta(block, lam - lam_ref, view)  # the step itself: exact on kept rows
        out["dphi"] = binned_sum(m * phi_diff(eta, eta - delta, capped, delta))
    return out


def _k_positive(block: Block, y: np.ndarray, *, view: View) -> dict[str, Any]:
    """Σ m max(0, A y)."""
    return {"pos": binned_sum(_live_mult(block, view) * np.maximum(_eta(block, y, view), 0.0))}


def _k_shifted_size(block: Block, lam: np.ndarray, *, nu: float, view: View) -> dict[str, Any]:
    """Σ m min(1, e^{η + ν})."""
    eta = _eta(block, lam, view)
    return {"size": binned_sum(_live_mult(block, view) * np.exp(np.minimum(eta + nu, 0.0)))}


def _k_metaclip(block: Block, logq: np.ndarray, *, view: View) -> dict[str, Any]:
    """Σ_r m_r (−expm1(Σ_{j∈S_r} log1p(−p_j))) over eligible rows."""
    s = _eta(block, logq, view)
    pi = np.where((block.k > 0) | view.keep_unmatched, -np.expm1(s), 0.0)
    return {"size": binned_sum(block.mult * pi)}


def _k_balance(
    block: Block,
    a: np.ndarray,
    b: Mapping[str, np.ndarray],
    *,
    n: float,
    view: View,
    entries: bool,
    levels: Sequence[str],
) -> dict[str, Any]:
    """y = Aᵀ(base ⊙ B), x_col = Σ_{x_r = ·} base_r B_r (A a)_r with base_r = m_r/(n k'_r)."""
    k = block.k
    kw = k + ((k == 0) & view.keep_unmatched)
    base = np.where(kw > 0, block.mult / (n * np.maximum(kw, 1)), 0.0)
    bf = np.ones(k.size)
    for col in b:
        bf *= b[col][block.codes[col]]
    wb = base * bf
    out: dict[str, Any] = {}
    if entries:
        out["y"] = _column_sums(block, wb, view)
    if levels:
        aa = _eta(block, a, view)
        for col in levels:
            out[f"x:{col}"] = binned_columns(block.codes[col], wb * aa, b[col].size)
    return out


def _score(block: Block, params: ScoreParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = {c: block.codes[c] for c in params.margin_values}
    return score_rows(params, block.indptr, block.indices, codes)


def _k_rows(block: Block, params: ScoreParams) -> dict[str, Any]:
    """Per-row (weight, π) of a block (driver only)."""
    _, weight, pi = _score(block, params)
    return {"rows": [(block.pid, weight, pi)]}


def _k_score_sums(block: Block, params: ScoreParams) -> dict[str, Any]:
    raw, weight, pi = _score(block, params)
    m = block.mult
    k = block.k
    kw = (k + ((k == 0) & params.keep_unmatched)).astype(np.float64)
    pos = raw > 0
    return {
        "raw": binned_sum(m * raw),
        "pi": binned_sum(m * pi),
        "weight": binned_sum(m * weight),
        "k_pi": binned_sum(m * kw * pi),
        "positive": float(m[pos].sum()),
        "min_raw": float(raw[pos].min()) if pos.any() else float("inf"),
    }


def _k_prob_scale(
    block: Block, params: ScoreParams, *, lam: float, per_match: bool
) -> dict[str, Any]:
    """M = Σ w [λ raw ≥ 1, raw > 0], W = Σ w raw [λ raw < 1], pos = Σ w [raw > 0]."""
    raw = _score(block, params)[0]
    w = block.mult
    if per_match:
        k = block.k
        w = w * (k + ((k == 0) & params.keep_unmatched))
    capped = lam * raw >= 1.0
    return {
        "M": float(w[capped & (raw > 0)].sum()),
        "W": binned_sum(np.where(capped, 0.0, w * raw)),
        "pos": float(w[raw > 0].sum()),
    }


def _k_stats(block: Block, params: ScoreParams, *, mean: float, view: View) -> dict[str, Any]:
    _, weight, pi = _score(block, params)
    m = block.mult
    elig = (block.k > 0) | view.keep_unmatched
    w, me = weight[elig], m[elig]
    hist, _ = np.histogram(pi[elig], bins=PI_BINS, range=(0.0, 1.0), weights=me)
    entry_sums, size = _column_sums(block, m * pi, view, total=True)
    out: dict[str, Any] = {
        "entry_sums": entry_sums,
        "eligible": float(me.sum()),
        "weight_sum": binned_sum(me * w),
        "weight_sq_sum": binned_sum(me * (w * w)),
        "max_weight": float(w.max(initial=0.0)),
        "pi_hist": hist,
        "pi_one": float(me[pi[elig] >= 1.0].sum()),
        "size": size,
    }
    for f in WEIGHT_FACTORS:
        out[f"above:{f}"] = float(me[w > f * mean].sum())
    return out


# ---------------------------------------------------------------------------- combining
def combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Merge two partials: :class:`Binned` by :meth:`Binned.merge`, keys ``max_*``/``min_*`` by
    maximum/minimum, ``pad_*`` by a zero-padded sum, ``rows`` by concatenation, else ``+``
    (integer-valued sums: exact)."""
    out: dict[str, Any] = {}
    for key, x in a.items():
        y = b[key]
        if isinstance(x, Binned):
            out[key] = x.merge(y)
        elif key.startswith("max_"):
            out[key] = np.maximum(x, y)
        elif key.startswith("min_"):
            out[key] = np.minimum(x, y)
        elif key.startswith("pad_"):
            n = max(len(x), len(y))
            z = np.zeros(n, dtype=np.result_type(x, y))
            z[: len(x)] += x
            z[: len(y)] += y
            out[key] = z
        else:
            out[key] = x + y
    return out


def finalize(partial: dict[str, Any]) -> dict[str, Any]:
    """Read the merged partial: :class:`Binned` sums become floats / float arrays."""
    return {k: (v.value() if isinstance(v, Binned) else v) for k, v in partial.items()}


# ---------------------------------------------------------------------------- operators
def prob_scale_newton(
    sums: Callable[[float], tuple[float, float, float]], n_target: float, max_steps: int = 200
) -> float:
    """λ with f(λ) = Σ_r w_r min(1, λ raw_r) = N by Newton's method: f is concave and piecewise
    linear, so from λ_0 = 0 the steps λ_{k+1} = (N − M(λ_k)) / W(λ_k) (M = Σ w over capped rows
    λ raw ≥ 1, W = Σ w raw over the others; ``sums(λ)`` returns (M, W, Σ w [raw > 0])) increase
    to the root and stop once the capped set is stable: the closed form of
    :func:`~.target_size.solve_prob_scale` for that set."""
    if n_target <= 0:
        raise TargetSizeError("target size must be positive")
    lam = 0.0
    for _ in range(max_steps):
        M, W, pos = sums(lam)
        if n_target > pos * (1 + 1e-12):
            raise TargetSizeError(
                f"target size {n_target:g} exceeds the {pos:g} samples with positive weight; "
                "use sampling with replacement"
            )
        if W <= 0:
            break
        new = (n_target - M) / W
        if not new > lam:
            break
        lam = new
    return float(lam)


class BlockOperator:
    """:class:`~.operators.TableOperator` over blocks, given ``run`` (one pass) and the facts.

    Subclasses set ``blocks`` and implement :meth:`run_partials` (evaluate a kernel on every block
    and return the merged, not yet finalized, partial).
    """

    is_distributed = False
    path = "blocks"

    def _init_facts(self, facts: dict[str, Any], n_entries: int, levels: dict[str, list]) -> None:
        self.n_entries = int(n_entries)
        self.margin_levels = levels
        self.margin_cols = tuple(levels)
        self.counts = np.rint(facts["counts"]).astype(np.int64)
        self.n_samples = int(round(facts["n_samples"]))
        self.n_matched = int(round(facts["n_matched"]))
        self.n_signatures = int(round(facts["n_signatures"]))
        self.nnz = int(round(facts["nnz"]))
        self.unmatched = self.n_samples - self.n_matched
        kh = facts["pad_k_hist"]
        self.k_histogram = {int(i): int(round(v)) for i, v in enumerate(kh) if v > 0}
        self.level_counts_all = {c: facts[f"levels_all:{c}"] for c in self.margin_cols}
        self.level_counts_matched = {c: facts[f"levels_matched:{c}"] for c in self.margin_cols}
        self._work: dict[bool, BlockWork] = {}

    def run_partials(
        self,
        kernel: Callable[..., dict[str, Any]],
        bcast: Mapping[str, Any],
        static: Mapping[str, Any],
    ) -> dict[str, Any]:
        raise NotImplementedError

    def run(
        self,
        kernel: Callable[..., dict[str, Any]],
        *,
        bcast: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One pass: ``kernel(block, **bcast, **static)`` on every block, partials merged in
        block order and finalized."""
        t0 = time.perf_counter()
        out = finalize(self.run_partials(kernel, bcast or {}, static or {}))
        self.passes += 1
        self.pass_seconds += time.perf_counter() - t0
        return out

    def execution_info(self) -> dict[str, Any]:
        """Facts about the execution (path, blocks, passes, seconds) for ``info``."""
        return {
            "path": self.path,
            "partitions": self.num_partitions,
            "signatures": self.n_signatures,
            "nnz": self.nnz,
            "passes": self.passes,
            "pass_seconds": self.pass_seconds,
            "seconds_per_pass": self.pass_seconds / max(self.passes, 1),
            "build_seconds": self.build_seconds,
        }

    # -------------------------------------------------------------- TableOperator
    def work(self, keep_unmatched: bool) -> BlockWork:
        if keep_unmatched not in self._work:
            self._work[keep_unmatched] = BlockWork(self, keep_unmatched)
        return self._work[keep_unmatched]

    def view(self, keep_unmatched: bool) -> View:
        return View(keep_unmatched, self.n_entries, self.n_entries + (1 if keep_unmatched else 0))

    def score_sums(self, params: ScoreParams) -> ScoreSums:
        r = self.run(_k_score_sums, bcast={"params": params})
        return ScoreSums(
            raw=r["raw"],
            pi=r["pi"],
            weight=r["weight"],
            k_pi=r["k_pi"],
            positive=r["positive"],
            min_positive_raw=r["min_raw"],
        )

    def prob_scale(self, params: ScoreParams, n_target: float, *, per_match: bool = False) -> float:
        """Exact λ by :func:`prob_scale_newton` (one pass per Newton step)."""

        def sums(lam: float) -> tuple[float, float, float]:
            r = self.run(
                _k_prob_scale,
                bcast={"params": params},
                static={"lam": lam, "per_match": per_match},
            )
            return r["M"], r["W"], r["pos"]

        return prob_scale_newton(sums, n_target)

    def aggregate_stats(self, params: ScoreParams) -> AggregateStats:
        ku = params.keep_unmatched
        n_elig = self.work(ku).n_eligible
        mean = self.score_sums(params).weight / n_elig if n_elig > 0 else 0.0
        r = self.run(
            _k_stats, bcast={"params": params}, static={"mean": mean, "view": self.view(ku)}
        )
        return AggregateStats(
            n_samples=self.n_samples,
            n_signatures=self.n_signatures,
            n_matched=self.n_matched,
            k_histogram=dict(self.k_histogram),
            n_entries=self.n_entries,
            entry_sums=r["entry_sums"],
            eligible=r["eligible"],
            weight_sum=r["weight_sum"],
            weight_sq_sum=r["weight_sq_sum"],
            weight_max=r["max_weight"],
            mean=float(mean),
            above_mean={f: r[f"above:{f}"] for f in WEIGHT_FACTORS},
            pi_histogram=np.rint(r["pi_hist"]).astype(np.int64),
            pi_one=int(round(r["pi_one"])),
            expected_size=r["size"],
        )

    def row_scores(self, params: ScoreParams) -> tuple[np.ndarray, np.ndarray] | None:
        return None


class BlockWork:
    """:class:`~.operators.WorkOperator` view of a :class:`BlockOperator`."""

    def __init__(self, op: BlockOperator, keep_unmatched: bool) -> None:
        self.op = op
        self.is_distributed = op.is_distributed
        self.keep_unmatched = keep_unmatched
        self.view = op.view(keep_unmatched)
        self.n_entries = self.view.n_columns
        self.margin_levels = op.margin_levels
        self.n_eligible = float(op.n_samples if keep_unmatched else op.n_matched)

    def counts(self) -> np.ndarray:
        if self.keep_unmatched:
            return np.concatenate([self.op.counts, [self.op.unmatched]]).astype(np.int64)
        return self.op.counts

    def level_counts(self, col: str) -> np.ndarray:
        src = self.op.level_counts_all if self.keep_unmatched else self.op.level_counts_matched
        return src[col].copy()

    def metaclip_size(self, p: np.ndarray) -> float:
        r = self.op.run(
            _k_metaclip, bcast={"logq": metaclip_log_survival(p)}, static={"view": self.view}
        )
        return r["size"]

    def balance_marginals(
        self,
        a: np.ndarray,
        b: Mapping[str, np.ndarray],
        *,
        entries: bool = True,
        levels: Sequence[str] = (),
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        r = self.op.run(
            _k_balance,
            bcast={"a": np.array(a, dtype=np.float64), "b": {c: v.copy() for c, v in b.items()}},
            static={
                "n": self.n_eligible,
                "view": self.view,
                "entries": entries,
                "levels": tuple(levels),
            },
        )
        return (r["y"] if entries else None), {c: r[f"x:{c}"] for c in levels}

    def rake_problem(self, margins: Sequence[str] = ()) -> BlockRakeProblem:
        return BlockRakeProblem(self, tuple(margins))


class BlockRakeProblem:
    """:class:`~.operators.RakeOperator` over blocks: eligible rows, columns = entries (with
    ``<unmatched>``) then the levels of ``margins``; every method is one pass."""

    def __init__(self, work: BlockWork, margins: tuple[str, ...]) -> None:
        op = work.op
        self.op = op
        self.is_distributed = op.is_distributed
        self.n_entries = work.n_entries
        self.offsets: dict[str, int] = {}
        self.margin_sizes: dict[str, int] = {}
        q = work.n_entries
        spec = []
        occupied = [work.counts() > 0]
        for col in margins:
            if col not in op.margin_levels:
                raise KeyError(f"margin column {col!r} was not loaded (margin_cols)")
            L = len(op.margin_levels[col])
            self.offsets[col], self.margin_sizes[col] = q, L
            spec.append((col, q, L))
            occupied.append(work.level_counts(col) > 0)
            q += L
        self.n_columns = q
        self.view = View(work.keep_unmatched, op.n_entries, q, tuple(spec))
        self.occupied = np.concatenate(occupied)

    def point(
        self, lam: np.ndarray, *, capped: bool = True, ref: DualPoint | None = None
    ) -> DualPoint:
        bc: dict[str, Any] = {"lam": np.array(lam, dtype=np.float64)}
        static: dict[str, Any] = {"capped": capped, "view": self.view}
        if ref is None:
            static["lam_ref"] = None
        else:
            bc["lam_ref"] = np.array(ref.lam, dtype=np.float64)
        r = self.op.run(_k_point, bcast=bc, static=static)
        return DualPoint(lam, n=r["n"], sum_phi=r["sum_phi"], size=r["size"], dphi=r.get("dphi"))

    def positive_part(self, y: np.ndarray) -> float:
        r = self.op.run(
            _k_positive, bcast={"y": np.array(y, dtype=np.float64)}, static={"view": self.view}
        )
        return r["pos"]

    def size_function(self, lam: np.ndarray) -> Callable[[float], float]:
        lam = np.array(lam, dtype=np.float64)

        def size(nu: float) -> float:
            r = self.op.run(
                _k_shifted_size, bcast={"lam": lam}, static={"nu": float(nu), "view": self.view}
            )
            return r["size"]

        return size


class MemoryBlockOperator(BlockOperator):
    """Reproducible execution on the driver: a :class:`SignatureTable` cut into ``num_blocks``
    contiguous blocks (default 1), the same kernels and merges as on Spark. Results are bit for
    bit those of :class:`~.spark_operator.SparkOperator` on the same table, for any number of
    blocks or partitions; per-signature outputs (``row_scores``) are available."""

    path = "driver-reproducible"

    def __init__(self, table: SignatureTable, num_blocks: int = 1) -> None:
        t0 = time.perf_counter()
        self.table = table
        self.passes = 0
        self.pass_seconds = 0.0
        s = table.n_signatures
        if num_blocks <= 1:
            self.blocks = [Block.from_table(table)]
        else:
            bounds = np.linspace(0, s, int(num_blocks) + 1).astype(np.int64)
            self.blocks = [
                Block.from_table(table.subset(np.arange(a, b)), pid=i)
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
            ]
        self.num_partitions = len(self.blocks)
        levels = dict(table.margin_levels)
        facts = self.run_partials(_k_facts, {}, {"margin_cols": tuple(levels), "levels": levels})
        self._init_facts(finalize(facts), table.n_entries, levels)
        self.build_seconds = time.perf_counter() - t0

    def run_partials(
        self,
        kernel: Callable[..., dict[str, Any]],
        bcast: Mapping[str, Any],
        static: Mapping[str, Any],
    ) -> dict[str, Any]:
        parts = [kernel(b, **bcast, **static) for b in self.blocks]
        return functools.reduce(combine, parts)

    def row_scores(self, params: ScoreParams) -> tuple[np.ndarray, np.ndarray]:
        rows = self.run_partials(_k_rows, {"params": params}, {})["rows"]
        rows = sorted(rows, key=lambda r: r[0])
        return np.concatenate([r[1] for r in rows]), np.concatenate([r[2] for r in rows])
