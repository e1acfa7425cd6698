"""Target size for every method (|Σπ − N|/N ≤ 1e-3), exact λ solve, sampling with replacement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.balancing import (
    TargetSizeError,
    diagnostics,
    expected_repeats,
    run_method,
    score_batch,
    solve_prob_scale,
)
from curation.balancing.synthetic import synthetic_table
from curation.selection import draw_repeats, hash_uniform

TABLE = synthetic_table(3000, 400, mean_k=2.5, n_unmatched=50, margin_levels=3, seed=21)


@pytest.mark.parametrize("method", ["metaclip", "balance", "rake"])
@pytest.mark.parametrize("frac", [0.1, 0.4])
@pytest.mark.parametrize("keep_unmatched", [False, True])
def test_target_size_every_method(method, frac, keep_unmatched):
    n_target = frac * TABLE.n_samples
    res = run_method(TABLE, method, target_size=n_target, keep_unmatched=keep_unmatched)
    size = float(res.pi @ TABLE.multiplicity)
    assert abs(size - n_target) / n_target <= 1e-3, res.info
    assert np.all((res.pi >= 0) & (res.pi <= 1))
    if not keep_unmatched:
        assert np.all(res.pi[TABLE.k == 0] == 0)
    # weights have mean 1 over eligible samples
    elig = (TABLE.k > 0) | keep_unmatched
    assert np.dot(TABLE.multiplicity[elig], res.weight[elig]) == pytest.approx(
        TABLE.multiplicity[elig].sum(), rel=1e-9
    )
    # the broadcastable parameters reproduce π and w exactly from JSON
    p = type(res.params).from_json(res.params.to_json())
    codes = {c: TABLE.margin_codes[c] for c in p.margin_values}
    w, pi = score_batch(p, TABLE.indptr, TABLE.indices, codes)
    assert np.array_equal(pi, res.pi) and np.array_equal(w, res.weight)
    d = diagnostics(TABLE, res)
    json.dumps(d, allow_nan=False)
    assert d["inclusion"]["size_rel_err"] <= 1e-3


def test_target_size_too_large_is_a_clear_error():
    with pytest.raises(TargetSizeError, match="exceeds"):
        run_method(TABLE, "metaclip", target_size=TABLE.n_samples * 2)
    with pytest.raises(TargetSizeError, match="replacement"):
        run_method(TABLE, "rake", target_size=TABLE.n_samples * 2)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 50)), min_size=1, max_size=40),
    st.lists(st.integers(1, 5), min_size=40, max_size=40),
    st.floats(0.01, 1.0),
)
def test_solve_prob_scale_is_exact(raw, mult, frac):
    raw = np.array(raw)
    m = np.array(mult[: raw.size])
    pos = float(m[raw > 0].sum())
    if pos == 0:
        return
    n_target = frac * pos
    lam = solve_prob_scale(raw, m, n_target)
    with np.errstate(over="ignore"):
        got = float(np.dot(m, np.minimum(1.0, lam * raw)))
    assert got == pytest.approx(n_target, rel=1e-9)


@pytest.mark.parametrize("method", ["metaclip", "balance", "rake"])
def test_with_replacement_repeats(method):
    n_target = 3.0 * TABLE.n_samples  # more than the pool: repeats
    kw = {"t": 20.0} if method == "rake" else {}
    res = run_method(TABLE, method, target_size=n_target, with_replacement=True, **kw)
    e = expected_repeats(res.params, res.weight)
    assert float(e @ TABLE.multiplicity) == pytest.approx(n_target, rel=1e-9)
    # deterministic integer repeats with E[r] = e: expand signatures to samples and draw
    e_samples = np.repeat(e, TABLE.multiplicity)
    u = hash_uniform([f"uid-{i}" for i in range(e_samples.size)], seed=3)
    r = draw_repeats(u, e_samples)
    assert np.all(np.abs(r - e_samples) < 1)
    assert abs(r.sum() - n_target) / n_target < 0.01


def test_rake_with_replacement_keeps_the_target_shape():
    """Repeats ∝ capped π: expected entry counts of the repeated set are τ_j · N / Σπ."""
    res = run_method(TABLE, "rake", t=15.0, with_replacement=True, target_size=9000)
    e = expected_repeats(res.params, res.weight)
    n_rep = TABLE.entry_sums(TABLE.multiplicity * e)
    tau = res.targets
    met = np.setdiff1d(np.flatnonzero(tau > 0), res.info["infeasible_entries"])
    scale = 9000 / float(res.pi @ TABLE.multiplicity)
    np.testing.assert_allclose(n_rep[met], tau[met] * scale, rtol=2e-3)
