"""``metaclip``: MetaCLIP's balancing rule, reproduced exactly.

Xu et al. 2023, "Demystifying CLIP Data" (MetaCLIP), Algorithm 1: with per-entry counts c_j and
cap t, entry j "fires" with probability p_j = min(1, t/c_j) and a sample is kept iff any of its
entries fires:

    π_i = 1 − Π_{j ∈ S_i} (1 − p_j).

MetaCLIP draws the coins unseeded; here the decision is u_i < π_i with a hashed uniform
(:mod:`curation.selection`), which has the same marginal π_i. The cap is given, solved for a
target expected size N (Σπ is continuous and non-decreasing in t), or set by MetaCLIP 2's
tail-share rule (Chuang et al. 2025, "MetaCLIP 2: A Worldwide Scaling Recipe", ``p_to_t``).

Data access goes through :mod:`.operators` (:func:`metaclip_on` runs on the driver or on Spark);
the size search costs one pass per evaluation of Σπ(t).
"""

from __future__ import annotations

import numpy as np

from .operators import LocalOperator, LocalWork, TableOperator, WorkOperator, metaclip_pi
from .params import BalanceResult, ScoreParams
from .signatures import SignatureTable
from .target_size import (
    DEFAULT_SIZE_RTOL,
    TargetSizeError,
    repeat_scale_from_total,
    solve_monotone,
)
from .targets import cap_vector, capped_targets

__all__ = [
    "cap_for_size_on",
    "cap_from_tail_share",
    "metaclip",
    "metaclip_on",
    "metaclip_pi",
    "metaclip_probs",
    "solve_cap_for_size",
    "tail_share",
]


def metaclip_probs(counts: np.ndarray, caps: float | np.ndarray) -> np.ndarray:
    """p_j = min(1, t_j / c_j) (1 for c_j = 0, where it is never used)."""
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(c > 0, np.minimum(1.0, caps / np.where(c > 0, c, 1.0)), 1.0)


def tail_share(counts: np.ndarray, t: float) -> float:
    """MetaCLIP 2's ``t_to_p``: Σ_{c_j < t} c_j / Σ_j c_j."""
    c = np.asarray(counts, dtype=np.float64)
    return float(c[c < t].sum() / c.sum())


def cap_from_tail_share(counts: np.ndarray, share: float) -> float:
    """MetaCLIP 2's ``p_to_t``: with counts sorted ascending and P_i = Σ_{l≤i} c_(l) / Σ c, the cap
    is t = c_(i*) for i* = argmin_i |P_i − share| (first index on ties).

    The tail share is a step function of t, so the given share is met only as closely as the
    counts allow; :func:`tail_share` of the result reports the share actually reached.
    """
    if not 0 < share < 1:
        raise ValueError("tail share must lie in (0, 1)")
    c = np.sort(np.asarray(counts, dtype=np.float64))
    portion = np.cumsum(c) / c.sum()
    return float(c[int(np.argmin(np.abs(portion - share)))])


def metaclip(
    table: SignatureTable,
    *,
    t: float | None = None,
    target_size: float | None = None,
    tail_share_p: float | None = None,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    with_replacement: bool = False,
    size_rtol: float = DEFAULT_SIZE_RTOL,
) -> BalanceResult:
    """MetaCLIP balancing of a driver-side signature table: :func:`metaclip_on` on a
    :class:`~curation.balancing.operators.LocalOperator` (see there for the arguments)."""
    return metaclip_on(
        LocalOperator(table),
        t=t,
        target_size=target_size,
        tail_share_p=tail_share_p,
        keep_unmatched=keep_unmatched,
        unmatched_cap=unmatched_cap,
        with_replacement=with_replacement,
        size_rtol=size_rtol,
    )


