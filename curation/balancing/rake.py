"""``rake``: capped raking that keeps MetaCLIP's tail and flattens the head.

Objective ``tail`` (the default). MetaCLIP's rule at cap t keeps every sample that holds a tail
entry (c_j ≤ t: p_j = 1, so π = 1) and only has a choice among the *head-only* samples, whose
entries all have c_j > t; it then keeps each with π = 1 − Π_j (1 − t/c_j), which leaves every head
entry at n_j ≥ t and most far above. ``rake`` keeps the same samples and uses the same freedom
differently:

1. t_keep = MetaCLIP's cap at the target size N (or the given cap t). Every sample with an entry
   of c_j ≤ t_keep gets π = 1 — exactly MetaCLIP's kept set, so tail entries keep 100 % of their
   samples, as with MetaCLIP.
2. The head-only samples are raked: π_r = min(1, exp(Σ_{j∈S_r} λ_j [+ Σ margins μ_x])), with λ
   chosen so that each head entry's *total* count n_j (kept samples included) comes as close as it
   can to its capped target τ_j = min(c_j, t_head): the I-projection of :mod:`.dual_solver`, with
   the kept samples fixed and an exact L1 penalty B where a head entry is already over its target
   from the kept samples alone (its head-only samples are then dropped, π ≈ e^{−B}).
3. t_head is solved so that Σπ = N (:mod:`.cap_search`); usually t_head > t_keep, because raked
   samples hold fewer head matches per sample than MetaCLIP's.

At the same N this dominates MetaCLIP's rule on what users ask of a balanced set: the same tail
kept, the head as close to flat as the co-occurrences allow (higher entropy of the expected entry
counts, a lower top-100 share, less overshoot over t). Derivation and measurements:
``docs/balancing.md``.

Objective ``l1`` (the previous default, for users who want it): no samples are fixed; all
entries are raked to τ_j = min(c_j, t) with the exact L1 penalty, t solved for N. Its L1 error to
the capped target is the lowest, but on multi-label captions it reaches it by dropping samples
that hold one tail entry and many head entries, so tail entries lose samples.

With ``entry_targets`` (explicit τ) both objectives reduce to plain capped calibration.

Execution. Every pass goes through a :class:`~.operators.RakeOperator` (driver SciPy CSR, or Spark
cached blocks): the solver, the cap search and this orchestration run on the driver and only the
passes are distributed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .cap_search import search_head_cap, size_shift
from .dual_solver import DEFAULT_DUAL_BOUND, KEEP_LOG, RakeSolution, solve_box_dual
from .kernels import ZERO_LOG
from .metaclip import cap_for_size_on
from .operators import LocalOperator, RakeOperator, TableOperator, WorkOperator, build_problem
from .params import BalanceResult, ScoreParams
from .signatures import SignatureTable
from .target_size import DEFAULT_SIZE_RTOL, TargetSizeError, repeat_scale_from_total
from .targets import cap_vector, capped_targets, margin_target_distribution
from .warm_solves import WarmSolver

__all__ = [
    "DEFAULT_DUAL_BOUND",
    "OBJECTIVES",
    "RakeSolution",
    "build_problem",
    "rake",
    "rake_on",
]

Objective = Literal["tail", "l1"]
#: ``tail``: keep MetaCLIP's kept set, rake the head-only samples (default); ``l1``: rake all.
OBJECTIVES: tuple[str, ...] = ("tail", "l1")
#: Default pass cap of one solve: a safety cap, not the target. Solves usually need 10–100
#: passes; the hardest real-caption problems measured (10 % sizes) need 100–120 from cold, and a
#: stop at 100 there left a KKT error of 1.1–1.7e-3 and a "max_passes" warning for no gain.
DEFAULT_MAX_PASSES = 200


def rake(table: SignatureTable, **kwargs: Any) -> BalanceResult:
    """Capped raking of a driver-side signature table: :func:`rake_on` on a
    :class:`~curation.balancing.operators.LocalOperator` (see there for the arguments)."""
    return rake_on(LocalOperator(table), **kwargs)


@dataclass(frozen=True)
class _Caps:
    """The capped targets τ_j(t) = min(c_j, t_j) of the working entries, with the cap of the
    ``<unmatched>`` pseudo-entry (last column) fixed or following t."""

    counts: np.ndarray
    keep_unmatched: bool
    unmatched_cap: float | None

    def caps(self, t: float) -> np.ndarray:
        own = self.unmatched_cap if self.unmatched_cap is not None else t
        return cap_vector(self.counts.size, t, own if self.keep_unmatched else None)

    def targets(self, t: float) -> np.ndarray:
        return capped_targets(self.counts, self.caps(t))


@dataclass
class _EntrySolve:
    """The entry solve's outcome: the cap used (None for explicit targets), the targets τ_e, and
    the solution (then extended by the margin solve, when there are margins)."""

    t: float | None
    tau: np.ndarray
    sol: RakeSolution


def rake_on(
    op: TableOperator,
    *,
    objective: Objective = "tail",
    t: float | None = None,
    target_size: float | None = None,
    entry_targets: np.ndarray | None = None,
    margins: Sequence[str] = (),
    margin_targets: Mapping[str, str | Mapping[str, float]] | None = None,
    tol: float = 1e-3,
    max_iter: int = DEFAULT_MAX_PASSES,
    patience: int = 50,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    with_replacement: bool = False,
    capped: bool = True,
    dual_bound: float = DEFAULT_DUAL_BOUND,
    size_rtol: float = DEFAULT_SIZE_RTOL,
    max_size_evals: int = 30,
) -> BalanceResult:
    """Capped raking (module docstring) on any
    :class:`~curation.balancing.operators.TableOperator` (driver or Spark).

    Args:
        objective: ``tail`` (keep MetaCLIP's kept set, rake the head-only samples) or ``l1``
            (rake every sample toward min(c_j, t), exact L1).
        t: the cap. Without it, ``target_size`` N is required: ``tail`` keeps MetaCLIP's set at
            N and solves the head cap for N; ``l1`` solves t for N.
        entry_targets: explicit τ (expected counts per entry) instead of min(c_j, t).
        margins / margin_targets: extra margin columns; their target counts are
            P_X(x) · N_ref, with P_X empirical (default), uniform or user shares, and N_ref the
            target size if given, else the expected size of the entry-only solution.
        max_iter: pass budget of each solve (one pass = one product with A and one with Aᵀ).
        keep_unmatched: unmatched samples form the pseudo-entry ``<unmatched>`` (id m) with
            cap ``unmatched_cap`` (default: t).
        dual_bound: B, the price of a unit of target violation (see :mod:`.dual_solver`).
        capped: False solves raking without the π ≤ 1 bound (weights e^η, for sampling with
            replacement: E[r_i] = N·w_i/Σw); nothing is fixed then.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown rake objective {objective!r} (one of {', '.join(OBJECTIVES)})")
    work = op.work(keep_unmatched)
    counts = work.counts()
    _check_size(target_size, work.n_eligible, with_replacement)
    caps = _Caps(counts, keep_unmatched, unmatched_cap)
    t_keep = _keep_cap(
        work, caps, objective, t, target_size, entry_targets, capped, with_replacement
    )
    solve_kw = dict(tol=tol, max_passes=max_iter, patience=patience, dual_bound=dual_bound)
    solver = _warm_solver(work, caps, t_keep, capped, solve_kw)
    entry = _solve_entries(
        solver, caps, t, target_size, entry_targets, capped, work.n_eligible, max_size_evals
    )
    sol, tau_all, margin_prob, mt = _solve_margins(
        work, solver, entry, margins, margin_targets, target_size, capped, solve_kw
    )
    size_target = target_size if capped and not with_replacement else None
    params = _score_params(op, work, margin_prob, sol.lam, tau_all, margins, caps, capped)
    params = _meet_size(params, margin_prob, size_target, size_rtol)
    params, size = _scaled(op, params, work.n_eligible, with_replacement, target_size)
    info = {"method": "rake", "objective": objective, "capped": capped}
    info |= _solve_info(solver, sol, entry, bool(margins))
    info |= _size_info(solver, entry, caps, t_keep, size, target_size)
    info |= _quality_info(sol, work.n_entries)
    info |= _search_info(solver, params, float(dual_bound), size, target_size, with_replacement)
    params = params.replace(meta={"t": entry.t, "status": sol.status, "objective": objective})
    rows = op.row_scores(params)
    entry_res = sol.residual[: work.n_entries]
    info["entry_residual_max_abs"] = float(np.abs(entry_res).max(initial=0.0))
    return BalanceResult(
        params=params,
        weight=rows[0] if rows is not None else None,
        pi=rows[1] if rows is not None else None,
        counts=counts,
        targets=entry.tau,
        margin_targets=mt,
        history=sol.history,
        info=info,
        residual=entry_res.copy(),
    )


def _check_size(target_size: float | None, n_eligible: float, with_replacement: bool) -> None:
    if target_size is not None and target_size > n_eligible * (1 + 1e-12) and not with_replacement:
        raise TargetSizeError(
            f"target size {target_size:g} exceeds the {n_eligible:g} eligible samples; "
            "use sampling with replacement"
        )


def _size_info(
    solver: WarmSolver,
    entry: _EntrySolve,
    caps: _Caps,
    t_keep: float | None,
    size: float,
    target_size: float | None,
) -> dict[str, Any]:
    """The caps used (head cap t, kept-set cap t_keep, unmatched cap) and the sizes."""
    t_used = entry.t
    return {
        "t": t_used,
        "t_keep": t_keep,
        "kept_entries": int(np.count_nonzero(solver.lam_fixed == KEEP_LOG)),
        "unmatched_cap": float(caps.caps(t_used)[-1]) if (caps.keep_unmatched and t_used) else None,
        "expected_size": size,
        "target_size": target_size,
    }


def _keep_cap(
    work: WorkOperator,
    caps: _Caps,
    objective: str,
    t: float | None,
    target_size: float | None,
    entry_targets: np.ndarray | None,
    capped: bool,
    with_replacement: bool,
) -> float | None:
    """t_keep, the cap below which entries keep all their samples (MetaCLIP's kept set): the
    given t, or MetaCLIP's cap at N; None for the ``l1`` objective, explicit targets or
    uncapped raking (nothing is fixed then).

    MetaCLIP's cap at N is computed whenever N sets the cap, for either objective: it also
    refuses the sizes no cap reaches (N above the eligible samples, or nothing matched), which
    with sampling with replacement means the cap must be given."""
    t_mc = None
    if t is None and entry_targets is None and target_size is not None and capped:
        t_mc = cap_for_size_on(
            work,
            target_size,
            caps.counts,
            keep_unmatched=caps.keep_unmatched,
            unmatched_cap=caps.unmatched_cap,
        )
    if objective != "tail" or not capped or entry_targets is not None:
        return None
    if t is not None:
        return float(t)
    return None if with_replacement else t_mc


def _warm_solver(
    work: WorkOperator, caps: _Caps, t_keep: float | None, capped: bool, solve_kw: dict[str, Any]
) -> WarmSolver:
    """The solver of the entry problem: the columns of entries with c_j ≤ t_keep fixed at
    :data:`~.dual_solver.KEEP_LOG` (π = 1 on their rows), the other matched entries free."""
    counts = caps.counts
    matched = counts > 0
    kept_cols = matched & (counts <= caps.caps(t_keep)) if t_keep is not None else ~matched
    lam_fixed = np.where(kept_cols, KEEP_LOG, 0.0)
    return WarmSolver(
        work.rake_problem(()), matched & ~kept_cols, lam_fixed, counts, capped=capped, **solve_kw
    )


def _solve_entries(
    solver: WarmSolver,
    caps: _Caps,
    t: float | None,
    target_size: float | None,
    entry_targets: np.ndarray | None,
    capped: bool,
    n_eligible: float,
    max_size_evals: int,
) -> _EntrySolve:
    """The entry solve: for explicit targets, at the cap t, or at the cap the search finds for
    the target size (its last solve is reused when it met the tolerance)."""
    counts = caps.counts
    if entry_targets is not None:
        tau = np.asarray(entry_targets, dtype=np.float64)
        if tau.shape != counts.shape:
            raise ValueError(f"entry_targets must have length {counts.size}")
        solver.free = (tau > 0) & (counts > 0)
        return _EntrySolve(None, tau, solver.solve(1.0, tau))
    if t is not None:
        tau = caps.targets(float(t))
        return _EntrySolve(float(t), tau, solver.solve(float(t), tau))
    if target_size is None:
        raise ValueError("give t, entry_targets or target_size")
    if not capped:
        raise ValueError("uncapped raking needs a cap t (the size is then set by repeats)")
    if not solver.free.any():  # every matched sample is kept already: nothing to rake
        t_used = float(counts.max())
    else:
        t_used = search_head_cap(
            solver,
            caps.targets,
            float(target_size),
            n_eligible,
            solver.solve_kw["tol"],
            solver.solve_kw["max_passes"],
            max_size_evals,
        )
    tau = caps.targets(t_used)
    sol = solver.solved.get(t_used)
    if sol is None or sol.kkt_err > solver.solve_kw["tol"]:
        sol = solver.solve(t_used, tau)
    return _EntrySolve(t_used, tau, sol)


def _solve_margins(
    work: WorkOperator,
    solver: WarmSolver,
    entry: _EntrySolve,
    margins: Sequence[str],
    margin_targets: Mapping[str, str | Mapping[str, float]] | None,
    target_size: float | None,
    capped: bool,
    solve_kw: dict[str, Any],
) -> tuple[RakeSolution, np.ndarray, RakeOperator, dict[str, np.ndarray]]:
    """With margins: the joint solve over entries and margin levels, started from the entry
    solution, with level targets P_X(x) · N_ref (N, else the entry solution's size). Returns
    the solution, the targets of every column, the problem they belong to and the margin
    targets (the entry solve's own without margins)."""
    if not margins:
        return entry.sol, entry.tau, solver.prob, {}
    n_ref = float(target_size) if target_size is not None else entry.sol.size
    prob = work.rake_problem(margins)
    m_work = work.n_entries
    tau_all = np.zeros(prob.n_columns)
    tau_all[:m_work] = entry.tau
    lam0 = np.zeros(prob.n_columns)
    lam0[:m_work] = entry.sol.lam
    free_all = np.zeros(prob.n_columns, dtype=bool)
    free_all[:m_work] = solver.free
    mt: dict[str, np.ndarray] = {}
    for col in margins:
        obs = work.level_counts(col)
        p_x, _ = margin_target_distribution(
            obs, work.margin_levels[col], (margin_targets or {}).get(col, "empirical")
        )
        mt[col] = p_x * n_ref
        o = prob.offsets[col]
        tau_all[o : o + p_x.size] = mt[col]
        free_all[o : o + p_x.size] = mt[col] > 0
    col_counts = np.zeros(prob.n_columns)
    col_counts[:m_work] = solver.counts
    sol = solve_box_dual(
        prob,
        tau_all,
        lam0=lam0,
        free=free_all,
        capped=capped,
        column_counts=col_counts,
        **solve_kw,
    )
    solver.record(entry.t, sol, margins=list(margins))
    first = entry.sol
    sol.history = first.history + [
        dict(h, iter=h["iter"] + first.iterations) for h in sol.history[1:]
    ]
    return sol, tau_all, prob, mt


def _score_params(
    op: TableOperator,
    work: WorkOperator,
    prob: RakeOperator,
    lam_all: np.ndarray,
    tau_all: np.ndarray,
    margins: Sequence[str],
    caps: _Caps,
    capped: bool,
) -> ScoreParams:
    """The published parameters: λ per entry and margin level; columns with τ_j = 0 but rows
    are set to :data:`~.kernels.ZERO_LOG`, which forces π = 0 on those rows."""
    lam = lam_all.copy()
    lam[(tau_all <= 0) & prob.occupied] = ZERO_LOG
    m_work = work.n_entries
    return ScoreParams(
        method="rake",
        n_entries=op.n_entries,
        entry_values=lam[:m_work],
        margin_values={
            col: lam[prob.offsets[col] : prob.offsets[col] + prob.margin_sizes[col]]
            for col in margins
        },
        margin_levels={col: work.margin_levels[col] for col in margins},
        keep_unmatched=caps.keep_unmatched,
        capped=capped,
    )


def _meet_size(
    params: ScoreParams, prob: RakeOperator, target_size: float | None, size_rtol: float
) -> ScoreParams:
    """The shift ν added to every raked row's η so that Σπ = N exactly (no shift without N).

    Σπ(ν) is continuous and increasing: the solves meet their targets to a tolerance, so the size
    is within about that tolerance and a last shift meets N (the kept rows' η ≫ 0 do not move)."""
    if target_size is None:
        return params
    lam = np.concatenate([params.entry_values, *params.margin_values.values()])
    size_fn = prob.size_function(lam)
    if abs(size_fn(0.0) - target_size) <= size_rtol / 4 * target_size:
        return params
    return params.replace(offset=size_shift(size_fn, float(target_size)))


def _scaled(
    op: TableOperator,
    params: ScoreParams,
    n_eligible: float,
    with_replacement: bool,
    target_size: float | None,
) -> tuple[ScoreParams, float]:
    """The weight scale (mean weight 1 over the eligible samples), the repeat scale for sampling
    with replacement, and the expected size Σπ."""
    sums = op.score_sums(params)
    params = params.replace(weight_scale=n_eligible / sums.raw if sums.raw > 0 else 0.0)
    if with_replacement:
        if target_size is None:
            raise ValueError("with_replacement needs target_size")
        wtotal = op.score_sums(params).weight
        params = params.replace(repeat_scale=repeat_scale_from_total(wtotal, target_size))
    return params, sums.pi


def _solve_info(
    solver: WarmSolver, sol: RakeSolution, entry: _EntrySolve, with_margins: bool
) -> dict[str, Any]:
    """Status and cost: passes over every solve of the search, the entry and the margin solve."""
    return {
        "status": sol.status,
        "iterations": sum(len(s.history) - 1 for s in solver.solved.values()),
        "passes": solver.passes,
        "passes_last_solve": sol.passes,
        "seconds": sum(s.seconds for s in solver.solved.values())
        + (sol.seconds if with_margins else 0),
    }


def _search_info(
    solver: WarmSolver,
    params: ScoreParams,
    dual_bound: float,
    size: float,
    target_size: float | None,
    with_replacement: bool,
) -> dict[str, Any]:
    """The cap search's solves, the final shift ν, and how far the size is from N."""
    out = {"size_search": solver.log, "size_shift": params.offset, "dual_bound": dual_bound}
    if target_size is not None and not with_replacement:
        out["size_rel_err"] = abs(size - target_size) / target_size
    return out


def _quality_info(sol: RakeSolution, m_work: int) -> dict[str, Any]:
    """How well the targets are met: errors, and the entries and margin levels left unmet."""
    unmet_entries = sol.unmet[sol.unmet < m_work]
    return {
        "max_rel_err": sol.max_rel_err,
        "kkt_err": sol.kkt_err,
        "best_kkt_err": sol.best_kkt_err,
        "l1": sol.l1,
        "n_infeasible_entries": int(unmet_entries.size),
        "infeasible_entries": unmet_entries[:1000].tolist(),
        "n_unmet_margin_levels": int(sol.unmet.size - unmet_entries.size),
        "certificate": sol.certificate,
    }
