"""Balancing math: metaclip, balance, rake — on the driver (NumPy/SciPy) or on Spark.

See ``docs/balancing.md`` for the formulas, the parameter vectors that Spark broadcasts, the two
executions of the same solvers (:mod:`.operators`, :mod:`.spark_operator`, :mod:`.distributed`),
and the choices made where the spec left them open. Importing this package does not import
PySpark; :func:`run_method_spark` / :func:`run_method_auto` do when called.
"""

from __future__ import annotations

from typing import Any

# Names imported ``as`` themselves are not in the public API (reach them through their modules);
# they stay importable from here for the callers that already do.
from .diagnostics import diagnostics
from .distributed import choose_execution as choose_execution
from .distributed import run_method_auto, run_method_on, run_method_spark
from .dual_solver import solve_box_dual as solve_box_dual
from .metaclip import cap_from_tail_share as cap_from_tail_share
from .metaclip import metaclip
from .metaclip import metaclip_probs as metaclip_probs
from .metaclip import tail_share as tail_share
from .operators import LocalOperator
from .pair_balance import balance
from .params import METHODS, BalanceResult, ScoreParams, expected_repeats, score_batch
from .params import segment_sum as segment_sum
from .rake import build_problem as build_problem
from .rake import rake
from .scoring import score_arrow
from .signatures import SignatureTable
from .target_size import TargetSizeError
from .target_size import solve_prob_scale as solve_prob_scale

# The public API: build a signature table, solve a method, score rows, read the diagnostics.
# The solvers' parts (dual solver, problem builder, operators, target-size search, ...) are
# reached through their own modules.
__all__ = [
    "METHODS",
    "BalanceResult",
    "ScoreParams",
    "SignatureTable",
    "TargetSizeError",
    "balance",
    "diagnostics",
    "expected_repeats",
    "metaclip",
    "rake",
    "run_method",
    "run_method_auto",
    "run_method_spark",
    "score_arrow",
    "score_batch",
]


def run_method(table: SignatureTable, method: str, **kwargs: Any) -> BalanceResult:
    """Dispatch to :func:`metaclip`, :func:`balance` or :func:`rake` by name (driver path)."""
    return run_method_on(LocalOperator(table), method, **kwargs)
