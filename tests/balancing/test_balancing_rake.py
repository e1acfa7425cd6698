"""rake: the box-dual solver on planted problems, infeasible targets, the tail-keeping objective
against MetaCLIP's rule, margins."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.balancing import (
    SignatureTable,
    build_problem,
    diagnostics,
    metaclip,
    rake,
    solve_box_dual,
)
from curation.balancing.diagnostics import entry_quality
from curation.balancing.dual_solver import KEEP_LOG
from curation.balancing.kernels import phi, phi_diff
from curation.balancing.operators import LocalRakeOperator
from curation.balancing.synthetic import synthetic_table


def _planted(seed: int, capped: bool = True, scale: float = 1.0):
    tab = synthetic_table(3000, 250, mean_k=3, seed=seed)
    prob = build_problem(tab)
    rng = np.random.default_rng(seed)
    lam_star = -rng.exponential(scale, size=250) + (0.3 if capped else -0.2)
    eta = prob.A @ lam_star
    pi_star = np.exp(np.minimum(eta, 0.0)) if capped else np.exp(eta)
    tau = prob.A.T @ (prob.mult * pi_star)
    return tab, prob, tau, pi_star


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_feasible_is_recovered(seed):
    tab, prob, tau, pi_star = _planted(seed)
    assert (pi_star == 1).any() and (pi_star < 0.01).any()  # the cap and deep rows both matter
    op = LocalRakeOperator.from_problem(prob)
    sol = solve_box_dual(op, tau, tol=1e-6, max_passes=600, dual_bound=50.0)
    assert sol.status == "converged", (sol.status, sol.kkt_err)
    # met to 1e-6 relative, in samples below one sample (the solver's KKT measure)
    assert np.max(np.abs(sol.n - tau) / np.maximum(tau, 1.0)) < 1e-6 and sol.unmet.size == 0
    # π* has the dual form min(1, e^{Aλ*}), so it is the unique optimum: the solver recovers it
    np.testing.assert_allclose(sol.pi, pi_star, atol=1e-4)
    # the default tolerance is reached within the pass budget of one solve
    quick = solve_box_dual(op, tau, tol=1e-3, max_passes=100, dual_bound=50.0)
    assert quick.status == "converged" and quick.passes <= 100
    # the table-level entry point gives the same answer and scores it with score_batch
    res = rake(tab, entry_targets=tau, tol=1e-6, max_iter=600, dual_bound=50.0)
    n = tab.entry_sums(tab.multiplicity * res.pi)
    assert np.max(np.abs(n - tau) / np.maximum(tau, 1.0)) < 1e-6


def test_planted_uncapped():
    tab, prob, tau, w_star = _planted(3, capped=False, scale=0.7)
    op = LocalRakeOperator.from_problem(prob)
    sol = solve_box_dual(op, tau, tol=1e-6, max_passes=600, capped=False, dual_bound=50.0)
    assert sol.status == "converged"
    np.testing.assert_allclose(sol.pi, w_star, rtol=1e-4)


def test_planted_with_kept_rows():
    """Rows holding a fixed column keep π = 1; the free columns are raked against targets that
    include what those rows bring, and the planted π* is recovered."""
    tab = synthetic_table(3000, 250, mean_k=3, seed=5)
    prob = build_problem(tab)
    c = prob.A.T @ prob.mult
    kept = (c > 0) & (c <= np.quantile(c[c > 0], 0.3))
    rng = np.random.default_rng(5)
    lam_star = np.where(kept, KEEP_LOG, -rng.exponential(1.0, size=250) + 0.2)
    pi_star = np.exp(np.minimum(prob.A @ lam_star, 0.0))
    tau = prob.A.T @ (prob.mult * pi_star)
    lam0 = np.where(kept, KEEP_LOG, 0.0)
    sol = solve_box_dual(
        LocalRakeOperator.from_problem(prob),
        tau,
        lam0=lam0,
        free=~kept & (c > 0),
        tol=1e-6,
        max_passes=800,
        dual_bound=50.0,
    )
    assert sol.status == "converged", (sol.status, sol.kkt_err)
    np.testing.assert_allclose(sol.pi, pi_star, atol=1e-4)
    on_kept = (prob.A @ kept.astype(float)) > 0
    assert np.all(sol.pi[on_kept] == 1.0)


def _infeasible_table(t: int = 20):
    """Head entry 0 occurs with t+5 distinct single-sample tail entries (forced rows) and in
    200 rows of its own: n_0 ≥ t + 5 > t = τ_0 whatever π is."""
    rows = [[0, 1 + i] for i in range(t + 5)] + [[0]] * 200 + [[0, 100]] * 30 + [[100]] * 50
    return SignatureTable.from_lists(rows, n_entries=101)


@pytest.mark.parametrize("objective", ["tail", "l1"])
def test_infeasible_stops_finite_and_reports(objective):
    tab = _infeasible_table()
    res = rake(tab, t=20.0, max_iter=300, tol=1e-6, objective=objective)
    info = res.info
    assert info["status"] in ("infeasible", "stalled", "max_passes")
    assert info["passes"] <= 302
    assert np.all(np.isfinite(res.pi)) and np.all(np.isfinite(res.weight))
    assert np.all(np.isfinite(res.params.entry_values))
    assert 0 in info["infeasible_entries"] and info["n_infeasible_entries"] >= 1
    assert info["certificate"]["found"] is True
    et = res.entry_table()
    # the 200 rows of entry 0 alone are dropped down to π = e^{−B} each (B = 10: +0.009 in all)
    assert et.column("residual")[0].as_py() == pytest.approx(
        0.25, abs=200 * np.exp(-10) / 20 + 1e-4
    )
    # the best compromise: forced rows kept, the head's free rows dropped (L1-closest)
    n = tab.entry_sums(tab.multiplicity * res.pi)
    assert n[0] == pytest.approx(25.0, rel=2e-3)
    assert np.all(n[1:26] == pytest.approx(1.0, rel=1e-3))
    assert n[100] == pytest.approx(20.0, rel=2e-3)
    d = diagnostics(tab, res)
    json.dumps(d, allow_nan=False)
    assert d["entries_after"]["l1_error"] < d["entries_before"]["l1_error"]


def test_zero_target_forces_zero_rows():
    tab = SignatureTable.from_lists([[0], [0, 1], [1], [2]], [5, 3, 4, 2], n_entries=3)
    res = rake(tab, entry_targets=np.array([2.0, 0.0, 2.0]), tol=1e-9, max_iter=300)
    assert res.pi[1] == 0.0 and res.pi[2] == 0.0
    assert res.pi[0] == pytest.approx(0.4) and res.pi[3] == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.booleans(), st.floats(0.5, 30))
def test_dual_decreases_monotonically(seed, capped, t):
    """Every accepted step decreases the dual F(λ) (Armijo), feasible or not."""
    rng = np.random.default_rng(seed)
    tab = synthetic_table(int(rng.integers(20, 200)), 30, mean_k=2.5, seed=seed, margin_levels=3)
    prob = build_problem(tab, ["lang"] if seed % 2 else ())
    c = prob.A.T @ prob.mult
    tau = np.minimum(c, t) if capped else np.minimum(c, t) * rng.uniform(0.5, 1.5, c.size)
    sol = solve_box_dual(
        LocalRakeOperator.from_problem(prob), tau, tol=1e-9, max_passes=60, capped=capped
    )
    changes = np.array([h["dual_change"] for h in sol.history[1:]])
    assert np.all(np.isfinite(changes)) and np.all(np.isfinite(sol.pi))
    assert np.all(changes <= 1e-9 * (np.abs(changes).max(initial=0.0) + 1.0))
    assert sol.passes <= 60 + 12  # the budget, plus at most one line search past it


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-40, 40), min_size=1, max_size=20),
    st.lists(st.floats(-40, 40), min_size=1, max_size=20),
    st.booleans(),
)
def test_phi_diff_matches_difference(a, b, capped):
    n = min(len(a), len(b))
    old, new = np.array(a[:n]), np.array(b[:n])
    exact = phi(new, capped) - phi(old, capped)
    np.testing.assert_allclose(phi_diff(new, old, capped), exact, rtol=1e-9, atol=1e-12)


def test_rake_with_margin_meets_both_and_target_size():
    tab = synthetic_table(4000, 300, mean_k=2.5, margin_levels=3, seed=11)
    res = rake(tab, target_size=1500, margins=["lang"], margin_targets={"lang": "uniform"})
    size = res.pi @ tab.multiplicity
    assert abs(size - 1500) / 1500 <= 1e-3
    got = np.bincount(tab.margin_codes["lang"], weights=tab.multiplicity * res.pi, minlength=3)
    np.testing.assert_allclose(got / got.sum(), np.full(3, 1 / 3), atol=5e-3)
    assert res.params.margin_values["lang"].shape == (3,)


def _entry_stats(tab: SignatureTable, pi: np.ndarray, t_mc: float) -> dict[str, float]:
    n = tab.entry_sums(tab.multiplicity * pi)
    return entry_quality(n, tab.entry_counts(), t_mc, top=10)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.floats(0.1, 0.6), st.floats(2.0, 6.0))
def test_tail_objective_keeps_metaclips_tail(seed, fraction, mean_k):
    """At equal N on random Zipf tables: every entry with c_j ≤ t_mc (MetaCLIP's cap at N) keeps
    all its samples, as under MetaCLIP's rule, and the size is met."""
    tab = synthetic_table(1500, 300, mean_k=mean_k, seed=seed)
    n_target = fraction * tab.n_matched
    mc = metaclip(tab, target_size=n_target)
    rk = rake(tab, target_size=n_target)
    t_mc = mc.info["t"]
    assert rk.info["t_keep"] == pytest.approx(t_mc)
    assert abs(rk.info["expected_size"] - n_target) <= 1e-3 * n_target
    s_mc, s_rk = _entry_stats(tab, mc.pi, t_mc), _entry_stats(tab, rk.pi, t_mc)
    assert s_rk["tail_share"] >= s_mc["tail_share"] - 1e-9
    assert s_rk["tail_min_share"] >= 1 - 1e-12


def test_tail_objective_is_flatter_than_metaclip_and_l1_drops_the_tail():
    """A multi-label Zipf pool: at the same N, rake (tail) has MetaCLIP's tail, a higher entropy,
    a lower top-10 share and less overshoot over t_mc; rake (l1) trades tail samples away."""
    tab = synthetic_table(20000, 2000, mean_k=6, seed=3)
    n_target = 0.3 * tab.n_matched
    mc = metaclip(tab, target_size=n_target)
    t_mc = mc.info["t"]
    tail = rake(tab, target_size=n_target)
    l1 = rake(tab, target_size=n_target, objective="l1")
    s_mc, s_tail, s_l1 = (_entry_stats(tab, r.pi, t_mc) for r in (mc, tail, l1))
    assert s_tail["tail_share"] == pytest.approx(1.0) and s_mc["tail_share"] == pytest.approx(1.0)
    assert s_tail["entropy_nats"] > s_mc["entropy_nats"]
    assert s_tail["top10_share"] < s_mc["top10_share"]
    assert s_tail["head_overshoot"] < s_mc["head_overshoot"]
    assert s_l1["tail_share"] < 0.99
    assert tail.info["status"] in ("converged", "infeasible"), tail.info["size_search"]


def _search(model_error: float, noise: float = 0.0):
    """A cap search against a size function that the search's model gets wrong by a factor:
    Σπ(t) = S_keep + model_error · R(t) / k̄ (plus deterministic noise)."""
    from curation.balancing.cap_search import CapSearch, SizeEvaluation

    counts = np.sort(np.random.default_rng(0).zipf(1.6, 5000).astype(float))
    base = np.zeros_like(counts)
    kbar = 3.0

    def target_sum(t: float) -> float:
        return float(np.maximum(np.minimum(counts, t) - base, 0).sum())

    calls = []

    def evaluate(t: float) -> SizeEvaluation:
        calls.append(t)
        wiggle = 1 + noise * np.sin(1e3 * t)
        size = 100.0 + model_error * target_sum(t) / kbar * wiggle
        return SizeEvaluation(size, kbar * (size - 100.0))

    search = CapSearch(
        target_sum, kept_size=100.0, raked_rows=counts.sum() / kbar, t_min=0.01, t_max=counts.max()
    )
    n_target = 100.0 + 0.5 * model_error * target_sum(counts.max()) / kbar
    t = search.run(evaluate, n_target, rtol=5e-3, max_evals=30)
    return search, t, n_target, calls


@pytest.mark.parametrize("model_error", [1.0, 0.5, 0.2, 1.8])
def test_cap_search_lands_within_tolerance_in_few_solves(model_error):
    """The model step R(t') = R(t) + (N − Σπ)/s, with the secant slope after two solves, reaches
    |Σπ − N| ≤ 0.5 % N in a handful of solves even when the model is off by a factor of 5."""
    search, t, n_target, calls = _search(model_error)
    size = search.evaluations[t].size
    assert abs(size - n_target) <= 5e-3 * n_target
    assert len(calls) <= (1 if model_error == 1.0 else 6), calls


def test_cap_search_with_noisy_sizes_stops_at_the_closest():
    """Σπ from rough solves carries noise; the search keeps a bracket, stops when it closes and
    returns the evaluated t closest to N instead of chasing the noise."""
    search, t, n_target, calls = _search(0.5, noise=0.02)
    best = min(abs(e.size - n_target) for e in search.evaluations.values())
    assert abs(search.evaluations[t].size - n_target) == best
    assert len(calls) <= 30


def test_cap_search_passes_stay_within_budget():
    """The whole target-size search of rake (rough solves, the final solve, the base pass) on a
    multi-label Zipf table stays within the 150-pass budget, and each solve within 100."""
    tab = synthetic_table(20000, 2000, mean_k=6, seed=3)
    for fraction in (0.1, 0.3, 0.5):
        for objective in ("tail", "l1"):
            r = rake(tab, target_size=fraction * tab.n_matched, objective=objective)
            assert r.info["status"] in ("converged", "infeasible"), r.info["size_search"]
            assert r.info["passes"] <= 150, (fraction, objective, r.info["size_search"])
            assert max(e["passes"] for e in r.info["size_search"]) <= 100
