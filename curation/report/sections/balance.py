"""*Balancing*, one part per balance output: the solver facts, entry statistics before and after,
weight statistics, the comparison with MetaCLIP's rule at the same size, and the plots
(rank–frequency, inclusion probabilities, convergence); then the head entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curation.report import aggregate
from curation.report.context import Builder
from curation.report.format import DASH, finite, fmt_int, fmt_num, fmt_pct, fmt_seconds
from curation.report.html import cards, e, kv, note, table
from curation.report.plots import (
    plot_convergence,
    plot_pi_histogram,
    plot_rank_frequency,
    plot_tail_entropy,
)
from curation.report.run import StageOutput
from curation.summaries import (
    BalanceDiagnostics,
    BalanceSummary,
    EntryStats,
    SolverInfo,
    VsMetaclip,
    WeightStats,
)

TOP_ENTRIES = 12

#: Entry statistics shown before/after: (EntryStats field, label, format).
ENTRY_ROWS = (
    ("l1_error", "L1 error to the target", fmt_num),
    ("max_rel_err_head", "max relative error, head entries", fmt_num),
    ("entropy_nats", "entropy of the entry distribution (nats)", fmt_num),
    ("top100_share", "share of the top-100 entries", fmt_pct),
    ("tail_entries_fully_kept_share", "tail entries fully kept", fmt_pct),
    ("expected_matches", "matches (expected)", fmt_int),
)
WEIGHT_KEYS = ("kish_ess", "design_effect", "max_over_mean", "mean")

#: This run against MetaCLIP's rule: (EntryQuality field, label, format).
VS_ROWS = (
    ("tail_share", "tail share kept (c_j ≤ MetaCLIP's cap)", fmt_num),
    ("tail_min_share", "smallest share kept by a tail entry", fmt_num),
    ("entropy_nats", "entropy (nats)", fmt_num),
    ("top100_share", "top-100 share", fmt_pct),
    ("head_overshoot", "head overshoot over the cap", fmt_pct),
    ("tv_to_capped", "TV distance to the capped target", fmt_num),
)


@dataclass
class BalanceRun:
    """One balance output with its summary and diagnostics."""

    out: StageOutput
    summary: BalanceSummary
    diag: BalanceDiagnostics

    @classmethod
    def read(cls, out: StageOutput) -> BalanceRun:
        return cls(out, out.summary(BalanceSummary), out.summary(BalanceDiagnostics))

    @property
    def method(self) -> str:
        return str(self.summary.method or self.diag.method or "?")

    @property
    def label(self) -> str:
        return f"{self.out.label} ({self.method})"

    def entries(self, when: str) -> EntryStats:
        """Entry statistics ``before`` or ``after``: the full diagnostics, else the headline."""
        full = self.diag.entries_before if when == "before" else self.diag.entries_after
        if full is not None:
            return full
        return getattr(self.summary.headline, when)

    @property
    def weights(self) -> WeightStats:
        if self.diag.weights is not None and not self.diag.weights.is_empty():
            return self.diag.weights
        return self.summary.headline.weights

    @property
    def expected_size(self) -> Any:
        if self.summary.expected_size is not None:
            return self.summary.expected_size
        return self.diag.inclusion.expected_size

    @property
    def info(self) -> SolverInfo:
        """The solver's info (summary first, then diagnostics)."""
        if not self.summary.info.is_empty():
            return self.summary.info
        return self.diag.info or SolverInfo()


def tail_kept(entries: EntryStats) -> str:
    kept, tail = entries.tail_entries_fully_kept, entries.tail_entries
    share = fmt_pct(entries.tail_entries_fully_kept_share)
    if finite(kept) and finite(tail):
        return f"{fmt_int(kept)} of {fmt_int(tail)} ({share})"
    return share


def _cards(r: BalanceRun) -> str:
    s = r.summary
    return cards(
        [
            ("method", r.method),
            ("cap t", fmt_num(s.t)),
            ("target size", fmt_num(s.target_size)),
            ("expected size", fmt_num(r.expected_size)),
            ("solver status", str(s.status if s.status is not None else DASH)),
        ]
    )


def _solver_facts(r: BalanceRun) -> str:
    s, d, iterations = r.summary, r.diag, r.info.iterations
    return kv(
        [
            ("iterations", fmt_int(iterations) if iterations is not None else "closed form"),
            ("margins balanced", ", ".join(s.margins) or "none"),
            ("with replacement", fmt_num(bool(s.with_replacement))),
            ("head entries (c_j > t)", fmt_int(d.pool.head_entries)),
            ("entries observed", fmt_int(d.pool.entries_observed)),
            ("size error vs target", fmt_pct(d.inclusion.size_rel_err)),
            ("samples with π = 1", fmt_pct(d.inclusion.pi_equal_1_share)),
            ("balance time", fmt_seconds(s.seconds)),
        ]
    )


