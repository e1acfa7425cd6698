"""``balance``: iterative balancing of the sample × entry pair table.

Liu, Xiong, Ho et al. 2024, "The Benefits of Balance: From Information Projections to Variance
Reduction" (NeurIPS 2024), metadata-curation example: the pair table starts at
P0(i, j) = 1 / (n · k_i) for j ∈ S_i (n = number of eligible, i.e. matched, samples) and is
rescaled so that its marginals match targets — the classical iterative proportional fitting
(Deming & Stephan 1940; Sinkhorn 1964):

* Y-step (entries): P(i, j) ← P(i, j) · P_Y(j) / P_Y^cur(j)
* X-step (a categorical column x): P(i, j) ← P(i, j) · P_X(x(i)) / P_X^cur(x(i))

The table always has the product form P(i, j) = P0(i, j) · a_j · Π_cols b_{x(i)}, so only the
vectors a (entries) and b (levels) are iterated, on the distinct-signature table with
multiplicities: P_Y^cur = a ⊙ Aᵀ(m ⊙ B / (n k)), P_X^cur(x) = Σ_{r: x_r = x} m_r B_r (A a)_r / (n k_r).

Without a margin: exactly one Y-step (a_j = P_Y(j) / P0_Y(j)). With margins: X-steps (one per
margin, in the given order) then a Y-step, repeated until the largest relative marginal error is
below ``tol`` or ``max_iter`` rounds; it always ends on a Y-step.

Sample weight: w_i = Σ_j P(i, j), rescaled to mean 1 over eligible samples; inclusion
probability π_i = min(1, λ·w_i) with λ solved for the target size.

Data access goes through :mod:`.operators` (:func:`balance_on` runs on the driver or on Spark):
one pass per X-step, per Y-step and per error evaluation, and λ is solved exactly either by
sorting (driver) or by Newton steps on the concave piecewise-linear Σ_r m_r min(1, λ w_r) (Spark).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from curation import progress

from .metaclip import cap_for_size_on
from .operators import LocalOperator, LocalWork, ScoreSums, TableOperator, WorkOperator
from .params import BalanceResult, ScoreParams
from .signatures import SignatureTable
from .target_size import (
    DEFAULT_SIZE_RTOL,
    TargetSizeError,
    repeat_scale_from_total,
)
from .targets import (
    EntryTarget,
    cap_vector,
    capped_targets,
    entry_target_distribution,
    margin_target_distribution,
)


def _rel_err(cur: np.ndarray, target: np.ndarray) -> float:
    pos = target > 0
    err = np.abs(cur[pos] / target[pos] - 1.0) if pos.any() else np.zeros(0)
    extra = float(cur[~pos].sum())  # mass on zero-target cells counts as full error
    return float(max(err.max(initial=0.0), 1.0 if extra > 0 else 0.0))


def balance_factors(
    work: SignatureTable,
    p_y: np.ndarray,
    p_x: Mapping[str, np.ndarray] | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict], str]:
    """Iterate the pair-table factors. Returns (a, {col: b}, history, status).

    ``work``: signature table (rows with k = 0 carry no mass); ``p_y``: entry target (sums to
    1); ``p_x``: per margin column, the level target (sums to 1).
    """
    return balance_factors_on(LocalWork(work), p_y, p_x, tol=tol, max_iter=max_iter)


def _balance_info(
    status: str,
    history: list,
    t: float | None,
    t_rule: str,
    spec: EntryTarget,
    dropped_y: float,
    dropped_x: dict[str, float],
    lam: float,
    size_rule: str,
) -> dict[str, Any]:
    """The solver and target facts of a balance run (its sizes are added by the caller)."""
    return {
        "method": "balance",
        "status": status,
        "iterations": len(history),
        "t": None if t is None else float(t),
        "t_rule": t_rule if t is not None else None,
        "entry_target": spec.kind if spec.kind != "power" else f"power:{spec.alpha}",
        "entry_target_dropped_share": dropped_y,
        "margin_target_dropped_share": dropped_x,
        "prob_scale": lam,
        "size_rule": size_rule,
    }


def _entry_caps(
    work: WorkOperator,
    counts: np.ndarray,
    spec: EntryTarget,
    t: float | None,
    target_size: float | None,
    keep_unmatched: bool,
    unmatched_cap: float | None,
) -> tuple[float | None, np.ndarray | None, str]:
    """The cap t (given, or MetaCLIP's cap at N for the capped target), the per-entry caps and
    how t was chosen."""
    t_rule = "given"
    if t is None and spec.kind == "capped":
        if target_size is None:
            raise TargetSizeError("the capped entry target needs a cap t or a target size")
        t = cap_for_size_on(
            work,
            min(target_size, work.n_eligible),
            counts,
            keep_unmatched=keep_unmatched,
            unmatched_cap=unmatched_cap,
        )
        t_rule = "metaclip_cap_for_target_size"
    if t is None:
        return None, None, t_rule
    own = unmatched_cap if unmatched_cap is not None else t
    return t, cap_vector(work.n_entries, t, own if keep_unmatched else None), t_rule


def _margin_distributions(
    work: WorkOperator,
    margins: Sequence[str],
    margin_targets: Mapping[str, str | Mapping[str, float]] | None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """P_X per margin column (empirical, uniform or given shares) and the share it drops."""
    p_x: dict[str, np.ndarray] = {}
    dropped_x: dict[str, float] = {}
    for col in margins:
        if col not in work.margin_levels:
            raise KeyError(f"signature table has no margin column {col!r}")
        p_x[col], dropped_x[col] = margin_target_distribution(
            work.level_counts(col),
            work.margin_levels[col],
            (margin_targets or {}).get(col, "empirical"),
        )
    return p_x, dropped_x


def _prob_scale(
    op: TableOperator,
    params: ScoreParams,
    raw_sums: ScoreSums,
    spec: EntryTarget,
    counts: np.ndarray,
    caps: np.ndarray | None,
    target_size: float | None,
    with_replacement: bool,
) -> tuple[float, str]:
    """λ in π_i = min(1, λ·w_i): Σπ = N, or (capped target, no N) Σ_i k_i π_i = Σ_j τ_j."""
    if target_size is not None:
        if with_replacement and target_size > raw_sums.positive:
            return 1.0 / raw_sums.min_positive_raw, "target_size"
        return op.prob_scale(params, target_size), "target_size"
    if caps is not None and spec.kind == "capped":
        total = float(capped_targets(counts, caps).sum())
        return op.prob_scale(params, total, per_match=True), "sum_k_pi_equals_sum_tau"
    raise TargetSizeError("balance needs target_size (or a cap t with the capped target)")


def balance_factors_on(
    work: WorkOperator,
    p_y: np.ndarray,
    p_x: Mapping[str, np.ndarray] | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict], str]:
    """:func:`balance_factors` on a work operator (driver or Spark): P_Y^cur = a ⊙ y and
    P_X^cur(col) = x_col from :meth:`~.operators.WorkOperator.balance_marginals`."""
    p_x = dict(p_x or {})
    n = work.n_eligible
    if n == 0:
        raise ValueError("no eligible (matched) sample")
    a = np.ones(work.n_entries)
    b = {col: np.ones(len(work.margin_levels[col])) for col in p_x}
    history: list[dict] = []

    def y_step() -> None:
        y, _ = work.balance_marginals(a, b, entries=True)
        cur = a * y
        ok = cur > 0
        a[ok] *= p_y[ok] / cur[ok]
        a[~ok] = 0.0

    def errors() -> tuple[float, float, dict[str, float]]:
        y, x = work.balance_marginals(a, b, entries=True, levels=list(b))
        cy = a * y
        errs = {"<entries>": _rel_err(cy, p_y)}
        l1 = float(np.abs(cy - p_y).sum())
        for col in b:
            cx = x[col]
            errs[col] = _rel_err(cx, p_x[col])
            l1 = max(l1, float(np.abs(cx - p_x[col]).sum()))
        return max(errs.values()), l1, errs

    if not p_x:
        y_step()
        e, l1, errs = errors()
        history.append({"iter": 1, "max_rel_err": e, "l1": l1, "errors": errs})
        return a, b, history, "converged"
    status = "max_iter"
    for it in range(1, max_iter + 1):
        for col in b:  # X-steps
            _, x = work.balance_marginals(a, b, entries=False, levels=[col])
            cur = x[col]
            ok = cur > 0
            b[col][ok] *= p_x[col][ok] / cur[ok]
            b[col][~ok] = 0.0
        y_step()
        e, l1, errs = errors()
        history.append({"iter": it, "max_rel_err": e, "l1": l1, "errors": errs})
        progress.tick(max_rel_err=e, l1=l1)
        if not np.isfinite(e):
            status = "diverged"
            break
        if e < tol:
            status = "converged"
            break
    return a, b, history, status


def balance(
    table: SignatureTable,
    *,
    t: float | None = None,
    entry_target: str | EntryTarget | np.ndarray = "capped",
    margins: Sequence[str] = (),
    margin_targets: Mapping[str, str | Mapping[str, float]] | None = None,
    target_size: float | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    with_replacement: bool = False,
    size_rtol: float = DEFAULT_SIZE_RTOL,
) -> BalanceResult:
    """Pair-table balancing of a driver-side signature table: :func:`balance_on` on a
    :class:`~curation.balancing.operators.LocalOperator` (see there for the arguments)."""
    return balance_on(
        LocalOperator(table),
        t=t,
        entry_target=entry_target,
        margins=margins,
        margin_targets=margin_targets,
        target_size=target_size,
        tol=tol,
        max_iter=max_iter,
        keep_unmatched=keep_unmatched,
        unmatched_cap=unmatched_cap,
        with_replacement=with_replacement,
        size_rtol=size_rtol,
    )


def balance_on(
    op: TableOperator,
    *,
    t: float | None = None,
    entry_target: str | EntryTarget | np.ndarray = "capped",
    margins: Sequence[str] = (),
    margin_targets: Mapping[str, str | Mapping[str, float]] | None = None,
    target_size: float | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    with_replacement: bool = False,
    size_rtol: float = DEFAULT_SIZE_RTOL,
) -> BalanceResult:
    """The "Benefits of Balance" estimator on the signature table (see the module docstring).

    Args:
        t: cap for the ``capped`` entry target P_Y(j) ∝ min(c_j, t). If omitted with the
            capped target, t is MetaCLIP's cap for the same target size (so that the methods
            aim at the same capped distribution at the same N).
        entry_target: ``"capped"``, ``"uniform"``, ``"power:α"`` or a per-entry vector.
        margins: margin columns to balance too (X-steps, in this order).
        margin_targets: per margin, ``"empirical"`` (default), ``"uniform"`` or level → share.
        target_size: N; λ in π_i = min(1, λ·w_i) is solved so that Σπ = N. Without it (capped
            target only) λ is chosen so that the expected number of kept entry matches
            Σ_i k_i π_i equals Σ_j min(c_j, t) — what an exact capped solution keeps.
        keep_unmatched: unmatched samples form the pseudo-entry ``<unmatched>`` (id m), with
            cap ``unmatched_cap`` (default t) in the capped target.
        with_replacement: also set E[r_i] = N·w_i/Σw (needs target_size; N may exceed the pool).
    """
    spec = EntryTarget.parse(entry_target)
    work = op.work(keep_unmatched)
    counts = work.counts()
    if spec.kind == "given" and keep_unmatched and spec.values is not None:
        if spec.values.size == op.n_entries:
            raise ValueError("with keep_unmatched, the entry target vector needs m+1 values")
    t, caps, t_rule = _entry_caps(work, counts, spec, t, target_size, keep_unmatched, unmatched_cap)
    p_y, dropped_y = entry_target_distribution(counts, spec, caps)
    p_x, dropped_x = _margin_distributions(work, margins, margin_targets)
    a, b, history, status = balance_factors_on(work, p_y, p_x, tol=tol, max_iter=max_iter)
    params = ScoreParams(
        method="balance",
        n_entries=op.n_entries,
        entry_values=a,
        margin_values=b,
        margin_levels={col: work.margin_levels[col] for col in b},
        keep_unmatched=keep_unmatched,
    )
    raw_sums = op.score_sums(params)  # weight_scale = 1: weight = raw
    wscale = work.n_eligible / raw_sums.raw
    lam, size_rule = _prob_scale(
        op, params, raw_sums, spec, counts, caps, target_size, with_replacement
    )
    params = params.replace(weight_scale=wscale, prob_scale=lam)
    sums = op.score_sums(params)
    if with_replacement:
        if target_size is None:
            raise ValueError("with_replacement needs target_size")
        params = params.replace(repeat_scale=repeat_scale_from_total(sums.weight, target_size))
    size = sums.pi
    # capped: τ_j = min(c_j, t); a shape only: scaled to the expected kept entry matches
    targets = capped_targets(counts, caps) if spec.kind == "capped" else p_y * sums.k_pi
    info = _balance_info(status, history, t, t_rule, spec, dropped_y, dropped_x, lam, size_rule)
    info |= {"expected_size": size, "target_size": target_size}
    info["final_max_rel_err"] = history[-1]["max_rel_err"] if history else 0.0
    if target_size is not None and not with_replacement:
        info["size_rel_err"] = abs(size - target_size) / target_size
    params = params.replace(meta={"t": None if t is None else float(t), "status": status})
    rows = op.row_scores(params)
    return BalanceResult(
        params=params,
        weight=rows[0] if rows is not None else None,
        pi=rows[1] if rows is not None else None,
        counts=counts,
        targets=targets,
        margin_targets={col: p_x[col] * size for col in p_x},
        history=history,
        info=info,
    )
