"""The size searches of ``rake``: the cap t with Σπ(t) = N, and the shift ν that meets N exactly.

Each evaluation of Σπ(t) is a raking solve, so the search keeps evaluations few: secant steps in
(log t, log Σπ) until N is bracketed, then Brent's method on log t, stopping as soon as the size is
within the tolerance. The solves are warm-started from the nearest earlier one (λ and the
quasi-Newton memory, see :mod:`.dual_solver`), so later evaluations cost a few passes each.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["search_cap", "size_shift"]


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


class _CapFound(Exception):
    def __init__(self, t: float) -> None:
        self.t = t


def search_cap(
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
