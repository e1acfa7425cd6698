"""The M4 table on Spark: cached NumPy blocks, one Spark job per pass (thin glue over
:func:`.m4.m4_pass_kernel`; see :mod:`.spark_operator` for the design it follows).

Every sum of a pass is an exact binned sum merged in partition order, so a solve on Spark is
bit for bit the solve on the driver (:class:`.m4.MemoryMomentOperator`) for any partitioning.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from .blocks import finalize
from .joint import JointBlock, joint_block_from_arrow, joint_pass_kernel
from .m4 import MomentBlock, MomentLayout, block_from_arrow, m4_pass_kernel
from .params import ScoreParams
from .spark_operator import DEFAULT_FAN_IN, reduce_partials


def _chunks(
    batches: Iterable[pa.RecordBatch],
    layout: MomentLayout,
    utility_col: str | None,
    base: ScoreParams | None = None,
) -> Iterator[pa.RecordBatch]:
    for seq, batch in enumerate(batches):
        block = block_from_arrow(batch, layout, utility_col, base=base)
        yield pa.RecordBatch.from_arrays(
            [pa.array([seq], pa.int32()), pa.array([pickle.dumps(block)], pa.binary())],
            names=["seq", "payload"],
        )


def _assemble(pid: int, rows: Iterable[Any], n_base: int) -> Iterator[Any]:
    parts = [pickle.loads(r.payload) for r in sorted(rows, key=lambda r: r.seq)]
    if parts and isinstance(parts[0], JointBlock):
        yield JointBlock.concat(pid, parts)
        return
    indptr, offset = [np.zeros(1, np.int64)], 0
    for p in parts:
        indptr.append(p.indptr[1:] + offset)
        offset += int(p.indptr[-1])

    def cat(name: str, dtype: Any) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

    yield MomentBlock(
        pid,
        cat("mult", np.float64),
        cat("utility", np.float64),
        np.concatenate(indptr),
        cat("cols", np.int32),
        n_base,
    )


def _run(blocks: Iterator[MomentBlock], mu: Any, nu: float) -> Iterator[tuple[int, dict]]:
    values = None if mu is None else mu.value
    for block in blocks:
        yield block.pid, m4_pass_kernel(block, values, nu)


class SparkMomentOperator:
    """:class:`.m4.MemoryMomentOperator` over a DataFrame with ``attribute_groups``,
    ``attribute_labels``, ``multiplicity`` (and the utility column)."""

    path = "spark"

    def __init__(
        self,
        spark: Any,
        frame: Any,
        layout: MomentLayout,
        utility_col: str | None = None,
        *,
        num_partitions: int | None = None,
        fan_in: int = DEFAULT_FAN_IN,
        base: ScoreParams | None = None,
    ) -> None:
        chunk = functools.partial(_chunks, layout=layout, utility_col=utility_col, base=base)
        self._cache_blocks(spark, frame, chunk, layout.size, num_partitions, fan_in)

    def _cache_blocks(
        self,
        spark: Any,
        frame: Any,
        chunk: Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]],
        n_base: int,
        num_partitions: int | None,
        fan_in: int,
    ) -> None:
        """The frame's rows as pickled blocks (``chunk`` builds them per Arrow batch), assembled
        per partition and persisted: every pass reads these, never the frame again."""
        from pyspark import StorageLevel

        self.sc = spark.sparkContext
        self.fan_in = fan_in
        self.passes = 0
        if num_partitions:
            frame = frame.repartition(int(num_partitions))
        chunks = frame.mapInArrow(chunk, "seq int, payload binary")
        self.blocks = chunks.rdd.mapPartitionsWithIndex(
            lambda pid, rows: _assemble(pid, rows, n_base)
        ).persist(StorageLevel.MEMORY_AND_DISK)
        self.num_partitions = self.blocks.getNumPartitions()

    def _pass(self, value: Any, kernel: Callable[..., Iterator[tuple[int, dict]]]) -> dict:
        """One pass: ``value`` broadcast (None: none), ``kernel(blocks, handle)`` per partition,
        the partials merged in partition order."""
        self.passes += 1
        handle = None if value is None else self.sc.broadcast(value)
        try:
            parts = self.blocks.mapPartitions(lambda blocks: kernel(blocks, handle))
            return finalize(reduce_partials(parts, self.fan_in))
        finally:
            if handle is not None:
                handle.destroy()

    def run(self, mu: np.ndarray | None, nu: float) -> dict[str, Any]:
        value = None if mu is None else np.asarray(mu, np.float64)
        return self._pass(value, functools.partial(_run, nu=float(nu)))

    def unpersist(self) -> None:
        self.blocks.unpersist()


def _joint_chunks(
    batches: Iterable[pa.RecordBatch], layout: MomentLayout, base: ScoreParams
) -> Iterator[pa.RecordBatch]:
    for seq, batch in enumerate(batches):
        block = joint_block_from_arrow(batch, layout, base)
        yield pa.RecordBatch.from_arrays(
            [pa.array([seq], pa.int32()), pa.array([pickle.dumps(block)], pa.binary())],
            names=["seq", "payload"],
        )


def _run_joint(blocks: Iterator[JointBlock], params: Any) -> Iterator[tuple[int, dict]]:
    lam, nu, mu = (None, 0.0, None) if params is None else params.value
    for block in blocks:
        yield block.pid, joint_pass_kernel(block, lam, nu, mu)


class SparkJointOperator(SparkMomentOperator):
    """:class:`.joint.MemoryJointOperator` on Spark: the joint problem's rows (rake's columns and
    the base features) as cached blocks, one job per pass, partials merged in partition order."""

    def __init__(
        self,
        spark: Any,
        frame: Any,
        layout: MomentLayout,
        base: ScoreParams,
        *,
        num_partitions: int | None = None,
        fan_in: int = DEFAULT_FAN_IN,
    ) -> None:
        chunk = functools.partial(_joint_chunks, layout=layout, base=base)
        self._cache_blocks(spark, frame, chunk, layout.size, num_partitions, fan_in)

    def run(
        self, lam: np.ndarray | None, nu: float = 0.0, mu: np.ndarray | None = None
    ) -> dict[str, Any]:
        value = None if lam is None else (np.asarray(lam), float(nu), np.asarray(mu))
        return self._pass(value, _run_joint)
