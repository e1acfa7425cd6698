"""A sequence of raking solves of one problem for varying targets, each warm-started.

The cap search of ``rake`` solves the same box dual (:mod:`.dual_solver`) for the targets
τ(t) = min(c, t) at several caps t. The Hessian of the dual does not depend on τ, so the quasi-Newton
memory of one solve is exact for the next, and the nearest earlier solution (in log t) is a good
start. The fixed ("kept") columns, held at :data:`~.dual_solver.KEEP_LOG`, are the same in every
solve; what their rows bring to each column, b_j, takes one pass, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dual_solver import QuasiNewtonMemory, RakeSolution, solve_box_dual
from .kernels import ZERO_LOG
from .operators import RakeOperator

__all__ = ["WarmSolver"]


class WarmSolver:
    """Solves one raking problem for varying targets, warm-starting each solve from the nearest
    earlier one and keeping the quasi-Newton memory across them; records every solve."""

    def __init__(
        self,
        prob: RakeOperator,
        free: np.ndarray,
        lam_fixed: np.ndarray,
        counts: np.ndarray,
        **solve_kw: Any,
    ) -> None:
        self.prob = prob
        self.free = free
        self.lam_fixed = lam_fixed
        self.counts = counts
        self.solve_kw = solve_kw
        self.memory: QuasiNewtonMemory | None = None
        self.solved: dict[float, RakeSolution] = {}
        self.log: list[dict[str, Any]] = []
        self.passes = 0
        self._base: np.ndarray | None = None
        self.kept_size = 0.0

    def solve(self, key: float, tau: np.ndarray, **overrides: Any) -> RakeSolution:
        start = None
        if self.solved:
            near = min(self.solved, key=lambda x: abs(np.log(x / key)))
            lam0 = self.solved[near].lam.copy()
            start = self.solved[near].point  # its pass, reused when λ is unchanged
        else:
            lam0 = self._cold_start(tau)
        # A column that the fixed rows alone already bring to its target has ∂F/∂λ_j =
        # n_j − τ_j ≥ b_j − τ_j ≥ 0 for every λ: its optimum is the lower bound −B (its free rows
        # are dropped). Starting it there saves the solver from finding out.
        B = self.solve_kw["dual_bound"]
        over = self.free & (self.base() >= tau)
        lam0[over] = -B
        sol = solve_box_dual(
            self.prob,
            tau,
            lam0=lam0,
            free=self.free,
            memory=self.memory,
            column_counts=self.counts,
            start=start,
            **(self.solve_kw | overrides),
        )
        self.memory = sol.memory
        self.solved[key] = sol
        self.record(key, sol)
        return sol

    def record(self, key: float | None, sol: RakeSolution, **extra: Any) -> None:
        """Count a solve's passes and log it (the cap search's solves, and the margin solve)."""
        self.passes += sol.passes
        self.log.append(
            {
                "t": key,
                **extra,
                "expected_size": sol.size,
                "passes": sol.passes,
                "kkt_err": sol.kkt_err,
                "status": sol.status,
            }
        )

    def base(self) -> np.ndarray:
        """b_j: what the fixed rows bring to each column (one pass, once; 0 if nothing is fixed)."""
        if self._base is None:
            if not self.lam_fixed.any():
                self._base = np.zeros(self.prob.n_columns)
            else:
                lam = np.where(self.free, ZERO_LOG, self.lam_fixed)
                point = self.prob.point(lam)
                self._base = point.n()
                self.kept_size = point.size()
                self.passes += 1
        return self._base

    def _cold_start(self, tau: np.ndarray) -> np.ndarray:
        """λ_j = log min(1, (τ_j − b_j) / (c_j − b_j)) on the free columns: the share of its free
        rows that entry j needs if they were its alone (MetaCLIP-like); fixed columns as given."""
        lam = self.lam_fixed.copy()
        b = self.base()
        f = self.free
        need = np.maximum(tau[f] - b[f], 1e-300)
        have = np.maximum(self.counts[f] - b[f], 1e-300)
        lam[f] = np.log(np.minimum(need / have, 1.0))
        return lam
