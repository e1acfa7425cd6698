"""*Method comparison*, when several balance outputs exist: L1 error to the target, max head-entry
error, entropy, top-100 share, tail entries fully kept, Kish ESS, design effect, max/mean weight
and expected size, with a rank–frequency overlay and the entropy–tail-share scatter."""

from __future__ import annotations

from typing import Any

from curation.report.context import Builder
from curation.report.format import DASH, fmt_int, fmt_num, fmt_pct
from curation.report.html import note, table
from curation.report.plots import plot_rank_frequency_overlay, plot_tail_entropy
from curation.report.sections.balance import BalanceRun

HEADERS = (
    "run",
    "L1 error to target",
    "max head-entry error",
    "entropy (nats)",
    "top-100 share",
    "tail entries fully kept",
    "Kish ESS",
    "design effect",
    "max / mean weight",
    "expected size",
)
#: The EntryStats fields of the table and the summary, in column order.
ENTRY_KEYS = (
    "l1_error",
    "max_rel_err_head",
    "entropy_nats",
    "top100_share",
    "tail_entries_fully_kept_share",
)
WEIGHT_KEYS = ("kish_ess", "design_effect", "max_over_mean")
_ENTRY_FORMATS = (fmt_num, fmt_num, fmt_num, fmt_pct, fmt_pct)


def _pool_row(first: BalanceRun) -> tuple[str, ...]:
    before = first.entries("before")
    cells = [f(getattr(before, k)) for k, f in zip(ENTRY_KEYS, _ENTRY_FORMATS)]
    return ("pool (before balancing)", *cells, DASH, DASH, DASH, fmt_int(first.diag.pool.matched))


def _run_row(r: BalanceRun) -> tuple[str, ...]:
    a, w = r.entries("after"), r.weights
    cells = [f(getattr(a, k)) for k, f in zip(ENTRY_KEYS, _ENTRY_FORMATS)]
    weights = [fmt_num(getattr(w, k)) for k in WEIGHT_KEYS]
    return (r.label, *cells, *weights, fmt_num(r.expected_size))


def _summary_row(r: BalanceRun) -> dict[str, Any]:
    a, w = r.entries("after"), r.weights
    return {
        "directory": r.out.name,
        "method": r.method,
        **{k: getattr(a, k) for k in ENTRY_KEYS},
        **{k: getattr(w, k) for k in WEIGHT_KEYS},
        "expected_size": r.expected_size,
    }


def _tail_entropy_points(runs: list[BalanceRun]) -> list[tuple[str, dict[str, Any], bool]]:
    """Each run's point, and MetaCLIP's at each distinct expected size (once)."""
    points: list[tuple[str, dict[str, Any], bool]] = []
    baselines: set[float] = set()
    for r in runs:
        ref = r.info.vs_metaclip
        if ref is None or ref.is_empty():
            continue
        size = round(float(ref.expected_size), 3)
        if r.method != "metaclip" and size not in baselines:
            baselines.add(size)
            points.append((f"MetaCLIP at {fmt_num(size)}", ref.metaclip.to_json(), True))
        points.append((r.label, ref.this.to_json(), r.method == "metaclip"))
    return points


def section_comparison(b: Builder, runs: list[BalanceRun]) -> None:
    if len(runs) < 2:
        text = (
            "One balance run: the method comparison table appears when several balance outputs "
            "exist in the run."
            if runs
            else "No balance output: no method comparison."
        )
        b.add("comparison", "Method comparison", note(text))
        return
    rows = [_pool_row(runs[0]), *(_run_row(r) for r in runs)]
    body = table(HEADERS, rows, align="l" + "r" * 9, cls="wide")
    body += note(
        "Entry statistics are of the expected counts n_j(π) against each run's own target; "
        "the pool row is every matched sample kept (against the first run's target)."
    )
    overlay = plot_rank_frequency_overlay(
        runs[0].diag.plots.rank_frequency_before,
        [(r.label, r.diag.plots.to_json()) for r in runs],
    )
    body += b.figure(overlay)
    body += b.figure(plot_tail_entropy(_tail_entropy_points(runs)))
    b.summary["comparison"] = [_summary_row(r) for r in runs]
    b.add("comparison", "Method comparison", body)
