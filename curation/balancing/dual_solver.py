"""The raking dual, solved by a projected quasi-Newton method on a box.

Problem (per distinct signature r with multiplicity m_r and columns j ∈ S_r: entries, then margin
levels):

    minimise   Σ_r m_r (π_r log π_r − π_r + 1) + B · Σ_j |n_j(π) − τ_j|,   n_j(π) = Σ_{r ∋ j} m_r π_r,
    over       0 ≤ π_r ≤ 1,

i.e. calibration with the raking (exponential) distance (Deville & Särndal 1992) capped at 1, with the
target equations held by an exact L1 penalty of weight B. Its Fenchel dual is

    min_λ  F(λ) = Σ_r m_r φ(η_r) − Σ_j τ_j λ_j   over the box  −B ≤ λ_j ≤ B,
    η_r = Σ_{j ∈ S_r} λ_j,   φ(η) = e^η (η ≤ 0), 1 + η (η > 0),   π_r = φ'(η_r) = min(1, e^{η_r}),

a smooth convex function with gradient ∇F = n(λ) − τ. When the targets are feasible and the
optimal |λ_j| < B the answer is the exact calibration; when they are not, the columns whose targets
cannot be met are held at ±B and the result is the point closest to the targets in L1, with KL as
the tie-break. A pass over the table evaluates F and ∇F together: one product η = Aλ and one
n = Aᵀ(m ⊙ π) (:meth:`~.operators.RakeOperator.point`), on the driver or on Spark.

Fixed columns. Columns outside ``free`` keep their value from ``lam0``. The tail-keeping rake fixes
the tail entries at :data:`KEEP_LOG`, which sets π = 1 on every row that holds one (its η is
positive whatever the free columns add, since |λ_j| ≤ B on them), so the free columns are raked
against the targets minus what the kept rows already bring: ∇F_j = n_j − τ_j counts those rows too.

Method: L-BFGS with projection on the box (two-metric projection; Bertsekas 1982, as in Kim, Sra &
Dhillon 2010), in the variables z_j = s_j λ_j with s_j = √max(τ_j, 1) (the diagonal of the Hessian
∂²F/∂λ_j² = Σ_{r ∋ j, π_r < 1} m_r π_r is ≈ τ_j near the solution, so z is well scaled). Each
iteration: the columns at a bound whose gradient points out of the box are held; the two-loop
recursion gives the direction on the others; a projected Armijo backtracking accepts the step (one
pass per trial, the first trial almost always). The dual change of a trial is computed row by row
against the current point (``phi_diff``), never as a difference of two large sums.

Memory across solves. The Hessian of F does not depend on τ, so the curvature pairs
(Δz, Δ∇F) learnt while solving for one set of targets are exact for another: the cap search passes
the :class:`QuasiNewtonMemory` of one solve to the next, and a warm-started solve begins with a
quasi-Newton step toward the new targets instead of a gradient step. The memory is dropped (a
restart) in a full solve when the KKT error has reached no new best for ``_RESTART_PASSES`` passes
(never in the cap search's rough solves, whose memory the next solve starts from): pairs learnt
before rows crossed the kink of φ at η = 0, or for other targets, then no longer describe the
curvature, and the iterates hover instead of converging.

Stopping. The KKT error is max_j |n_j − τ_j| / max(τ_j, 1) (relative, and in samples for targets
below one sample) over the free columns that are not held at a bound by an unmet target; below
``tol`` the status is ``converged``, or ``infeasible`` when some targets are held at the bound
(they are reported with their residuals and tested as a Farkas certificate). Otherwise ``stalled`` (no 0.1 % progress in ``patience`` passes) or ``max_passes``. The best
iterate is returned; every number stays finite.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation import progress

from .kernels import ZERO_LOG
from .operators import DualPoint, RakeOperator

__all__ = [
    "DEFAULT_DUAL_BOUND",
    "KEEP_LOG",
    "QuasiNewtonMemory",
    "RakeSolution",
    "farkas_test",
    "kkt_errors",
    "solve_box_dual",
    "target_errors",
]

#: Default box |λ_j| ≤ B: the price of one unit of target violation in the primal's L1 penalty.
#: e^{−10} ≈ 4.5e-5 is already "dropped" for a row whose column is held at −B; a larger box
#: changes the answer only in those rows and makes the solver slower (bench/README.md).
DEFAULT_DUAL_BOUND = 10.0
#: λ of a fixed "keep" column: π = 1 on its rows (their η stays ≥ 0 for up to KEEP_LOG / B free
#: columns per row at −B); small enough that η keeps ~12 digits below it for the dual changes.
KEEP_LOG = 1e4
_ARMIJO = 1e-4
_MAX_BACKTRACK = 12
#: Iterations over which Σπ must stay within ``size_settle`` (see :func:`solve_box_dual`).
_SETTLE_WINDOW = 4
#: The raking step on the columns still outside the tolerance, once at most this many are left
#: (alternating with quasi-Newton steps; see :meth:`_BoxDualRun.direction`).
_POLISH_COLUMNS = 10
#: Restart: the quasi-Newton memory is dropped when the KKT error has not reached a new best for
#: this many passes (see :meth:`_BoxDualRun.iterate`).
_RESTART_PASSES = 15


@dataclass
class RakeSolution:
    """What :func:`solve_box_dual` returns (per column j of the problem)."""

    lam: np.ndarray
    pi: np.ndarray | None  # per live row on the driver; None on Spark
    n: np.ndarray
    residual: np.ndarray  # n_j/τ_j − 1 on the free columns (0 elsewhere)
    status: str  # converged | infeasible | stalled | max_passes | size_settled (rough solves)
    iterations: int
    max_rel_err: float  # max_j |n_j/τ_j − 1| over the free columns
    kkt_err: float  # max_j |n_j − τ_j| / max(τ_j, 1) over free columns not held at the box
    best_kkt_err: float
    l1: float  # Σ_j |n_j − τ_j| / Σ_j τ_j over the free columns
    unmet: np.ndarray  # free column ids with |residual| ≥ tol
    at_bound: np.ndarray  # free column ids with |λ_j| = B
    history: list[dict[str, Any]] = field(default_factory=list)
    certificate: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    passes: int = 0
    size: float = float("nan")  # Σ_r m_r π_r at the returned λ
    memory: QuasiNewtonMemory | None = None
    point: DualPoint | None = None  # the evaluation at ``lam`` (n, Σφ, Σπ do not depend on τ)


@dataclass
class QuasiNewtonMemory:
    """The last ``size`` curvature pairs (s_k = Δz, y_k = Δ∇_z F) over a fixed set of free
    columns with fixed scaling: valid for any targets τ (the Hessian does not depend on τ)."""

    free: np.ndarray
    scale: np.ndarray
    size: int = 20
    pairs: deque = field(default_factory=deque)

    def fits(self, free: np.ndarray, scale: np.ndarray) -> bool:
        return np.array_equal(self.free, free) and np.array_equal(self.scale, scale)

    def push(self, s: np.ndarray, y: np.ndarray) -> None:
        sy = float(np.dot(s, y))
        # curvature condition with a margin: F is convex, so sy ≥ 0; tiny sy is rounding noise
        if sy > 1e-10 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            self.pairs.append((s, y, 1.0 / sy))
            while len(self.pairs) > self.size:
                self.pairs.popleft()

    def direction(self, g: np.ndarray, hold: np.ndarray) -> np.ndarray:
        """−H g on the columns not held (H the L-BFGS inverse Hessian, two-loop recursion);
        0 on the held ones."""
        q = np.where(hold, 0.0, g)
        if not self.pairs:
            return -q
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * float(np.dot(s, q))
            alphas.append(a)
            q -= a * np.where(hold, 0.0, y)
        s, y, _ = self.pairs[-1]
        q *= float(np.dot(s, y)) / max(float(np.dot(y, y)), 1e-300)
        for (s, y, rho), a in zip(self.pairs, reversed(alphas), strict=True):
            b = rho * float(np.dot(np.where(hold, 0.0, y), q))
            q += (a - b) * np.where(hold, 0.0, s)
        q[hold] = 0.0
        return -q


def solve_box_dual(
    op: RakeOperator,
    tau: np.ndarray,
    *,
    lam0: np.ndarray | None = None,
    free: np.ndarray | None = None,
    tol: float = 1e-3,
    max_passes: int = 100,
    patience: int = 50,
    dual_bound: float = DEFAULT_DUAL_BOUND,
    capped: bool = True,
    memory: QuasiNewtonMemory | None = None,
    column_counts: np.ndarray | None = None,
    callback: Callable[[int, float, float], None] | None = None,
    size_settle: float | None = None,
    start: DualPoint | None = None,
) -> RakeSolution:
    """Minimise the box dual F(λ) (module docstring) over the ``free`` columns.

    Args:
        op: the raking problem's passes (driver or Spark).
        tau: τ_j, the full target of every column (what the kept rows bring included).
        lam0: start (default: λ_j = log min(1, τ_j / c_j) on free columns, MetaCLIP-like; 0 else).
            Values on the columns outside ``free`` are kept as they are.
        free: bool mask of the columns solved for (default: every column with τ_j > 0).
        tol: KKT tolerance (max_j |n_j − τ_j| / max(τ_j, 1) over the free columns not held).
        max_passes: budget of passes over the table (one per evaluation of F and ∇F).
        patience: stop as ``stalled`` after this many passes in which neither the KKT error
            improved by 0.1 % nor the dual fell by more than 1e-9 · Σ τ.
        dual_bound: B.
        capped: π = min(1, e^η) (True) or e^η (raking without the upper bound, for repeats).
        memory: curvature pairs from an earlier solve over the same free columns (warm start).
        column_counts: Σ_r m_r A_rj per column (the counts c_j), for the certificate when some
            columns are fixed at :data:`KEEP_LOG`.
        callback: ``callback(pass, kkt_err, l1)`` after each accepted iteration.
        size_settle: also stop (status ``size_settled``) once Σπ has moved by less than this
            relative amount over the last :data:`_SETTLE_WINDOW` iterations (the cap search's
            rough solves need Σπ, which settles long before the KKT error does).
        start: an earlier evaluation (:attr:`RakeSolution.point`); used instead of the first pass
            when it was taken at the starting λ (the values of a pass do not depend on τ).
    """
    run = _BoxDualRun(op, tau, lam0, free, float(dual_bound), capped, memory, start)
    status = run.iterate(tol, max_passes, patience, size_settle, callback)
    return run.solution(status, tol, column_counts)


class _BoxDualRun:
    """The state of one :func:`solve_box_dual`: λ, its scaled free part z = s ⊙ λ_free, the
    gradient g = (n − τ)/s there, the current evaluation, the pass count and the best iterate."""

    def __init__(
        self,
        op: RakeOperator,
        tau: np.ndarray,
        lam0: np.ndarray | None,
        free: np.ndarray | None,
        bound: float,
        capped: bool,
        memory: QuasiNewtonMemory | None,
        start: DualPoint | None = None,
    ) -> None:
        self.t0 = time.perf_counter()
        tau = np.asarray(tau, dtype=np.float64)
        q = op.n_columns
        if tau.shape != (q,):
            raise ValueError(f"tau must have one target per column ({q})")
        if not np.all(np.isfinite(tau)) or np.any(tau < 0):
            raise ValueError("targets must be finite and non-negative")
        self.op, self.tau, self.B, self.capped = op, tau, bound, capped
        free = (tau > 0) if free is None else np.asarray(free, dtype=bool)
        self.free = free & (tau > 0)
        self.fidx = np.flatnonzero(self.free)
        self.tau_f = tau[self.fidx]
        self.scale = np.sqrt(np.maximum(self.tau_f, 1.0))
        self.tau_sum = float(self.tau_f.sum()) or 1.0
        self.lo, self.hi = -bound * self.scale, bound * self.scale
        self.passes = 0
        if memory is None or not memory.fits(self.free, self.scale):
            memory = QuasiNewtonMemory(free=self.free.copy(), scale=self.scale)
        self.memory = memory
        self.lam = self._start(lam0)
        reuse = start is not None and np.array_equal(start.lam, self.lam)
        self.cur = start if reuse else self.evaluate(self.lam)
        self.n = self.cur.n()
        self.z = self.lam[self.fidx] * self.scale
        self.g = (self.n[self.fidx] - self.tau_f) / self.scale
        self.e, emax, l1, _ = self.measure()
        self.history: list[dict[str, Any]] = [
            {"iter": 0, "passes": self.passes, "max_rel_err": emax, "kkt_err": self.e, "l1": l1}
            | {"step": "start"}
        ]
        self.best = (self.e, self.lam.copy(), self.cur)
        self.best_pass = self.passes
        self.it = 0
        self.tol = 0.0
        self.last_kind = "start"

    def evaluate(self, lam: np.ndarray, ref: DualPoint | None = None) -> DualPoint:
        """One pass: F's terms, ∇F and Σπ at λ (the dual change against ``ref`` if given)."""
        self.passes += 1
        return self.op.point(lam, capped=self.capped, ref=ref)

    def _start(self, lam0: np.ndarray | None) -> np.ndarray:
        lam = np.zeros(self.op.n_columns) if lam0 is None else np.array(lam0, dtype=np.float64)
        # a column with τ_j = 0 and rows forces π = 0 there (as the exact solution does)
        lam[(self.tau <= 0) & self.op.occupied] = ZERO_LOG
        if lam0 is None and self.fidx.size:
            start = self.evaluate(lam)  # c_j with every free λ at 0 (fixed columns as given)
            c_live = start.n()[self.fidx]
            lam[self.fidx] = np.log(np.minimum(self.tau_f / np.maximum(c_live, 1e-300), 1.0))
        lam[self.fidx] = np.clip(lam[self.fidx], -self.B, self.B)
        return lam

    def measure(self) -> tuple[float, float, float, np.ndarray]:
        """KKT error, max relative error, L1 share and n_j/τ_j − 1 on the free columns."""
        nf = self.n[self.fidx]
        rel = nf / self.tau_f - 1.0
        # per free column, kept for the polish step's choice of columns (:meth:`direction`)
        self.errors = kkt_errors(nf, self.tau_f, self.lam[self.fidx], self.B)
        return (
            float(self.errors.max(initial=0.0)),
            float(np.abs(rel).max(initial=0.0)),
            float(np.abs(nf - self.tau_f).sum() / self.tau_sum),
            rel,
        )

    def iterate(
        self,
        tol: float,
        max_passes: int,
        patience: int,
        size_settle: float | None,
        callback: Callable[[int, float, float], None] | None,
    ) -> str:
        """Projected L-BFGS steps until a stopping test holds; returns the status."""
        self.tol = tol
        mark, last_progress = self.e, self.passes
        sizes: deque[float] = deque(maxlen=_SETTLE_WINDOW + 1)
        while True:
            if self.e <= tol:
                return "converged"
            if size_settle is not None:
                sizes.append(self.cur.size())
                if (
                    len(sizes) == sizes.maxlen
                    and max(sizes) - min(sizes) <= size_settle * sizes[-1]
                ):
                    return "size_settled"
            if self.passes >= max_passes:
                return "max_passes"
            if self.passes - last_progress >= patience:
                return "stalled"
            self.it += 1
            if (
                size_settle is None
                and self.passes - self.best_pass >= _RESTART_PASSES
                and self.memory.pairs
            ):
                # a restart: pairs gathered before rows crossed the kink (or for earlier targets)
                # no longer describe the curvature here (docs/balancing.md, "Restarts"); never in
                # the cap search's rough solves, whose memory the next solve starts from
                self.memory.pairs.clear()
                self.best_pass = self.passes
            step = self.step(max_passes)
            if step is None:
                return "stalled"  # no descent along the projected gradient: at rounding level
            if not step:
                continue  # a bad quasi-Newton model was dropped: retry from the gradient
            if callback is not None:
                callback(self.passes, self.e, self.history[-1]["l1"])
            progress.tick(kkt_err=self.e, l1=self.history[-1]["l1"])
            if self.e < mark * (1 - 1e-3):
                mark, last_progress = self.e, self.passes
            elif self.history[-1]["dual_change"] < -1e-9 * self.tau_sum:
                # the max-norm KKT error is bumpy on ill-conditioned problems while the dual still
                # falls steadily: that is slow progress, not a stall (a planted 200k × 20k problem
                # was called stalled at KKT 1e-2 after 261 passes; it converges in 871)
                last_progress = self.passes

    def step(self, max_passes: int) -> bool | None:
        """One iteration: the direction, then a projected Armijo backtracking (a pass per trial).
        True when a point was accepted, False when a quasi-Newton step (its memory is dropped) or
        a polish step failed, None when even the projected gradient gives no descent."""
        z, g = self.z, self.g
        d, kind = self.direction()
        self.last_kind = kind
        alpha = 1.0
        for _ in range(_MAX_BACKTRACK):
            z_new = np.clip(z + alpha * d, self.lo, self.hi)
            lam_new = self.lam.copy()
            lam_new[self.fidx] = z_new / self.scale
            pt = self.evaluate(lam_new, ref=self.cur)
            dF = pt.dphi - float(np.dot(self.tau_f, lam_new[self.fidx] - self.lam[self.fidx]))
            # Armijo on the projected path: the decrease the linear model promises
            want = _ARMIJO * min(float(np.dot(g, z_new - z)), 0.0)
            if np.isfinite(dF) and dF <= want + 1e-12 * (abs(dF) + 1.0):
                self._accept(z_new, lam_new, pt, dF, kind if alpha == 1.0 else f"{kind}/{alpha:g}")
                return True
            alpha *= 0.5
            if self.passes >= max_passes:
                break
        if kind == "gradient":
            return None
        if kind == "qn":
            self.memory.pairs.clear()  # a bad model: the next step is a gradient step
        return False

    def direction(self) -> tuple[np.ndarray, str]:
        """The search direction in z and its kind: ``qn`` (L-BFGS on the columns not held at the
        box), ``gradient`` (no model yet, or the model's direction is not a descent), or
        ``polish``.

        ``polish``: once at most :data:`_POLISH_COLUMNS` columns miss the tolerance, every other
        iteration takes the raking step λ_j += log(τ_j / n_j) on those columns alone (exact for a
        column whose rows hold no other moving column and have π < 1). The last columns to
        converge sit where rows cross the kink of φ at η = 0 (π reaching 1), along which the
        L-BFGS model is poor: on the corpus list at N = 10 % the final solve took 158 passes
        without this step and about 90 with it (docs/balancing.md).
        """
        z, g = self.z, self.g
        # hold the columns at a bound whose gradient points out of the box
        hold = ((z <= self.lo * (1 - 1e-12)) & (g > 0)) | ((z >= self.hi * (1 - 1e-12)) & (g < 0))
        if self.last_kind != "polish" and self.memory.pairs:
            late = ~hold & (self.errors > self.tol)
            if 0 < np.count_nonzero(late) <= _POLISH_COLUMNS:
                nf = self.n[self.fidx][late]
                step = np.log(self.tau_f[late] / np.maximum(nf, 1e-300))
                d = np.zeros_like(z)
                d[late] = step * self.scale[late]
                return d, "polish"
        d = self.memory.direction(g, hold)
        if self.memory.pairs and float(np.dot(g, d)) < 0:
            return d, "qn"
        self.memory.pairs.clear()  # no model yet, or not a descent
        d = np.where(hold, 0.0, -g)
        # a first step of at most one unit of λ per column
        d *= min(1.0, 1.0 / max(float(np.max(np.abs(d / self.scale), initial=0.0)), 1e-300))
        return d, "gradient"

    def _accept(
        self, z_new: np.ndarray, lam: np.ndarray, pt: DualPoint, dF: float, kind: str
    ) -> None:
        self.lam, self.cur = lam, pt
        self.n = pt.n()
        g_new = (self.n[self.fidx] - self.tau_f) / self.scale
        self.memory.push(z_new - self.z, g_new - self.g)
        self.z, self.g = z_new, g_new
        self.e, emax, l1, _ = self.measure()
        self.history.append(
            {"iter": self.it, "passes": self.passes, "max_rel_err": emax, "kkt_err": self.e}
            | {"l1": l1, "dual_change": dF, "step": kind}
        )
        if self.e < self.best[0]:
            self.best = (self.e, self.lam.copy(), self.cur)
            self.best_pass = self.passes

    def solution(self, status: str, tol: float, column_counts: np.ndarray | None) -> RakeSolution:
        """The result at the last iterate (the best one unless converged or settled), with the
        unmet targets, the columns at the box and the Farkas test of their sign pattern."""
        if status not in ("converged", "size_settled") and self.best[0] < self.e:
            self.e, self.lam, self.cur = self.best
            self.n = self.cur.n()
        fidx, lam, n = self.fidx, self.lam, self.n
        e, emax, l1, rel = self.measure()
        residual = np.zeros(self.op.n_columns)
        residual[fidx] = rel
        unmet = fidx[target_errors(n[fidx], self.tau_f) >= tol]
        at_bound = fidx[np.abs(lam[fidx]) >= self.B * (1 - 1e-12)]
        y = np.zeros(self.op.n_columns)
        y[at_bound] = np.sign(lam[at_bound])
        certificate = farkas_test(self.op, self.tau, y, lam, self.free, self.capped, column_counts)
        if status == "converged" and unmet.size:
            status = "infeasible"  # KKT holds, but some targets are held at the box
        return RakeSolution(
            lam=lam,
            pi=self.cur.pi,
            n=n,
            residual=residual,
            status=status,
            iterations=self.it,
            max_rel_err=emax,
            kkt_err=e,
            best_kkt_err=min(self.best[0], e),
            l1=l1,
            unmet=unmet,
            at_bound=at_bound,
            history=self.history,
            certificate=certificate,
            seconds=time.perf_counter() - self.t0,
            passes=self.passes,
            size=self.cur.size(),
            memory=self.memory,
            point=self.cur,
        )


