"""The balancing operators on Spark: the signature table as cached NumPy blocks on executors.

:class:`SparkOperator` implements the :mod:`.operators` protocols over a Spark DataFrame of the
``count`` stage's signature table (``entry_ids: list<int32>``, margin columns,
``multiplicity: int64``). The solvers in :mod:`.rake`, :mod:`.metaclip` and :mod:`.pair_balance`
run unchanged on it; every primitive is one Spark job ("pass"):

1. the driver broadcasts the parameter vectors (``sc.broadcast`` of float64 arrays: λ, a 500k-float
   vector is 4 MB; destroyed after the pass);
2. each partition evaluates the row quantities from its block (η_r = Σ_{j∈S_r} λ_j + Σ μ_{x_r} by a
   gather and ``np.add.reduceat``, π_r, φ(η_r), ...) and its partial per-column sums
   n_j = Σ_{r∋j} m_r π_r with ``np.bincount(indices, weights=repeat(m ⊙ π, k), minlength=q)``;
3. the partials (one small dict of vectors and scalars per partition) are combined in partition
   order: collected when there are at most ``fan_in`` partitions, else first summed in groups of
   ``fan_in`` consecutive partitions on the executors (a shuffle of the partial vectors only,
   never of the data; the group members are sorted by partition id before summing). The order
   of every floating-point sum is therefore fixed: reruns give identical bits.

Blocks. At construction the table is put in a canonical order — range-partitioned and sorted by
(entry_ids, margins, multiplicity) into ``num_partitions`` partitions — so that the result does not
depend on how the input was partitioned beyond the floating-point summation order. Each
partition is converted once, from Arrow batches (``mapInArrow``), into one :class:`Block` (CSR
``indptr``/``indices``, ``float64`` multiplicities, ``int32`` margin codes, validated like
:class:`~.signatures.SignatureTable`), and the RDD of blocks is persisted ``MEMORY_AND_DISK``.

**Choice (caching):** a persisted RDD of pickled NumPy blocks, not a cache in a module global of
the Python workers. A worker-side cache is faster per pass (no unpickling) but which worker runs
partition p in the next pass is not fixed (with ``local[2]`` and worker reuse each worker would
end up caching every block: twice the memory), workers can be restarted at any time, and a miss
would need the persisted data anyway. The RDD is managed by the block manager (spills to disk,
recomputed from its lineage if an executor is lost; the canonical sort makes the recomputation
produce the same blocks), and a pass costs one unpickle per block (~GB/s). The partition → block
mapping never changes between passes. Call :meth:`SparkOperator.unpersist` (or use the operator
as a context manager) when done.
"""

from __future__ import annotations

import functools
import math
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .kernels import metaclip_log_survival, phi, phi_diff, probs
from .operators import (
    PI_BINS,
    WEIGHT_FACTORS,
    AggregateStats,
    DualPoint,
    ScoreSums,
)
from .params import ScoreParams, score_rows, segment_sum
from .signatures import NULL_LEVEL, SignatureTable, encode_margin, list_array_to_csr
from .target_size import TargetSizeError

#: Signatures per partition aimed at when ``num_partitions`` is not given.
DEFAULT_ROWS_PER_PARTITION = 1_000_000
#: Partials combined per group before they reach the driver.
DEFAULT_FAN_IN = 8


# ---------------------------------------------------------------------------- blocks
@dataclass
class Block:
    """One partition of the signature table, as NumPy arrays (rows in canonical order)."""

    pid: int
    indptr: np.ndarray  # int64[s+1]
    indices: np.ndarray  # int32[nnz]
    mult: np.ndarray  # float64[s]
    codes: dict[str, np.ndarray]  # per margin column, int32[s]

    @property
    def k(self) -> np.ndarray:
        return np.diff(self.indptr)


@dataclass(frozen=True)
class View:
    """How a method sees the rows: with the ``<unmatched>`` pseudo-entry (id ``uid``) or not,
    and which margin columns are columns of the problem (at ``offsets``, with ``sizes`` levels)."""

    keep_unmatched: bool
    uid: int  # id of <unmatched> (= m) when keep_unmatched
    n_columns: int
    margins: tuple[tuple[str, int, int], ...] = ()  # (column, offset, levels)


