"""``rake`` with attributes as one problem: rake's entry balancing and M4's bias constraints in
the same dual (derivation: docs/balancing.md, "`rake` with attributes").

Rows r (multiplicity m_r) are the matched signatures with their attribute columns. Rake's solution
at its head cap t fixes which rows are *kept* (they hold an entry with c_j ≤ t_keep: π_r = 1, as
MetaCLIP keeps them) and which are *dropped* (an entry with target 0: π_r = 0); the other rows are
raked. The joint primal is

    minimise   Σ_raked m_r (π_r log π_r − π_r + 1) + B Σ_j |n_j(π) − τ_j| + B_b Σ_c max(0, G_c(π))
    subject to Σ_r m_r π_r = N,   0 ≤ π ≤ 1 (π fixed on kept and dropped rows),

with n_j(π) = Σ_{r∋j} m_r π_r over every row (entries, then margin levels: rake's columns and
targets τ_j at its head cap), G(π) = T Σ_r m_r π_r b_r the M4 bias constraints over the per-row 0/1
base features b_r (:mod:`.m4`). Its dual, over λ_j ∈ [−B, B] on rake's free columns, the size
multiplier ν (free) and κ_c ∈ [0, B_b] with μ = Tᵀκ, is

    min  F(λ, ν, κ) = Σ_raked m_r φ(η_r) + Σ_kept m_r η_r − τ·λ − N ν,
    η_r = Σ_{j ∈ S_r free} λ_j + ν − b_r·μ,    π_r = min(1, e^{η_r}) on raked rows,

∂F/∂λ_j = n_j − τ_j, ∂F/∂ν = Σ m π − N, ∂F/∂κ = −T Σ m π b = −G. Kept rows enter linearly (π = 1
whatever η): their terms are the fixed columns' contribution without the constant KEEP_LOG, so
the dual changes the line search compares keep full precision.

Solver (driver): L-BFGS-B on F in scaled variables (λ_j √max(τ_j, 1), ν √N, κ_c s_c), started
from rake's λ and size shift and κ = 0, stopped when rake's KKT test holds on the entries, the
size is met to :data:`SIZE_RTOL` and every bias constraint is met (or held at its bound) to
:data:`BIAS_RTOL` · ε of its attribute's mass. The association moments are re-linearised at the
achieved shares in rounds, as in :mod:`.m4`. Every evaluation is one pass
(:func:`joint_pass_kernel`, exact binned sums) on driver blocks or on Spark, so both paths give
the same bits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.optimize import minimize

from curation.attributes import GROUPS_COL, AttributeSpec

from .blocks import binned_columns, binned_sum, combine, finalize
from .dual_solver import DEFAULT_DUAL_BOUND, KEEP_LOG, kkt_errors
from .kernels import ZERO_LOG, phi
from .m4 import (
    ASSOCIATION_SAFETY,
    MAX_ROUNDS,
    M4Result,
    MomentLayout,
    achieved_shares,
    base_features,
    base_params,
    bias_from_sums,
    bounds_met,
    build_constraints,
    constrained_labels,
    entropy_facts,
    infeasible_constraints,
    target_shares,
    with_multiplicity,
)
from .params import ScoreParams, segment_sum
from .signatures import encode_margin, list_array_to_csr

#: Box of the bias multipliers κ_c ≤ B_b: one unit of constraint violation (in samples) costs
#: B_b nats, the exact-penalty price. It must exceed the multipliers of feasible constraints (up
#: to ~40 measured on 30-row tests); a multiplier at the box marks a constraint no π meets.
DEFAULT_BIAS_BOUND = 1e5
#: The log-offset of rake's kept rows (π = min(1, e^{o + η})): dropping a kept sample costs o
#: nats, more than any entry target can pay (η ≥ o − B·k with k free entries at −B: kept for
#: k < o/B = 100) and less than a bias constraint (:data:`DEFAULT_BIAS_BOUND`), so the bias
#: bounds come first, then MetaCLIP's tail, then rake's entry targets.
KEEP_PRICE = 1e3
#: Σπ within this relative distance of N.
SIZE_RTOL = 1e-7
#: A bias constraint is met when its violation is below this share of ε times its attribute's
#: mass (RB and AB are held at 0.999 ε and 0.98 ε, so this keeps them within ε).
BIAS_RTOL = 1e-4


# ------------------------------------------------------------------------------- blocks
@dataclass
class JointBlock:
    """Rows of the joint problem: multiplicity, the fixed log-offset (:data:`KEEP_PRICE` on
    kept rows, −inf on dropped rows, 0 on raked rows), the free rake columns (CSR over entries, then margin levels) and the base features
    (CSR)."""

    pid: int
    mult: np.ndarray
    fixed: np.ndarray
    a_indptr: np.ndarray
    a_cols: np.ndarray
    f_indptr: np.ndarray
    f_cols: np.ndarray
    n_columns: int
    n_base: int

    @classmethod
    def concat(cls, pid: int, parts: Sequence[JointBlock]) -> JointBlock:
        """One block of ``parts`` in order (a partition's batches on Spark)."""

        def cat(name: str, dtype: Any) -> np.ndarray:
            arrays = [getattr(p, name) for p in parts]
            return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

        def ptr(name: str) -> np.ndarray:
            out, offset = [np.zeros(1, np.int64)], 0
            for p in parts:
                indptr = getattr(p, name)
                out.append(indptr[1:] + offset)
                offset += int(indptr[-1])
            return np.concatenate(out)

        first = parts[0]
        return cls(
            pid,
            cat("mult", np.float64),
            cat("fixed", np.float64),
            ptr("a_indptr"),
            cat("a_cols", np.int32),
            ptr("f_indptr"),
            cat("f_cols", np.int32),
            first.n_columns,
            first.n_base,
        )


def rake_columns(base: ScoreParams) -> tuple[np.ndarray, dict[str, int]]:
    """λ over rake's columns (entries, then each margin's levels) and the margins' offsets."""
    offsets, parts, q = {}, [np.asarray(base.entry_values, np.float64)], base.n_entries
    for col, values in base.margin_values.items():
        offsets[col] = q
        parts.append(np.asarray(values, np.float64))
        q += len(values)
    return np.concatenate(parts), offsets


def joint_block_from_arrow(
    batch: pa.RecordBatch | pa.Table,
    layout: MomentLayout,
    base: ScoreParams,
    pid: int = 0,
    keep_price: float | None = None,
) -> JointBlock:
    """A block from rows with ``entry_ids``, rake's margin columns, ``attribute_groups``,
    ``attribute_labels`` and ``multiplicity``; ``base`` (rake's parameters) says which columns
    are fixed: λ = KEEP_LOG keeps its rows (log-offset ``keep_price``, default
    :data:`KEEP_PRICE`), λ = ZERO_LOG drops them."""
    lam, offsets = rake_columns(base)
    indptr, ids = list_array_to_csr(batch.column("entry_ids"))
    k = np.diff(indptr)
    cols = [ids.astype(np.int64)]
    row_of = [np.repeat(np.arange(k.size), k)]
    for col, o in offsets.items():
        codes = encode_margin(batch.column(col), base.margin_levels[col])[0]
        cols.append(o + codes.astype(np.int64))
        row_of.append(np.arange(k.size))
    rows, cols_all = np.concatenate(row_of), np.concatenate(cols)
    order = np.lexsort((cols_all, rows))  # entries first, then margins: sorted per row
    rows, cols_all = rows[order], cols_all[order]
    keep, drop = lam >= KEEP_LOG / 2, lam <= ZERO_LOG / 2
    n = k.size
    kept = np.bincount(rows, weights=keep[cols_all], minlength=n) > 0
    dropped = np.bincount(rows, weights=drop[cols_all], minlength=n) > 0
    free = ~(keep | drop)[cols_all]
    a_indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[free], minlength=n))])
    gp, gi = list_array_to_csr(batch.column(GROUPS_COL))
    lp, li = layout.label_csr(batch)
    f_indptr, f_cols = base_features(layout, gp, gi, lp, li)
    mult = np.asarray(batch.column("multiplicity").to_numpy(zero_copy_only=False), np.float64)
    keep = KEEP_PRICE if keep_price is None else float(keep_price)
    fixed = np.where(dropped, -np.inf, np.where(kept, keep, 0.0))
    return JointBlock(
        pid,
        mult,
        fixed,
        a_indptr.astype(np.int64),
        cols_all[free].astype(np.int32),
        f_indptr,
        f_cols,
        lam.size,
        layout.size,
    )


