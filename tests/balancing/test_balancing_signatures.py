"""SignatureTable construction, CSR helpers and per-batch scoring (no Spark)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.balancing import (
    ScoreParams,
    SignatureTable,
    score_arrow,
    score_batch,
    segment_sum,
)
from curation.balancing.synthetic import synthetic_table

rows_strategy = st.lists(st.lists(st.integers(0, 11), max_size=5), min_size=1, max_size=30)


def _arrow_table(rows, mult, lang=None):
    cols = {
        "entry_ids": pa.array([sorted(set(r)) for r in rows], type=pa.list_(pa.int32())),
        "multiplicity": pa.array(mult, type=pa.int64()),
    }
    if lang is not None:
        cols["language"] = pa.array(lang, type=pa.string())
    return pa.table(cols)


def test_from_arrow_counts_and_margins():
    rows = [[0, 2], [], [2], [1, 2, 3]]
    t = _arrow_table(rows, [3, 5, 1, 2], ["en", "de", None, "en"])
    tab = SignatureTable.from_arrow(t, n_entries=5, margin_cols=["language"])
    assert tab.n_signatures == 4 and tab.nnz == 6
    assert tab.k.tolist() == [2, 0, 1, 3]
    assert tab.entry_counts().tolist() == [3, 2, 6, 2, 0]
    assert tab.n_samples == 11 and tab.n_matched == 6
    assert tab.margin_levels["language"] == ["<null>", "de", "en"]
    assert tab.margin_codes["language"].tolist() == [2, 1, 0, 2]
    assert tab.k_histogram() == {0: 5, 1: 1, 2: 3, 3: 2}


def test_from_arrow_sliced_and_chunked():
    rows = [[0], [1, 2], [3], [0, 3]]
    t = _arrow_table(rows, [1, 2, 3, 4]).slice(1, 3)
    t = pa.concat_tables([t.slice(0, 1), t.slice(1, 2)])
    tab = SignatureTable.from_arrow(t, n_entries=4)
    assert tab.indptr.tolist() == [0, 2, 3, 5]
    assert tab.indices.tolist() == [1, 2, 3, 0, 3]
    assert tab.entry_counts().tolist() == [4, 2, 2, 7]


@pytest.mark.parametrize(
    "rows, n, msg",
    [([[1, 1]], 3, "sorted and distinct"), ([[2, 1]], 3, "sorted"), ([[5]], 3, r"\[0, 3\)")],
)
def test_validation_errors(rows, n, msg):
    k = [len(r) for r in rows]
    with pytest.raises(ValueError, match=msg):
        SignatureTable(np.concatenate([[0], np.cumsum(k)]), sum(rows, []), [1] * len(rows), n)


def test_nonpositive_multiplicity_rejected():
    with pytest.raises(ValueError, match="positive"):
        SignatureTable.from_lists([[0]], multiplicity=[0])


@settings(max_examples=60, deadline=None)
@given(rows_strategy, st.data())
def test_entry_counts_and_row_sums_match_loops(rows, data):
    mult = data.draw(st.lists(st.integers(1, 9), min_size=len(rows), max_size=len(rows)))
    tab = SignatureTable.from_lists(rows, mult, n_entries=12)
    c = np.zeros(12, dtype=np.int64)
    for r, m in zip(rows, mult):
        for j in set(r):
            c[j] += m
    assert tab.entry_counts().tolist() == c.tolist()
    v = np.arange(12, dtype=np.float64) ** 1.5
    expect = [sum(v[j] for j in set(r)) for r in rows]
    np.testing.assert_allclose(tab.row_sums(v), expect, rtol=1e-12)
    np.testing.assert_allclose(segment_sum(v[tab.indices], tab.indptr), expect, rtol=1e-12)


def test_segment_sum_empty_rows_at_both_ends():
    indptr = np.array([0, 0, 2, 2, 3, 3])
    assert segment_sum(np.array([1.0, 2.0, 4.0]), indptr).tolist() == [0, 3, 0, 4, 0]
    assert segment_sum(np.zeros(0), np.array([0, 0, 0])).tolist() == [0, 0]


def test_with_unmatched_entry_and_subset():
    tab = SignatureTable.from_lists([[], [1], [], [0, 2]], [2, 1, 3, 1], n_entries=3)
    w = tab.with_unmatched_entry()
    assert w.n_entries == 4
    assert w.indptr.tolist() == [0, 1, 2, 3, 5]
    assert w.indices.tolist() == [3, 1, 3, 0, 2]
    assert w.entry_counts().tolist() == [1, 1, 1, 5]
    sub = tab.subset(np.array([False, True, False, True]))
    assert sub.indices.tolist() == [1, 0, 2] and sub.multiplicity.tolist() == [1, 1]


@pytest.mark.parametrize("method", ["metaclip", "balance", "rake"])
def test_score_arrow_equals_score_batch_on_signatures(method):
    """The pool-side scoring (Arrow batches, margins as strings) equals the driver-side one."""
    tab = synthetic_table(300, 40, mean_k=2.5, n_unmatched=5, margin_levels=3, seed=3)
    rng = np.random.default_rng(0)
    params = ScoreParams(
        method=method,
        n_entries=40,
        entry_values=rng.random(41) if method != "rake" else -rng.random(41),
        margin_values={"lang": rng.random(3) + 0.5} if method != "metaclip" else {},
        margin_levels={"lang": tab.margin_levels["lang"]} if method != "metaclip" else {},
        keep_unmatched=True,
        weight_scale=1.7,
        prob_scale=0.8,
    )
    codes = {"lang": tab.margin_codes["lang"]} if method != "metaclip" else {}
    w1, p1 = score_batch(params, tab.indptr, tab.indices, codes)
    s = tab.n_signatures
    rows = [tab.indices[tab.indptr[r] : tab.indptr[r + 1]].tolist() for r in range(s)]
    lang = [tab.margin_levels["lang"][c] for c in tab.margin_codes["lang"]]
    batch = pa.record_batch(
        {
            "entry_ids": pa.array(rows, type=pa.list_(pa.int32())),
            "lang": pa.array(lang),
            "uid": pa.array([str(i) for i in range(s)]),
        }
    )
    w2, p2 = score_arrow(params, batch)
    assert np.array_equal(w1, w2) and np.array_equal(p1, p2)
    assert np.all((p1 >= 0) & (p1 <= 1))
    # unmatched rows are scored by the pseudo-entry (id 40)
    empty = tab.k == 0
    assert empty.any() and np.all(p1[empty] > 0)
    no_keep = params.replace(entry_values=params.entry_values[:40], keep_unmatched=False)
    _, p3 = score_batch(no_keep, tab.indptr, tab.indices, codes)
    assert np.all(p3[empty] == 0)


def test_params_json_roundtrip_is_exact():
    p = ScoreParams(
        method="rake",
        n_entries=3,
        entry_values=np.array([-0.1, 1e-300, -3.3333333333333335]),
        margin_values={"lang": np.array([0.5, -1.25])},
        margin_levels={"lang": ["de", "en"]},
        weight_scale=1.2345678901234567,
        repeat_scale=2.5,
        meta={"t": 7.0},
    )
    q = ScoreParams.from_json(p.to_json())
    assert np.array_equal(q.entry_values, p.entry_values)
    assert np.array_equal(q.margin_values["lang"], p.margin_values["lang"])
    assert (q.weight_scale, q.repeat_scale, q.meta) == (p.weight_scale, 2.5, {"t": 7.0})
