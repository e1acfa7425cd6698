"""Reproducible execution without Spark: exact binned sums, block-count independence, agreement
with the plain driver path, the aggregated diagnostics and the execution choice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from curation.balancing import (
    choose_execution,
    diagnostics,
    run_method,
    run_method_on,
    solve_prob_scale,
)
from curation.balancing.blocks import (
    K_BINS,
    W_BITS,
    Binned,
    MemoryBlockOperator,
    binned_columns,
    binned_sum,
    prob_scale_newton,
)
from curation.balancing.dual_solver import solve_box_dual
from curation.balancing.operators import LocalRakeOperator, build_problem
from curation.balancing.synthetic import synthetic_table
from tests.approx import assert_tree_close


@pytest.fixture(scope="module")
def table():
    return synthetic_table(2000, 200, mean_k=2.5, margin_levels=3, n_unmatched=30, seed=7)


def _merged(parts):
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def test_binned_sum_is_order_and_split_independent():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000) * np.exp(rng.uniform(-30, 30, 5000))
    whole = binned_sum(x).value()
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(x.size)
        cuts = np.sort(np.random.default_rng(seed).choice(x.size, 7, replace=False))
        parts = [binned_sum(p) for p in np.split(x[perm], cuts)]
        assert _merged(parts).value() == whole  # bit for bit
    # accurate: the dropped bits are below 2^-(W(K−1)) of the largest term
    assert abs(whole - math.fsum(x)) <= 2.0 ** (-W_BITS * (K_BINS - 1)) * np.abs(x).max() * x.size
    assert binned_sum(np.zeros(3)).value() == 0.0
    assert isinstance(Binned(0, np.zeros(K_BINS)).merge(binned_sum(np.ones(2))), Binned)


def test_column_sums_keep_a_column_of_tiny_terms_next_to_huge_ones():
    """Each column is cut at its own largest term: with one top for all columns, a column whose
    terms are all < 2^-84 of another column's was summed as 0 (the GIS step then exploded)."""
    rng = np.random.default_rng(1)
    cols = rng.integers(0, 40, 20000)
    w = rng.standard_normal(cols.size) * np.exp(rng.uniform(-20, 7, cols.size))
    w[cols >= 20] *= 1e-40  # half the columns hold only tiny terms
    whole = binned_columns(cols, w, 41)
    want = np.array([math.fsum(w[cols == j]) for j in range(41)])
    got = whole.value()
    assert got[40] == 0.0 and np.all(got[:40] != 0.0)
    scale = np.array([np.abs(w[cols == j]).max() * np.sum(cols == j) for j in range(40)])
    # dropped bits below 2^-(W(K−1)) of the column's largest term, plus the final rounding
    bound = 2.0 ** (-W_BITS * (K_BINS - 1)) * scale + 4e-16 * np.abs(want[:40])
    assert np.all(np.abs(got[:40] - want[:40]) <= bound)
    for seed in range(3):  # split and merged in any order: the same bits
        perm = np.random.default_rng(seed).permutation(cols.size)
        cuts = np.sort(np.random.default_rng(seed).choice(cols.size, 5, replace=False))
        parts = [
            binned_columns(c, v, 41)
            for c, v in zip(np.split(cols[perm], cuts), np.split(w[perm], cuts), strict=True)
        ]
        assert np.array_equal(_merged(parts).value(), got)


METHODS = [
    ("metaclip", {"target_size": 1500}),
    ("metaclip", {"t": 12.0, "keep_unmatched": True}),
    ("balance", {"target_size": 1500, "margins": ["lang"], "tol": 1e-3}),
    ("balance", {"entry_target": "power:0.5", "keep_unmatched": True, "target_size": 1200}),
    ("rake", {"t": 12.0, "margins": ["lang"], "keep_unmatched": True, "max_iter": 40}),
    ("rake", {"target_size": 1500, "max_iter": 60}),
]


@pytest.mark.parametrize(("method", "kw"), METHODS)
def test_blocks_are_bitwise_independent_of_partitioning_and_row_order(table, method, kw):
    perm = np.random.default_rng(3).permutation(table.n_signatures)
    one = run_method_on(MemoryBlockOperator(table), method, stats=True, **kw)
    five = run_method_on(MemoryBlockOperator(table.subset(perm), 5), method, stats=True, **kw)
    assert np.array_equal(one.params.entry_values, five.params.entry_values)
    for col, v in one.params.margin_values.items():
        assert np.array_equal(v, five.params.margin_values[col])
    assert one.history == five.history
    assert one.params.weight_scale == five.params.weight_scale
    assert one.params.prob_scale == five.params.prob_scale
    assert np.array_equal(one.stats.entry_sums, five.stats.entry_sums)
    # per-signature outputs follow the rows of each operator's table
    np.testing.assert_array_equal(one.pi[perm], five.pi)


