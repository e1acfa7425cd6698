"""*Pool and matching*: rows, usable rows, matched share, rejects by reason, metadata entries and
the matches-per-sample histogram; the count stage adds entries observed, distinct signatures and
the top entries."""

from __future__ import annotations

from typing import Any

from curation.report import aggregate
from curation.report.context import Builder
from curation.report.format import DASH, finite, fmt_int, fmt_num, fmt_pct, fmt_seconds
from curation.report.html import cards, e, kv, table
from curation.report.plots import plot_matches_histogram
from curation.report.run import StageOutput
from curation.summaries import CountSummary, MatchSummary, PoolSummary

TOP_ENTRIES = 12

_MATCH_KEYS = (
    "input_rows",
    "usable_rows",
    "matched",
    "unmatched",
    "matched_share",
    "rejected",
    "rejects_by_reason",
    "total_matches",
    "matches_per_sample",
)
_COUNT_KEYS = ("samples", "matched", "entries", "entries_observed", "signatures")


def _share(n: Any, total: Any) -> str:
    return fmt_pct(n / total) if total else DASH


def _pool_part(p: StageOutput, summary: dict[str, Any]) -> str:
    s = p.summary(PoolSummary)
    summary["pool"] = {"directory": p.name, "rows": s.rows, "files": s.files}
    return (
        f"<p>Pool <code>{e(p.label)}</code>: {e(fmt_int(s.rows))} rows in "
        f"{e(fmt_int(s.files))} files (the built-in demo pool).</p>"
    )


def _match_facts(m: StageOutput, s: MatchSummary) -> str:
    mean_k = s.total_matches / s.matched if finite(s.total_matches) and s.matched else None
    return kv(
        [
            ("matched output", m.label),
            ("input", s.input if s.input is not None else DASH),
            ("input format", s.input_format if s.input_format is not None else DASH),
            ("metadata entries", fmt_int(s.metadata.entries)),
            ("metadata list", s.metadata.source if s.metadata.source is not None else DASH),
            ("case folding", fmt_num(bool(s.casefold))),
            ("unmatched (usable, no entry)", fmt_int(s.unmatched)),
            ("total matches", fmt_int(s.total_matches)),
            ("matches per matched sample", fmt_num(mean_k, 3)),
            ("match time", fmt_seconds(s.seconds)),
        ]
    )


def _rejects_table(s: MatchSummary) -> str:
    rejected = s.rejected or 0
    rows = [(r, fmt_int(n), _share(n, s.input_rows)) for r, n in s.rejects_by_reason.items()]
    rows.append(("total", fmt_int(rejected), _share(rejected, s.input_rows)))
    return "<h3>Rejected rows by reason</h3>" + table(
        ("reason", "rows", "share of input"), rows, align="lrr"
    )


def _match_part(m: StageOutput, summary: dict[str, Any]) -> tuple[str, dict[int, int]]:
    s = m.summary(MatchSummary)
    headline = cards(
        [
            ("input rows", fmt_int(s.input_rows)),
            ("usable rows", fmt_int(s.usable_rows)),
            ("matched", fmt_int(s.matched)),
            ("matched share", fmt_pct(s.matched_share)),
            ("rejected", fmt_int(s.rejected)),
        ]
    )
    columns = (
        f'<div class="cols"><div>{_match_facts(m, s)}</div><div>{_rejects_table(s)}</div></div>'
    )
    summary["match"] = {
        "directory": m.name,
        **{k: getattr(s, k) for k in _MATCH_KEYS},
        "metadata_entries": s.metadata.entries,
    }
    per_k = {int(k): int(v) for k, v in s.matches_per_sample.items()}
    return headline + columns, per_k


def _top_entries(s: CountSummary) -> str:
    top = s.top_entries[:TOP_ENTRIES]
    if not top:
        return ""
    rows = [
        (i + 1, t.entry, fmt_int(t.count), _share(t.count, s.matched)) for i, t in enumerate(top)
    ]
    return "<h3>Most frequent entries</h3>" + table(
        ("rank", "entry", "samples", "share of matched samples"), rows, align="rlrr"
    )


def _count_part(c: StageOutput, summary: dict[str, Any]) -> str:
    s = c.summary(CountSummary)
    observed = f"{fmt_int(s.entries_observed)} ({_share(s.entries_observed, s.entries)})"
    facts = kv(
        [
            ("counts output", c.label),
            ("samples counted", fmt_int(s.samples)),
            ("entries in the list", fmt_int(s.entries)),
            ("entries observed", observed),
            ("distinct signatures", fmt_int(s.signatures)),
            ("margins counted", ", ".join(s.margins) or "none"),
        ]
    )
    summary["count"] = {"directory": c.name, **{k: getattr(s, k) for k in _COUNT_KEYS}}
    return "<h3>Entries</h3>" + facts + _top_entries(s)


def section_pool(b: Builder) -> None:
    pool_out, matched, counts = b.of("demo-pool"), b.of("match"), b.of("count")
    if not matched and not pool_out and not counts:
        b.missing("pool", "Pool and matching", "match")
        return
    summary: dict[str, Any] = {}
    body = [_pool_part(p, summary) for p in pool_out]
    per_k: dict[int, int] = {}
    if matched:
        part, per_k = _match_part(matched[0], summary)
        body.append(part)
    if counts:
        per_k = per_k or aggregate.matches_histogram(counts[0])
        body.append(_count_part(counts[0], summary))
    else:
        body.append(b.noted("No complete count output in this run; entry statistics omitted."))
    if per_k:
        body.append(b.figure(plot_matches_histogram(per_k)))
    if not matched:
        text = "No complete match output in this run; matching statistics omitted."
        body.insert(0, b.noted(text))
    b.summary.update(summary)
    b.add("pool", "Pool and matching", "".join(body))
