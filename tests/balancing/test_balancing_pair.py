"""balance: the one-step formula without a margin, and IPF (the ``ipfn`` package) with one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ipfn import ipfn

from curation.balancing import SignatureTable, balance
from curation.balancing.synthetic import synthetic_table


def _rows(tab):
    return [
        tab.indices[tab.indptr[r] : tab.indptr[r + 1]].tolist() for r in range(tab.n_signatures)
    ]


@pytest.mark.parametrize("target", ["capped", "uniform", "power:0.5"])
def test_balance_without_margin_is_one_y_step(target):
    tab = synthetic_table(1500, 200, mean_k=3, n_unmatched=10, seed=8)
    t = 25.0
    res = balance(tab, t=t, entry_target=target, target_size=400)
    rows, mult = _rows(tab), tab.multiplicity.tolist()
    n = sum(m for r, m in zip(rows, mult) if r)
    c = np.zeros(200)
    p0y = np.zeros(200)
    for r, m in zip(rows, mult):
        for j in r:
            c[j] += m
            p0y[j] += m / (n * len(r))
    if target == "capped":
        py = np.minimum(c, t)
    elif target == "uniform":
        py = (c > 0).astype(float)
    else:
        py = np.where(c > 0, c**0.5, 0.0)
    py = py / py.sum()
    a = np.where(p0y > 0, py / np.where(p0y > 0, p0y, 1), 0.0)
    # w_i = Σ_j P(i, j) with P(i, j) = a_j / (n k_i), rescaled to mean 1 over matched samples
    w = np.array([sum(a[j] for j in r) / (n * len(r)) if r else 0.0 for r in rows])
    w *= n / np.dot(mult, w)
    np.testing.assert_allclose(res.weight, w, rtol=1e-10)
    assert res.info["iterations"] == 1
    # Y margin of the balanced pair table is exactly the target
    pair_y = np.zeros(200)
    for r, m in zip(rows, mult):
        for j in r:
            pair_y[j] += m * a[j] / (n * len(r))
    np.testing.assert_allclose(pair_y, py, atol=1e-14)
    # π = min(1, λ w) hits the target size
    assert res.pi == pytest.approx(np.minimum(1, res.params.prob_scale * res.weight))
    assert abs(res.pi @ tab.multiplicity - 400) / 400 <= 1e-9


def _dense_table(seed: int) -> SignatureTable:
    rng = np.random.default_rng(seed)
    rows, mult, lang = [], [], []
    levels = ["de", "en", "fr", "ja"]
    # every (level, entry) cell is covered, so the 4 × 6 table is dense
    for x, j in itertools.product(range(4), range(6)):
        extra = rng.choice(6, size=rng.integers(0, 3), replace=False).tolist()
        rows.append(sorted({j, *extra}))
        mult.append(int(rng.integers(1, 40)))
        lang.append(levels[x])
    for _ in range(40):
        rows.append(sorted(rng.choice(6, size=rng.integers(1, 4), replace=False).tolist()))
        mult.append(int(rng.integers(1, 60)))
        lang.append(levels[int(rng.integers(0, 4))])
    return SignatureTable.from_lists(rows, mult, n_entries=6, margins={"lang": lang})


@pytest.mark.parametrize(
    "seed, margin_target",
    [(0, "uniform"), (1, {"de": 0.1, "en": 0.6, "fr": 0.2, "ja": 0.1}), (2, "empirical")],
)
def test_balance_with_margin_equals_ipfn(seed, margin_target):
    tab = _dense_table(seed)
    res = balance(
        tab,
        t=60.0,
        margins=["lang"],
        margin_targets={"lang": margin_target},
        target_size=300,
        tol=1e-14,
        max_iter=20000,
    )
    assert res.info["status"] == "converged"
    rows, mult = _rows(tab), tab.multiplicity
    codes = tab.margin_codes["lang"]
    n = float(mult.sum())
    t0 = np.zeros((4, 6))  # the pair table P0 aggregated to (level, entry)
    for r, m, x in zip(rows, mult, codes):
        for j in r:
            t0[x, j] += m / (n * len(r))
    c = tab.entry_counts()
    py = np.minimum(c, 60.0) / np.minimum(c, 60.0).sum()
    obs = np.bincount(codes, weights=mult, minlength=4)
    if margin_target == "uniform":
        px = np.full(4, 0.25)
    elif margin_target == "empirical":
        px = obs / obs.sum()
    else:
        px = np.array([margin_target[k] for k in tab.margin_levels["lang"]])
    ref = ipfn.ipfn(
        t0.copy(),
        [px, py],
        [[0], [1]],
        convergence_rate=1e-15,
        max_iteration=20000,
        rate_tolerance=0.0,
    ).iteration()
    a, b = res.params.entry_values, res.params.margin_values["lang"]
    ours = t0 * b[:, None] * a[None, :]
    np.testing.assert_allclose(ours, ref, rtol=1e-8, atol=1e-12)
    # sample weights are the row sums of the balanced pair table (mean 1)
    w_rows = np.array([b[x] * sum(a[j] for j in r) / len(r) for r, x in zip(rows, codes)])
    np.testing.assert_allclose(res.weight, w_rows * n / np.dot(mult, w_rows), rtol=1e-12)
    np.testing.assert_allclose(np.bincount(codes, weights=mult * res.weight) / n, px, atol=1e-10)


def test_balance_history_ends_on_y_step_and_reports():
    tab = synthetic_table(3000, 150, margin_levels=4, seed=4)
    res = balance(tab, t=30.0, margins=["lang"], margin_targets={"lang": "uniform"}, tol=1e-9)
    assert res.info["status"] == "converged"
    h = res.history
    assert h[-1]["max_rel_err"] < 1e-9 and h[-1]["errors"]["<entries>"] < 1e-12
    assert all(np.isfinite([x["max_rel_err"] for x in h]))
    # without target size: Σ_i k_i π_i = Σ_j min(c_j, t)
    kpi = float(np.dot(tab.multiplicity * tab.k, res.pi))
    assert kpi == pytest.approx(np.minimum(tab.entry_counts(), 30.0).sum(), rel=1e-9)
