"""Diagnostics: values on a tiny table computed by hand, JSON-serialisable output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.balancing import SignatureTable, diagnostics, metaclip
from curation.balancing.diagnostics import entry_stats, weight_stats


def test_weight_stats_by_hand():
    w = np.array([1.0, 3.0, 0.0])
    m = np.array([2, 1, 5])
    s = weight_stats(w, m, np.array([True, True, False]))
    # Σw = 5, Σw² = 11 over 3 samples
    assert s["kish_ess"] == pytest.approx(25 / 11)
    assert s["design_effect"] == pytest.approx(3 / (25 / 11))
    assert s["max_over_mean"] == pytest.approx(3 / (5 / 3))
    assert s["share_above_2x_mean"] == 0.0  # 3 < 2 · 5/3
    assert s["share_above_5x_mean"] == 0.0


def test_entry_stats_by_hand():
    c = np.array([10.0, 4.0, 2.0, 0.0])
    tau = np.minimum(c, 4.0)
    n = np.array([5.0, 4.0, 1.0, 0.0])
    s = entry_stats(n, tau, c, t=4.0, top=1)
    assert s["l1_error"] == pytest.approx((1 + 0 + 1) / 10)
    assert s["max_rel_err_head"] == pytest.approx(0.25)
    assert s["tail_entries"] == 2 and s["tail_entries_fully_kept"] == 1
    assert s["top1_share"] == pytest.approx(0.5)
    p = np.array([0.5, 0.4, 0.1])
    assert s["entropy_nats"] == pytest.approx(-(p * np.log(p)).sum())


def test_diagnostics_structure():
    tab = SignatureTable.from_lists([[0], [0, 1], [2], []], [30, 5, 2, 7], n_entries=4)
    res = metaclip(tab, t=10.0)
    d = diagnostics(tab, res)
    json.dumps(d, allow_nan=False)
    assert d["pool"]["n"] == 44 and d["pool"]["matched"] == 37
    assert d["pool"]["head_entries"] == 1 and d["pool"]["entries_observed"] == 3
    assert d["pool"]["k_histogram"] == {"0": 7, "1": 32, "2": 5}
    assert d["entries_before"]["l1_error"] == pytest.approx(25 / 17)
    # head entry 0: p_0 = 10/35, but its 5 rows with tail entry 1 (p_1 = 1) are always kept
    n0 = 30 * 10 / 35 + 5
    assert d["entries_after"]["max_rel_err_head"] == pytest.approx(n0 / 10 - 1)
    assert d["inclusion"]["expected_size"] == pytest.approx(float(res.pi @ tab.multiplicity))
    assert set(d["plots"]) == {
        "rank_frequency_before",
        "rank_frequency_after",
        "rank_frequency_target",
    }


@pytest.mark.parametrize("method", ["rake", "balance", "metaclip"])
def test_metaclip_reference_is_at_the_same_size(method):
    """Every run is scored against MetaCLIP's rule at its own expected size, both against
    MetaCLIP's cap t_mc at that size: MetaCLIP keeps its whole tail there, rake (tail) keeps it as
    well and is flatter."""
    from curation.balancing import run_method
    from curation.balancing.metaclip import metaclip
    from curation.balancing.synthetic import synthetic_table

    tab = synthetic_table(5000, 600, mean_k=4, seed=7)
    n_target = 0.3 * tab.n_matched
    kw = {"target_size": n_target} if method != "balance" else {"t": 20.0}
    result = run_method(tab, method, reference=True, **kw)
    ref = result.info["vs_metaclip"]
    size = float((tab.multiplicity * result.pi).sum())
    assert ref["expected_size"] == pytest.approx(size, rel=1e-9)
    t_mc = metaclip(tab, target_size=size).info["t"]
    assert ref["t_mc"] == pytest.approx(t_mc, rel=1e-6)
    assert ref["metaclip"]["tail_share"] == pytest.approx(1.0)
    if method == "metaclip":
        assert ref["this"] == ref["metaclip"]
    if method == "rake":
        assert ref["this"]["tail_share"] >= 0.99
        assert ref["this"]["entropy_nats"] > ref["metaclip"]["entropy_nats"]
        assert ref["this"]["top100_share"] < ref["metaclip"]["top100_share"]


def test_metaclip_reference_is_skipped_with_replacement():
    """With repeats the size is not set by π: there is no like-for-like baseline."""
    from curation.balancing import run_method
    from curation.balancing.synthetic import synthetic_table

    tab = synthetic_table(2000, 200, mean_k=3, seed=1)
    result = run_method(
        tab, "metaclip", reference=True, t=5.0, target_size=3 * tab.n_matched, with_replacement=True
    )
    assert result.info["vs_metaclip"] is None
