"""The size searches of ``rake``: the cap t with Σπ(t) ≈ N, and the shift ν that meets N exactly.

Each evaluation of Σπ(t) is a raking solve, so the search must need few of them. It steps with a
model of how the size follows the targets instead of a secant on (t, Σπ):

    Σπ = S_keep + M / k̄,    M = Σ_{j free} (n_j − b_j),

where S_keep is the size of the fixed ("kept") rows, b_j what they bring to column j, M the
matches the raked rows hold and k̄ = M / (Σπ − S_keep) the mean number of free columns of a raked
row, weighted by π. At a solution the free columns meet their targets τ_j(t) = min(c_j, t) where
they can, so a change of t moves M by the change of the target sum R(t) = Σ_{j free}
max(0, τ_j(t) − b_j) (times the share M/R that is realised where targets cannot be met), and
moves Σπ by that over k̄. The step to N is therefore

    R(t') = R(t) + (N − Σπ(t)) / s,    s = (M/R) / k̄,

solved for t' (R is non-decreasing and piecewise linear in t, so by bisection on log t). Once two
solves exist, s is the secant slope dΣπ/dR between the last two (clipped to [1/(4k̄), 2/k̄]): the
rows a change of t adds or drops hold more free columns than the average raked row. Steps are kept
inside the bracket of evaluated sizes (log-bisection otherwise), and the search stops within the
tolerance or when the bracket closes, so it cannot diverge.

The solves of the search are rough (warm-started from the nearest earlier one, stopped once Σπ
has settled): Σπ is an aggregate and settles long before the per-column KKT error does. ``rake``
then solves at the chosen t to full tolerance, and :func:`size_shift` meets N exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .warm_solves import WarmSolver

__all__ = ["CapSearch", "SizeEvaluation", "search_head_cap", "size_shift"]

#: The rough solves: KKT tolerance, pass budget, and the early stop once Σπ has settled (moved
#: < 0.5 % over 4 iterations). Σπ is an aggregate and settles long before the per-column KKT
#: error does; a solve stopped by a pass count alone, before Σπ settled, gave sizes off by
#: 10-90 % on multi-label tables and misled the search.
SEARCH_TOL = 5e-2
SEARCH_PASSES = 50
SEARCH_SETTLE = 5e-3
#: The first solve settles to 1 %: before any solve the size model's guess of t is 20-50 % off N
#: on real captions, and a size known to 1 % places the next cap as well as one known to 0.5 %
#: (the corpus list at 10 %: 158 -> 146 passes in all; docs/balancing.md).
SEARCH_FIRST_SETTLE = 1e-2
#: The search stops within this relative distance of N; the final shift ν meets N exactly.
SEARCH_RTOL = 5e-3


def size_shift(size_fn: Callable[[float], float], n_target: float) -> float:
    """ν with Σ_r m_r min(1, e^{η_r + ν}) = N (Σ is continuous and increasing in ν)."""
    from scipy.optimize import brentq

    seen: dict[float, float] = {}  # each evaluation is a pass on Spark: never twice at one ν

    def f(nu: float) -> float:
        if nu not in seen:
            seen[nu] = size_fn(nu) - n_target
        return seen[nu]

    lo, hi = -1.0, 1.0
    while f(lo) > 0 and lo > -1e3:
        lo *= 2
    while f(hi) < 0 and hi < 1e3:
        hi *= 2
    if f(lo) > 0 or f(hi) < 0:
        return 0.0  # N is out of the shift's reach (kept rows alone exceed it): leave λ as is
    return float(brentq(f, lo, hi, xtol=1e-12, rtol=1e-12))


@dataclass(frozen=True)
class SizeEvaluation:
    """One solve of the search: its expected size Σπ and the matches M its raked rows hold."""

    size: float
    raked_matches: float


@dataclass
class CapSearch:
    """The cap t with |Σπ(t) − N| ≤ rtol·N, by the model steps of the module docstring.

    Args:
        target_sum: R(t) = Σ_{j free} max(0, τ_j(t) − b_j), the matches the raked rows are asked
            for at cap t (non-decreasing in t).
        kept_size: S_keep, the size of the fixed rows (0 when nothing is fixed).
        raked_rows: Σ m_r over the raked rows, for k̄ before any solve (π = 1 on all of them).
        t_min, t_max: the range of t (t_max: the largest count, where every target is c_j).
    """

    target_sum: Callable[[float], float]
    kept_size: float
    raked_rows: float
    t_min: float
    t_max: float
    evaluations: dict[float, SizeEvaluation] = field(default_factory=dict)

    def mean_matches(self, ev: SizeEvaluation | None) -> float:
        """k̄: free columns per raked row, π-weighted (before any solve: over all raked rows)."""
        if ev is not None and ev.size - self.kept_size > 1e-9 * max(ev.size, 1.0):
            return ev.raked_matches / (ev.size - self.kept_size)
        return self.target_sum(self.t_max) / max(self.raked_rows, 1e-300)

    def model_step(self, n_target: float, t: float | None) -> float:
        """The next t: R(t') = R(t) + (N − Σπ(t)) / s, with s = dΣπ/dR.

        s is 1/k̄ (the model of the module docstring) until two solves exist, then the secant
        slope between the last two, clipped to [1/(4k̄), 2/k̄]: the rows a change of t adds or
        removes hold more (or fewer) free columns than the average raked row, and the secant
        learns by how much. Before any solve (t None): R(t') = k̄ (N − S_keep)."""
        ev = self.evaluations.get(t) if t is not None else None
        kbar = self.mean_matches(ev)
        if ev is None:
            return self._invert(kbar * (n_target - self.kept_size))
        # only part of a change of R is realised where targets cannot be met (M < R): scale by M/R
        r_t = self.target_sum(t)
        realised = float(np.clip(ev.raked_matches / r_t, 0.25, 1.0)) if r_t > 0 else 1.0
        slope = realised / kbar
        recent = list(self.evaluations)[-2:]
        if len(recent) == 2 and recent[-1] == t:
            (t1, e1), (t2, e2) = ((x, self.evaluations[x]) for x in recent)
            d_r = self.target_sum(t2) - self.target_sum(t1)
            if d_r != 0.0:
                slope = float(np.clip((e2.size - e1.size) / d_r, 0.25 / kbar, 2.0 / kbar))
        return self._invert(r_t + (n_target - ev.size) / slope)

    def _invert(self, want: float) -> float:
        """The smallest t in [t_min, t_max] with R(t) ≥ want (bisection on log t)."""
        lo, hi = np.log(self.t_min), np.log(self.t_max)
        if self.target_sum(self.t_min) >= want:
            return self.t_min
        if self.target_sum(self.t_max) <= want:
            return self.t_max
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if self.target_sum(float(np.exp(mid))) >= want:
                hi = mid
            else:
                lo = mid
            if hi - lo < 1e-12:
                break
        return float(np.exp(hi))

    def run(
        self,
        evaluate: Callable[[float], SizeEvaluation],
        n_target: float,
        *,
        t0: float | None = None,
        rtol: float,
        max_evals: int,
    ) -> float:
        """Search from ``t0`` (default: the model's guess before any solve); returns the first t
        within ``rtol``, t_max if even t_max is too small, or the closest t seen when the budget
        of ``max_evals`` solves runs out."""
        t = (
            self.model_step(n_target, None)
            if t0 is None
            else float(np.clip(t0, self.t_min, self.t_max))
        )
        lo, hi = self.t_min, self.t_max  # Σπ(lo) < N ≤ Σπ(hi) as far as is known
        for _ in range(max_evals):
            ev = self.evaluations[t] = evaluate(t)
            if abs(ev.size - n_target) <= rtol * n_target:
                return t
            if ev.size < n_target:
                if t >= self.t_max:
                    return self.t_max
                lo = max(lo, t)
            else:
                hi = min(hi, t)
            if hi / lo < 1 + 1e-4:
                break  # the bracket is closed: more solves would only chase Σπ's own noise
            t_new = self.model_step(n_target, t)
            if not lo < t_new < hi or t_new in self.evaluations:
                t_new = float(np.sqrt(lo * hi))  # the model left the bracket: bisect
            if t_new in self.evaluations:
                break
            t = t_new
        return min(self.evaluations, key=lambda tt: abs(self.evaluations[tt].size - n_target))


def search_head_cap(
    solver: WarmSolver,
    targets_at: Callable[[float], np.ndarray],
    target_size: float,
    n_eligible: float,
    tol: float,
    max_passes: int,
    max_evals: int,
) -> float:
    """The cap t with Σπ(t) ≈ N (:class:`~.cap_search.CapSearch`), by rough warm-started solves."""
    free = solver.free
    base = solver.base()
    counts_free = solver.counts[free]
    base_free = base[free]
    t_max = float(solver.counts.max())

    def target_sum(tt: float) -> float:
        return float(np.maximum(targets_at(tt)[free] - base_free, 0.0).sum())

    def evaluate(tt: float) -> SizeEvaluation:
        # far from N a rough solve places t well enough; closer, the solve must be accurate
        # enough that Σπ's own error (about the KKT error) stays below its distance to N
        gap = abs(solver.log[-1]["expected_size"] / target_size - 1) if solver.log else 1.0
        rough_tol = max(tol, min(SEARCH_TOL, gap / 2))
        sol = solver.solve(
            tt,
            targets_at(tt),
            tol=rough_tol,
            max_passes=min(max_passes, SEARCH_PASSES),
            size_settle=SEARCH_SETTLE if solver.log else SEARCH_FIRST_SETTLE,
        )
        return SizeEvaluation(sol.size, float((sol.n[free] - base_free).sum()))

    search = CapSearch(
        target_sum,
        kept_size=solver.kept_size,
        raked_rows=n_eligible - solver.kept_size,
        t_min=float(counts_free.min()) / 100,
        t_max=t_max,
    )
    return search.run(evaluate, target_size, rtol=SEARCH_RTOL, max_evals=max_evals)
