"""Running a method on the driver or on Spark, and choosing between the two by size.

All executions run the same solver code (:mod:`.rake`, :mod:`.metaclip`, :mod:`.pair_balance`)
against an operator (:mod:`.operators`):

* :class:`~.operators.LocalOperator` — the table on the driver, SciPy sums (``run_method``: the
  original driver results, bit for bit);
* :class:`~.blocks.MemoryBlockOperator` — the table on the driver, reproducible (exact-binned)
  sums: bit for bit the results of
* :class:`~.spark_operator.SparkOperator` — the table left on Spark, for any partitioning.

Entry points: :func:`run_method_on` (any operator; a result without per-signature arrays carries
``stats`` and ``info["execution"]``), :func:`run_method_spark` (from a Spark DataFrame of the
signature table), :func:`choose_execution` / :func:`run_method_auto` (driver when the table is
small enough — ``nnz ≤ max_driver_nnz`` and ``s ≤ max_driver_signatures`` — else Spark; both
branches reproducible, so the choice does not change the result).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from .blocks import MemoryBlockOperator
from .metaclip import metaclip_on
from .operators import TableOperator
from .pair_balance import balance_on
from .params import METHODS, BalanceResult
from .rake import rake_on
from .reference import metaclip_reference
from .signatures import SignatureTable

#: Largest number of (signature, entry) incidences solved on the driver by default. The driver
#: path holds about 40 bytes per incidence and 100 per signature at its peak (CSR matrix with
#: margins, per-row vectors), so 50M incidences stay within a few GB.
DEFAULT_MAX_DRIVER_NNZ = 50_000_000
#: Largest number of distinct signatures solved on the driver by default.
DEFAULT_MAX_DRIVER_SIGNATURES = 20_000_000

Execution = Literal["driver", "spark"]


def choose_execution(
    n_signatures: int,
    nnz: int,
    threshold: int = DEFAULT_MAX_DRIVER_NNZ,
    *,
    max_signatures: int = DEFAULT_MAX_DRIVER_SIGNATURES,
) -> Execution:
    """``"driver"`` when nnz ≤ ``threshold`` and n_signatures ≤ ``max_signatures``, else
    ``"spark"``."""
    return "driver" if nnz <= threshold and n_signatures <= max_signatures else "spark"


def run_method_on(
    operator: TableOperator,
    method: str,
    *,
    stats: bool | None = None,
    reference: bool = False,
    **kwargs: Any,
) -> BalanceResult:
    """Run ``method`` (``metaclip``, ``balance`` or ``rake``; keyword arguments as for the
    driver-side functions) on any table operator.

    ``stats`` (default: when the result has no per-signature arrays, i.e. on Spark): also set
    ``result.stats`` (for :func:`~.diagnostics.diagnostics` with ``table=None``; two more
    passes) and ``info["execution"]`` (path, partitions, passes, seconds per pass).
    ``reference``: also score the result against MetaCLIP's rule at the same expected size
    (``info["vs_metaclip"]``, :func:`~.reference.metaclip_reference`)."""
    fns = {"metaclip": metaclip_on, "balance": balance_on, "rake": rake_on}
    if method not in fns:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    result = fns[method](operator, **kwargs)
    if stats or (stats is None and result.pi is None):
        result.stats = operator.aggregate_stats(result.params)
        if hasattr(operator, "execution_info"):
            result.info["execution"] = operator.execution_info()
    if reference:
        result.info["vs_metaclip"] = metaclip_reference(operator, result)
    return result


def _margins_needed(margin_cols: Sequence[str], kwargs: dict[str, Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*margin_cols, *kwargs.get("margins", ())]))


def run_method_spark(
    spark: Any,
    signatures_df: Any,
    n_entries: int,
    method: str,
    margin_cols: Sequence[str] = (),
    *,
    num_partitions: int | None = None,
    **kwargs: Any,
) -> BalanceResult:
    """Run ``method`` on a signature table that stays on Spark (see :class:`SparkOperator`).

    ``signatures_df``: ``entry_ids`` list<int32>, the margin columns, ``multiplicity`` int64
    (the ``count`` stage's ``signatures/``). ``margin_cols``: margin columns to load (the
    method's ``margins`` are added). The cached blocks are dropped before returning.
    Returns a :class:`BalanceResult` with ``weight = pi = None`` and ``stats`` set.
    """
    from .spark_operator import SparkOperator

    with SparkOperator(
        spark,
        signatures_df,
        n_entries,
        _margins_needed(margin_cols, kwargs),
        num_partitions=num_partitions,
    ) as op:
        return run_method_on(op, method, **kwargs)


def signature_table_size(signatures_df: Any, entry_col: str = "entry_ids") -> tuple[int, int]:
    """(number of signatures, nnz = Σ |entry_ids|) of a Spark signature table (one job)."""
    from pyspark.sql import functions as F

    row = signatures_df.agg(
        F.count(F.lit(1)).alias("s"),
        F.coalesce(F.sum(F.coalesce(F.size(entry_col), F.lit(0))), F.lit(0)).alias("nnz"),
    ).first()
    return int(row["s"]), int(row["nnz"])


def run_method_auto(
    spark: Any,
    signatures_df: Any,
    n_entries: int,
    method: str,
    margin_cols: Sequence[str] = (),
    *,
    max_driver_nnz: int = DEFAULT_MAX_DRIVER_NNZ,
    max_driver_signatures: int = DEFAULT_MAX_DRIVER_SIGNATURES,
    num_partitions: int | None = None,
    **kwargs: Any,
) -> BalanceResult:
    """Run ``method`` on the driver or on Spark, chosen by :func:`choose_execution`.

    The driver path collects the table (``toArrow``) and runs the same reproducible kernels as
    Spark on it (:class:`~.blocks.MemoryBlockOperator`), so both paths give the same bits; its
    result also carries per-signature ``weight``/``pi`` (in the row order of ``toArrow``). Both
    paths set ``result.stats`` (so ``diagnostics(None, result)`` works either way) and
    ``info["execution"]`` (``path``: ``"driver-reproducible"`` or ``"spark"``).
    """
    n_sig, nnz = signature_table_size(signatures_df)
    path = choose_execution(n_sig, nnz, max_driver_nnz, max_signatures=max_driver_signatures)
    if path == "spark":
        return run_method_spark(
            spark,
            signatures_df,
            n_entries,
            method,
            margin_cols,
            num_partitions=num_partitions,
            **kwargs,
        )
    t0 = time.perf_counter()
    cols = _margins_needed(margin_cols, kwargs)
    arrow = signatures_df.select("entry_ids", *cols, "multiplicity").toArrow()
    table = SignatureTable.from_arrow(arrow, n_entries, cols)
    result = run_method_on(MemoryBlockOperator(table), method, stats=True, **kwargs)
    result.info["execution"]["seconds"] = time.perf_counter() - t0
    return result