def _entries_table(r: BalanceRun) -> str:
    before, after = r.entries("before"), r.entries("after")
    rows = [
        (label, f(getattr(before, key)), f(getattr(after, key)))
        for key, label, f in ENTRY_ROWS
        if key != "tail_entries_fully_kept_share"
    ]
    rows.insert(4, ("tail entries fully kept", tail_kept(before), tail_kept(after)))
    return "<h4>Entries, before and after</h4>" + table(
        ("", "before (pool)", "after (expected)"), rows, align="lrr"
    )


def _weights_table(w: WeightStats) -> str:
    return "<h4>Weights</h4>" + kv(
        [
            ("Kish effective sample size", fmt_num(w.kish_ess)),
            ("design effect n / ESS", fmt_num(w.design_effect)),
            ("max / mean weight", fmt_num(w.max_over_mean)),
            ("share above 2× mean", fmt_pct(w.share_above_2x_mean)),
            ("share above 5× mean", fmt_pct(w.share_above_5x_mean)),
            ("share above 10× mean", fmt_pct(w.share_above_10x_mean)),
        ]
    )


def vs_metaclip(ref: VsMetaclip) -> str:
    """This run against MetaCLIP's rule at the same expected size
    (:mod:`curation.balancing.reference`)."""
    rows = [
        (label, f(getattr(ref.metaclip, key)), f(getattr(ref.this, key)))
        for key, label, f in VS_ROWS
    ]
    return f"<h4>Against MetaCLIP's rule at the same size (cap {fmt_num(ref.t_mc)})</h4>" + table(
        ("", "MetaCLIP", "this run"), rows, align="lrr"
    )


def head_entries(out: StageOutput) -> str:
    """The most frequent entries with their target and expected count after balancing."""
    rows = [
        (
            h.entry,
            fmt_int(int(h.count)),
            fmt_num(h.target),
            fmt_num(h.expected),
            fmt_pct(h.expected / h.count) if finite(h.expected) else DASH,
        )
        for h in aggregate.head_entries(out, TOP_ENTRIES)
    ]
    if not rows:
        return ""
    return "<h4>Head entries, before and after</h4>" + table(
        ("entry", "count before", "target", "expected after", "kept"), rows, align="lrrrr"
    )


def _plots(b: Builder, r: BalanceRun) -> list[str]:
    parts = [
        b.figure(plot_rank_frequency(r.diag.plots.to_json(), f"Entry counts by rank: {r.label}"))
    ]
    ref = r.info.vs_metaclip
    if ref is not None and not ref.is_empty() and r.method != "metaclip":
        parts.append(vs_metaclip(ref))
        points = [
            ("MetaCLIP, same size", ref.metaclip.to_json(), True),
            (r.label, ref.this.to_json(), False),
        ]
        parts.append(b.figure(plot_tail_entropy(points)))
    parts.append(b.figure(plot_pi_histogram(r.diag.inclusion.pi_histogram)))
    history = r.diag.convergence
    if not history:
        table_ = r.out.parquet("history.parquet")
        history = table_.to_pylist() if table_ is not None else []
    conv = b.figure(plot_convergence(history))
    parts.append(conv or note("No solver iterations (a closed-form method): no convergence curve."))
    return parts


def _summary_of(r: BalanceRun) -> dict[str, Any]:
    s, before, after, w = r.summary, r.entries("before"), r.entries("after"), r.weights
    return {
        "directory": r.out.name,
        "method": r.method,
        "t": s.t,
        "status": s.status,
        "iterations": r.info.iterations,
        "target_size": s.target_size,
        "expected_size": r.expected_size,
        "before": {k: getattr(before, k) for k, _, _ in ENTRY_ROWS},
        "after": {k: getattr(after, k) for k, _, _ in ENTRY_ROWS},
        "weights": {k: getattr(w, k) for k in WEIGHT_KEYS},
    }


def _run_part(b: Builder, r: BalanceRun) -> str:
    solver = f"<h4>Solver</h4>{_solver_facts(r)}{_weights_table(r.weights)}"
    parts = [
        f'<h3 id="balance-{e(r.out.name)}">{e(r.label)}</h3>',
        _cards(r),
        f'<div class="cols"><div>{solver}</div><div>{_entries_table(r)}</div></div>',
        *_plots(b, r),
        head_entries(r.out),
    ]
    return "".join(parts)


def section_balance(b: Builder) -> list[BalanceRun]:
    outs = b.of("balance")
    if not outs:
        b.missing("balance", "Balancing", "balance")
        b.summary["balance"] = []
        return []
    runs = [BalanceRun.read(o) for o in outs]
    body = []
    if len(runs) > 1:
        links = ", ".join(f'<a href="#balance-{e(r.out.name)}">{e(r.label)}</a>' for r in runs)
        body.append(f"<p>{len(runs)} balance runs: {links}.</p>")
    body += [_run_part(b, r) for r in runs]
    b.summary["balance"] = [_summary_of(r) for r in runs]
    b.add("balance", "Balancing", "".join(body))
    return runs