def _chunks_from_arrow(
    batches: Iterable[pa.RecordBatch],
    *,
    n_entries: int,
    margin_cols: Sequence[str],
    levels: Mapping[str, list[str]],
    entry_col: str,
    multiplicity_col: str,
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: each Arrow batch → one row (partition id, seq, pickled arrays)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    pid = ctx.partitionId() if ctx is not None else 0
    for seq, batch in enumerate(batches):
        indptr, indices = list_array_to_csr(batch.column(entry_col))
        mult = batch.column(multiplicity_col)
        if mult.null_count:
            raise ValueError("multiplicity contains nulls")
        mult = np.asarray(mult.to_numpy(zero_copy_only=False), dtype=np.int64)
        codes = {c: encode_margin(batch.column(c), levels[c])[0] for c in margin_cols}
        # validate exactly like the driver-side table (ids in range, sorted, distinct, m > 0)
        SignatureTable(indptr, indices, mult, n_entries, codes, {c: levels[c] for c in codes})
        payload = pickle.dumps((indptr, indices, mult, codes), protocol=pickle.HIGHEST_PROTOCOL)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array([pid], pa.int32()),
                pa.array([seq], pa.int32()),
                pa.array([payload], pa.binary()),
            ],
            names=["pid", "seq", "payload"],
        )


def _assemble_block(pid: int, rows: Iterable[Any], margin_cols: Sequence[str]) -> Iterator[Block]:
    """Concatenate a partition's chunks (in ``seq`` order) into one :class:`Block`."""
    parts = sorted(((r.seq, pickle.loads(r.payload)) for r in rows), key=lambda x: x[0])
    indptrs, indices, mults = [np.zeros(1, np.int64)], [np.zeros(0, np.int32)], []
    codes: dict[str, list[np.ndarray]] = {c: [] for c in margin_cols}
    offset = 0
    for _, (ip, ix, mu, cd) in parts:
        indptrs.append(ip[1:] + offset)
        offset += int(ip[-1])
        indices.append(ix)
        mults.append(mu)
        for c in margin_cols:
            codes[c].append(cd[c])
    yield Block(
        pid=pid,
        indptr=np.concatenate(indptrs).astype(np.int64),
        indices=np.concatenate(indices).astype(np.int32),
        mult=np.concatenate(mults).astype(np.float64) if mults else np.zeros(0),
        codes={
            c: (np.concatenate(v) if v else np.zeros(0, np.int32)).astype(np.int32)
            for c, v in codes.items()
        },
    )


# ---------------------------------------------------------------------------- combining
def _combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Combine two partials: keys ``max_*`` by maximum, ``min_*`` by minimum, ``pad_*`` by a
    zero-padded sum (vectors of different lengths), everything else by ``+``."""
    out: dict[str, Any] = {}
    for key, x in a.items():
        y = b[key]
        if key.startswith("max_"):
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


def _combine_group(kv: tuple[int, Iterable[tuple[int, dict[str, Any]]]]) -> tuple[int, Any]:
    group, members = kv
    ordered = sorted(members, key=lambda m: m[0])
    return group, functools.reduce(_combine, [d for _, d in ordered])


def _group_key(kv: tuple[int, Any], fan_in: int) -> tuple[int, tuple[int, Any]]:
    return kv[0] // fan_in, kv


def _identity(key: int) -> int:
    return key


def _reduce_partials(rdd: Any, fan_in: int) -> dict[str, Any]:
    """Deterministic tree sum of ``(pid, partial)`` pairs (see the module docstring)."""
    n = rdd.getNumPartitions()
    while n > fan_in:
        groups = -(-n // fan_in)
        rdd = (
            rdd.map(functools.partial(_group_key, fan_in=fan_in))
            .groupByKey(groups, partitionFunc=_identity)
            .map(_combine_group)
        )
        n = groups
    items = sorted(rdd.collect(), key=lambda kv: kv[0])
    return functools.reduce(_combine, [d for _, d in items])


def _run_kernel(
    blocks: Iterator[Block],
    *,
    kernel: Callable[..., dict[str, Any]],
    bcast: Mapping[str, Any],
    static: Mapping[str, Any],
) -> Iterator[tuple[int, dict[str, Any]]]:
    values = {k: b.value for k, b in bcast.items()}
    for block in blocks:
        yield block.pid, kernel(block, **values, **static)


# ---------------------------------------------------------------------------- kernels
def _eta(block: Block, lam: np.ndarray, view: View) -> np.ndarray:
    """η_r = Σ_{j∈S_r} λ_j (+ λ_m on empty rows with ``<unmatched>``) + Σ_cols λ_{off + x_r}."""
    eta = segment_sum(lam[block.indices], block.indptr)
    if view.keep_unmatched:
        eta[block.k == 0] = lam[view.uid]
    for col, off, _ in view.margins:
        eta += lam[off + block.codes[col]]
    return eta


def _live_mult(block: Block, view: View) -> np.ndarray:
    """m_r on the problem's rows (k'_r > 0), 0 elsewhere."""
    return block.mult if view.keep_unmatched else np.where(block.k > 0, block.mult, 0.0)


def _column_sums(block: Block, w: np.ndarray, view: View) -> np.ndarray:
    """Aᵀw over the problem's columns: entries by ``bincount``, then ``<unmatched>``, levels."""
    k = block.k
    out = np.bincount(block.indices, weights=np.repeat(w, k), minlength=view.n_columns)
    if view.keep_unmatched:
        out[view.uid] += float(w[k == 0].sum())
    for col, off, size in view.margins:
        out[off : off + size] += np.bincount(block.codes[col], weights=w, minlength=size)
    return out


