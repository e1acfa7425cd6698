"""Reaching a target output size N (the expected size Σ_i π_i), for every method.

* ``metaclip`` and ``rake``: the expected size is non-decreasing in the cap t, so t is found by a
  bracketed root search on log t (:func:`solve_monotone`).
* ``balance``: π_i = min(1, λ·w_i); Σ_i min(1, λ·w_i) is continuous, piecewise linear and
  non-decreasing in λ, and is solved exactly by sorting (:func:`solve_prob_scale`).
* With replacement: integer repeats with E[r_i] = N·w_i/Σw (:func:`repeat_scale`).

The acceptance rule used everywhere is |Σπ − N| / N ≤ ``size_rtol`` (default 1e-3, solved to a
tighter internal tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SIZE_RTOL = 1e-3


class TargetSizeError(ValueError):
    """The requested size cannot be reached (e.g. larger than the eligible pool)."""


def expected_size(pi: np.ndarray, multiplicity: np.ndarray) -> float:
    """Σ_i π_i = Σ_r m_r π_r."""
    return float(np.dot(np.asarray(multiplicity, dtype=np.float64), pi))


def solve_prob_scale(raw: np.ndarray, multiplicity: np.ndarray, n_target: float) -> float:
    """λ with Σ_r m_r · min(1, λ·raw_r) = N, exactly (sorting; O(s log s)).

    Raises :class:`TargetSizeError` if N exceeds the number of samples with raw_r > 0.
    """
    raw = np.asarray(raw, dtype=np.float64)
    m = np.asarray(multiplicity, dtype=np.float64)
    pos = raw > 0
    n_pos = float(m[pos].sum())
    if n_target <= 0:
        raise TargetSizeError("target size must be positive")
    if n_target > n_pos * (1 + 1e-12):
        raise TargetSizeError(
            f"target size {n_target:g} exceeds the {n_pos:g} samples with positive weight; "
            "use sampling with replacement"
        )
    w, mm = raw[pos], m[pos]
    order = np.argsort(-w, kind="stable")
    w, mm = w[order], mm[order]
    # capped set = the q largest rows: λ_q = (N − M_q) / W_q with M_q = Σ_{r<q} m_r,
    # W_q = Σ_{r≥q} m_r w_r; valid when λ_q·w_{q-1} ≥ 1 (capped) and λ_q·w_q ≤ 1 (not capped).
    M = np.concatenate([[0.0], np.cumsum(mm)])  # M[q]
    tail = np.concatenate([np.cumsum((mm * w)[::-1])[::-1], [0.0]])  # W[q]
    q = np.arange(w.size + 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = np.where(tail > 0, (n_target - M) / np.where(tail > 0, tail, 1.0), np.inf)
        finite = np.isfinite(lam) & (lam > 0)
        lamf = np.where(finite, lam, 0.0)
        ok_upper = np.where(q < w.size, lamf * np.append(w, 0.0) <= 1 + 1e-12, True)
        prev_w = np.concatenate([[np.inf], w])[: q.size]
        ok_lower = np.where(q > 0, lamf * prev_w >= 1 - 1e-12, True)
    valid = np.flatnonzero(ok_upper & ok_lower & finite)
    if valid.size == 0:
        if n_target >= n_pos * (1 - 1e-12):  # everything kept
            return float(1.0 / w.min())
        raise TargetSizeError("could not solve the probability scale (weights out of range)")
    return float(lam[valid[0]])


def repeat_scale(weight: np.ndarray, multiplicity: np.ndarray, n_target: float) -> float:
    """N / Σ_i w_i, so that E[r_i] = N·w_i/Σw sums to N."""
    return repeat_scale_from_total(expected_size(weight, multiplicity), n_target)


def repeat_scale_from_total(total: float, n_target: float) -> float:
    """N / W for the total weight W = Σ_i w_i (raises if W is not positive)."""
    if not total > 0:
        raise TargetSizeError("all weights are zero: nothing to repeat")
    return float(n_target / total)


@dataclass
class MonotoneSolve:
    """Result of :func:`solve_monotone`: the argument, its value, and every evaluation."""

    x: float
    value: float
    converged: bool
    evaluations: list[tuple[float, float]] = field(default_factory=list)


def solve_monotone(
    f: Callable[[float], float],
    target: float,
    lo: float,
    hi: float,
    *,
    rtol: float = 2.5e-4,
    max_eval: int = 60,
    f_lo: float | None = None,
    f_hi: float | None = None,
) -> MonotoneSolve:
    """Find x in [lo, hi] with |f(x) − target| ≤ rtol·target for a non-decreasing f > 0.

    Bracketed search on log x: regula falsi (Illinois variant) steps on (log x, f), with a
    bisection step whenever the bracket did not shrink by half in two steps. Returns the best
    evaluated point (smallest |f − target|) if the tolerance is not met within ``max_eval``.
    """
    if not (0 < lo < hi):
        raise ValueError("need 0 < lo < hi")
    evals: list[tuple[float, float]] = []

    def ev(x: float) -> float:
        y = float(f(x))
        evals.append((x, y))
        return y

    a, b = math.log(lo), math.log(hi)
    fa = ev(lo) if f_lo is None else f_lo
    fb = ev(hi) if f_hi is None else f_hi
    if fa > target * (1 + rtol):
        raise TargetSizeError(f"target {target:g} is below the smallest reachable size {fa:g}")
    if fb < target * (1 - rtol):
        raise TargetSizeError(f"target {target:g} exceeds the largest reachable size {fb:g}")
    for x, y in ((lo, fa), (hi, fb)):
        if abs(y - target) <= rtol * target:
            return MonotoneSolve(x, y, True, evals)
    ga, gb = fa - target, fb - target
    side = 0
    width0 = b - a
    n_since_halving = 0
    while len(evals) < max_eval:
        if n_since_halving >= 2 or gb == ga:
            c = 0.5 * (a + b)
            n_since_halving = 0
        else:
            c = b - gb * (b - a) / (gb - ga)
            if not (a < c < b):
                c = 0.5 * (a + b)
        gc = ev(math.exp(c)) - target
        if abs(gc) <= rtol * target:
            return MonotoneSolve(math.exp(c), gc + target, True, evals)
        if gc < 0:
            a, ga = c, gc
            if side == -1:
                gb *= 0.5
            side = -1
        else:
            b, gb = c, gc
            if side == 1:
                ga *= 0.5
            side = 1
        n_since_halving += 1
        if b - a < 0.5 * width0:
            width0 = b - a
            n_since_halving = 0
        if b - a < 1e-13:
            break
    x, y = min(evals, key=lambda e: abs(e[1] - target))
    return MonotoneSolve(x, y, abs(y - target) <= rtol * target, evals)
