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
from typing import Any, Literal

import numpy as np

from .cap_search import CapSearch, SizeEvaluation, size_shift
from .dual_solver import (
    DEFAULT_DUAL_BOUND,
    KEEP_LOG,
    QuasiNewtonMemory,
    RakeSolution,
    solve_box_dual,
)
from .kernels import ZERO_LOG
from .operators import LocalOperator, RakeOperator, TableOperator, build_problem
from .params import BalanceResult, ScoreParams
from .signatures import SignatureTable
from .target_size import DEFAULT_SIZE_RTOL, TargetSizeError, repeat_scale_from_total
from .targets import cap_vector, capped_targets, margin_target_distribution

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
#: The cap search's rough solves: KKT tolerance, pass budget, and the early stop once Σπ has
#: settled (moved < 0.5 % over 4 iterations). Σπ is an aggregate and settles long before the
#: per-column KKT error does; a solve stopped by a pass count alone, before Σπ settled, gave
#: sizes off by 10-90 % on multi-label tables and misled the search.
SEARCH_TOL = 5e-2
SEARCH_PASSES = 50
SEARCH_SETTLE = 5e-3
#: The cap search stops within this relative distance of N; the final shift ν meets N exactly.
SEARCH_RTOL = 5e-3


def rake(table: SignatureTable, **kwargs: Any) -> BalanceResult:
    """Capped raking of a driver-side signature table: :func:`rake_on` on a
    :class:`~curation.balancing.operators.LocalOperator` (see there for the arguments)."""
    return rake_on(LocalOperator(table), **kwargs)


class _Solver:
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
        if self.solved:
            near = min(self.solved, key=lambda x: abs(np.log(x / key)))
            lam0 = self.solved[near].lam.copy()
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