@pytest.mark.parametrize(("method", "kw"), METHODS[:4])
def test_blocks_agree_with_the_plain_driver_path(table, method, kw):
    """metaclip and balance are not chaotic: the two summation schemes agree to rounding (1e-9
    asserted), not to the bit: the block sums are exact, SciPy's are not."""
    plain = run_method(table, method, **kw)
    rep = run_method_on(MemoryBlockOperator(table), method, stats=True, **kw)
    np.testing.assert_allclose(rep.params.entry_values, plain.params.entry_values, rtol=1e-9)
    assert rep.info["expected_size"] == pytest.approx(plain.info["expected_size"], rel=1e-12)
    assert [h["max_rel_err"] for h in rep.history] == pytest.approx(
        [h["max_rel_err"] for h in plain.history], rel=1e-9, abs=1e-12
    )
    np.testing.assert_allclose(rep.pi, plain.pi, rtol=1e-9, atol=1e-15)
    # the aggregated diagnostics equal the ones computed from per-signature arrays
    d_rep, d_plain = diagnostics(None, rep), diagnostics(table, plain)
    json.dumps(d_rep, allow_nan=False)
    for part in ("entries_after", "weights", "inclusion"):
        for key, v in d_plain[part].items():
            if isinstance(v, float):
                assert d_rep[part][key] == pytest.approx(v, rel=1e-9, abs=1e-12), (part, key)
    # the pool section holds the solved cap t, a float from each path's own sums
    assert_tree_close(d_rep["pool"], d_plain["pool"], rel=1e-9)
    assert d_rep["inclusion"]["pi_histogram"] == d_plain["inclusion"]["pi_histogram"]


def test_rake_solver_reaches_the_same_optimum_on_both_sums(table):
    """The quasi-Newton path depends on the last bits of every sum, so the block sums and SciPy's
    take different paths; on a feasible problem both end at the one optimum."""
    prob = build_problem(table, ["lang"])
    rng = np.random.default_rng(2)
    lam_star = -rng.exponential(1.0, prob.A.shape[1])
    tau = prob.A.T @ (prob.mult * np.exp(np.minimum(prob.A @ lam_star, 0.0)))
    kw = {"tol": 1e-7, "max_passes": 800, "dual_bound": 50.0}
    plain = solve_box_dual(LocalRakeOperator.from_problem(prob), tau, **kw)
    rep = solve_box_dual(
        MemoryBlockOperator(table, 3).work(False).rake_problem(["lang"]), tau, **kw
    )
    assert plain.status == rep.status == "converged"
    # both meet τ to 1e-7 in the solver's measure |n − τ| / max(τ, 1), so they agree to twice that
    assert np.max(np.abs(rep.n - plain.n) / np.maximum(tau, 1.0)) <= 2e-7
    np.testing.assert_allclose(rep.size, plain.size, rtol=1e-7)


def test_newton_prob_scale_equals_the_sorting_solution():
    rng = np.random.default_rng(1)
    for _ in range(20):
        raw = np.where(rng.random(300) < 0.1, 0.0, rng.exponential(1.0, 300) ** 3)
        mult = rng.integers(1, 50, 300).astype(np.float64)
        n_pos = mult[raw > 0].sum()
        for frac in (0.05, 0.5, 0.95, 1.0):
            N = frac * n_pos

            def sums(lam, raw=raw, mult=mult):
                capped = lam * raw >= 1.0
                return (
                    float(mult[capped & (raw > 0)].sum()),
                    float(np.dot(mult[~capped], raw[~capped])),
                    float(mult[raw > 0].sum()),
                )

            exact = solve_prob_scale(raw, mult, N)
            assert prob_scale_newton(sums, N) == pytest.approx(exact, rel=1e-12)


def test_choose_execution():
    assert choose_execution(1_000, 3_000) == "driver"
    assert choose_execution(1_000, 3_000, threshold=2_000) == "spark"
    assert choose_execution(10**8, 10, max_signatures=10**7) == "spark"