def metaclip_on(
    op: TableOperator,
    *,
    t: float | None = None,
    target_size: float | None = None,
    tail_share_p: float | None = None,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    with_replacement: bool = False,
    size_rtol: float = DEFAULT_SIZE_RTOL,
) -> BalanceResult:
    """MetaCLIP balancing (see the module docstring) on any table operator.

    Exactly one of ``t``, ``target_size`` or ``tail_share_p`` fixes the cap. With
    ``keep_unmatched``, unmatched samples form the pseudo-entry ``<unmatched>`` (id m) with cap
    ``unmatched_cap`` (default: the same t as the real entries, also when t is solved).
    ``with_replacement`` (needs ``target_size``): keep π(t) for the given t (or tail share) and
    set ``repeat_scale`` so that E[r_i] = N·w_i/Σw; if only ``target_size`` is given and N
    exceeds the eligible pool, t = max c_j (everything kept once) and repeats scale up.
    """
    if sum(x is not None for x in (t, tail_share_p)) > 1:
        raise ValueError("give at most one of t and tail_share_p")
    m = op.n_entries
    work = op.work(keep_unmatched)
    counts = work.counts()
    n_elig = work.n_eligible
    info: dict = {"method": "metaclip"}
    t = _resolve_cap(
        work,
        m,
        counts,
        t,
        target_size,
        tail_share_p,
        keep_unmatched,
        unmatched_cap,
        with_replacement,
        size_rtol,
        info,
    )
    caps = cap_vector(
        work.n_entries,
        t,
        (unmatched_cap if unmatched_cap is not None else t) if keep_unmatched else None,
    )
    p = metaclip_probs(counts, caps)
    params = ScoreParams(
        method="metaclip",
        n_entries=m,
        entry_values=p,
        keep_unmatched=keep_unmatched,
    )
    size = op.score_sums(params).pi
    wscale = n_elig / size if size > 0 else 0.0
    params = params.replace(weight_scale=wscale)
    if with_replacement:
        if target_size is None:
            raise ValueError("with_replacement needs target_size")
        wtotal = op.score_sums(params).weight
        params = params.replace(repeat_scale=repeat_scale_from_total(wtotal, target_size))
    info.update(
        t=float(t),
        unmatched_cap=float(caps[-1]) if keep_unmatched else None,
        expected_size=size,
        target_size=target_size,
        head_entries=int((counts[:m] > t).sum()),
    )
    if target_size is not None and not with_replacement:
        info["size_rel_err"] = abs(size - target_size) / target_size
    params = params.replace(meta={"t": float(t)})
    rows = op.row_scores(params)
    weight, pi = rows if rows is not None else (None, None)
    return BalanceResult(
        params=params,
        weight=weight,
        pi=pi,
        counts=counts,
        targets=capped_targets(counts, caps),
        info=info,
    )


def _resolve_cap(
    work: WorkOperator,
    m: int,
    counts: np.ndarray,
    t: float | None,
    target_size: float | None,
    tail_share_p: float | None,
    keep_unmatched: bool,
    unmatched_cap: float | None,
    with_replacement: bool,
    size_rtol: float,
    info: dict,
) -> float:
    """The cap t: given, from the tail share (recorded in ``info``), or solved for the target
    size (t = max c_j when a size above the eligible pool is reached by repeats)."""
    if tail_share_p is not None:
        t = cap_from_tail_share(counts[:m], tail_share_p)
        info["tail_share_requested"] = tail_share_p
        info["tail_share_reached"] = tail_share(counts[:m], t)
    if t is not None:
        return t
    if target_size is None:
        raise ValueError("give t, target_size or tail_share_p")
    if with_replacement and target_size > work.n_eligible:
        return float(counts.max())
    return cap_for_size_on(
        work,
        target_size,
        counts,
        keep_unmatched=keep_unmatched,
        unmatched_cap=unmatched_cap,
        rtol=size_rtol / 4,
    )


def solve_cap_for_size(
    work: SignatureTable,
    n_target: float,
    counts: np.ndarray | None = None,
    *,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    rtol: float = DEFAULT_SIZE_RTOL / 4,
) -> float:
    """The cap t with Σ_i π_i(t) = N (regula falsi / bisection on log t; Σπ is monotone in t).

    ``work`` already holds the ``<unmatched>`` pseudo-entry when ``keep_unmatched``; its cap is
    ``unmatched_cap`` if given, else t itself.
    """
    return cap_for_size_on(
        LocalWork(work),
        n_target,
        counts,
        keep_unmatched=keep_unmatched,
        unmatched_cap=unmatched_cap,
        rtol=rtol,
    )


def cap_for_size_on(
    work: WorkOperator,
    n_target: float,
    counts: np.ndarray | None = None,
    *,
    keep_unmatched: bool = False,
    unmatched_cap: float | None = None,
    rtol: float = DEFAULT_SIZE_RTOL / 4,
) -> float:
    """:func:`solve_cap_for_size` on a work operator: each evaluation of
    Σπ(t) = Σ_r m_r (1 − Π_{j∈S_r}(1 − min(1, t/c_j))) is one pass."""
    c = work.counts() if counts is None else counts
    if not (c > 0).any():
        raise TargetSizeError("no sample is matched: nothing to select")

    def size(t: float) -> float:
        caps = cap_vector(
            work.n_entries,
            t,
            (unmatched_cap if unmatched_cap is not None else t) if keep_unmatched else None,
        )
        return work.metaclip_size(metaclip_probs(c, caps))

    n_elig = work.n_eligible
    if n_target > n_elig * (1 + 1e-12):
        raise TargetSizeError(
            f"target size {n_target:g} exceeds the {n_elig:g} eligible samples; "
            "use sampling with replacement"
        )
    hi = float(c.max())
    lo = 1e-6 * max(1.0, float(c[c > 0].min()))
    return solve_monotone(size, n_target, lo, hi, rtol=rtol, f_hi=size(hi)).x
