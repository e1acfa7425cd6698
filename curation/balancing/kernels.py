"""Element-wise kernels shared by the driver operator and the Spark executors.

Pure NumPy, no state: the same functions run on the driver (:mod:`.operators`) and inside the
Python workers (:mod:`.spark_operator`), so both executions evaluate identical formulas.
"""

from __future__ import annotations

import numpy as np

#: λ of a column whose target is 0: forces π = 0 on its rows (finite, dominates any sum).
ZERO_LOG = -1e300


def probs(eta: np.ndarray, capped: bool = True) -> np.ndarray:
    """π(η) = min(1, e^η) = e^{min(η, 0)} (capped), e^{min(η, 700)} (uncapped raking)."""
    return np.exp(np.minimum(eta, 0.0)) if capped else np.exp(np.minimum(eta, 700.0))


def phi(eta: np.ndarray, capped: bool = True) -> np.ndarray:
    """φ(η) = e^η for η ≤ 0 and 1 + η for η > 0 (capped); e^η (uncapped)."""
    if not capped:
        return np.exp(np.minimum(eta, 700.0))
    return np.exp(np.minimum(eta, 0.0)) + np.maximum(eta, 0.0)


def phi_diff(
    new: np.ndarray, old: np.ndarray, capped: bool = True, delta: np.ndarray | None = None
) -> np.ndarray:
    """φ(new) − φ(old) without cancellation.

    Capped: φ(η) = e^{min(η,0)} + max(η,0), so the difference is
    e^{min(old,0)}·expm1(min(new,0) − min(old,0)) + max(new,0) − max(old,0).

    ``delta`` = A(λ_new − λ_old), computed from the step itself: where both points lie on the same
    branch of φ the difference is taken from it (exactly ``delta`` on the linear branch,
    e^{max}·expm1(−|delta|) on the exponential one) instead of from new − old. The rows that
    ``rake`` keeps have η ≈ KEEP_LOG = 1e4, whose rounding (~1e-12 per row) would otherwise put a
    floor of ~1e-9 under the dual changes the line search compares, and stall the solver at a
    KKT error near 1e-6.
    """
    if capped:
        n0, o0 = np.minimum(new, 0.0), np.minimum(old, 0.0)
        lin = np.maximum(new, 0.0) - np.maximum(old, 0.0)
        same_exp = (new <= 0.0) & (old <= 0.0)
    else:
        n0, o0 = np.minimum(new, 700.0), np.minimum(old, 700.0)
        lin = 0.0
        same_exp = (new <= 700.0) & (old <= 700.0)
    # e^{n0} − e^{o0} = ±e^{max}·(−expm1(min − max)): no overflow, no 0·inf
    hi = np.maximum(n0, o0)
    gap = np.minimum(n0, o0) - hi
    rising = n0 >= o0
    if delta is not None:
        gap = np.where(same_exp, -np.abs(delta), gap)
        rising = np.where(same_exp, delta >= 0.0, rising)
        if capped:
            lin = np.where((new > 0.0) & (old > 0.0), delta, lin)
    diff = np.exp(hi) * -np.expm1(gap)
    return np.where(rising, diff, -diff) + lin


def metaclip_log_survival(p: np.ndarray) -> np.ndarray:
    """log(1 − p_j) = log1p(−p_j) (−inf where p_j = 1): MetaCLIP's π_r = −expm1(Σ_{j∈S_r} ·)."""
    with np.errstate(divide="ignore"):
        return np.log1p(-np.asarray(p, dtype=np.float64))
