"""Balancing math: metaclip, balance, rake — on the driver (NumPy/SciPy) or on Spark.

See ``docs/balancing.md`` for the formulas, the parameter vectors that Spark broadcasts, the two
executions of the same solvers (:mod:`.operators`, :mod:`.spark_operator`, :mod:`.distributed`),
and the choices made where the spec left them open. Importing this package does not import
PySpark; :func:`run_method_spark` / :func:`run_method_auto` do when called.
"""

from __future__ import annotations

from typing import Any

from .blocks import BlockOperator, MemoryBlockOperator
from .diagnostics import diagnostics, diagnostics_from_stats
from .distributed import (
    DEFAULT_MAX_DRIVER_NNZ,
    choose_execution,
    run_method_auto,
    run_method_on,
    run_method_spark,
)
from .dual_solver import QuasiNewtonMemory, RakeSolution, solve_box_dual
from .metaclip import (
    cap_from_tail_share,
    metaclip,
    metaclip_on,
    metaclip_probs,
    solve_cap_for_size,
    tail_share,
)
from .operators import AggregateStats, LocalOperator, ScoreSums
from .pair_balance import balance, balance_factors, balance_on
from .params import (
    METHODS,
    BalanceResult,
    ScoreParams,
    expected_repeats,
    raw_scores,
    score_arrow,
    score_batch,
    segment_sum,
)
from .rake import OBJECTIVES, build_problem, rake, rake_on
from .signatures import SignatureTable, encode_margin, list_array_to_csr
from .spark_operator import SparkOperator
from .target_size import TargetSizeError, expected_size, solve_monotone, solve_prob_scale
from .targets import EntryTarget, capped_targets, entry_target_distribution

__all__ = [
    "DEFAULT_MAX_DRIVER_NNZ",
    "METHODS",
    "OBJECTIVES",
    "AggregateStats",
    "BalanceResult",
    "BlockOperator",
    "EntryTarget",
    "LocalOperator",
    "MemoryBlockOperator",
    "QuasiNewtonMemory",
    "RakeSolution",
    "ScoreParams",
    "ScoreSums",
    "SignatureTable",
    "SparkOperator",
    "TargetSizeError",
    "balance",
    "balance_factors",
    "balance_on",
    "build_problem",
    "cap_from_tail_share",
    "capped_targets",
    "choose_execution",
    "diagnostics",
    "diagnostics_from_stats",
    "encode_margin",
    "entry_target_distribution",
    "expected_repeats",
    "expected_size",
    "list_array_to_csr",
    "metaclip",
    "metaclip_on",
    "metaclip_probs",
    "rake",
    "rake_on",
    "raw_scores",
    "run_method",
    "run_method_auto",
    "run_method_on",
    "run_method_spark",
    "score_arrow",
    "score_batch",
    "segment_sum",
    "solve_box_dual",
    "solve_cap_for_size",
    "solve_monotone",
    "solve_prob_scale",
    "tail_share",
]


def run_method(table: SignatureTable, method: str, **kwargs: Any) -> BalanceResult:
    """Dispatch to :func:`metaclip`, :func:`balance` or :func:`rake` by name (driver path)."""
    return run_method_on(LocalOperator(table), method, **kwargs)