def _k_facts(block: Block, *, n_entries: int, margin_cols: Sequence[str], levels: Mapping) -> dict:
    k = block.k
    m = block.mult
    matched = k > 0
    out = {
        "counts": np.bincount(block.indices, weights=np.repeat(m, k), minlength=n_entries),
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
) -> dict:
    eta = _eta(block, lam, view)
    m = _live_mult(block, view)
    pi = probs(eta, capped)
    mpi = m * pi
    out = {
        "n": _column_sums(block, mpi, view),
        "sum_phi": float(np.dot(m, phi(eta, capped))),
        "size": float(mpi.sum()),
    }
    if lam_ref is not None:
        out["dphi"] = float(np.dot(m, phi_diff(eta, _eta(block, lam_ref, view), capped)))
    return out


def _k_degree(block: Block, dead: np.ndarray, *, view: View, need_c_live: bool) -> dict:
    k = block.k
    live = (k > 0) | view.keep_unmatched
    D = (k + ((k == 0) & view.keep_unmatched) + len(view.margins)).astype(np.float64)
    dead_row = segment_sum(dead[block.indices].astype(np.float64), block.indptr) > 0
    if view.keep_unmatched:
        dead_row |= (k == 0) & bool(dead[view.uid])
    for col, off, _ in view.margins:
        dead_row |= dead[off + block.codes[col]]
    alive = live & ~dead_row
    Dn = np.where(alive, D, 0.0)
    C = np.zeros(view.n_columns)
    np.maximum.at(C, block.indices, np.repeat(Dn, k))
    if view.keep_unmatched:
        C[view.uid] = max(C[view.uid], float(Dn[k == 0].max(initial=0.0)))
    for col, off, _ in view.margins:
        np.maximum.at(C, off + block.codes[col], Dn)
    out = {"max_C": C}
    if need_c_live:
        out["c_live"] = _column_sums(block, np.where(alive, block.mult, 0.0), view)
    return out


def _k_positive(block: Block, y: np.ndarray, *, view: View) -> dict:
    return {"pos": float(np.dot(_live_mult(block, view), np.maximum(_eta(block, y, view), 0.0)))}


def _k_shifted_size(block: Block, lam: np.ndarray, *, nu: float, view: View) -> dict:
    eta = _eta(block, lam, view)
    return {"size": float(np.dot(_live_mult(block, view), np.exp(np.minimum(eta + nu, 0.0))))}


def _k_metaclip(block: Block, logq: np.ndarray, *, view: View) -> dict:
    k = block.k
    s = segment_sum(logq[block.indices], block.indptr)
    if view.keep_unmatched:
        s[k == 0] = logq[view.uid]
    pi = np.where((k > 0) | view.keep_unmatched, -np.expm1(s), 0.0)
    return {"size": float(np.dot(block.mult, pi))}


