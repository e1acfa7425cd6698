"""The balancing operators on Spark: the signature table as cached NumPy blocks on executors.

:class:`SparkOperator` is a :class:`~.blocks.BlockOperator` whose blocks live on Spark: the
solvers (:mod:`.rake`, :mod:`.metaclip`, :mod:`.pair_balance`) run unchanged on the driver, and
every data-touching primitive is one Spark job ("pass"):

1. the driver broadcasts the parameter vectors (``sc.broadcast`` of float64 arrays — λ over
   500k entries is 4 MB — destroyed after the pass);
2. each partition runs the kernel of :mod:`.blocks` on its cached block: η_r from λ by a CSR
   matvec, π_r, φ(η_r), …, and its partial per-column sums n_j = Σ_{r∋j} m_r π_r as exact
   binned sums (``Aᵀ`` applied to the integer digits of m ⊙ π; integer sums are exact);
3. the partials (one small dict per partition: K×q bins and scalars) are merged: collected when
   there are at most ``fan_in`` partitions, else first merged in groups of ``fan_in``
   consecutive partitions on the executors (a shuffle of the partials only, never of the data).

Because every sum is exact-binned (:class:`~.blocks.Binned`) and every row quantity uses
fixed-order arithmetic, the result is bit for bit the same for any partitioning, any order of
the rows, any rerun, and equal to :class:`~.blocks.MemoryBlockOperator` on the driver. No
canonical sort of the table is needed for that (it would cost a shuffle of the whole table).

**Choice (caching):** a persisted RDD of pickled NumPy blocks (``MEMORY_AND_DISK``), built once
from Arrow batches (``mapInArrow``: each batch → CSR arrays, validated like
:class:`~.signatures.SignatureTable`; the batches of a partition are concatenated into one
:class:`~.blocks.Block`), not a cache in a module global of the Python workers. A worker-side
cache would save the unpickling (~GB/s) per pass, but which worker runs partition p in the next
pass is not fixed (with ``local[2]`` and worker reuse each worker would end up holding every
block: twice the memory), workers can be restarted at any time, and a miss needs the persisted
data anyway. The RDD is managed by the block manager (spills to disk, recomputed from its
lineage if an executor is lost, which cannot change the result), and the partition → block
mapping never changes between passes. Call :meth:`SparkOperator.unpersist` (or use the operator
as a context manager) when done.
"""

from __future__ import annotations

import functools
import math
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .blocks import Block, BlockOperator, _k_facts, combine, finalize
from .signatures import NULL_LEVEL, SignatureTable, encode_margin, list_array_to_csr

#: Signatures per partition aimed at when ``num_partitions`` is not given and the input has
#: fewer partitions than the default parallelism.
DEFAULT_ROWS_PER_PARTITION = 1_000_000
#: Partials merged per group before they reach the driver.
DEFAULT_FAN_IN = 8


