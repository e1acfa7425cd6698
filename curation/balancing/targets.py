"""Entry and margin targets shared by the methods.

* Capped entry targets (MetaCLIP's balancing goal, Xu et al. 2023): τ_j = min(c_j, t_j), with
  t_j = t for every real entry and, with ``keep_unmatched``, the pseudo-entry's own cap.
* Entry target distributions for ``balance`` (Liu et al. 2024): P_Y(j) ∝ min(c_j, t) (default),
  ∝ c_j^α ("tempering"), uniform over observed entries, or a user vector. Mass a user puts on
  entries that were never observed (c_j = 0) cannot be placed: it is dropped, the rest is
  renormalised, and the dropped share is reported.
* Margin target distributions: the empirical one (default), uniform over observed levels, or a
  user mapping level → share (renormalised over observed levels, dropped share reported).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def cap_vector(n_entries: int, t: float, unmatched_cap: float | None = None) -> np.ndarray:
    """Per-entry caps t_j: ``t`` for the m real entries, plus ``unmatched_cap`` (default ``t``)
    for the ``<unmatched>`` pseudo-entry when ``n_entries`` includes it (caller's choice)."""
    caps = np.full(n_entries, float(t))
    if unmatched_cap is not None:
        caps[-1] = float(unmatched_cap)
    return caps


def capped_targets(counts: np.ndarray, caps: float | np.ndarray) -> np.ndarray:
    """τ_j = min(c_j, t_j) as ``float64``."""
    return np.minimum(np.asarray(counts, dtype=np.float64), caps)


@dataclass(frozen=True)
class EntryTarget:
    """How the entry target of ``balance`` is formed: kind in {capped, power, uniform, given}."""

    kind: str = "capped"
    alpha: float | None = None
    values: np.ndarray | None = None

    @classmethod
    def parse(cls, spec: str | EntryTarget | np.ndarray | Sequence[float]) -> EntryTarget:
        """``"capped"``, ``"uniform"``, ``"power:0.5"``, an :class:`EntryTarget` or a vector."""
        if isinstance(spec, EntryTarget):
            return spec
        if isinstance(spec, str):
            if spec in ("capped", "uniform"):
                return cls(spec)
            if spec.startswith("power:"):
                return cls("power", alpha=float(spec.split(":", 1)[1]))
            raise ValueError(
                f"unknown entry target {spec!r} (capped, uniform, power:α or a vector)"
            )
        return cls("given", values=np.asarray(spec, dtype=np.float64))


def entry_target_distribution(
    counts: np.ndarray, target: EntryTarget, caps: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """P_Y over entries (sums to 1 over observed entries) and the share of user mass dropped.

    ``capped`` needs ``caps`` (the per-entry t_j).
    """
    c = np.asarray(counts, dtype=np.float64)
    observed = c > 0
    if not observed.any():
        raise ValueError("no entry is observed in the pool: nothing to balance")
    dropped = 0.0
    if target.kind == "capped":
        if caps is None:
            raise ValueError("the capped entry target needs a cap t")
        w = np.minimum(c, caps)
    elif target.kind == "power":
        w = np.where(observed, np.power(c, float(target.alpha)), 0.0)
    elif target.kind == "uniform":
        w = observed.astype(np.float64)
    elif target.kind == "given":
        v = np.asarray(target.values, dtype=np.float64)
        if v.shape != c.shape:
            raise ValueError(f"entry target vector has length {v.size}, expected {c.size}")
        if np.any(v < 0) or not np.all(np.isfinite(v)):
            raise ValueError("entry target values must be finite and non-negative")
        total = v.sum()
        w = np.where(observed, v, 0.0)
        dropped = float(1.0 - w.sum() / total) if total > 0 else 0.0
    else:
        raise ValueError(f"unknown entry target kind {target.kind!r}")
    s = w.sum()
    if not s > 0:
        raise ValueError("the entry target puts no mass on any observed entry")
    return w / s, dropped


def margin_target_distribution(
    observed_counts: np.ndarray,
    levels: Sequence[str],
    spec: str | Mapping[str, float] = "empirical",
) -> tuple[np.ndarray, float]:
    """P_X over the levels of a margin column, and the share of user mass dropped.

    ``spec``: ``"empirical"`` (the observed distribution), ``"uniform"`` (over observed levels)
    or a mapping level → share (unknown or unobserved levels are dropped and reported).
    """
    obs = np.asarray(observed_counts, dtype=np.float64)
    observed = obs > 0
    dropped = 0.0
    if isinstance(spec, str):
        if spec == "empirical":
            w = obs.copy()
        elif spec == "uniform":
            w = observed.astype(np.float64)
        else:
            raise ValueError(f"unknown margin target {spec!r} (empirical, uniform or a mapping)")
    else:
        vals = {str(k): float(v) for k, v in spec.items()}
        if any(v < 0 or not np.isfinite(v) for v in vals.values()):
            raise ValueError("margin target shares must be finite and non-negative")
        total = sum(vals.values())
        index = {lv: i for i, lv in enumerate(levels)}
        w = np.zeros(len(levels))
        for lv, v in vals.items():
            if lv in index:
                w[index[lv]] = v
        w = np.where(observed, w, 0.0)
        dropped = float(1.0 - w.sum() / total) if total > 0 else 0.0
    s = w.sum()
    if not s > 0:
        raise ValueError("the margin target puts no mass on any observed level")
    return w / s, dropped