def _search_head_cap(
    solver: _Solver,
    targets_at: Any,
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
            size_settle=SEARCH_SETTLE,
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
    m_work = work.n_entries
    n_elig = work.n_eligible
    prob = work.rake_problem(())
    info: dict[str, Any] = {"method": "rake", "objective": objective, "capped": capped}

    def caps_for(tt: float) -> np.ndarray:
        return cap_vector(
            m_work,
            tt,
            (unmatched_cap if unmatched_cap is not None else tt) if keep_unmatched else None,
        )

    if target_size is not None and target_size > n_elig * (1 + 1e-12) and not with_replacement:
        raise TargetSizeError(
            f"target size {target_size:g} exceeds the {n_elig:g} eligible samples; "
            "use sampling with replacement"
        )
    # MetaCLIP's cap at N: where the cap search starts, and (tail objective) the kept set
    t_mc = None
    if t is None and entry_targets is None and target_size is not None and capped:
        from .metaclip import cap_for_size_on

        t_mc = cap_for_size_on(
            work, target_size, counts, keep_unmatched=keep_unmatched, unmatched_cap=unmatched_cap
        )
    # which samples are kept as MetaCLIP keeps them (tail objective, capped, no explicit τ)
    t_keep = None
    if objective == "tail" and capped and entry_targets is None:
        if t is not None:
            t_keep = float(t)
        elif not with_replacement:
            t_keep = t_mc
    kept_cols = (counts > 0) & (counts <= caps_for(t_keep)) if t_keep is not None else None
    free = (counts > 0) if kept_cols is None else (counts > 0) & ~kept_cols
    lam_fixed = np.zeros(m_work)
    if kept_cols is not None:
        lam_fixed[kept_cols] = KEEP_LOG
    solver = _Solver(
        prob,
        free,
        lam_fixed,
        counts,
        tol=tol,
        max_passes=max_iter,
        patience=patience,
        dual_bound=dual_bound,
        capped=capped,
    )

    def targets_at(tt: float) -> np.ndarray:
        return capped_targets(counts, caps_for(tt))

    if entry_targets is not None:
        tau_e = np.asarray(entry_targets, dtype=np.float64)
        if tau_e.shape != (m_work,):
            raise ValueError(f"entry_targets must have length {m_work}")
        t_used = None
        solver.free = (tau_e > 0) & (counts > 0)
        sol_e = solver.solve(1.0, tau_e)
    elif t is not None:
        t_used = float(t)
        tau_e = targets_at(t_used)
        sol_e = solver.solve(t_used, tau_e)
    else:
        if target_size is None:
            raise ValueError("give t, entry_targets or target_size")
        if not capped:
            raise ValueError("uncapped raking needs a cap t (the size is then set by repeats)")
        if not free.any():  # every matched sample is kept already: nothing to rake
            t_used = float(counts.max())
        else:
            t_used = _search_head_cap(
                solver, targets_at, float(target_size), n_elig, tol, max_iter, max_size_evals
            )
        tau_e = targets_at(t_used)
        sol_e = solver.solved.get(t_used)
        if sol_e is None or sol_e.kkt_err > tol:
            sol_e = solver.solve(t_used, tau_e)
    sol = sol_e
    tau_all = tau_e
    lam_all = sol_e.lam
    mt: dict[str, np.ndarray] = {}
    margin_prob = prob
    if margins:
        margin_prob = work.rake_problem(margins)
        n_ref = float(target_size) if target_size is not None else sol_e.size
        tau_all = np.zeros(margin_prob.n_columns)
        tau_all[:m_work] = tau_e
        lam0 = np.zeros(margin_prob.n_columns)
        lam0[:m_work] = sol_e.lam
        free_all = np.zeros(margin_prob.n_columns, dtype=bool)
        free_all[:m_work] = solver.free
        for col in margins:
            obs = work.level_counts(col)
            p_x, _ = margin_target_distribution(
                obs, work.margin_levels[col], (margin_targets or {}).get(col, "empirical")
            )
            mt[col] = p_x * n_ref
            o = margin_prob.offsets[col]
            tau_all[o : o + p_x.size] = mt[col]
            free_all[o : o + p_x.size] = mt[col] > 0
        col_counts = np.zeros(margin_prob.n_columns)
        col_counts[:m_work] = counts
        sol = solve_box_dual(
            margin_prob,
            tau_all,
            lam0=lam0,
            free=free_all,
            tol=tol,
            max_passes=max_iter,
            patience=patience,
            dual_bound=dual_bound,
            capped=capped,
            column_counts=col_counts,
        )
        solver.record(t_used, sol, margins=list(margins))
        sol.history = sol_e.history + [
            dict(h, iter=h["iter"] + sol_e.iterations) for h in sol.history[1:]
        ]
        lam_all = sol.lam
    lam = lam_all.copy()
    shift = 0.0
    if target_size is not None and capped and not with_replacement:
        # Σπ(ν) with ν added to every raked row's η is continuous and increasing: a last shift
        # meets N exactly (the solves meet their targets to a tolerance, the size is then within
        # about that tolerance; the kept rows' η ≫ 0 does not move)
        size_fn = margin_prob.size_function(lam)
        if abs(size_fn(0.0) - target_size) > size_rtol / 4 * target_size:
            shift = size_shift(size_fn, float(target_size))
    # columns with τ = 0 but rows force π = 0 on those rows (ZERO_LOG)
    lam[(tau_all <= 0) & margin_prob.occupied] = ZERO_LOG
    margin_values = {
        col: lam[
            margin_prob.offsets[col] : margin_prob.offsets[col] + margin_prob.margin_sizes[col]
        ]
        for col in margins
    }
    params = ScoreParams(
        method="rake",
        n_entries=op.n_entries,
        entry_values=lam[:m_work],
        margin_values=margin_values,
        margin_levels={col: work.margin_levels[col] for col in margins},
        keep_unmatched=keep_unmatched,
        capped=capped,
        offset=shift,
    )
    sums = op.score_sums(params)
    wscale = n_elig / sums.raw if sums.raw > 0 else 0.0
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
        iterations=sum(len(s.history) - 1 for s in solver.solved.values()),
        passes=solver.passes,
        passes_last_solve=sol.passes,
        seconds=sum(s.seconds for s in solver.solved.values()) + (sol.seconds if margins else 0),
        t=t_used,
        t_keep=t_keep,
        kept_entries=int(kept_cols.sum()) if kept_cols is not None else 0,
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
        size_search=solver.log,
        size_shift=shift,
        dual_bound=float(dual_bound),
    )
    if target_size is not None and not with_replacement:
        info["size_rel_err"] = abs(size - target_size) / target_size
    params = params.replace(meta={"t": t_used, "status": sol.status, "objective": objective})
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
