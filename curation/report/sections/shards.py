"""*Output shards*: samples, shards, bytes, and failures by reason, per shard set (download or
reshard)."""

from __future__ import annotations

from typing import Any

from curation.pipeline import SHARD_STAGES
from curation.report.context import Builder
from curation.report.format import DASH, fmt_bytes, fmt_int, fmt_num, fmt_pct, fmt_seconds
from curation.report.html import cards, e, kv, table
from curation.report.run import StageOutput
from curation.summaries import ShardStats


def _facts(sizes: dict[str, int], stats: ShardStats) -> str:
    values = list(sizes.values())
    first, last = (min(sizes), max(sizes)) if sizes else (None, None)
    return kv(
        [
            ("shards", f"{first} … {last}" if first else DASH),
            ("samples per shard", fmt_int(stats.samples_per_shard)),
            (
                "smallest / largest shard",
                f"{fmt_int(min(values))} / {fmt_int(max(values))}" if values else DASH,
            ),
            ("selected uids", fmt_int(stats.selected_uids)),
            ("selected samples (with repeats)", fmt_int(stats.selected_samples)),
            ("uids found", fmt_int(stats.found_uids)),
            ("samples written", fmt_int(stats.written_samples)),
            ("shuffled", fmt_num(bool(stats.shuffle))),
            ("weights renormalised by", fmt_num(stats.weight_scale, 6)),
            ("time", fmt_seconds(stats.seconds)),
        ]
    )


def failures_by_reason(stats: ShardStats) -> dict[str, int]:
    """Why selected samples are not in the shard set: download failures, input samples dropped
    and input members skipped (nonzero ones), or selected uids absent from the input shards."""
    failures: dict[str, int] = {}
    download = stats.download
    if download is not None and not download.is_empty():
        failures.update(download.failures_by_reason)
    for prefix, counts in (
        ("input sample dropped", stats.input_samples_dropped),
        ("input member skipped", stats.input_members_skipped),
    ):
        failures.update({f"{prefix}: {k}": int(v) for k, v in counts.items() if v})
    if (download is None or download.is_empty()) and stats.missing_uids:
        failures["selected uid not in the input shards"] = int(stats.missing_uids)
    return failures


def _download_line(stats: ShardStats) -> str:
    d = stats.download
    if d is None or d.is_empty():
        return ""
    share = fmt_pct(d.successes / d.urls) if d.urls else DASH
    return (
        f"<p>Download: {e(fmt_int(d.successes))} of {e(fmt_int(d.urls))} URLs fetched "
        f"({e(share)}).</p>"
    )


def _failures_table(failures: dict[str, int], stats: ShardStats) -> str:
    if not failures:
        return "<p>No failures.</p>"
    total = stats.selected_uids or 0
    rows = [
        (k, fmt_int(v), fmt_pct(v / total) if total else DASH)
        for k, v in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return "<h4>Failures by reason</h4>" + table(
        ("reason", "samples", "share of selected uids"), rows, align="lrr"
    )


def _shard_set(o: StageOutput) -> tuple[str, dict[str, Any]]:
    sizes = {k: int(v) for k, v in (o.json("sizes.json") or {}).items()}
    stats = o.summary(ShardStats)
    samples = sum(sizes.values())
    headline = cards(
        [
            ("samples", fmt_int(samples)),
            ("shards", fmt_int(len(sizes))),
            ("size on disk", fmt_bytes(stats.output_bytes)),
            ("selected uids missing", fmt_int(stats.missing_uids)),
        ]
    )
    failures = failures_by_reason(stats)
    body = (
        f"<h3>{e(o.label)} ({e(o.stage)})</h3>"
        + headline
        + _facts(sizes, stats)
        + _download_line(stats)
        + _failures_table(failures, stats)
    )
    summary = {
        "directory": o.name,
        "stage": o.stage,
        "samples": samples,
        "shards": len(sizes),
        "bytes": stats.output_bytes,
        "selected_uids": stats.selected_uids,
        "missing_uids": stats.missing_uids,
        "failures_by_reason": failures,
    }
    return body, summary


def section_shards(b: Builder) -> None:
    outs = b.of(*SHARD_STAGES)
    if not outs:
        b.missing("shards", "Output shards", "download or reshard")
        b.summary["shards"] = []
        return
    parts = [_shard_set(o) for o in outs]
    b.summary["shards"] = [summary for _, summary in parts]
    b.add("shards", "Output shards", "".join(body for body, _ in parts))