def _k_balance(
    block: Block,
    a: np.ndarray,
    b: Mapping[str, np.ndarray],
    *,
    n: float,
    view: View,
    entries: bool,
    levels: Sequence[str],
) -> dict:
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
        aa = segment_sum(a[block.indices], block.indptr)
        if view.keep_unmatched:
            aa[k == 0] = a[view.uid]
        for col in levels:
            out[f"x:{col}"] = np.bincount(block.codes[col], weights=wb * aa, minlength=b[col].size)
    return out


def _score(block: Block, params: ScoreParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = {c: block.codes[c] for c in params.margin_values}
    return score_rows(params, block.indptr, block.indices, codes)


def _k_score_sums(block: Block, params: ScoreParams) -> dict:
    raw, weight, pi = _score(block, params)
    m = block.mult
    k = block.k
    kw = (k + ((k == 0) & params.keep_unmatched)).astype(np.float64)
    pos = raw > 0
    return {
        "raw": float(np.dot(m, raw)),
        "pi": float(np.dot(m, pi)),
        "weight": float(np.dot(m, weight)),
        "k_pi": float(np.dot(m * kw, pi)),
        "positive": float(m[pos].sum()),
        "min_raw": float(raw[pos].min()) if pos.any() else float("inf"),
    }


def _k_prob_scale(block: Block, params: ScoreParams, *, lam: float, per_match: bool) -> dict:
    raw = _score(block, params)[0]
    w = block.mult
    if per_match:
        k = block.k
        w = w * (k + ((k == 0) & params.keep_unmatched))
    capped = lam * raw >= 1.0
    return {
        "M": float(w[capped & (raw > 0)].sum()),
        "W": float(np.dot(w[~capped], raw[~capped])),
        "pos": float(w[raw > 0].sum()),
    }


def _k_stats(block: Block, params: ScoreParams, *, mean: float, view: View) -> dict:
    _, weight, pi = _score(block, params)
    m = block.mult
    k = block.k
    elig = (k > 0) | view.keep_unmatched
    w, me = weight[elig], m[elig]
    hist, _ = np.histogram(pi[elig], bins=PI_BINS, range=(0.0, 1.0), weights=me)
    out = {
        "entry_sums": _column_sums(block, m * pi, view),
        "eligible": float(me.sum()),
        "weight_sum": float(np.dot(me, w)),
        "weight_sq_sum": float(np.dot(me, w * w)),
        "max_weight": float(w.max(initial=0.0)),
        "pi_hist": hist,
        "pi_one": float(me[pi[elig] >= 1.0].sum()),
        "size": float(np.dot(m, pi)),
    }
    for f in WEIGHT_FACTORS:
        out[f"above:{f}"] = float(me[w > f * mean].sum())
    return out


# ---------------------------------------------------------------------------- operators
class SparkOperator:
    """:class:`~.operators.TableOperator` over a Spark DataFrame of the signature table.

    Args:
        spark: the session.
        signatures: DataFrame with ``entry_ids`` (list<int32>, sorted distinct ids, null =
            empty), the margin columns, ``multiplicity`` (int64 > 0); e.g. the ``count`` stage's
            ``signatures/`` Parquet.
        n_entries: m, the number of metadata entries.
        margin_cols: margin columns to carry (their levels: sorted distinct values, null =
            ``"<null>"``, exactly as :meth:`SignatureTable.from_arrow`).
        num_partitions: blocks (default: a multiple of the default parallelism with about
            ``DEFAULT_ROWS_PER_PARTITION`` signatures each).
        fan_in: partials combined per group (see the module docstring).
    """

    is_distributed = True

    def __init__(
        self,
        spark: Any,
        signatures: Any,
        n_entries: int,
        margin_cols: Sequence[str] = (),
        *,
        num_partitions: int | None = None,
        entry_col: str = "entry_ids",
        multiplicity_col: str = "multiplicity",
        fan_in: int = DEFAULT_FAN_IN,
        storage_level: Any = None,
    ) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        t0 = time.perf_counter()
        self.spark = spark
        self.sc = spark.sparkContext
        self.n_entries = int(n_entries)
        self.margin_cols = tuple(margin_cols)
        self.fan_in = int(fan_in)
        self.passes = 0
        self.pass_seconds = 0.0
        for col in (entry_col, multiplicity_col, *self.margin_cols):
            if col not in signatures.columns:
                raise KeyError(f"signature table has no column {col!r}")
        df = signatures.select(
            F.col(entry_col).alias("entry_ids"),
            *[F.col(c).cast("string").alias(c) for c in self.margin_cols],
            F.col(multiplicity_col).cast("long").alias("multiplicity"),
        )
        levels: dict[str, list[str]] = {}
        for c in self.margin_cols:
            vals = df.select(F.coalesce(F.col(c), F.lit(NULL_LEVEL)).alias(c)).distinct()
            levels[c] = sorted(r[0] for r in vals.collect())
        self.margin_levels = levels
        if num_partitions is None:
            par = max(1, self.sc.defaultParallelism)
            rows = df.count()
            num_partitions = par * max(1, math.ceil(rows / (par * DEFAULT_ROWS_PER_PARTITION)))
        self.num_partitions = int(num_partitions)
        keys = ["entry_ids", *self.margin_cols, "multiplicity"]
        canonical = df.repartitionByRange(self.num_partitions, *keys).sortWithinPartitions(*keys)
        chunks = canonical.mapInArrow(
            functools.partial(
                _chunks_from_arrow,
                n_entries=self.n_entries,
                margin_cols=self.margin_cols,
                levels=levels,
                entry_col="entry_ids",
                multiplicity_col="multiplicity",
            ),
            "pid int, seq int, payload binary",
        )
        cols = self.margin_cols
        self.blocks = chunks.rdd.mapPartitionsWithIndex(
            lambda pid, rows: _assemble_block(pid, rows, cols)
        ).persist(storage_level or StorageLevel.MEMORY_AND_DISK)
        facts = self.run(
            _k_facts,
            static={"n_entries": self.n_entries, "margin_cols": cols, "levels": levels},
        )
        self.counts = np.rint(facts["counts"]).astype(np.int64)
        self.n_samples = int(round(facts["n_samples"]))
        self.n_matched = int(round(facts["n_matched"]))
        self.n_signatures = int(round(facts["n_signatures"]))
        self.nnz = int(round(facts["nnz"]))
        self.unmatched = self.n_samples - self.n_matched
        kh = facts["pad_k_hist"]
        self.k_histogram = {int(i): int(round(v)) for i, v in enumerate(kh) if v > 0}
        self.level_counts_all = {c: facts[f"levels_all:{c}"] for c in cols}
        self.level_counts_matched = {c: facts[f"levels_matched:{c}"] for c in cols}
        self._work: dict[bool, SparkWork] = {}
        self.build_seconds = time.perf_counter() - t0

    # -------------------------------------------------------------- plumbing
    def run(
        self,
        kernel: Callable[..., dict[str, Any]],
        *,
        bcast: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One pass: broadcast ``bcast``, run ``kernel(block, **bcast, **static)`` on every block,
        combine the partials deterministically, destroy the broadcasts."""
        t0 = time.perf_counter()
        handles = {k: self.sc.broadcast(v) for k, v in (bcast or {}).items()}
        try:
            partials = self.blocks.mapPartitions(
                functools.partial(_run_kernel, kernel=kernel, bcast=handles, static=static or {})
            )
            out = _reduce_partials(partials, self.fan_in)
        finally:
            for h in handles.values():
                h.destroy()
        self.passes += 1
        self.pass_seconds += time.perf_counter() - t0
        return out

    def unpersist(self) -> None:
        """Drop the cached blocks."""
        self.blocks.unpersist()

    def __enter__(self) -> SparkOperator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unpersist()

    def execution_info(self) -> dict[str, Any]:
        """Facts about the execution (path, partitions, passes, seconds) for ``info``."""
        return {
            "path": "spark",
            "partitions": self.num_partitions,
            "signatures": self.n_signatures,
            "nnz": self.nnz,
            "passes": self.passes,
            "pass_seconds": self.pass_seconds,
            "seconds_per_pass": self.pass_seconds / max(self.passes, 1),
            "build_seconds": self.build_seconds,
        }

    # -------------------------------------------------------------- TableOperator
    def work(self, keep_unmatched: bool) -> SparkWork:
        if keep_unmatched not in self._work:
            self._work[keep_unmatched] = SparkWork(self, keep_unmatched)
        return self._work[keep_unmatched]

    def _view(self, keep_unmatched: bool) -> View:
        q = self.n_entries + (1 if keep_unmatched else 0)
        return View(keep_unmatched, self.n_entries, q)

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
        """Exact λ by Newton's method on f(λ) = Σ_r w_r min(1, λ raw_r) (concave, piecewise
        linear): from λ_0 = 0, λ_{k+1} = (N − M(λ_k)) / W(λ_k) with M = Σ w over capped rows
        (λ raw ≥ 1) and W = Σ w raw over the others. The tangent lies above f, so λ_k increases
        to the root and stops once the capped set is stable; the result is the closed form of
        :func:`~.target_size.solve_prob_scale` for the same capped set."""
        if n_target <= 0:
            raise TargetSizeError("target size must be positive")
        lam = 0.0
        for _ in range(200):
            r = self.run(
                _k_prob_scale, bcast={"params": params}, static={"lam": lam, "per_match": per_match}
            )
            if n_target > r["pos"] * (1 + 1e-12):
                raise TargetSizeError(
                    f"target size {n_target:g} exceeds the {r['pos']:g} samples with positive "
                    "weight; use sampling with replacement"
                )
            if r["W"] <= 0:
                break
            new = (n_target - r["M"]) / r["W"]
            if not new > lam:
                break
            lam = new
        return float(lam)

    def aggregate_stats(self, params: ScoreParams) -> AggregateStats:
        ku = params.keep_unmatched
        work = self.work(ku)
        mean = self.score_sums(params).weight / work.n_eligible if work.n_eligible > 0 else 0.0
        r = self.run(
            _k_stats, bcast={"params": params}, static={"mean": mean, "view": self._view(ku)}
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

    def row_scores(self, params: ScoreParams) -> None:
        """Per-signature outputs stay on Spark: score the pool with ``score_arrow`` instead."""
        return None


class SparkWork:
    """:class:`~.operators.WorkOperator` view of a :class:`SparkOperator`."""

    is_distributed = True

    def __init__(self, op: SparkOperator, keep_unmatched: bool) -> None:
        self.op = op
        self.keep_unmatched = keep_unmatched
        self.view = op._view(keep_unmatched)
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
            bcast={"a": np.asarray(a, dtype=np.float64), "b": {c: v.copy() for c, v in b.items()}},
            static={
                "n": self.n_eligible,
                "view": self.view,
                "entries": entries,
                "levels": tuple(levels),
            },
        )
        return (r["y"] if entries else None), {c: r[f"x:{c}"] for c in levels}

    def rake_problem(self, margins: Sequence[str] = ()) -> SparkRakeProblem:
        return SparkRakeProblem(self, tuple(margins))


class SparkRakeProblem:
    """:class:`~.operators.RakeOperator` on Spark: rows with k'_r > 0, columns = entries (with
    ``<unmatched>``) then the levels of ``margins``; every method is one pass."""

    is_distributed = True

    def __init__(self, work: SparkWork, margins: tuple[str, ...]) -> None:
        op = work.op
        self.op = op
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

    def degree_facts(
        self, dead_cols: np.ndarray, *, need_c_live: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        r = self.op.run(
            _k_degree,
            bcast={"dead": np.asarray(dead_cols, dtype=bool)},
            static={"view": self.view, "need_c_live": need_c_live},
        )
        return r["max_C"], r.get("c_live")

    def point(
        self, lam: np.ndarray, *, capped: bool = True, ref: DualPoint | None = None
    ) -> DualPoint:
        bc = {"lam": np.asarray(lam, dtype=np.float64)}
        static: dict[str, Any] = {"capped": capped, "view": self.view}
        if ref is None:
            static["lam_ref"] = None
        else:
            bc["lam_ref"] = np.asarray(ref.lam, dtype=np.float64)
        r = self.op.run(_k_point, bcast=bc, static=static)
        return DualPoint(lam, n=r["n"], sum_phi=r["sum_phi"], size=r["size"], dphi=r.get("dphi"))

    def positive_part(self, y: np.ndarray) -> float:
        r = self.op.run(
            _k_positive, bcast={"y": np.asarray(y, dtype=np.float64)}, static={"view": self.view}
        )
        return r["pos"]

    def size_function(self, lam: np.ndarray) -> Callable[[float], float]:
        lam = np.asarray(lam, dtype=np.float64).copy()

        def size(nu: float) -> float:
            r = self.op.run(
                _k_shifted_size, bcast={"lam": lam}, static={"nu": float(nu), "view": self.view}
            )
            return r["size"]

        return size