def _chunks_from_arrow(
    batches: Iterable[pa.RecordBatch],
    *,
    n_entries: int,
    margin_cols: Sequence[str],
    levels: Mapping[str, list[str]],
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: each Arrow batch → one row (seq, pickled CSR arrays and codes)."""
    for seq, batch in enumerate(batches):
        indptr, indices = list_array_to_csr(batch.column("entry_ids"))
        mult = batch.column("multiplicity")
        if mult.null_count:
            raise ValueError("multiplicity contains nulls")
        mult = np.asarray(mult.to_numpy(zero_copy_only=False), dtype=np.int64)
        codes = {c: encode_margin(batch.column(c), levels[c])[0] for c in margin_cols}
        # validate exactly like the driver-side table (ids in range, sorted, distinct, m > 0)
        SignatureTable(indptr, indices, mult, n_entries, codes, {c: levels[c] for c in codes})
        payload = pickle.dumps((indptr, indices, mult, codes), protocol=pickle.HIGHEST_PROTOCOL)
        yield pa.RecordBatch.from_arrays(
            [pa.array([seq], pa.int32()), pa.array([payload], pa.binary())],
            names=["seq", "payload"],
        )


def _assemble_block(
    pid: int, rows: Iterable[Any], margin_cols: Sequence[str], n_entries: int
) -> Iterator[Block]:
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
        n_entries=n_entries,
    )


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


def _merge_group(kv: tuple[int, Iterable[tuple[int, dict[str, Any]]]]) -> tuple[int, Any]:
    group, members = kv
    ordered = sorted(members, key=lambda m: m[0])
    return group, functools.reduce(combine, [d for _, d in ordered])


def _group_key(kv: tuple[int, Any], fan_in: int) -> tuple[int, tuple[int, Any]]:
    return kv[0] // fan_in, kv


def _identity(key: int) -> int:
    return key


def reduce_partials(rdd: Any, fan_in: int = DEFAULT_FAN_IN) -> dict[str, Any]:
    """Merge ``(pid, partial)`` pairs: groups of ``fan_in`` consecutive partitions on the
    executors while there are more than ``fan_in``, then on the driver in pid order."""
    n = rdd.getNumPartitions()
    while n > fan_in:
        groups = -(-n // fan_in)
        rdd = (
            rdd.map(functools.partial(_group_key, fan_in=fan_in))
            .groupByKey(groups, partitionFunc=_identity)
            .map(_merge_group)
        )
        n = groups
    items = sorted(rdd.collect(), key=lambda kv: kv[0])
    return functools.reduce(combine, [d for _, d in items])


class SparkOperator(BlockOperator):
    """The operators of :mod:`.operators` over a Spark DataFrame of the signature table.

    Args:
        spark: the session.
        signatures: DataFrame with ``entry_ids`` (list<int32>, sorted distinct ids, null =
            empty), the margin columns, ``multiplicity`` (int64 > 0), e.g. the ``count``
            stage's ``signatures/`` Parquet. Rows need not be distinct (they add up).
        n_entries: m, the number of metadata entries.
        margin_cols: margin columns to carry (levels: sorted distinct string values, null →
            ``"<null>"``, exactly as :meth:`SignatureTable.from_arrow`).
        num_partitions: blocks; default: the input's partitioning, or, when it has fewer
            partitions than the default parallelism, a repartition to a multiple of it with about
            ``DEFAULT_ROWS_PER_PARTITION`` signatures each. Results do not depend on it.
        fan_in: partials merged per group (see :func:`reduce_partials`).
        storage_level: of the cached blocks (default ``MEMORY_AND_DISK``).
    """

    is_distributed = True
    path = "spark"

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
        self.fan_in = int(fan_in)
        self.passes = 0
        self.pass_seconds = 0.0
        margin_cols = tuple(margin_cols)
        for col in (entry_col, multiplicity_col, *margin_cols):
            if col not in signatures.columns:
                raise KeyError(f"signature table has no column {col!r}")
        df = signatures.select(
            F.col(entry_col).alias("entry_ids"),
            *[F.col(c).cast("string").alias(c) for c in margin_cols],
            F.col(multiplicity_col).cast("long").alias("multiplicity"),
        )
        levels: dict[str, list[str]] = {}
        for c in margin_cols:
            vals = df.select(F.coalesce(F.col(c), F.lit(NULL_LEVEL)).alias(c)).distinct()
            levels[c] = sorted(r[0] for r in vals.collect())
        par = max(1, self.sc.defaultParallelism)
        if num_partitions is None and df.rdd.getNumPartitions() < par:
            rows = df.count()
            num_partitions = par * max(1, math.ceil(rows / (par * DEFAULT_ROWS_PER_PARTITION)))
        if num_partitions is not None and num_partitions != df.rdd.getNumPartitions():
            df = df.repartition(int(num_partitions))
        chunks = df.mapInArrow(
            functools.partial(
                _chunks_from_arrow, n_entries=int(n_entries), margin_cols=margin_cols, levels=levels
            ),
            "seq int, payload binary",
        )
        m = int(n_entries)
        self.blocks = chunks.rdd.mapPartitionsWithIndex(
            lambda pid, rows: _assemble_block(pid, rows, margin_cols, m)
        ).persist(storage_level or StorageLevel.MEMORY_AND_DISK)
        self.num_partitions = self.blocks.getNumPartitions()
        facts = self.run(_k_facts, static={"margin_cols": margin_cols, "levels": levels})
        self._init_facts(facts, n_entries, levels)
        self.build_seconds = time.perf_counter() - t0

    def run_partials(
        self,
        kernel: Callable[..., dict[str, Any]],
        bcast: Mapping[str, Any],
        static: Mapping[str, Any],
    ) -> dict[str, Any]:
        """One Spark job: broadcast ``bcast``, run the kernel on every cached block, merge the
        partials (:func:`reduce_partials`), destroy the broadcasts."""
        handles = {k: self.sc.broadcast(v) for k, v in bcast.items()}
        try:
            partials = self.blocks.mapPartitions(
                functools.partial(_run_kernel, kernel=kernel, bcast=handles, static=static)
            )
            return reduce_partials(partials, self.fan_in)
        finally:
            for h in handles.values():
                h.destroy()

    def unpersist(self) -> None:
        """Drop the cached blocks."""
        self.blocks.unpersist()

    def __enter__(self) -> SparkOperator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unpersist()


__all__ = ["SparkOperator", "finalize", "reduce_partials"]