def target_errors(n: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """|n_j − τ_j| / max(τ_j, 1) per column: relative, and in samples below one sample (a target
    of 1e-5 expected samples met to 1e-6 is met; its relative error, 0.1, says nothing a user
    can act on)."""
    return np.abs(n - tau) / np.maximum(tau, 1.0)


def kkt_errors(n: np.ndarray, tau: np.ndarray, lam: np.ndarray, bound: float) -> np.ndarray:
    """The KKT error per free column: :func:`target_errors`, 0 on columns held at the box ±B by
    a target they cannot meet (λ_j = B and n_j < τ_j, or λ_j = −B and n_j > τ_j)."""
    at_top, at_bottom = lam >= bound * (1 - 1e-12), lam <= -bound * (1 - 1e-12)
    held = (at_top & (n < tau)) | (at_bottom & (n > tau))
    return np.where(held, 0.0, target_errors(n, tau))


def farkas_test(
    op: RakeOperator,
    tau: np.ndarray,
    y: np.ndarray,
    lam: np.ndarray,
    free: np.ndarray,
    capped: bool = True,
    column_counts: np.ndarray | None = None,
) -> dict[str, Any]:
    """Test whether the direction y (on the free columns) proves the targets infeasible.

    Farkas' lemma for the box: {π ∈ [0,1] : n_j(π) = τ_j for the free j} is empty iff some y has
    Σ_r m_r max(0, (A y)_r) < τ·y over the rows that are not fixed (uncapped: A y ≤ 0 and τ·y > 0).
    Rows held at π = 1 by a fixed column (λ = :data:`KEEP_LOG`) enter with their exact
    contribution: y is extended by a large value on those columns, whose share is then subtracted.
    The solver passes the sign pattern of the columns held at the box. Returns the slope
    (negative = proof), a boolean with a margin against rounding, and the support of y.
    """
    support = np.flatnonzero(y)
    if support.size == 0:
        return {"found": False, "slope": 0.0, "support_size": 0, "support": []}
    keep = ~free & (lam >= KEEP_LOG * 0.5)
    if keep.any() and column_counts is None:
        return {
            "found": False,
            "slope": float("nan"),
            "support_size": int(support.size),
            "support": support[:1000].tolist(),
            "note": "no column counts given",
        }
    big = 1e3 * (float(np.abs(y).sum()) + 1.0)
    y_ext = np.where(keep, big, y)
    pos = op.positive_part(y_ext)
    kept_cols = float(np.dot(column_counts, keep)) if keep.any() else 0.0
    pos -= big * kept_cols  # Σ over kept rows of m_r · big · (kept columns in r)
    ty = float(np.dot(tau, y))
    if capped:
        slope = pos - ty
        found = slope < -1e-9 * (abs(pos) + abs(ty) + big * kept_cols * 1e-6 + 1.0)
    else:
        slope = -ty if pos <= 0 else float("inf")
        found = slope < 0
    return {
        "found": bool(found),
        "slope": float(slope),
        "support_size": int(support.size),
        "support": support[:1000].tolist(),
    }
