"""M4 moment matching on NumPy (no Spark): planted pools, a brute-force QP, infeasibility."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from scipy.optimize import LinearConstraint, minimize

from curation.attributes import AttributeMatcher, parse_spec
from curation.balancing.m4 import (
    ASSOCIATION_SAFETY,
    REPRESENTATION_SAFETY,
    MemoryMomentOperator,
    MomentLayout,
    bias_report,
    block_from_arrow,
    build_constraints,
    m4_solve,
    solve_dual,
)
from tests.m4_pool import ATTRIBUTES_YAML, planted_captions

EPS = 0.01


def table_of(rows, utility=None) -> pa.Table:
    """rows: (groups, labels, multiplicity)."""
    cols = {
        "attribute_groups": pa.array([list(g) for g, _, _ in rows], pa.list_(pa.int32())),
        "attribute_labels": pa.array([list(lb) for _, lb, _ in rows], pa.list_(pa.int32())),
        "multiplicity": pa.array([m for _, _, m in rows], pa.int64()),
    }
    if utility is not None:
        cols["quality"] = pa.array(utility, pa.float64())
    return pa.table(cols)


def planted_table(n: int, seed: int = 0) -> tuple[pa.Table, object]:
    import yaml

    spec = parse_spec(yaml.safe_load(ATTRIBUTES_YAML), "planted")
    groups, labels = AttributeMatcher(spec).match_many(planted_captions(n, seed))
    keys = Counter(zip(map(tuple, groups.to_pylist()), map(tuple, labels.to_pylist())))
    return table_of([(g, lb, m) for (g, lb), m in sorted(keys.items())]), spec


def test_planted_nurse_pool_is_balanced_within_epsilon():
    table, spec = planted_table(4000)
    op = MemoryMomentOperator([block_from_arrow(table, MomentLayout.of(spec))])
    n = sum(table.column("multiplicity").to_pylist())
    result = m4_solve(op, spec, 0.5 * n)
    before, after = result.before["gender"], result.after["gender"]
    nurse_before = before["labels"]["nurse"]["ab"]["female"]
    assert nurse_before > 0.3  # planted: 80 % of nurse captions are female
    assert result.status == "converged"
    assert after["rb"] <= EPS and after["ab"] <= EPS
    for name, label in after["labels"].items():
        if label["constrained"]:
            assert label["max_abs_ab"] <= EPS, name
    assert result.size == pytest.approx(0.5 * n, rel=1e-6)
    report = bias_report(spec, result)
    g = report["attributes"]["gender"]
    assert g["rb_status"] == "met" and g["ab_status"] == "met"
    assert g["labels"]["nurse"]["status"] == "met"
    assert result.entropy["after"] < result.entropy["before"]


def _indicators(table: pa.Table, n_labels: int):
    groups = table.column("attribute_groups").to_pylist()
    labels = table.column("attribute_labels").to_pylist()
    a = np.array([1.0 if g else 0.0 for g in groups])
    s = np.array([[1.0 if k in g else 0.0 for k in (0, 1)] for g in groups])
    y = np.array(
        [[1.0 if r in lb and g else 0.0 for r in range(n_labels)] for g, lb in zip(groups, labels)]
    )
    return a, s, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_linearised_solve_equals_a_brute_force_qp(seed):
    """The dual's q against SciPy on the primal QP, its constraints written from the definitions
    (parity; association at fixed shares p̂), with utilities and multiplicities."""
    rng = np.random.default_rng(seed)
    spec = parse_spec(
        {
            "attributes": {"g": {"f": ["w"], "m": ["h"]}},
            "labels": ["l0", "l1"],
            "epsilon": {"representation": 0.05, "association": 0.05},
            "min_label_count": 0,
        },
        "qp",
    )
    rows = []
    for _ in range(40):
        g = [[], [0], [1], [0, 1]][rng.choice(4, p=[0.2, 0.4, 0.3, 0.1])]
        lb = sorted(set(rng.choice(2, size=rng.integers(0, 3)).tolist()))
        rows.append((g, lb, int(rng.integers(1, 4))))
    u = rng.uniform(0.3, 1.0, size=len(rows))
    table = table_of(rows, u)
    layout = MomentLayout.of(spec)
    op = MemoryMomentOperator([block_from_arrow(table, layout, "quality")])
    m = table.column("multiplicity").to_numpy().astype(float)
    N = 0.5 * m.sum()
    p_hat = np.array([0.55, 0.5])
    T, _ = build_constraints(spec, layout, [[0, 1]], [p_hat])
    x0 = np.zeros(1 + T.shape[0])
    x = solve_dual(op, T, N, x0, 1e4, 1e-12, 5000, [])
    q_dual = op.row_q(T.T @ x[1:], x[0])

    a, s, y = _indicators(table, 2)
    er, ea = REPRESENTATION_SAFETY * 0.05, ASSOCIATION_SAFETY * 0.05
    G = [m * (s[:, 0] - s[:, 1] - er * a), m * (s[:, 1] - s[:, 0] - er * a)]
    for k in range(2):
        for r in range(2):
            core = m * y[:, r] * (s[:, k] - p_hat[k] * a)
            bound = m * a * ea * p_hat[k] * (1 - p_hat[k])
            G += [core - bound, -core - bound]
    G = np.array(G)
    ref = minimize(
        lambda q: 0.5 * np.sum(m * (q - u) ** 2),
        np.full(len(rows), 0.5),
        jac=lambda q: m * (q - u),
        bounds=[(0, 1)] * len(rows),
        constraints=[LinearConstraint(m[None, :], N, N), LinearConstraint(G, -np.inf, 0)],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    assert np.max(G @ ref.x) <= 1e-6
    np.testing.assert_allclose(q_dual, ref.x, atol=2e-5)
    assert np.max(G @ q_dual) <= 1e-7 * N
    assert m @ q_dual == pytest.approx(N, rel=1e-7)


def test_unbalanceable_pool_is_reported_infeasible():
    """Every female caption mentions the nurse, no male caption does: E[y | f] = 1 and
    E[y | m] = 0 for any q that keeps both groups, so AB = 1 (or parity fails)."""
    spec = parse_spec(
        {
            "attributes": {"g": {"f": ["w"], "m": ["h"]}},
            "labels": ["nurse"],
            "min_label_count": 0,
        },
        "inf",
    )
    table = table_of([([0], [0], 50), ([1], [], 50), ([], [], 100)])
    op = MemoryMomentOperator([block_from_arrow(table, MomentLayout.of(spec))])
    result = m4_solve(op, spec, 100.0)
    assert result.status == "infeasible"
    assert result.infeasible  # the constraints held at the box, with their violations
    report = bias_report(spec, result)
    g = report["attributes"]["g"]
    assert "infeasible" in (g["rb_status"], g["ab_status"])
    assert all(np.isfinite(result.mu)) and result.size == pytest.approx(100.0, rel=1e-6)


def test_target_size_above_the_eligible_samples_is_refused():
    table, spec = planted_table(200)
    op = MemoryMomentOperator([block_from_arrow(table, MomentLayout.of(spec))])
    with pytest.raises(ValueError, match="eligible samples"):
        m4_solve(op, spec, 10_000.0)


def test_blocks_give_bit_identical_solves():
    """Exact binned sums: the solve over 3 blocks of a permuted table is the 1-block solve."""
    table, spec = planted_table(1500, seed=5)
    layout = MomentLayout.of(spec)
    n = sum(table.column("multiplicity").to_pylist())
    one = m4_solve(MemoryMomentOperator([block_from_arrow(table, layout)]), spec, 0.4 * n)
    perm = np.random.default_rng(1).permutation(table.num_rows)
    shuffled = table.take(pa.array(perm))
    cuts = np.array_split(np.arange(table.num_rows), 3)
    blocks = [
        block_from_arrow(shuffled.take(pa.array(c)), layout, pid=i) for i, c in enumerate(cuts)
    ]
    three = m4_solve(MemoryMomentOperator(blocks), spec, 0.4 * n)
    assert np.array_equal(one.mu, three.mu) and one.nu == three.nu