def joint_eta(block: JointBlock, lam: np.ndarray, nu: float, mu: np.ndarray) -> np.ndarray:
    """η_r = Σ_{free j ∈ S_r} λ_j + ν − b_r·μ (fixed-order row arithmetic)."""
    eta = segment_sum(lam[block.a_cols], block.a_indptr) + nu
    return eta - segment_sum(mu[block.f_cols], block.f_indptr)


def joint_pi(fixed: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """π_r = min(1, e^{o_r + η_r}) with the row's fixed offset o_r (0 on dropped rows)."""
    return np.exp(np.minimum(fixed + eta, 0.0))


def joint_pass_kernel(
    block: JointBlock, lam: np.ndarray | None, nu: float = 0.0, mu: np.ndarray | None = None
) -> dict[str, Any]:
    """One pass on a block: F's row terms, n = Aᵀ(m π) over rake's columns, Σ m π, Σ m π b
    and the entropy terms, as exact binned sums. ``lam=None``: π = 1 on the eligible rows (the
    pool before balancing)."""
    if lam is None:
        pi = np.ones(block.mult.size)
        terms = np.zeros(block.mult.size)
    else:
        eta = joint_eta(block, lam, nu, mu)
        pi = joint_pi(block.fixed, eta)
        # φ(o + η) − o: the kept rows' constant offset o taken out (0 on dropped rows)
        o = np.where(np.isfinite(block.fixed), block.fixed, 0.0)
        live = np.isfinite(block.fixed)
        terms = np.where(live, phi(np.where(live, o + eta, 0.0)) - o, 0.0)
    w = block.mult * pi
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(pi > 0, pi * np.log(np.where(pi > 0, pi, 1.0)), 0.0)
    a_rows = np.repeat(np.arange(pi.size), np.diff(block.a_indptr))
    f_rows = np.repeat(np.arange(pi.size), np.diff(block.f_indptr))
    return {
        "dual": binned_sum(block.mult * terms),
        "size": binned_sum(w),
        "sq": binned_sum(w * pi),
        "qlogq": binned_sum(block.mult * plogp),
        "mass": binned_sum(block.mult),
        "n": binned_columns(block.a_cols, w[a_rows], block.n_columns),
        "feat": binned_columns(block.f_cols, w[f_rows], block.n_base),
    }


class MemoryJointOperator:
    """The joint problem's rows on the driver, in blocks (the same kernel and sums as on Spark)."""

    path = "driver"

    def __init__(self, blocks: Sequence[JointBlock]) -> None:
        self.blocks = list(blocks)
        self.passes = 0

    def run(
        self, lam: np.ndarray | None, nu: float = 0.0, mu: np.ndarray | None = None
    ) -> dict[str, Any]:
        self.passes += 1
        parts = [joint_pass_kernel(b, lam, nu, mu) for b in self.blocks]
        out = parts[0]
        for p in parts[1:]:
            out = combine(out, p)
        return finalize(out)

    def row_pi(self, lam: np.ndarray, nu: float, mu: np.ndarray) -> np.ndarray:
        return np.concatenate([joint_pi(b.fixed, joint_eta(b, lam, nu, mu)) for b in self.blocks])


def score_joint_batch(
    moments: dict[str, Any], batch: pa.RecordBatch | pa.Table, matched: np.ndarray
) -> np.ndarray:
    """π of pool rows from the broadcast parameters of a joint solve (``moments.link`` =
    ``joint``): min(1, e^{η_r}) with rake's λ from the joint solve, 1 on kept rows, 0 on
    dropped and on not eligible (``matched`` False) rows."""
    layout = MomentLayout.from_dict(moments["layout"])
    base = base_params(moments)
    keep = moments.get("keep_price")
    block = joint_block_from_arrow(with_multiplicity(batch), layout, base, keep_price=keep)
    lam = rake_columns(base)[0]
    mu = np.asarray(moments["mu"], dtype=np.float64)
    q = joint_pi(block.fixed, joint_eta(block, lam, float(moments["nu"]), mu))
    return np.where(matched, q, 0.0)


# ------------------------------------------------------------------------------- solve
@dataclass
class JointProblem:
    """Rake's side of the joint problem: targets τ over rake's columns, which are free, rake's
    solution λ (fixed columns included) and size shift, and N."""

    tau: np.ndarray
    free: np.ndarray
    lam0: np.ndarray
    nu0: float
    target_size: float
    bound: float = DEFAULT_DUAL_BOUND
    bias_bound: float = DEFAULT_BIAS_BOUND
    tol: float = 1e-3
    max_passes: int = 2000

    @classmethod
    def of(cls, base: ScoreParams, tau: np.ndarray, target_size: float, **kw: Any) -> JointProblem:
        """From rake's parameters and its targets over its columns (entries, then levels)."""
        lam, _ = rake_columns(base)
        tau = np.asarray(tau, dtype=np.float64)
        bound = float(kw.get("bound", DEFAULT_DUAL_BOUND))
        free = (np.abs(lam) <= bound * (1 + 1e-12)) & (tau > 0)
        return cls(tau, free, lam, float(base.offset or 0.0), float(target_size), **kw)


@dataclass
class JointResult(M4Result):
    """:class:`~.m4.M4Result` (the bias side; ``lam`` = κ, ``mu`` = Tᵀκ, ``nu`` = ν) plus λ over
    rake's columns and the entry side's errors."""

    columns: np.ndarray | None = None
    entries: dict[str, Any] = field(default_factory=dict)
    moments: np.ndarray | None = None  # T of the last round (G(π) = T Σ m π b)


class _Variables:
    """x = (λ_free · s_λ, ν · s_ν, κ · s_κ) ↔ (λ over every column, ν, κ)."""

    def __init__(self, prob: JointProblem, T: np.ndarray, feat0: np.ndarray) -> None:
        self.prob, self.T = prob, T
        self.fidx = np.flatnonzero(prob.free)
        self.s_lam = np.sqrt(np.maximum(prob.tau[self.fidx], 1.0))
        self.s_nu = math.sqrt(max(prob.target_size, 1.0))
        self.s_kappa = np.sqrt(np.maximum(np.abs(T) @ feat0, 1.0))
        self.m = self.fidx.size

    def split(self, x: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        lam = self.prob.lam0.copy()
        lam[self.fidx] = x[: self.m] / self.s_lam
        return lam, float(x[self.m] / self.s_nu), x[self.m + 1 :] / self.s_kappa

    def join(self, lam: np.ndarray, nu: float, kappa: np.ndarray) -> np.ndarray:
        return np.concatenate([lam[self.fidx] * self.s_lam, [nu * self.s_nu], kappa * self.s_kappa])

    def bounds(self) -> list[tuple[float | None, float | None]]:
        B, Bb = self.prob.bound, self.prob.bias_bound
        return (
            [(-B * s, B * s) for s in self.s_lam]
            + [(None, None)]
            + [(0.0, Bb * s) for s in self.s_kappa]
        )


def _bias_tolerance(spec: AttributeSpec, what: list, feat: np.ndarray, layout: MomentLayout):
    """Per constraint: :data:`BIAS_RTOL` · ε of its kind · its attribute's mass (in samples)."""
    offsets = {a.name: layout.offsets[i] for i, a in enumerate(spec.attributes)}
    eps = {"representation": spec.epsilon_representation, "association": spec.epsilon_association}
    return np.array([BIAS_RTOL * eps[c.kind] * max(feat[offsets[c.attribute]], 1.0) for c in what])


def _kkt(v: _Variables, out: dict[str, Any], lam, kappa, tol_b: np.ndarray) -> dict[str, float]:
    """The stopping test's errors: rake's KKT error on the free columns, the size error, and the
    largest projected bias gradient relative to its tolerance."""
    prob = v.prob
    n_f, tau_f = out["n"][v.fidx], prob.tau[v.fidx]
    G = v.T @ out["feat"]
    held = kappa >= prob.bias_bound * (1 - 1e-12)
    pg = np.where(kappa <= 1e-9, np.maximum(G, 0.0), np.where(held, np.minimum(G, 0.0), G))
    return {
        "kkt_err": float(kkt_errors(n_f, tau_f, lam[v.fidx], prob.bound).max(initial=0.0)),
        "size_rel_err": abs(out["size"] - prob.target_size) / prob.target_size,
        "bias_err": float(np.max(np.abs(pg) / tol_b, initial=0.0)),
        "max_violation": float(np.max(G, initial=0.0)) / prob.target_size,
    }


def _converged(e: dict[str, float], tol: float) -> bool:
    return e["kkt_err"] <= tol and e["size_rel_err"] <= SIZE_RTOL and e["bias_err"] <= 1.0


def solve_joint_dual(
    op: MemoryJointOperator,
    prob: JointProblem,
    v: _Variables,
    x0: np.ndarray,
    tol_b: np.ndarray,
    history: list[dict[str, Any]],
) -> tuple[np.ndarray, dict[str, Any], bool]:
    """L-BFGS-B on F/N (module docstring) from x0 until the joint KKT test holds; returns x, its
    pass and whether the test held. Each evaluation of F and ∇F is one pass."""
    N, last = prob.target_size, {}
    budget = max(prob.max_passes - op.passes, 1)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        lam, nu, kappa = v.split(x)
        out = op.run(lam, nu, v.T.T @ kappa)
        g = np.concatenate(
            [
                (out["n"][v.fidx] - prob.tau[v.fidx]) / v.s_lam,
                [(out["size"] - N) / v.s_nu],
                -(v.T @ out["feat"]) / v.s_kappa,
            ]
        )
        value = out["dual"] - float(np.dot(prob.tau[v.fidx], lam[v.fidx])) - nu * N
        e = _kkt(v, out, lam, kappa, tol_b)
        history.append({"iter": len(history), "passes": op.passes, "dual": value / N} | e)
        last.update(x=x.copy(), out=out, e=e)
        return value / N, g / N

    def stop(intermediate_result: Any) -> None:
        if np.array_equal(intermediate_result.x, last["x"]) and _converged(last["e"], prob.tol):
            raise StopIteration

    res = minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=v.bounds(),
        callback=stop,
        options={"maxfun": budget, "maxiter": budget, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 30},
    )
    x = np.asarray(res.x, dtype=np.float64)
    if not np.array_equal(x, last["x"]):
        fun(x)
    return x, last["out"], _converged(last["e"], prob.tol)


def _rounds(
    op: MemoryJointOperator,
    spec: AttributeSpec,
    prob: JointProblem,
    labels: list[list[int]],
    shares: list[np.ndarray],
    start: dict[str, Any],
    history: list[dict[str, Any]],
) -> tuple:
    """Solve with the association moments linearised at ``shares``, re-linearise at the achieved
    shares, repeat until every RB and AB is within ε (or :data:`~.m4.MAX_ROUNDS`). Returns
    (rounds, T, constraints, λ, ν, κ, the final pass, bias after, whether the last solve's KKT
    test held)."""
    layout = MomentLayout.of(spec)
    lam, nu, kappa, safety = prob.lam0, prob.nu0, None, ASSOCIATION_SAFETY
    for rounds in range(1, MAX_ROUNDS + 1):
        T, what = build_constraints(spec, layout, labels, shares, safety)
        v = _Variables(prob, T, start["feat"])
        if kappa is None or kappa.size != len(what):
            kappa = np.zeros(len(what))
        tol_b = _bias_tolerance(spec, what, start["feat"], layout)
        x, out, solved = solve_joint_dual(op, prob, v, v.join(lam, nu, kappa), tol_b, history)
        lam, nu, kappa = v.split(x)
        after = bias_from_sums(spec, layout, out["feat"], labels)
        if bounds_met(spec, after) or rounds == MAX_ROUNDS or op.passes >= prob.max_passes:
            break
        if not np.any(kappa >= prob.bias_bound * (1 - 1e-9)):  # not at the box: feasible
            safety = _tightened(safety, spec, after, rounds)
        shares = achieved_shares(spec, layout, out["feat"])
    return rounds, T, what, lam, nu, kappa, out, after, solved


def _tightened(safety: float, spec: AttributeSpec, after: dict[str, Any], rounds: int) -> float:
    """The AB safety factor δ of the next round. From the third round on, when an AB still
    exceeds ε after a re-linearisation (and no constraint is held at the multiplier bound, which
    would mark it infeasible), δ shrinks by ε/AB: the shares drift between rounds when
    RB does not pin them (seen with infeasible margin targets: AB 0.0114–0.0120 over six rounds at
    δ = 0.98), and the linearised bound must absorb that drift."""
    worst = max(after[a.name]["ab"] for a in spec.attributes)
    if rounds < 2 or worst <= spec.epsilon_association:
        return safety
    return safety * 0.99 * spec.epsilon_association / worst


def _entry_errors(prob: JointProblem, out: dict[str, Any], lam: np.ndarray) -> dict[str, Any]:
    """The entry side at the solution, as rake reports it."""
    fidx = np.flatnonzero(prob.free)
    n_f, tau_f = out["n"][fidx], prob.tau[fidx]
    errors = kkt_errors(n_f, tau_f, lam[fidx], prob.bound)
    unmet = np.abs(n_f - tau_f) / np.maximum(tau_f, 1.0) >= prob.tol
    return {
        "kkt_err": float(errors.max(initial=0.0)),
        "max_rel_err": float(np.abs(n_f / tau_f - 1.0).max(initial=0.0)),
        "l1": float(np.abs(n_f - tau_f).sum() / max(float(tau_f.sum()), 1e-300)),
        "n_unmet_columns": int(np.count_nonzero(unmet)),
        "n_at_bound": int(np.count_nonzero(np.abs(lam[fidx]) >= prob.bound * (1 - 1e-12))),
        "n_free_columns": int(fidx.size),
    }


def joint_solve(
    op: MemoryJointOperator,
    spec: AttributeSpec,
    prob: JointProblem,
    callback: Callable[[int], None] | None = None,
) -> JointResult:
    """Rake's entry balancing and the bias constraints in one dual (module docstring), on the
    rows behind ``op``, started from rake's solution."""
    t0 = time.perf_counter()
    layout = MomentLayout.of(spec)
    pool = op.run(None)
    n_eligible = float(pool["mass"])
    if not 0 < prob.target_size <= n_eligible * (1 + 1e-12):
        raise ValueError(
            f"target size {prob.target_size:g} is not in (0, {n_eligible:g}], the eligible samples"
        )
    labels = constrained_labels(spec, layout, pool["feat"])
    before = bias_from_sums(spec, layout, pool["feat"], labels)
    at_rake = op.run(prob.lam0, prob.nu0, np.zeros(layout.size))
    history: list[dict[str, Any]] = []
    rounds, T, what, lam, nu, kappa, out, after, solved = _rounds(
        op,
        spec,
        prob,
        labels,
        target_shares(spec, layout, pool["feat"]),
        at_rake,
        history,
    )
    values = (T @ out["feat"]) / prob.target_size
    infeasible = infeasible_constraints(spec, what, values, kappa, prob.bias_bound, before, after)
    status = "converged" if bounds_met(spec, after) else ("infeasible" if infeasible else "unmet")
    if callback is not None:
        callback(op.passes)
    return JointResult(
        mu=T.T @ kappa,
        nu=nu,
        lam=kappa,
        status=status,
        constraints=what,
        values=values,
        before=before,
        after=after,
        labels=labels,
        size=float(out["size"]),
        target_size=prob.target_size,
        n_eligible=n_eligible,
        entropy=entropy_facts(_m4_terms(pool), _m4_terms(out), n_eligible),
        history=history,
        passes=op.passes,
        seconds=time.perf_counter() - t0,
        rounds=rounds,
        infeasible=infeasible,
        base={
            "bias": bias_from_sums(spec, layout, at_rake["feat"], labels),
            "entropy": entropy_facts(_m4_terms(pool), _m4_terms(at_rake), n_eligible)["after"],
            "size": float(at_rake["size"]),
        },
        columns=lam,
        moments=T,
        entries=_entry_errors(prob, out, lam) | {"kkt_test": "met" if solved else "not met"},
    )


def _m4_terms(out: dict[str, Any]) -> dict[str, Any]:
    """A joint pass under the names :mod:`.m4`'s entropy helpers read."""
    return {"size": out["size"], "qlogq": out["qlogq"], "sq": out["sq"]}
