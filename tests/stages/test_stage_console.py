"""What ``curate <stage>`` and ``curate run`` print for a result (``Stage.describe``), from the
summaries the stages write (built here with the same typed records), without Spark."""

from __future__ import annotations

from curation.stages.balance import BalanceStage
from curation.stages.base import StageResult
from curation.stages.count import CountStage
from curation.stages.demo_pool import DemoPoolStage
from curation.stages.download import DownloadStage
from curation.stages.reshard import ReshardStage
from curation.stages.select import SelectStage
from curation.summaries import (
    BalanceSummary,
    CountSummary,
    DownloadStats,
    EntryQuality,
    EntryStats,
    Headline,
    PoolSummary,
    SelectSummary,
    ShardStats,
    SolverInfo,
    TopEntry,
    VsMetaclip,
    WeightStats,
)


def test_count_lists_the_top_entries_aligned_and_the_matches_per_sample():
    summary = CountSummary(
        samples=12_000,
        matched=9_000,
        entries=500,
        entries_observed=321,
        signatures=4_567,
        matches_per_sample={"0": 3_000, "1": 8_000, "2": 1_000},
        top_entries=[TopEntry(0, "cat", 4_000), TopEntry(1, "sea lion", 1_234)],
    )
    text = StageResult(CountStage, "/r/counts", summary.to_json(), skipped=True).report()
    assert text.splitlines() == [
        "count: 12,000 samples, 9,000 matched, 321 of 500 entries observed, "
        "4,567 distinct signatures (up to date, skipped)",
        "  top entries:",
        "    cat            4,000",
        "    sea lion       1,234",
        "  matches per sample: 0: 3,000, 1: 8,000, 2: 1,000",
        "  output     /r/counts",
    ]


def balance_summary(**kwargs) -> BalanceSummary:
    headline = Headline(
        before=EntryStats(l1_error=0.5, entropy_nats=5.0),
        after=EntryStats(l1_error=0.0125, entropy_nats=6.25, top100_share=0.125),
        weights=WeightStats(kish_ess=900.0, design_effect=1.25, max_over_mean=3.0),
    )
    return BalanceSummary(
        method="rake",
        t=None,
        status="converged",
        expected_size=1_000.0,
        headline=headline,
        **kwargs,
    )


def test_balance_prints_the_headline_and_the_comparison_with_metaclips_rule():
    vs = VsMetaclip(
        t_mc=20.0,
        this=EntryQuality(tail_share=0.5, entropy_nats=6.25, top100_share=0.125),
        metaclip=EntryQuality(tail_share=0.25, entropy_nats=6.0, top100_share=0.25),
    )
    summary = balance_summary(target_size=1_000.0, info=SolverInfo(vs_metaclip=vs))
    lines = StageResult(BalanceStage, "/r/balance", summary.to_json()).report().splitlines()
    assert lines[0] == "balance: method rake, cap t = -, status converged"
    assert lines[1] == "  expected size   1,000.0 (target 1,000.0)"
    assert lines[3] == f"  {'L1 error to the target':<28}{'0.5':>12}{'0.0125':>12}"
    assert lines[4] == f"  {'max head-entry rel. error':<28}{'-':>12}{'-':>12}"
    assert "  weights: Kish ESS 900, design effect 1.25, max/mean 3" in lines
    assert (
        "  vs MetaCLIP's rule at the same size (cap 20): tail share 0.5 vs 0.25, entropy "
        "6.25 vs 6, top-100 share 0.125 vs 0.25"
    ) in lines
    assert lines[-1] == "  output          /r/balance"


def test_balance_without_a_comparison_or_target_prints_neither():
    for info in (SolverInfo(), SolverInfo(vs_metaclip=VsMetaclip())):
        text = StageResult(BalanceStage, "/r/b", balance_summary(info=info).to_json()).report()
        assert "vs MetaCLIP" not in text and "(target" not in text


def test_balance_names_the_unmet_targets():
    unmet = {"status": "infeasible", "entries": 2, "examples": ["cat", "dog"], "margin_levels": 1}
    text = StageResult(BalanceStage, "/r/b", balance_summary(unmet_targets=unmet).to_json())
    assert "  unmet targets   2 entries (e.g. 'cat', 'dog') and 1 margin level(s)" in text.report()


def test_select_prints_its_warning_once():
    warning = "0 samples selected (expected 0.4): raise --target-size"
    summary = SelectSummary(selected=0, expected_size=0.4, total_repeats=0, seed=7, warning=warning)
    lines = StageResult(SelectStage, "/r/sel", summary.to_json()).report().splitlines()
    assert lines[0] == "select: 0 samples selected (expected 0.4), 0 with repeats, seed 7"
    assert lines.count(f"  WARNING    {warning}") == 1
    summary.warning = None
    assert "WARNING" not in StageResult(SelectStage, "/r/sel", summary.to_json()).report()


def test_demo_pool_prints_its_rows_files_and_output():
    summary = PoolSummary(output="/r/pool", rows=20_000, files=4, metadata="default")
    text = StageResult(DemoPoolStage, "/r/pool", summary.to_json()).report()
    assert text == "demo-pool: 20,000 captions in 4 Parquet files -> /r/pool"


def test_a_shard_set_prints_its_shards_and_a_download_its_outcome():
    stats = ShardStats(selected_uids=90, selected_samples=100, missing_uids=3, weight_scale=0.5)
    sizes = {"00000": 60, "00001": 37}
    extra = {"sizes": sizes, "stats": stats.to_json()}
    lines = StageResult(ReshardStage, "/r/sh", stats.to_json(), extra=extra).report().splitlines()
    assert lines[:2] == [
        "reshard: 97 samples in 2 shard(s)",
        "  shards     /r/sh/{00000..00001}.tar",
    ]
    assert "  selected   90 uids, 100 samples with repeats" in lines
    assert "  weights    renormalised by 0.5" in lines
    assert not any("download" in line for line in lines)
    stats.download = DownloadStats(urls=100, successes=97, failures_by_reason={"timeout": 3})
    text = StageResult(DownloadStage, "/r/sh", stats.to_json(), extra=extra).report()
    assert text.splitlines()[1] == "  download   97 of 100 urls (timeout 3)"
