"""``rake``: exact capped raking of inclusion probabilities.

Problem (per distinct signature r with multiplicity m_r, entry/level columns j ∈ S_r):

    minimise   Σ_r m_r (π_r log π_r − π_r + 1)            (KL(π ‖ 1): keep as much as possible)
    subject to n_j(π) = Σ_{r ∋ j} m_r π_r = τ_j  for every column j,   0 ≤ π_r ≤ 1,

with entry targets τ_j = min(c_j, t) and, optionally, margin-level targets. This is calibration
with the exponential (raking) distance (Deville & Särndal 1992) with an upper bound of 1, i.e.
an I-projection (Csiszár 1975) onto a box-constrained linear family.

Dual. With η_r = Σ_{j ∈ S_r} λ_j the primal solution is π_r = min(1, e^{η_r}), and λ minimises the
smooth convex function

    F(λ) = Σ_r m_r φ(η_r) − Σ_j τ_j λ_j,   φ(η) = e^η (η ≤ 0),  1 + η (η > 0),

whose gradient is n(λ) − τ (φ' = min(1, e^η) is 1-Lipschitz). F is unbounded below exactly when
the targets are infeasible (Farkas), and then λ diverges along a certificate direction y with
Σ_r m_r max(0, (A y)_r) < τ·y.

Box. The dual is solved on the box |λ_j| ≤ B (``dual_bound``, default 50). By Fenchel duality
this is the primal with the constraints replaced by an exact L1 penalty,
min KL(π ‖ 1) + B · Σ_j |n_j(π) − τ_j|: when the targets are feasible and the optimal |λ_j| < B
the answer is the exact one; when they are not (a head entry forced over t by rows that also
hold tail entries), it is the point closest to the targets in L1 — the spec's headline error —
with KL as the tie-break, instead of a diverging dual.

Update. Generalized iterative scaling (Darroch & Ratcliff 1972) with a per-column constant:
d_j = log(τ_j / n_j) / C_j with C_j = max{D_r : r ∋ j}, D_r = the number of columns of row r
(entries + one per margin). Proof of monotone descent: since Σ_{j∈S_r} 1/C_j ≤ 1, Jensen's
inequality for the convex φ gives the separable majoriser
F(λ + δ) − F(λ) ≤ Σ_j [(1/C_j) Σ_{r∋j} m_r (φ(η_r + C_j δ_j) − φ(η_r)) − τ_j δ_j], and since
φ(η + Δ) − φ(η) ≤ min(1, e^η)(e^Δ − 1) for every Δ (cap included),

    F(λ + δ) − F(λ) ≤ Q(δ) = Σ_j [(n_j / C_j)(e^{C_j δ_j} − 1) − τ_j δ_j],

whose minimiser is the GIS step δ = d (projected on the box: Q is separable and convex, so
truncating d_j at the bound minimises it on the box), with Q(d) ≤ −Σ_j KL(τ_j ‖ n_j)/C_j ≤ 0 when
no bound is active. The classical GIS constant C = max_r D_r is the special case C_j = C, so the
per-column step is never smaller. (A per-column constant that ignores the margin columns of the
row would break Σ_{j∈S_r} 1/C_j ≤ 1 and is not safe.)

Acceleration, safeguarded. Each iteration first tries a candidate λ' made of an Anderson
extrapolation (type II, memory ``anderson``) of the GIS map λ ↦ λ + d(λ), plus per-column step
multipliers that double while the sign of d_j persists (Rprop-like; in the capped region F is
linear along λ_j and GIS steps are tiny); then the multipliers alone; then plain GIS. A candidate
is accepted only if its exact dual decrease is at least the GIS guarantee,
F(λ') − F(λ) ≤ Q(d), so every iteration decreases F at least as much as projected GIS is
guaranteed to, and GIS's convergence argument applies unchanged. An accepted iteration is one
pass over the table (η = Aλ, then n = Aᵀ(m ⊙ π)); each rejected candidate costs one more pass.

Execution. The iteration logic below exists once and touches the data only through a
:class:`~curation.balancing.operators.RakeOperator` (``point``: η, π, n, Σ m φ(η) and the exact
dual change against the current point in one pass; ``degree_facts``; ``positive_part``;
``size_function``), implemented on the driver (SciPy CSR) and on Spark (cached NumPy blocks,
broadcast λ, per-partition ``bincount``): :func:`solve_dual` / :func:`rake_on`.

Stopping: the KKT error of the box problem, max_j |n_j/τ_j − 1| over columns not held at ±B by
an unmet target, below ``tol`` ("converged", or "infeasible" when some targets are held at the
bound); no 0.1% improvement of the KKT or L1 error in ``patience`` iterations ("stalled"); or
``max_iter``. At the end, the sign pattern of the columns held at the bound is tested as a
Farkas certificate of infeasibility. Per-column residuals, the unmet columns and the best error
reached are reported; all numbers stay finite.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from curation import progress

from .kernels import ZERO_LOG, phi, phi_diff
from .operators import (
    LocalOperator,
    LocalRakeOperator,
    RakeOperator,
    RakeProblem,
    TableOperator,
    build_problem,
    column_degree,
)
from .params import BalanceResult, ScoreParams
from .signatures import SignatureTable
from .target_size import (
    DEFAULT_SIZE_RTOL,
    TargetSizeError,
    repeat_scale_from_total,
)
from .targets import cap_vector, capped_targets, margin_target_distribution

__all__ = [
    "DEFAULT_DUAL_BOUND",
    "ZERO_LOG",
    "RakeProblem",
    "RakeSolution",
    "build_problem",
    "column_degree",
    "farkas_certificate",
    "phi",
    "phi_diff",
    "rake",
    "rake_on",
    "rake_solve",
    "solve_dual",
]

#: Default box on the dual variables (an exact L1 penalty on the target violation).
DEFAULT_DUAL_BOUND = 50.0
_LOG_CLIP = 30.0


@dataclass
class RakeSolution:
    """Output of :func:`rake_solve` / :func:`solve_dual` (per column j of the problem)."""

    lam: np.ndarray
    pi: np.ndarray | None  # per live row on the driver; None on Spark
    n: np.ndarray
    residual: np.ndarray  # n_j/τ_j − 1 (0 where τ_j = 0 and n_j = 0)
    status: str  # converged | infeasible | stalled | max_iter | numerical_error
    iterations: int
    max_rel_err: float  # max_j |n_j/τ_j − 1|
    kkt_err: float  # the same over columns not held at the dual bound
    best_kkt_err: float
    l1: float  # Σ_j |n_j − τ_j| / Σ_j τ_j
    unmet: np.ndarray  # column ids with |residual| ≥ tol
    at_bound: np.ndarray  # column ids with |λ_j| = B
    history: list[dict[str, Any]] = field(default_factory=list)
    certificate: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    passes: int = 0
    size: float = float("nan")  # Σ_r m_r π_r at the returned λ


def rake_solve(
    A: sp.csr_array,
    mult: np.ndarray,
    tau: np.ndarray,
    *,
    lam0: np.ndarray | None = None,
    tol: float = 1e-3,
    max_iter: int = 2000,
    patience: int = 200,
    anderson: int = 6,
    capped: bool = True,
    dual_bound: float = DEFAULT_DUAL_BOUND,
    grow: bool = True,
    callback: Any = None,
) -> RakeSolution:
    """Solve the capped raking dual on a driver-side incidence matrix (module docstring).

    Args:
        A: s × q 0/1 CSR matrix (rows = live signatures; every row must have ≥ 1 column).
        mult: m_r (> 0).
        tau: targets τ_j ≥ 0 per column. A column with τ_j = 0 forces π = 0 on its rows; a
            column with τ_j > 0 and no (live) row is unmet.
        lam0: warm start (default: λ_j = log(τ_j / c_j), MetaCLIP-like).
        tol: stop when the KKT error (max_j |n_j/τ_j − 1| over columns not held at ±B by an
            unmet target) is below ``tol``.
        anderson: Anderson memory (0 = plain GIS with per-column C_j).
        capped: π = min(1, e^η) (True) or e^η (raking without the upper bound).
        dual_bound: B, the box |λ_j| ≤ B (exact L1 penalty B·Σ_j |n_j − τ_j|).
        grow: try per-column step multipliers (Rprop-like) in the safeguarded candidates.
        callback: called as ``callback(iteration, kkt_err, l1)`` after each iteration.
    """
    return solve_dual(
        LocalRakeOperator(A, mult),
        tau,
        lam0=lam0,
        tol=tol,
        max_iter=max_iter,
        patience=patience,
        anderson=anderson,
        capped=capped,
        dual_bound=dual_bound,
        grow=grow,
        callback=callback,
    )


def solve_dual(
    op: RakeOperator,
    tau: np.ndarray,
    *,
    lam0: np.ndarray | None = None,
    tol: float = 1e-3,
    max_iter: int = 2000,
    patience: int = 200,
    anderson: int = 6,
    capped: bool = True,
    dual_bound: float = DEFAULT_DUAL_BOUND,
    grow: bool = True,
    callback: Any = None,
) -> RakeSolution:
    """The safeguarded, accelerated GIS iteration of :func:`rake_solve` on any
    :class:`~curation.balancing.operators.RakeOperator` (driver or Spark); one accepted
    iteration = one ``op.point`` pass, each rejected candidate one more."""
    t0 = time.perf_counter()
    q = op.n_columns
    B = float(dual_bound)
    tau = np.asarray(tau, dtype=np.float64)
    # columns with τ_j = 0 that hold rows force π = 0 on those rows ("dead" rows)
    dead_cols = (tau <= 0) & op.occupied
    C, c_live = op.degree_facts(dead_cols, need_c_live=lam0 is None)
    active = (C > 0) & (tau > 0)
    unreachable = (C == 0) & (tau > 0)
    act = np.flatnonzero(active)
    tau_a = tau[act]
    Ca = C[act]
    tau_sum = float(tau[active].sum()) or 1.0
    if lam0 is None:
        lam = np.zeros(q)
        lam[act] = np.log(np.minimum(tau_a / c_live[act], 1.0) if capped else tau_a / c_live[act])
    else:
        lam = np.array(lam0, dtype=np.float64, copy=True)
    lam[act] = np.clip(lam[act], -B, B)
    lam[dead_cols] = ZERO_LOG
    passes = 0

    def evaluate(lv: np.ndarray, ref: Any = None) -> Any:
        nonlocal passes
        passes += 1
        return op.point(lv, capped=capped, ref=ref)

    def gis_step(n: np.ndarray, lv: np.ndarray) -> tuple[np.ndarray, float]:
        na = n[act]
        with np.errstate(divide="ignore"):
            logr = np.log(tau_a) - np.log(np.maximum(na, 1e-300))
        d = np.clip(logr, -_LOG_CLIP, _LOG_CLIP) / Ca
        cur = lv[act]
        d = np.clip(cur + d, -B, B) - cur  # projection on the box: still a majoriser minimiser
        Q = float(np.sum(na / Ca * np.expm1(Ca * d) - tau_a * d))
        return d, Q

    def errors(n: np.ndarray, lv: np.ndarray) -> tuple[float, float, float]:
        na = n[act]
        rel = na / tau_a - 1.0
        la = lv[act]
        held = ((la >= B * (1 - 1e-12)) & (rel < 0)) | ((la <= -B * (1 - 1e-12)) & (rel > 0))
        kkt = np.where(held, 0.0, np.abs(rel))
        return (
            float(kkt.max(initial=0.0)),
            float(np.abs(rel).max(initial=0.0)),
            float(np.abs(na - tau_a).sum() / tau_sum),
        )

    def dual(pt: Any, lv: np.ndarray) -> float:
        """F(λ) = Σ_r m_r φ(η_r) − τ·λ (dead rows contribute φ(−∞) = 0)."""
        return pt.sum_phi() - float(np.dot(tau_a, lv[act]))

    def try_candidate(cand: np.ndarray, Q: float) -> Any:
        """The candidate's point if its exact dual change meets the GIS bound Q, else None."""
        pt = evaluate(cand, ref=cur)
        dF = pt.dphi - float(np.dot(tau_a, cand[act] - lam[act]))
        return pt if np.isfinite(dF) and dF <= Q + _slack(Q) else None

    cur = evaluate(lam)
    n = cur.n()
    e, emax, l1 = errors(n, lam)
    history: list[dict[str, Any]] = [
        {
            "iter": 0,
            "max_rel_err": emax,
            "kkt_err": e,
            "l1": l1,
            "dual": dual(cur, lam),
            "step": "start",
        }
    ]
    best = (e, lam.copy(), 0)
    status = "max_iter"
    X_hist: list[np.ndarray] = []
    G_hist: list[np.ndarray] = []
    last_improve = 0
    mark_e, mark_l1 = e, l1
    mult_s = np.ones(act.size)
    d_prev: np.ndarray | None = None
    max_mult = 1024.0
    it = 0
    if e < tol:
        status = "converged"
    else:
        for it in range(1, max_iter + 1):
            d, Q = gis_step(n, lam)
            X_hist.append(lam[act].copy())
            G_hist.append(d)
            if len(X_hist) > anderson + 1:
                X_hist.pop(0)
                G_hist.pop(0)
            step = "gis"
            accepted = False
            # per-column step multipliers (Rprop-like): double while the sign of d persists
            if d_prev is not None:
                same = np.sign(d) == np.sign(d_prev)
                mult_s = np.where(same, np.minimum(mult_s * 2.0, max_mult), 1.0)
            d_prev = d
            boost = (mult_s - 1.0) * d if grow and mult_s.max() > 1 else None
            if anderson > 0 and len(X_hist) >= 2:
                dX = np.stack([X_hist[i + 1] - X_hist[i] for i in range(len(X_hist) - 1)], 1)
                dG = np.stack([G_hist[i + 1] - G_hist[i] for i in range(len(G_hist) - 1)], 1)
                M = dG.T @ dG
                reg = 1e-10 * float(np.trace(M)) + 1e-300
                try:
                    gamma = np.linalg.solve(M + reg * np.eye(M.shape[0]), dG.T @ d)
                except np.linalg.LinAlgError:
                    gamma = None
                if gamma is not None and np.all(np.isfinite(gamma)):
                    cand = lam.copy()
                    base_step = d - (dX + dG) @ gamma
                    if boost is not None:
                        base_step = base_step + boost
                    cand[act] = np.clip(lam[act] + base_step, -B, B)
                    pt = try_candidate(cand, Q)
                    if pt is not None:
                        lam, cur = cand, pt
                        n = cur.n()
                        accepted = True
                        step = "aa"
            if not accepted and boost is not None:
                cand = lam.copy()
                cand[act] = np.clip(lam[act] + d + boost, -B, B)
                pt = try_candidate(cand, Q)
                if pt is not None:
                    lam, cur = cand, pt
                    n = cur.n()
                    accepted = True
                    step = "boost"
            if not accepted:
                mult_s[:] = 1.0
                lam = lam.copy()
                lam[act] += d
                cur = evaluate(lam)
                n = cur.n()
                if anderson > 0 and len(X_hist) >= 2:
                    # restart the memory from the current point after a rejection
                    X_hist = X_hist[-1:]
                    G_hist = G_hist[-1:]
            e, emax, l1 = errors(n, lam)
            history.append(
                {
                    "iter": it,
                    "max_rel_err": emax,
                    "kkt_err": e,
                    "l1": l1,
                    "dual": dual(cur, lam),
                    "step": step,
                }
            )
            if callback is not None:
                callback(it, e, l1)
            progress.tick(kkt_err=e, l1=l1)
            if not np.isfinite(e):
                status = "numerical_error"
                lam = best[1].copy()
                cur = evaluate(lam)
                n = cur.n()
                break
            if e < best[0]:
                best = (e, lam.copy(), it)
            if e < mark_e * (1 - 1e-3) or l1 < mark_l1 * (1 - 1e-3):
                mark_e, mark_l1 = min(mark_e, e), min(mark_l1, l1)
                last_improve = it
            if e < tol:
                status = "converged"
                break
            if it - last_improve >= patience:
                status = "stalled"
                break
    e, emax, l1 = errors(n, lam)
    if e > best[0] * (1 + 1e-3) and status != "converged":  # return the best iterate
        lam = best[1].copy()
        cur = evaluate(lam)
        n = cur.n()
        e, emax, l1 = errors(n, lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(
            tau > 0, n / np.where(tau > 0, tau, 1.0) - 1.0, np.where(n > 0, 1.0, 0.0)
        )
    residual[unreachable] = -1.0
    unmet = np.flatnonzero((np.abs(residual) >= tol) & ((C > 0) | (tau > 0)))
    at_bound = np.zeros(q, dtype=bool)
    at_bound[act] = np.abs(lam[act]) >= B * (1 - 1e-12)
    certificate = _farkas(op.positive_part, tau, np.where(at_bound, np.sign(lam), 0.0), capped)
    if status == "converged" and unmet.size:
        status = "infeasible"  # KKT holds, but some targets are held at the dual bound
    return RakeSolution(
        lam=lam,
        pi=cur.pi,
        n=n,
        residual=residual,
        status=status,
        iterations=it,
        max_rel_err=emax,
        kkt_err=e,
        best_kkt_err=min(best[0], e),
        l1=l1,
        unmet=unmet,
        at_bound=np.flatnonzero(at_bound),
        history=history,
        certificate=certificate,
        seconds=time.perf_counter() - t0,
        passes=passes,
        size=cur.size(),
    )


def _slack(Q: float) -> float:
    """Rounding allowance when comparing a computed dual decrease with the GIS bound Q."""
    return 1e-9 * abs(Q) + 1e-12


def farkas_certificate(
    A: sp.csr_array,
    mult: np.ndarray,
    tau: np.ndarray,
    y: np.ndarray,
    capped: bool = True,
) -> dict[str, Any]:
    """Test whether the direction y proves the targets infeasible (Farkas' lemma).

    {π ∈ [0,1]^s : Aᵀ(m ⊙ π) = τ} is empty iff some y has Σ_r m_r max(0, (A y)_r) < τ·y
    (for the uncapped problem, π ≥ 0 only: A y ≤ 0 and τ·y > 0). The solver passes the sign
    pattern of the columns held at the dual bound. Returns the slope (negative = proof),
    a boolean with a relative margin against rounding, and the support of y.
    """
    mult = np.asarray(mult, dtype=np.float64)
    return _farkas(lambda yy: float(np.dot(mult, np.maximum(A @ yy, 0.0))), tau, y, capped)


def _farkas(
    positive_part: Callable[[np.ndarray], float],
    tau: np.ndarray,
    y: np.ndarray,
    capped: bool,
) -> dict[str, Any]:
    y = np.asarray(y, dtype=np.float64)
    support = np.flatnonzero(y)
    if support.size == 0:
        return {"found": False, "slope": 0.0, "support_size": 0, "support": []}
    ty = float(np.dot(tau, y))
    pos = positive_part(y)
    if capped:
        slope = pos - ty
        found = slope < -1e-9 * (pos + abs(ty) + 1.0)
    else:
        slope = -ty if pos <= 0 else float("inf")
        found = slope < 0
    return {
        "found": bool(found),
        "slope": float(slope),
        "support_size": int(support.size),
        "support": support[:1000].tolist(),
    }


# ---------------------------------------------------------------------------- table level
def _size_shift(size_fn: Callable[[float], float], n_target: float) -> float:
    """ν with Σ_r m_r min(1, e^{η_r + ν}) = N (Σ is continuous and increasing in ν)."""
    from scipy.optimize import brentq

    def f(nu: float) -> float:
        return size_fn(nu) - n_target

    lo, hi = -1.0, 1.0
    while f(lo) > 0 and lo > -1e3:
        lo *= 2
    while f(hi) < 0 and hi < 1e3:
        hi *= 2
    return float(brentq(f, lo, hi, xtol=1e-12, rtol=1e-12))


class _CapFound(Exception):
    def __init__(self, t: float) -> None:
        self.t = t


def _search_cap(
    size_at: Callable[[float], float],
    n_target: float,
    t0: float,
    cmax: float,
    slope0: float,
    *,
    rtol: float,
    max_evals: int,
) -> float:
    """The cap t with |Σπ(t) − N| ≤ rtol·N for the non-decreasing size Σπ(t) (each evaluation is
    an inner raking solve, so evaluations are few): from t0, secant steps in (log t, log Σπ)
    (first slope ``slope0``, later the secant slope, clipped to [0.05, 5]; each step aims 2 %
    past N and moves t by a factor within [1.1, 16]) until N is bracketed, then Brent's method
    on log t with an early exit at the tolerance. Returns the best evaluated t if the budget of
    ``max_evals`` evaluations runs out."""
    from scipy.optimize import brentq

    seen: dict[float, float] = {}

    def f(t: float) -> float:
        s = size_at(t)
        seen[t] = s
        if abs(s - n_target) <= rtol * n_target:
            raise _CapFound(t)
        return s

    try:
        t, s = t0, f(t0)
        lo = hi = None
        slope = slope0
        while len(seen) < max_evals:
            if s < n_target:
                lo = (t, s)
                if t >= cmax:
                    return cmax
            else:
                hi = (t, s)
            if lo is not None and hi is not None:
                break
            aim = n_target * (1.02 if s < n_target else 0.98)
            step = np.log(aim / max(s, 1e-300)) / float(np.clip(slope, 0.05, 5.0))
            step = float(np.sign(step) * np.clip(abs(step), np.log(1.1), np.log(16.0)))
            t_new = min(cmax, t * float(np.exp(step)))
            s_new = f(t_new)
            if s_new > 0 and s > 0 and t_new != t:
                slope = np.log(s_new / s) / np.log(t_new / t)
            t, s = t_new, s_new
        if lo is not None and hi is not None and len(seen) < max_evals:
            exact = {float(np.log(lo[0])): lo[0], float(np.log(hi[0])): hi[0]}  # cached ends

            def g(x: float) -> float:
                t = exact.get(x, float(np.exp(x)))
                return float(np.log(max(f(t), 1e-300) / n_target))

            brentq(
                g,
                np.log(lo[0]),
                np.log(hi[0]),
                xtol=1e-12,
                rtol=1e-12,
                maxiter=max(1, max_evals - len(seen)),
                full_output=True,
                disp=False,
            )
    except _CapFound as found:
        return found.t
    return min(seen, key=lambda tt: abs(seen[tt] - n_target))


def _warm_start(
    prev: tuple[float, np.ndarray] | None, tau_new: np.ndarray, tau_prev: np.ndarray | None
) -> np.ndarray | None:
    if prev is None or tau_prev is None:
        return None
    lam = prev[1].copy()
    ok = (tau_new > 0) & (tau_prev > 0)
    lam[ok] += np.log(tau_new[ok] / tau_prev[ok])
    return lam


def rake(
    table: SignatureTable,
    *,
    t: float | None = None,
    target_size: float | None = None,
    entry_targets: np.ndarray | None = None,
    margins: Sequence[str] = (),
    margin_targets: Mapping[str, str | Mapping[str, float]] | None = None,
    tol: float = 1e-3,
    max_iter: int = 2000,
    patience: int = 200,
    anderson: int = 6,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    with_replacement: bool = False,
    capped: bool = True,
    dual_bound: float = DEFAULT_DUAL_BOUND,
    size_rtol: float = DEFAULT_SIZE_RTOL,
    max_size_evals: int = 40,
) -> BalanceResult:
    """Capped raking of a driver-side signature table: :func:`rake_on` on a
    :class:`~curation.balancing.operators.LocalOperator` (see there for the arguments)."""
    return rake_on(
        LocalOperator(table),
        t=t,
        target_size=target_size,
        entry_targets=entry_targets,
        margins=margins,
        margin_targets=margin_targets,
        tol=tol,
        max_iter=max_iter,
        patience=patience,
        anderson=anderson,
        keep_unmatched=keep_unmatched,
        unmatched_cap=unmatched_cap,
        with_replacement=with_replacement,
        capped=capped,
        dual_bound=dual_bound,
        size_rtol=size_rtol,
        max_size_evals=max_size_evals,
    )


def rake_on(
    op: TableOperator,
    *,
    t: float | None = None,
    target_size: float | None = None,
    entry_targets: np.ndarray | None = None,
    margins: Sequence[str] = (),
    margin_targets: Mapping[str, str | Mapping[str, float]] | None = None,
    tol: float = 1e-3,
    max_iter: int = 2000,
    patience: int = 200,
    anderson: int = 6,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    with_replacement: bool = False,
    capped: bool = True,
    dual_bound: float = DEFAULT_DUAL_BOUND,
    size_rtol: float = DEFAULT_SIZE_RTOL,
    max_size_evals: int = 40,
) -> BalanceResult:
    """Capped raking of the signature table toward τ_j = min(c_j, t) (module docstring), on
    any :class:`~curation.balancing.operators.TableOperator` (driver or Spark).

    Args:
        t: the cap. If omitted, ``target_size`` N is required and t is solved so that
            Σ_i π_i = N (bracketed search on log t, each inner solve warm-started from the
            nearest previous one).
        entry_targets: explicit τ (expected counts per entry) instead of min(c_j, t).
        margins / margin_targets: extra margin columns; their target counts are
            P_X(x) · N_ref, with P_X empirical (default), uniform or user shares, and N_ref the
            target size if given, else the expected size of the entry-only solution at t.
        keep_unmatched: unmatched samples form the pseudo-entry ``<unmatched>`` (id m) with
            target min(n_unmatched, unmatched_cap or t).
        dual_bound: B of the exact L1 penalty (see :func:`rake_solve`).
        capped: False solves raking without the π ≤ 1 bound (weights e^η; used for sampling
            with replacement: E[r_i] = N·w_i/Σw).
    """
    work = op.work(keep_unmatched)
    counts = work.counts()
    m_work = work.n_entries
    prob_entries = work.rake_problem(())
    n_elig = work.n_eligible
    info: dict[str, Any] = {"method": "rake", "capped": capped}
    size_evals: list[dict[str, float]] = []

    def caps_for(tt: float) -> np.ndarray:
        return cap_vector(
            m_work,
            tt,
            (unmatched_cap if unmatched_cap is not None else tt) if keep_unmatched else None,
        )

    solved: dict[float, tuple[RakeSolution, np.ndarray]] = {}

    def solve_entries(tt: float, tol_inner: float, search: bool = False) -> RakeSolution:
        tau = capped_targets(counts, caps_for(tt))
        prev = None
        if solved:
            tp = min(solved, key=lambda x: abs(np.log(x / tt)))
            prev = (tp, solved[tp][0].lam)
            tau_prev = solved[tp][1]
        lam0 = _warm_start(prev, tau, tau_prev if prev else None)
        sol = solve_dual(
            prob_entries,
            tau,
            lam0=lam0,
            tol=tol_inner,
            max_iter=max_iter,
            patience=min(patience, 50) if search else patience,
            anderson=anderson,
            capped=capped,
            dual_bound=dual_bound,
        )
        solved[tt] = (sol, tau)
        size_evals.append(
            {
                "t": tt,
                "expected_size": sol.size,
                "iterations": sol.iterations,
                "max_rel_err": sol.max_rel_err,
                "kkt_err": sol.kkt_err,
                "status": sol.status,
            }
        )
        return sol

    if entry_targets is not None:
        tau_e = np.asarray(entry_targets, dtype=np.float64)
        if tau_e.shape != (m_work,):
            raise ValueError(f"entry_targets must have length {m_work}")
        t_used = None
        sol_e = solve_dual(
            prob_entries,
            tau_e,
            tol=tol,
            max_iter=max_iter,
            patience=patience,
            anderson=anderson,
            capped=capped,
            dual_bound=dual_bound,
        )
    elif t is not None:
        t_used = float(t)
        sol_e = solve_entries(t_used, tol)
        tau_e = solved[t_used][1]
    else:
        if target_size is None:
            raise ValueError("give t, entry_targets or target_size")
        if not capped:
            raise ValueError("uncapped raking needs a cap t (the size is then set by repeats)")
        if target_size > n_elig * (1 + 1e-12):
            raise TargetSizeError(
                f"target size {target_size:g} exceeds the {n_elig:g} eligible samples; "
                "use sampling with replacement"
            )
        tol_inner = tol
        from .metaclip import cap_for_size_on, metaclip_probs

        t_mc = cap_for_size_on(
            work, target_size, counts, keep_unmatched=keep_unmatched, unmatched_cap=unmatched_cap
        )
        cmax = float(counts.max())
        sizes: dict[float, float] = {cmax: n_elig}  # t ≥ max c_j keeps every eligible sample

        def size_at(tt: float) -> float:
            tt = min(tt, cmax)
            if tt not in sizes:
                sol_t = solve_entries(tt, tol_inner, search=True)
                sizes[tt] = sol_t.size
            return sizes[tt]

        # first slope guess: MetaCLIP's local d log Σπ / d log t at its cap (one cheap pass)
        t_up = min(cmax, 1.25 * t_mc)
        slope0 = 0.5
        if t_up > t_mc:
            s_up = work.metaclip_size(metaclip_probs(counts, caps_for(t_up)))
            slope0 = np.log(max(s_up, 1e-300) / target_size) / np.log(t_up / t_mc)
        t_used = _search_cap(
            size_at,
            float(target_size),
            t_mc,
            cmax,
            slope0,
            rtol=size_rtol / 4,
            max_evals=max_size_evals,
        )
        t_used = min(t_used, cmax)
        if t_used not in solved:
            solve_entries(t_used, tol_inner)
        sol_e, tau_e = solved[t_used]
        if sol_e.status not in ("converged", "infeasible"):
            # the search used a short patience: continue from its point with the full one, and
            # keep the continuation if it still meets the size
            more = solve_dual(
                prob_entries,
                tau_e,
                lam0=sol_e.lam,
                tol=tol,
                max_iter=max_iter,
                patience=patience,
                anderson=anderson,
                capped=capped,
                dual_bound=dual_bound,
            )
            size_more = more.size
            if (
                abs(size_more - target_size) <= 0.9 * size_rtol * target_size
                and more.kkt_err <= sol_e.kkt_err
            ):
                more.history = sol_e.history + [
                    dict(h, iter=h["iter"] + sol_e.iterations) for h in more.history[1:]
                ]
                more.iterations += sol_e.iterations
                more.passes += sol_e.passes
                sol_e = more
    sol = sol_e
    tau_all = tau_e
    prob = prob_entries
    margin_targets = dict(margin_targets or {})
    mt: dict[str, np.ndarray] = {}
    if margins:
        prob = work.rake_problem(margins)
        n_ref = float(target_size) if target_size is not None else sol_e.size
        tau_all = np.zeros(prob.n_columns)
        tau_all[:m_work] = tau_e
        lam0 = np.zeros(prob.n_columns)
        lam0[:m_work] = sol_e.lam
        for col in margins:
            obs = work.level_counts(col)
            p_x, _ = margin_target_distribution(
                obs, work.margin_levels[col], margin_targets.get(col, "empirical")
            )
            mt[col] = p_x * n_ref
            o = prob.offsets[col]
            tau_all[o : o + p_x.size] = mt[col]
        sol = solve_dual(
            prob,
            tau_all,
            lam0=lam0,
            tol=tol,
            max_iter=max_iter,
            patience=patience,
            anderson=anderson,
            capped=capped,
            dual_bound=dual_bound,
        )
    lam = sol.lam.copy()
    size_shift = 0.0
    if margins and target_size is not None and capped:
        # every row holds exactly one level of the first margin: shifting all its μ by ν shifts
        # every η_r by ν, so Σπ(ν) is monotone and the size can be met exactly
        size_fn = prob.size_function(lam)
        size_now = size_fn(0.0)
        if abs(size_now - target_size) > size_rtol / 4 * target_size:
            size_shift = _size_shift(size_fn, float(target_size))
            o = prob.offsets[margins[0]]
            lam[o : o + prob.margin_sizes[margins[0]]] += size_shift
    # columns with τ = 0 but rows: force π = 0 on those rows (ZERO_LOG); c = 0: irrelevant (0)
    lam[(tau_all <= 0) & prob.occupied] = ZERO_LOG
    margin_values = {
        col: lam[prob.offsets[col] : prob.offsets[col] + prob.margin_sizes[col]] for col in margins
    }
    params = ScoreParams(
        method="rake",
        n_entries=op.n_entries,
        entry_values=lam[:m_work],
        margin_values=margin_values,
        margin_levels={col: work.margin_levels[col] for col in margins},
        keep_unmatched=keep_unmatched,
        capped=capped,
    )
    sums = op.score_sums(params)
    wsum = sums.raw
    wscale = n_elig / wsum if wsum > 0 else 0.0
    params = params.replace(weight_scale=wscale)
    if with_replacement:
        if target_size is None:
            raise ValueError("with_replacement needs target_size")
        wtotal = op.score_sums(params).weight
        params = params.replace(repeat_scale=repeat_scale_from_total(wtotal, target_size))
    size = sums.pi
    entry_res = sol.residual[:m_work]
    unmet_entries = sol.unmet[sol.unmet < m_work]
    info.update(
        status=sol.status,
        iterations=sol.iterations,
        passes=sol.passes,
        seconds=sol.seconds,
        t=t_used,
        unmatched_cap=float(caps_for(t_used)[-1]) if (keep_unmatched and t_used) else None,
        expected_size=size,
        target_size=target_size,
        max_rel_err=sol.max_rel_err,
        kkt_err=sol.kkt_err,
        best_kkt_err=sol.best_kkt_err,
        l1=sol.l1,
        n_infeasible_entries=int(unmet_entries.size),
        infeasible_entries=unmet_entries[:1000].tolist(),
        n_unmet_margin_levels=int(sol.unmet.size - unmet_entries.size),
        certificate=sol.certificate,
        size_search=size_evals,
        size_shift=size_shift,
        aa_accepted=sum(h["step"] == "aa" for h in sol.history),
    )
    if target_size is not None and not with_replacement:
        info["size_rel_err"] = abs(size - target_size) / target_size
    params = params.replace(meta={"t": t_used, "status": sol.status})
    rows = op.row_scores(params)
    weight, pi = rows if rows is not None else (None, None)
    return BalanceResult(
        params=params,
        weight=weight,
        pi=pi,
        counts=counts,
        targets=tau_e,
        margin_targets=mt,
        history=sol.history,
        info=info | {"entry_residual_max_abs": float(np.abs(entry_res).max(initial=0.0))},
        residual=entry_res.copy(),
    )
