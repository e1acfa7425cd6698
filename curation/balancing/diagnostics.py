"""Diagnostics every balance run reports (``balancing.md``, "Diagnostics every balance run reports").

All quantities are computed on the distinct-signature table with multiplicities, so they equal
the pool-level ones. "Before" is the pool itself (every matched sample kept: n_j = c_j), "after"
the expected counts n_j(π) = Σ_{i ∋ j} π_i of the method's inclusion probabilities.

Everything is computed from :class:`~.operators.AggregateStats` (sums, maxima and histograms over
rows), so the same function serves the driver (stats computed from the per-signature arrays) and
Spark (stats aggregated over partitions, carried by ``result.stats``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .operators import WEIGHT_FACTORS, AggregateStats, stats_from_rows
from .params import BalanceResult
from .signatures import SignatureTable


def entry_stats(
    n: np.ndarray, tau: np.ndarray, counts: np.ndarray, t: float | None, top: int = 100
) -> dict[str, Any]:
    """Entry-distribution statistics of expected counts ``n`` against targets ``tau``.

    l1_error = Σ_j |n_j − τ_j| / Σ_j τ_j; max_rel_err_head = max over head entries (c_j > t, or
    τ_j < c_j without t) of |n_j/τ_j − 1|; entropy (nats) of n/Σn; top-k share of Σn;
    tail entries (0 < c_j ≤ t) fully kept: n_j ≥ c_j·(1 − 1e-9).
    """
    n = np.asarray(n, dtype=np.float64)
    tau = np.asarray(tau, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    observed = c > 0
    head = (c > t) if t is not None else (tau < c) & observed
    tail = observed & ~head
    total = n.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(tau > 0, n / np.where(tau > 0, tau, 1.0) - 1.0, 0.0)
    kept = tail & (n >= c * (1 - 1e-9))
    return {
        "l1_error": float(np.abs(n - tau)[observed].sum() / max(tau[observed].sum(), 1e-300)),
        "max_rel_err_head": float(np.abs(rel[head]).max(initial=0.0)),
        "max_rel_err": float(np.abs(rel[observed]).max(initial=0.0)),
        "entropy_nats": entropy(n),
        "entropy_max_nats": float(np.log(max(int(observed.sum()), 1))),
        f"top{top}_share": top_share(n, top),
        "tail_entries": int(tail.sum()),
        "tail_entries_fully_kept": int(kept.sum()),
        "tail_entries_fully_kept_share": float(kept.sum() / max(int(tail.sum()), 1)),
        "expected_matches": float(total),
    }


def entropy(n: np.ndarray) -> float:
    """Entropy (nats) of the distribution n/Σn (0 for an empty or all-zero n)."""
    total = float(n.sum())
    p = n[n > 0] / total if total > 0 else np.zeros(0)
    return float(-(p * np.log(p)).sum()) if p.size else 0.0


def top_share(n: np.ndarray, top: int) -> float:
    """Σ of the ``top`` largest n_j over Σ_j n_j (0 for an all-zero n)."""
    total = float(n.sum())
    return float(np.sort(n)[::-1][:top].sum() / total) if total > 0 else 0.0


def entry_quality(
    n: np.ndarray, counts: np.ndarray, t_ref: float, top: int = 100
) -> dict[str, float]:
    """What users check of a balanced set against a reference cap ``t_ref`` (MetaCLIP's cap at
    the same size, when comparing methods), from the expected entry counts n_j = Σ_{i ∋ j} π_i:

    * tail_share = Σ_tail n_j / Σ_tail c_j over tail entries 0 < c_j ≤ t_ref, and the smallest
      n_j / c_j among them (tail_min_share); head_share likewise over c_j > t_ref;
    * head_overshoot = Σ_j max(0, n_j − t_ref) / Σ_j n_j;
    * entropy (nats) and top-k share of n/Σn;
    * tv_to_capped: total variation distance of n/Σn to the best capped target min(c_j, t*)/Σ,
      t* the cap with Σ_j min(c_j, t*) = Σ_j n_j.
    """
    n = np.asarray(n, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    tail, head = (c > 0) & (c <= t_ref), c > t_ref
    total = float(n.sum())
    lo, hi = 0.0, float(c.max(initial=0.0))
    for _ in range(100):  # bisection for t*: Σ_j min(c_j, t) is increasing in t
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(c, mid).sum() < total else (lo, mid)
    capped = np.minimum(c, hi)
    return {
        "tail_share": float(n[tail].sum() / c[tail].sum()) if tail.any() else 1.0,
        "tail_min_share": float((n[tail] / c[tail]).min(initial=1.0)),
        "head_share": float(n[head].sum() / c[head].sum()) if head.any() else 1.0,
        "head_overshoot": float(np.maximum(n - t_ref, 0).sum() / total) if total > 0 else 0.0,
        "entropy_nats": entropy(n),
        f"top{top}_share": top_share(n, top),
        "tv_to_capped": float(0.5 * np.abs(n / total - capped / capped.sum()).sum())
        if total > 0
        else 0.0,
    }


def weight_stats(weight: np.ndarray, multiplicity: np.ndarray, eligible: np.ndarray) -> dict:
    """Kish ESS = (Σw)²/Σw², design effect n/ESS, max/mean, shares of samples above 2×/5×/10× mean
    (over eligible samples, each signature counted with its multiplicity)."""
    w = np.asarray(weight, dtype=np.float64)[eligible]
    m = np.asarray(multiplicity, dtype=np.float64)[eligible]
    n = m.sum()
    sw, sw2 = float(np.dot(m, w)), float(np.dot(m, w * w))
    mean = sw / n if n > 0 else 0.0
    above = {f: float(m[w > f * mean].sum()) for f in WEIGHT_FACTORS}
    return weight_summary(float(n), sw, sw2, float(w.max(initial=0.0)), above)


def weight_summary(
    n: float, sw: float, sw2: float, wmax: float, above: dict[int, float]
) -> dict[str, float]:
    """The weight statistics from sums: n = Σm, sw = Σ m w, sw2 = Σ m w², wmax = max w and
    above[f] = Σ m [w > f · mean]: Kish ESS (Σw)²/Σw², design effect n/ESS, max/mean, shares."""
    ess = sw * sw / sw2 if sw2 > 0 else 0.0
    mean = sw / n if n > 0 else 0.0
    out = {
        "n": float(n),
        "kish_ess": ess,
        "design_effect": float(n / ess) if ess > 0 else float("inf"),
        "max_over_mean": float(wmax / mean) if mean > 0 else 0.0,
        "mean": mean,
    }
    for f in WEIGHT_FACTORS:
        out[f"share_above_{f}x_mean"] = float(above[f] / n) if n > 0 else 0.0
    return out


def _rank_frequency(values: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    v = v[v > 0]
    if v.size == 0:
        return {"rank": [], "value": []}
    ranks = np.unique(np.geomspace(1, v.size, num=min(points, v.size)).astype(np.int64))
    return {"rank": ranks.tolist(), "value": v[ranks - 1].tolist()}


def diagnostics(
    table: SignatureTable | None,
    result: BalanceResult,
    *,
    targets: np.ndarray | None = None,
    top: int = 100,
    history_points: int = 2000,
) -> dict[str, Any]:
    """The JSON-serialisable diagnostics dict of a run (pool, entries before/after, weights,
    inclusion probabilities, convergence, and small arrays for the plots).

    ``table``: the signature table when it is on the driver (the statistics are computed from
    ``result.weight`` and ``result.pi``); None for a Spark result, whose ``result.stats`` holds
    the same statistics aggregated over partitions.
    """
    if table is not None:
        stats = stats_from_rows(table, result.params.keep_unmatched, result.weight, result.pi)
    elif result.stats is not None:
        stats = result.stats
    else:
        raise ValueError("diagnostics needs the signature table or a result carrying stats")
    return diagnostics_from_stats(
        stats, result, targets=targets, top=top, history_points=history_points
    )


def diagnostics_from_stats(
    stats: AggregateStats,
    result: BalanceResult,
    *,
    targets: np.ndarray | None = None,
    top: int = 100,
    history_points: int = 2000,
) -> dict[str, Any]:
    """:func:`diagnostics` from aggregated statistics (driver or Spark)."""
    counts = result.counts
    tau = result.targets if targets is None else np.asarray(targets, dtype=np.float64)
    t = result.info.get("t")
    n_after = stats.entry_sums
    m = stats.n_entries
    pool = {
        "n": int(stats.n_samples),
        "signatures": int(stats.n_signatures),
        "matched": int(stats.n_matched),
        "matched_share": float(stats.n_matched / max(stats.n_samples, 1)),
        "k_histogram": {str(a): b for a, b in stats.k_histogram.items()},
        "entries": int(m),
        "entries_observed": int((counts[:m] > 0).sum()),
        "head_entries": int((counts[:m] > t).sum()) if t is not None else None,
        "t": t,
    }
    edges = np.linspace(0.0, 1.0, stats.pi_histogram.size + 1)
    size = stats.expected_size
    target_size = result.info.get("target_size")
    hist_rows = result.history
    if len(hist_rows) > history_points:  # keep the first, the last and an even subsample
        idx = np.unique(np.linspace(0, len(hist_rows) - 1, history_points).astype(int))
        hist_rows = [hist_rows[i] for i in idx]
    out = {
        "method": result.params.method,
        "pool": pool,
        "entries_before": entry_stats(counts.astype(np.float64), tau, counts, t, top),
        "entries_after": entry_stats(n_after, tau, counts, t, top),
        "weights": weight_summary(
            stats.eligible,
            stats.weight_sum,
            stats.weight_sq_sum,
            stats.weight_max,
            stats.above_mean,
        ),
        "inclusion": {
            "expected_size": size,
            "target_size": target_size,
            "size_rel_err": abs(size - target_size) / target_size if target_size else None,
            "pi_histogram": {"edges": edges.tolist(), "counts": stats.pi_histogram.tolist()},
            "pi_equal_1_share": float(stats.pi_one / max(stats.eligible, 1)),
        },
        "convergence": [
            {
                "iter": int(h["iter"]),
                "max_rel_err": float(h["max_rel_err"]),
                "l1": float(h["l1"]),
            }
            for h in hist_rows
        ],
        "plots": {
            "rank_frequency_before": _rank_frequency(counts),
            "rank_frequency_after": _rank_frequency(n_after),
            "rank_frequency_target": _rank_frequency(tau),
        },
        "info": _clean(result.info),
    }
    return _clean(out)


def _clean(x: Any) -> Any:
    """Make a structure JSON-serialisable (numpy scalars/arrays; non-finite floats → None)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_clean(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
