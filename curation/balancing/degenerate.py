"""Balancing results that must never be committed, and the error that names the option to change.

A solved balancing is *degenerate* when

* a solved parameter (an entry or margin factor, a scale, the offset) is NaN or infinite, or a
  sample's weight w_i or inclusion probability π_i is: the solver was given a value it cannot use
  (a NaN cap or share), or overflowed; or
* the expected output size is below one sample: Σ_i π_i < 1 (with replacement, the expected number
  of copies Σ_i e_i = repeat_scale · Σ_i w_i < 1). A cap of 1e-9 gives π_i ≈ 1e-9 per match:
  ``select`` would keep nothing, and an empty "balanced" set is not a result.

Every sample's π_i and w_i is a function of its signature, so checking the signature table's
values (driver) or their sums over it (a NaN or inf anywhere makes ``Σ w`` and ``Σ π`` non-finite;
Spark execution) checks every sample of the pool.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .params import BalanceResult, ScoreParams
from .signatures import SignatureTable

#: The smallest expected output size (in samples) a committed balancing may have.
MIN_EXPECTED_SIZE = 1.0


class DegenerateResultError(ValueError):
    """A balancing whose result is not usable (NaN/inf values, or an expected size below one)."""


def _non_finite_params(params: ScoreParams) -> str | None:
    bad = int(np.count_nonzero(~np.isfinite(params.entry_values)))
    if bad:
        return f"{bad:,} of {params.entry_values.size:,} entry factors are NaN or infinite"
    for column, values in params.margin_values.items():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            return f"{bad:,} factors of margin {column!r} are NaN or infinite"
    for name in ("weight_scale", "prob_scale", "repeat_scale", "offset"):
        value = getattr(params, name)
        if value is not None and not math.isfinite(value):
            return f"the solved {name} is {value}"
    return None


def _sums(result: BalanceResult, table: SignatureTable | None) -> tuple[float, float]:
    """(Σ_i π_i, Σ_i w_i) over every sample of the pool."""
    if table is not None and result.pi is not None and result.weight is not None:
        m = np.asarray(table.multiplicity, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            return float(np.dot(m, result.pi)), float(np.dot(m, result.weight))
    stats = result.stats
    if stats is None:
        raise ValueError("checking a result needs its signature table or its Spark statistics")
    return float(stats.expected_size), float(stats.weight_sum)


def degenerate_reason(result: BalanceResult, table: SignatureTable | None) -> str | None:
    """Why ``result`` must not be committed (see the module docstring), or None."""
    return _non_finite(result, table) or _too_small(result, table)


def _non_finite(result: BalanceResult, table: SignatureTable | None) -> str | None:
    reason = _non_finite_params(result.params)
    if reason:
        return reason
    size, weight_sum = _sums(result, table)
    if not (math.isfinite(size) and math.isfinite(weight_sum)):
        return "some samples' weights or inclusion probabilities are NaN or infinite"
    return None


def _too_small(result: BalanceResult, table: SignatureTable | None) -> str | None:
    size, weight_sum = _sums(result, table)
    scale = result.params.repeat_scale
    if scale is not None:
        copies = scale * weight_sum
        if copies < MIN_EXPECTED_SIZE:
            return f"the expected number of copies is {copies:.3g} (fewer than one sample)"
    elif size < MIN_EXPECTED_SIZE:
        return f"the expected output size is {size:.3g} samples (fewer than one)"
    return None


def check_result(
    result: BalanceResult, table: SignatureTable | None, given: Mapping[str, float]
) -> None:
    """Raise :class:`DegenerateResultError` for a degenerate ``result``; the message names the
    cause and the options that shaped it (``given``: flag → value, for the options set)."""
    shown = ", ".join(f"{flag} {value:g}" for flag, value in given.items() if value)
    options = f" (from {shown})" if shown else ""
    reason = _non_finite(result, table)
    if reason:
        raise DegenerateResultError(
            f"degenerate balancing result: {reason}{options}; check the numbers given: --cap, "
            "--tol and the shares in --entry-target / --margin-target files must be finite. "
            "Nothing was written"
        )
    reason = _too_small(result, table)
    if reason:
        raise DegenerateResultError(
            f"degenerate balancing result: {reason}{options}; nothing would be selected: raise "
            "the cap (--cap, --tail-share) or the target (--target-size, --target-fraction). "
            "Nothing was written"
        )
