"""rake: planted feasible problems, infeasible ones, monotone dual descent, margins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.balancing import SignatureTable, build_problem, diagnostics, rake, rake_solve
from curation.balancing.rake import phi, phi_diff
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
def test_rake_planted_feasible_reaches_1e6(seed):
    tab, prob, tau, pi_star = _planted(seed)
    assert (pi_star == 1).any() and (pi_star < 0.01).any()  # the cap and deep rows both matter
    sol = rake_solve(prob.A, prob.mult, tau, tol=1e-6, max_iter=3000)
    assert sol.status == "converged", (sol.status, sol.kkt_err)
    assert sol.max_rel_err < 1e-6 and sol.unmet.size == 0
    # π* has the dual form min(1, e^{Aλ*}), so it is the unique optimum: the solver recovers it
    np.testing.assert_allclose(sol.pi, pi_star, atol=1e-4)
    # the table-level entry point gives the same answer and scores it with score_batch
    res = rake(tab, entry_targets=tau, tol=1e-6, max_iter=3000)
    n = tab.entry_sums(tab.multiplicity * res.pi)
    assert np.max(np.abs(n / np.where(tau > 0, tau, 1) - 1)[tau > 0]) < 1e-6


def test_rake_planted_uncapped():
    tab, prob, tau, w_star = _planted(3, capped=False, scale=0.7)
    sol = rake_solve(prob.A, prob.mult, tau, tol=1e-6, max_iter=3000, capped=False)
    assert sol.status == "converged"
    np.testing.assert_allclose(sol.pi, w_star, rtol=1e-4)


def _infeasible_table(t: int = 20):
    """Head entry 0 occurs with t+5 distinct single-sample tail entries (forced rows) and in
    200 rows of its own: n_0 ≥ t + 5 > t = τ_0 whatever π is."""
    rows = [[0, 1 + i] for i in range(t + 5)] + [[0]] * 200 + [[0, 100]] * 30 + [[100]] * 50
    return SignatureTable.from_lists(rows, n_entries=101)


def test_rake_infeasible_stops_finite_and_reports():
    tab = _infeasible_table()
    res = rake(tab, t=20.0, max_iter=300, tol=1e-6)
    info = res.info
    assert info["status"] in ("infeasible", "stalled", "max_iter")
    assert info["iterations"] <= 300
    assert np.all(np.isfinite(res.pi)) and np.all(np.isfinite(res.weight))
    assert np.all(np.isfinite(res.params.entry_values))
    assert 0 in info["infeasible_entries"] and info["n_infeasible_entries"] >= 1
    assert info["certificate"]["found"] is True
    et = res.entry_table()
    assert et.column("residual")[0].as_py() == pytest.approx(0.25, rel=1e-3)
    # the best compromise: forced rows kept, the head's free rows dropped (L1-closest)
    n = tab.entry_sums(tab.multiplicity * res.pi)
    assert n[0] == pytest.approx(25.0, rel=2e-3)
    assert np.all(n[1:26] == pytest.approx(1.0, rel=1e-3))
    d = diagnostics(tab, res)
    json.dumps(d, allow_nan=False)
    assert d["entries_after"]["l1_error"] < d["entries_before"]["l1_error"]


def test_rake_zero_target_forces_zero_rows():
    tab = SignatureTable.from_lists([[0], [0, 1], [1], [2]], [5, 3, 4, 2], n_entries=3)
    res = rake(tab, entry_targets=np.array([2.0, 0.0, 2.0]), tol=1e-9)
    assert res.pi[1] == 0.0 and res.pi[2] == 0.0
    assert res.pi[0] == pytest.approx(0.4) and res.pi[3] == 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(0, 6), st.booleans(), st.floats(0.5, 30))
def test_dual_decreases_monotonically(seed, anderson, capped, t):
    """Safeguarded steps never increase the dual F(λ) (feasible or not)."""
    rng = np.random.default_rng(seed)
    tab = synthetic_table(int(rng.integers(20, 200)), 30, mean_k=2.5, seed=seed, margin_levels=3)
    prob = build_problem(tab, ["lang"] if seed % 2 else ())
    c = prob.A.T @ prob.mult
    tau = np.minimum(c, t) if capped else np.minimum(c, t) * rng.uniform(0.5, 1.5, c.size)
    sol = rake_solve(
        prob.A, prob.mult, tau, tol=1e-9, max_iter=60, anderson=anderson, capped=capped
    )
    duals = np.array([h["dual"] for h in sol.history])
    assert np.all(np.isfinite(duals)) and np.all(np.isfinite(sol.pi))
    scale = np.abs(duals).max() + 1.0
    assert np.all(np.diff(duals) <= 1e-9 * scale)


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


def test_column_degree_counts_margins():
    """C_j must include the margin columns of the row (else the GIS step is not safe)."""
    tab = SignatureTable.from_lists([[0, 1], [1]], n_entries=2, margins={"lang": ["a", "b"]})
    prob = build_problem(tab, ["lang"])
    assert prob.A.shape == (2, 4)
    assert sp.csr_array(prob.A).toarray().tolist() == [[1, 1, 1, 0], [0, 1, 0, 1]]
    from curation.balancing.rake import column_degree

    assert column_degree(prob.A, np.diff(prob.A.indptr)).tolist() == [3, 3, 3, 2]


def test_per_column_constant_must_count_margin_columns():
    """C_j = max k over rows (margins ignored) oscillates; counting margin columns converges."""
    tab = SignatureTable.from_lists(
        [[0], [1]], [100, 100], n_entries=2, margins={"lang": ["a", "b"]}
    )
    prob = build_problem(tab, ["lang"])
    tau = np.array([10.0, 50.0, 10.0, 50.0])  # entries 0, 1 and levels a, b: consistent
    A, m = prob.A, prob.mult

    def dual(lam):
        return float(m @ phi(A @ lam)) - float(tau @ lam)

    lam = np.zeros(4)  # the unsafe constant C_j = 1 (k = 1 in every row)
    duals = [dual(lam)]
    for _ in range(4):
        n = A.T @ (m * np.exp(np.minimum(A @ lam, 0.0)))
        lam = lam + np.log(tau / n) / 1.0
        duals.append(dual(lam))
    assert max(np.diff(duals)) > 1.0  # the dual goes up: not a descent method
    sol = rake_solve(A, m, tau, lam0=np.zeros(4), tol=1e-9, anderson=0, grow=False)
    assert sol.status == "converged"
    assert np.all(np.diff([h["dual"] for h in sol.history]) <= 1e-12)
    np.testing.assert_allclose(sol.pi, [0.1, 0.5], rtol=1e-9)
