"""Typed stage summaries (curation.summaries): what a stage writes reads back the same, older files
that lack keys still read, and the report reads a renamed key loudly, not as a blank."""

from __future__ import annotations

import json

import pytest

from curation.summaries import (
    BY_STAGE,
    BalanceDiagnostics,
    BalanceSummary,
    CountSummary,
    MatchSummary,
    SelectSummary,
    ShardStats,
    TopEntry,
)

BALANCE = {
    "stage": "balance",
    "method": "rake",
    "t": 12.5,
    "status": "converged",
    "target_size": 600,
    "expected_size": 599.9,
    "with_replacement": False,
    "execution": {"mode": "driver"},
    "margins": ["source"],
    "headline": {
        "before": {"l1_error": 0.5, "top100_share": 0.9},
        "after": {"l1_error": 0.01, "top100_share": 0.4},
        "weights": {"n": 10.0, "kish_ess": 8.0, "design_effect": float("inf")},
    },
    "info": {"method": "rake", "iterations": 7, "vs_metaclip": None, "dual_gap": 1e-9},
    "seconds": 1.5,
}


def test_a_summary_reads_back_to_the_same_json_keys_order_and_unknown_keys():
    text = json.dumps(BALANCE, indent=2)
    record = BalanceSummary.from_json(json.loads(text))
    assert json.dumps(record.to_json(), indent=2) == text
    assert record.headline.after.l1_error == 0.01
    assert record.info.iterations == 7
    assert record.info.vs_metaclip is None
    assert record.info.unknown == {"method": "rake", "dual_gap": 1e-9}


def test_a_summary_written_by_a_stage_has_the_keys_users_read():
    written = CountSummary(
        input="m",
        samples=3,
        matched=2,
        unmatched=1,
        total_matches=4,
        entries=5,
        entries_observed=2,
        signatures=2,
        matches_per_sample={"0": 1, "2": 2},
        top_entries=[TopEntry(entry_id=1, entry="dog", count=2)],
        margins={},
        seconds=0.1,
    ).to_json()
    assert list(written) == [
        "stage",
        "input",
        "samples",
        "matched",
        "unmatched",
        "total_matches",
        "entries",
        "entries_observed",
        "signatures",
        "matches_per_sample",
        "top_entries",
        "margins",
        "seconds",
    ]
    assert written["stage"] == "count"
    assert written["top_entries"] == [{"entry_id": 1, "entry": "dog", "count": 2}]
    assert CountSummary.from_json(written).top_entries[0].entry == "dog"


def test_optional_keys_are_written_only_when_set():
    summary = SelectSummary(seed=0, selected=5, expected_size=5.0)
    assert "warning" not in summary.to_json()
    summary.warning = "empty"
    assert summary.to_json()["warning"] == "empty"


def test_an_older_file_without_new_keys_reads_as_missing_values():
    old = {"stage": "match", "input_rows": 10, "matched": 4}
    record = MatchSummary.from_json(old)
    assert record.input_rows == 10
    assert record.usable_rows is None
    assert record.metadata.entries is None
    assert record.rejects_by_reason == {}


def test_a_missing_or_broken_file_reads_as_an_empty_record():
    for data in (None, [], "text"):
        record = BalanceDiagnostics.from_json(data)
        assert record.is_empty()
        assert record.entries_before is None
        assert record.inclusion.expected_size is None
    assert ShardStats.from_json(None).download is None
    assert not MatchSummary.from_json({"matched": 0}).is_empty()


def test_a_renamed_key_fails_loudly_in_the_reader():
    record = MatchSummary.from_json({"input_rows": 3})
    with pytest.raises(AttributeError):
        record.input_row_count  # noqa: B018 - a reader still using an old name


def test_every_stage_that_writes_a_summary_has_its_class():
    assert set(BY_STAGE) == {
        "demo-pool",
        "match",
        "count",
        "balance",
        "select",
        "download",
        "reshard",
    }
