"""The data side of the balancing solvers: a few primitives, two implementations.

Every pass the solvers make over the signature table goes through one of the primitives below;
the iteration logic (the quasi-Newton solver, size searches, histories, statuses) lives once,
in :mod:`.dual_solver`, :mod:`.rake`, :mod:`.metaclip` and :mod:`.pair_balance`, and runs
unchanged on

* :class:`LocalOperator` — the table on the driver as NumPy/SciPy CSR arrays (this module; it
  evaluates exactly the expressions the driver code always used, so its results are bit for bit
  those of the original driver implementation), or
* :class:`~curation.balancing.spark_operator.SparkOperator` — the table as cached per-partition
  NumPy blocks on Spark executors; each primitive is one Spark job: the parameter vectors are
  broadcast, each partition computes its partial per-column sums as exact binned sums
  (:mod:`.blocks`, independent of the order of their terms) and the partials are merged in
  partition order (no shuffle of the data, no collect of rows), so any partitioning gives the
  same bits as :class:`~.blocks.MemoryBlockOperator` on the driver.

Three levels, with the table's rows r (multiplicity m_r), entry ids S_r and margin codes x_r:

``TableOperator`` (the table as it is) — scoring with :class:`~.params.ScoreParams`:
    :meth:`score_sums` (Σ_r m_r raw_r, Σ m π, Σ m w, Σ m k'_r π_r, Σ m [raw > 0], min raw > 0),
    :meth:`prob_scale` (λ with Σ_r w_r min(1, λ raw_r) = N), :meth:`aggregate_stats` (everything
    the diagnostics need, aggregatable), :meth:`row_scores` (per-signature w, π: driver only).
``WorkOperator`` (the table seen by a method: with the ``<unmatched>`` pseudo-entry m when
    ``keep_unmatched``; eligible rows = rows with k'_r > 0) — :meth:`counts` c_j, ``n_eligible``,
    :meth:`level_counts`, :meth:`metaclip_size` Σ_r m_r (1 − Π_{j∈S_r}(1 − p_j)),
    :meth:`balance_marginals`, :meth:`rake_problem`.
``RakeOperator`` (a raking problem: eligible rows, columns = entries then the levels of the
    chosen margins) — :meth:`point` (η = Aλ, π = min(1, e^η), n = Aᵀ(m ⊙ π), Σ m φ(η), Σ m π
    and, against a reference point, Σ m (φ(η) − φ(η_ref))), :meth:`positive_part`,
    :meth:`size_function`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from .kernels import metaclip_log_survival, phi, phi_diff, probs
from .params import ScoreParams, score_rows
from .signatures import SignatureTable
from .target_size import expected_size, solve_prob_scale

#: Bins of the π histogram in the diagnostics.
PI_BINS = 20
#: Weight thresholds (multiples of the mean weight) of the diagnostics.
WEIGHT_FACTORS = (2, 5, 10)


# ---------------------------------------------------------------------------- containers
@dataclass(frozen=True)
class ScoreSums:
    """Sums over the table's rows for given parameters (w = weight, k' = entries incl. pseudo).

    Attributes:
        raw: Σ_r m_r raw_r.       pi: Σ_r m_r π_r (the expected size).
        weight: Σ_r m_r w_r.      k_pi: Σ_r m_r k'_r π_r (expected kept entry matches).
        positive: Σ_r m_r [raw_r > 0].    min_positive_raw: min{raw_r : raw_r > 0} (inf if none).
    """

    raw: float
    pi: float
    weight: float
    k_pi: float
    positive: float
    min_positive_raw: float


@dataclass
class AggregateStats:
    """What the diagnostics need, as sums/maxima over rows (so it aggregates over partitions).

    ``eligible`` rows are those with k'_r > 0 (matched, or all with ``keep_unmatched``).

    Attributes:
        n_samples, n_signatures, n_matched, k_histogram: the pool (Σ m per k).
        n_entries: m, the real entries.
        entry_sums: n_j(π) = Σ_{r ∋ j} m_r π_r over the method's entries (m or m + 1).
        eligible: Σ m over eligible rows.
        weight_sum, weight_sq_sum, weight_max: Σ m w, Σ m w², max w over eligible rows.
        mean: the mean weight the thresholds used; above_mean[f] = Σ m [w > f·mean].
        pi_histogram: Σ m per bin of π over eligible rows (``PI_BINS`` bins on [0, 1]).
        pi_one: Σ m [π ≥ 1] over eligible rows.     expected_size: Σ_r m_r π_r.
    """

    n_samples: int
    n_signatures: int
    n_matched: int
    k_histogram: dict[int, int]
    n_entries: int
    entry_sums: np.ndarray
    eligible: float
    weight_sum: float
    weight_sq_sum: float
    weight_max: float
    mean: float
    above_mean: dict[int, float]
    pi_histogram: np.ndarray
    pi_one: int
    expected_size: float

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["entry_sums"] = self.entry_sums.tolist()
        d["pi_histogram"] = self.pi_histogram.tolist()
        return d


class DualPoint:
    """One evaluation of the raking dual at λ: η = Aλ, π = min(1, e^η) (e^η uncapped).

    ``n()`` = Aᵀ(m ⊙ π), ``sum_phi()`` = Σ m φ(η), ``size()`` = Σ m π; ``dphi`` = Σ m (φ(η) −
    φ(η_ref)) when evaluated against a reference point. The values are given, or computed on first
    use (the driver operator defers Aᵀ(m ⊙ π) until a candidate is accepted; Spark computes
    everything in the same pass). ``pi`` (per row) and ``state`` exist on the driver only.
    """

    __slots__ = ("lam", "dphi", "pi_rows", "state", "_vals")

    def __init__(
        self,
        lam: np.ndarray,
        *,
        n: np.ndarray | Callable[[], np.ndarray],
        sum_phi: float | Callable[[], float],
        size: float | Callable[[], float],
        dphi: float | None = None,
        pi_rows: Callable[[], np.ndarray] | None = None,
        state: Any = None,
    ) -> None:
        self.lam = lam
        self.dphi = dphi
        self.pi_rows = pi_rows
        self.state = state
        self._vals: dict[str, Any] = {"n": n, "sum_phi": sum_phi, "size": size}

    def _get(self, key: str) -> Any:
        v = self._vals[key]
        if callable(v):
            v = v()
            self._vals[key] = v
        return v

    def n(self) -> np.ndarray:
        return self._get("n")

    def sum_phi(self) -> float:
        return self._get("sum_phi")

    def size(self) -> float:
        return self._get("size")

    @property
    def pi(self) -> np.ndarray | None:
        """Per-row π (driver only, else None)."""
        return None if self.pi_rows is None else self.pi_rows()


# ---------------------------------------------------------------------------- protocols
@runtime_checkable
class RakeOperator(Protocol):
    """Passes over a raking problem: rows r (weight m_r), q columns (entries, then levels)."""

    n_columns: int
    n_entries: int
    offsets: dict[str, int]
    margin_sizes: dict[str, int]
    occupied: np.ndarray  # bool[q]: column j holds at least one row

    def point(
        self, lam: np.ndarray, *, capped: bool = True, ref: DualPoint | None = None
    ) -> DualPoint:
        """Evaluate the dual at λ (one pass); with ``ref``, also Σ m (φ(Aλ) − φ(A λ_ref))."""
        ...

    def positive_part(self, y: np.ndarray) -> float:
        """Σ_r m_r max(0, (A y)_r) (Farkas test)."""
        ...

    def size_function(self, lam: np.ndarray) -> Callable[[float], float]:
        """ν ↦ Σ_r m_r min(1, e^{(Aλ)_r + ν}) (each call one pass on Spark)."""
        ...


@runtime_checkable
class WorkOperator(Protocol):
    """The table as a method sees it (with the ``<unmatched>`` pseudo-entry if asked)."""

    n_entries: int
    margin_levels: Mapping[str, list[str]]
    n_eligible: float

    def counts(self) -> np.ndarray:
        """c_j = Σ_{r ∋ j} m_r (``int64[m']``)."""
        ...

    def level_counts(self, col: str) -> np.ndarray:
        """Σ m over eligible rows per level of margin ``col`` (``float64[L]``)."""
        ...

    def metaclip_size(self, p: np.ndarray) -> float:
        """Σ_r m_r π_r with π_r = 1 − Π_{j∈S_r}(1 − p_j) = −expm1(Σ_j log1p(−p_j))."""
        ...

    def balance_marginals(
        self,
        a: np.ndarray,
        b: Mapping[str, np.ndarray],
        *,
        entries: bool = True,
        levels: Sequence[str] = (),
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """Pair-table marginals before the entry factor: with base_r = m_r/(n k_r) on eligible
        rows (n = ``n_eligible``) and B_r = Π_cols b_col[x_r]: y = Aᵀ(base ⊙ B) and, per level
        column, x_col = Σ_{r: x_r = ·} base_r B_r (A a)_r."""
        ...

    def rake_problem(self, margins: Sequence[str] = ()) -> RakeOperator:
        """The raking problem on eligible rows, columns = entries then margin levels."""
        ...


@runtime_checkable
class TableOperator(Protocol):
    """A signature table wherever it lives (driver or Spark)."""

    n_entries: int
    margin_levels: Mapping[str, list[str]]
    is_distributed: bool

    def work(self, keep_unmatched: bool) -> WorkOperator: ...

    def score_sums(self, params: ScoreParams) -> ScoreSums: ...

    def prob_scale(self, params: ScoreParams, n_target: float, *, per_match: bool = False) -> float:
        """λ with Σ_r w_r min(1, λ raw_r) = N, w_r = m_r (or m_r k'_r with ``per_match``)."""
        ...

    def aggregate_stats(self, params: ScoreParams) -> AggregateStats: ...

    def row_scores(self, params: ScoreParams) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-signature (weight, π) when the table is on the driver, else None."""
        ...


# ---------------------------------------------------------------------------- driver side
def metaclip_pi(table: SignatureTable, p: np.ndarray) -> np.ndarray:
    """π_r = 1 − Π_{j∈S_r}(1 − p_j) per signature, = −expm1(A · log1p(−p)) (vectorised)."""
    logq = metaclip_log_survival(p)
    s = table.row_sums(logq) if table.nnz else np.zeros(table.n_signatures)
    return np.where(table.k > 0, -np.expm1(s), 0.0)


@dataclass
class RakeProblem:
    """The raking problem built from a signature table: live rows and augmented columns.

    Columns 0..m'-1 are entries (m' = m, or m+1 with ``<unmatched>``), then the levels of each
    margin column in order (``offsets[col]`` = first column of that margin).
    """

    A: sp.csr_array
    mult: np.ndarray
    rows: np.ndarray  # indices of live rows in the signature table
    n_entries: int
    offsets: dict[str, int]
    margin_sizes: dict[str, int]


def build_problem(work: SignatureTable, margins: Sequence[str] = ()) -> RakeProblem:
    """Live rows (k > 0) and the incidence matrix augmented with one column per margin level."""
    rows = np.flatnonzero(work.k > 0)
    sub = work.subset(rows) if rows.size < work.n_signatures else work
    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    q = work.n_entries
    for col in margins:
        offsets[col] = q
        sizes[col] = len(work.margin_levels[col])
        q += sizes[col]
    if not margins:
        A = sp.csr_array((np.ones(sub.nnz), sub.indices, sub.indptr), shape=(sub.n_signatures, q))
    else:
        M = len(margins)
        k = sub.k
        new_k = k + M
        indptr = np.concatenate([[0], np.cumsum(new_k)]).astype(np.int64)
        indices = np.empty(indptr[-1], dtype=np.int32)
        # entries first, then the margin columns (sorted since margin columns are > entries)
        pos_entries = np.repeat(indptr[:-1], k) + (
            np.arange(sub.nnz) - np.repeat(sub.indptr[:-1], k)
        )
        indices[pos_entries] = sub.indices
        for i, col in enumerate(margins):
            indices[indptr[:-1] + k + i] = offsets[col] + sub.margin_codes[col]
        A = sp.csr_array((np.ones(indices.size), indices, indptr), shape=(sub.n_signatures, q))
    return RakeProblem(
        A=A,
        mult=sub.multiplicity.astype(np.float64),
        rows=rows,
        n_entries=work.n_entries,
        offsets=offsets,
        margin_sizes=sizes,
    )


class LocalRakeOperator:
    """:class:`RakeOperator` over a SciPy CSR incidence matrix on the driver.

    η = A @ λ (CSR matvec), n = Aᵀ @ (m ⊙ π) (transposed matvec, no copy).
    """

    is_distributed = False

    def __init__(
        self,
        A: sp.csr_array,
        mult: np.ndarray,
        *,
        n_entries: int | None = None,
        offsets: Mapping[str, int] | None = None,
        margin_sizes: Mapping[str, int] | None = None,
    ) -> None:
        self.A = sp.csr_array(A)
        self.AT = self.A.T  # CSC view, no copy
        s, q = self.A.shape
        self.n_columns = int(q)
        self.n_entries = int(q if n_entries is None else n_entries)
        self.offsets = dict(offsets or {})
        self.margin_sizes = dict(margin_sizes or {})
        self.mult = np.asarray(mult, dtype=np.float64)
        if s and np.diff(self.A.indptr).min() < 1:
            raise ValueError("every live row must hold at least one column")
        self.occupied = self.AT @ np.ones(s) > 0

    @classmethod
    def from_problem(cls, prob: RakeProblem) -> LocalRakeOperator:
        return cls(
            prob.A,
            prob.mult,
            n_entries=prob.n_entries,
            offsets=prob.offsets,
            margin_sizes=prob.margin_sizes,
        )

    def point(
        self, lam: np.ndarray, *, capped: bool = True, ref: DualPoint | None = None
    ) -> DualPoint:
        eta = self.A @ lam
        dphi = None
        if ref is not None:
            delta = self.A @ (lam - ref.lam)  # the step itself: exact on kept rows (η ≈ 1e4)
            dphi = float(np.dot(self.mult, phi_diff(eta, ref.state, capped, delta)))
        cache: dict[str, np.ndarray] = {}

        def pi_rows() -> np.ndarray:
            if "pi" not in cache:
                cache["pi"] = probs(eta, capped)
            return cache["pi"]

        return DualPoint(
            lam,
            n=lambda: self.AT @ (self.mult * pi_rows()),
            sum_phi=lambda: float(np.dot(self.mult, phi(eta, capped))),
            size=lambda: float(np.dot(self.mult, pi_rows())),
            dphi=dphi,
            pi_rows=pi_rows,
            state=eta,
        )

    def positive_part(self, y: np.ndarray) -> float:
        Ay = self.A @ y
        return float(np.dot(self.mult, np.maximum(Ay, 0.0)))

    def size_function(self, lam: np.ndarray) -> Callable[[float], float]:
        eta = self.A @ lam
        return lambda nu: float(np.dot(self.mult, np.exp(np.minimum(eta + nu, 0.0))))


class LocalWork:
    """:class:`WorkOperator` over a driver-side :class:`SignatureTable`."""

    is_distributed = False

    def __init__(self, work: SignatureTable) -> None:
        self.table = work
        self.n_entries = work.n_entries
        self.margin_levels = work.margin_levels
        self.n_eligible = float(work.multiplicity[work.k > 0].sum())
        self._counts: np.ndarray | None = None
        self._balance: dict[str, Any] = {}

    def counts(self) -> np.ndarray:
        if self._counts is None:
            self._counts = self.table.entry_counts()
        return self._counts

    def level_counts(self, col: str) -> np.ndarray:
        w = self.table
        return w.margin_counts(col, np.where(w.k > 0, w.multiplicity, 0))

    def metaclip_size(self, p: np.ndarray) -> float:
        return expected_size(metaclip_pi(self.table, p), self.table.multiplicity)

    def balance_marginals(
        self,
        a: np.ndarray,
        b: Mapping[str, np.ndarray],
        *,
        entries: bool = True,
        levels: Sequence[str] = (),
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        w = self.table
        if "base" not in self._balance:
            elig = w.k > 0
            n = self.n_eligible
            self._balance["base"] = np.where(
                elig, w.multiplicity / (n * np.maximum(w.k, 1)), 0.0
            )  # m_r/(n k_r)
        base = self._balance["base"]
        bf = np.ones(w.n_signatures)
        for col in b:
            bf *= b[col][w.margin_codes[col]]
        y = w.entry_sums(base * bf) if entries else None
        x: dict[str, np.ndarray] = {}
        aa = w.row_sums(a) if levels else None
        for col in levels:
            x[col] = np.bincount(w.margin_codes[col], weights=base * bf * aa, minlength=b[col].size)
        return y, x

    def rake_problem(self, margins: Sequence[str] = ()) -> LocalRakeOperator:
        return LocalRakeOperator.from_problem(build_problem(self.table, margins))


def stats_from_rows(
    table: SignatureTable, keep_unmatched: bool, weight: np.ndarray, pi: np.ndarray
) -> AggregateStats:
    """:class:`AggregateStats` from per-signature weights and π on the driver."""
    work = table.with_unmatched_entry() if keep_unmatched else table
    mult = table.multiplicity
    elig = work.k > 0
    w = np.asarray(weight, dtype=np.float64)[elig]
    m = np.asarray(mult, dtype=np.float64)[elig]
    n = m.sum()
    sw, sw2 = float(np.dot(m, w)), float(np.dot(m, w * w))
    mean = sw / n if n > 0 else 0.0
    hist, _ = np.histogram(pi[elig], bins=PI_BINS, range=(0.0, 1.0), weights=mult[elig])
    return AggregateStats(
        n_samples=int(table.n_samples),
        n_signatures=int(table.n_signatures),
        n_matched=int(table.n_matched),
        k_histogram=table.k_histogram(),
        n_entries=int(table.n_entries),
        entry_sums=work.entry_sums(mult * pi),
        eligible=float(n),
        weight_sum=sw,
        weight_sq_sum=sw2,
        weight_max=float(w.max(initial=0.0)),
        mean=float(mean),
        above_mean={f: float(m[w > f * mean].sum()) for f in WEIGHT_FACTORS},
        pi_histogram=hist,
        pi_one=int(mult[elig & (pi >= 1.0)].sum()),
        expected_size=float(np.dot(mult, pi)),
    )


class LocalOperator:
    """:class:`TableOperator` over a :class:`SignatureTable` held by the driver."""

    is_distributed = False

    def __init__(self, table: SignatureTable) -> None:
        self.table = table
        self.n_entries = table.n_entries
        self.margin_levels = table.margin_levels
        self._work: dict[bool, LocalWork] = {}

    def work(self, keep_unmatched: bool) -> LocalWork:
        if keep_unmatched not in self._work:
            t = self.table.with_unmatched_entry() if keep_unmatched else self.table
            self._work[keep_unmatched] = LocalWork(t)
        return self._work[keep_unmatched]

    def _rows(self, params: ScoreParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.table
        codes = {col: t.margin_codes[col] for col in params.margin_values}
        return score_rows(params, t.indptr, t.indices, codes)

    def _k_eff(self, keep_unmatched: bool) -> np.ndarray:
        """k'_r: entries per row, the ``<unmatched>`` pseudo-entry included (``float64``)."""
        k = self.table.k
        return (k + ((k == 0) & keep_unmatched)).astype(np.float64)

    def score_sums(self, params: ScoreParams) -> ScoreSums:
        raw, weight, pi = self._rows(params)
        mult = self.table.multiplicity
        pos = raw > 0
        return ScoreSums(
            raw=expected_size(raw, mult),
            pi=expected_size(pi, mult),
            weight=expected_size(weight, mult),
            k_pi=float(np.dot(mult * self._k_eff(params.keep_unmatched), pi)),
            positive=float(mult[pos].sum()),
            min_positive_raw=float(raw[pos].min()) if pos.any() else float("inf"),
        )

    def prob_scale(self, params: ScoreParams, n_target: float, *, per_match: bool = False) -> float:
        raw, _, _ = self._rows(params)
        mult = self.table.multiplicity
        if per_match:
            mult = mult * self._k_eff(params.keep_unmatched)
        return solve_prob_scale(raw, mult, n_target)

    def row_scores(self, params: ScoreParams) -> tuple[np.ndarray, np.ndarray]:
        _, weight, pi = self._rows(params)
        return weight, pi

    def aggregate_stats(self, params: ScoreParams) -> AggregateStats:
        _, weight, pi = self._rows(params)
        return stats_from_rows(self.table, params.keep_unmatched, weight, pi)
