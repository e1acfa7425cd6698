"""MetaCLIP's rule at the same expected size: the baseline every balance run is scored against.

A balanced set is only better than MetaCLIP's if it is better *at the same size* N: keeping more
samples trivially keeps more of the tail. So after any method has run, MetaCLIP's rule is solved
on the same table for the cap t_mc whose expected size equals the run's expected size, and both
expected entry distributions are scored by :func:`~.diagnostics.entry_quality` against t_mc:
the tail share (Σ n_j / Σ c_j over entries with c_j ≤ t_mc, which MetaCLIP keeps whole), the
entropy of n / Σn, the top-100 share, head overshoot and TV distance to the best capped target.
The report plots entropy against tail share for the run and this baseline.

It costs MetaCLIP's cap search (one pass per evaluation) and one aggregation pass, on the same
operator as the run (driver or Spark).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .diagnostics import entry_quality
from .metaclip import metaclip_on
from .operators import TableOperator
from .params import BalanceResult

__all__ = ["metaclip_reference"]


def metaclip_reference(op: TableOperator, result: BalanceResult) -> dict[str, Any] | None:
    """Score ``result`` and MetaCLIP's rule at the same expected size against MetaCLIP's cap.

    Returns ``{"t_mc", "expected_size", "this": entry_quality(...), "metaclip": entry_quality(...)}``
    or None where a like-for-like comparison does not exist: sampling with replacement or
    uncapped weights (the size is then set by repeats, not by π), or an empty result.
    """
    params = result.params
    if params.repeat_scale is not None or not params.capped:
        return None
    m = op.n_entries
    stats = result.stats if result.stats is not None else op.aggregate_stats(params)
    size = float(stats.expected_size)
    counts = np.asarray(result.counts, dtype=np.float64)[:m]
    if size <= 0 or not counts.any():
        return None
    n_this = np.asarray(stats.entry_sums, dtype=np.float64)[:m]
    if params.method == "metaclip":
        t_mc = float(result.info["t"])
        n_mc = n_this
    else:
        ref = metaclip_on(
            op,
            target_size=min(size, float(op.work(params.keep_unmatched).n_eligible)),
            keep_unmatched=params.keep_unmatched,
        )
        t_mc = float(ref.info["t"])
        n_mc = np.asarray(op.aggregate_stats(ref.params).entry_sums, dtype=np.float64)[:m]
    return {
        "t_mc": t_mc,
        "expected_size": size,
        "this": entry_quality(n_this, counts, t_mc),
        "metaclip": entry_quality(n_mc, counts, t_mc),
    }
