"""Multi-Modal Moment Matching (M4; "CLIP the Bias", Alabdulmohsin et al., ICLR 2024).

Per eligible (matched) sample i with multiplicity m_i and utility u_i (default 1), M4 chooses
q_i ∈ [0, 1] solving the quadratic program

    minimise   ½ Σ_i m_i (q_i − u_i)²
    subject to Σ_i m_i q_i = N,   0 ≤ q ≤ 1,   G q ≤ 0,

where the rows of G are the bias constraints, each linear in q (below). Per attribute with
groups k (s_ik = 1 when group k matches caption i; a_i = 1 when any group does) and labels r
(y_ir), with P = Σ m q a, S_k = Σ m q s_k, Y_r = Σ m q a y_r, YS_kr = Σ m q s_k y_r:

* representation, target shares p_k:  ±(S_k − p_k P) ≤ ε_r P   ⇔ |E_q[s_k | a] − p_k| ≤ ε_r;
  parity: S_k − S_l ≤ ε_r P for every ordered pair k ≠ l  ⇔ max |E[s_k|a] − E[s_l|a]| ≤ ε_r;
* association (the paper's linear moment E_q[y_r (s_k − p̂_k a)] = 0, relaxed to ε):
  ±(YS_kr − p̂_k Y_r) ≤ δ ε_a p̂_k (1 − p̂_k) P. With p̂_k the achieved share S_k/P this is
  exactly AB_kr ≤ δ ε_a, since YS_kr − p Y_r = P p (1 − p) AB_kr with
  AB_kr = E[y_r | s_k = 1, a] − E[y_r | s_k = 0, a]. The solve starts from p̂ = the target shares
  (parity: the pool's mean group share) and re-linearises at the achieved shares until every
  AB ≤ ε_a (δ = 0.98 leaves room for the change of p̂ between rounds).

All constraints are linear in the per-row *base features* b_i (a, s_k, a·y_r, s_k·y_r per
attribute; 0/1): G q = T Σ_i m_i q_i b_i for a small matrix T. Lagrangian duality (λ ≥ 0 on the
bias constraints, ν free on the size) gives q_i(λ, ν) = clip(u_i − ν − b_i·μ, 0, 1) with
μ = Tᵀλ, and the concave, piecewise-quadratic, continuously differentiable dual

    D(λ, ν) = Σ_i m_i [½(q_i − u_i)² + (u_i − h_i) q_i] − ν N,   h_i = u_i − ν − b_i·μ,
    ∂D/∂ν = Σ m q − N,   ∂D/∂λ = T Σ m q b   (the constraint values).

**Choice (solver).** The rake solver (:func:`.dual_solver.solve_box_dual`) is specialised to
the raking φ(η) = e^{min(η,0)} + max(η,0) over a 0/1 incidence matrix; M4's features are signed
and its φ quadratic. The dual has few variables (about 2·K·L + K² per attribute: hundreds), so
the driver runs SciPy's L-BFGS-B with the exact box λ ∈ [0, B] (B bounds the multipliers: the
dual of the primal with an exact penalty B·Σ max(0, G q), so infeasible constraints end at
λ_j = B and are reported), and every evaluation of D and ∇D is one pass over the table: the
row kernel :func:`m4_pass_kernel` on blocks, on the driver or on Spark. Every sum is an exact
binned sum (:mod:`.blocks`), so the passes, hence L-BFGS-B's iterates, are bit for bit the same
on any partitioning and on either path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.optimize import minimize

from curation.attributes import GROUPS_COL, LABELS_COL, AttributeSpec

from .blocks import binned_columns, binned_sum, combine, finalize
from .params import ScoreParams, score_arrow, segment_sum
from .signatures import list_array_to_csr

#: Box of the bias multipliers (λ_j ≤ B): the exact-penalty price of one unit of violation.
DEFAULT_BOUND = 1e4
#: Safety factor on ε_a (the re-linearisation moves p̂ by up to ε_r between rounds).
ASSOCIATION_SAFETY = 0.98
#: Safety factor on ε_r (the solver meets constraints to its tolerance, not exactly).
REPRESENTATION_SAFETY = 0.999
MAX_ROUNDS = 6


# ------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class MomentLayout:
    """Where each base feature sits: per attribute an offset, K groups and L labels, in the order
    a, s_0..s_{K-1}, a·y_0..a·y_{L-1}, s_k·y_r (k-major). ``label_entries``: the labels' entry
    ids when labels are metadata entries (a row's labels then come from its ``entry_ids``)."""

    first_groups: tuple[int, ...]
    n_groups: tuple[int, ...]
    n_labels: int
    label_entries: tuple[int, ...] | None = None

    @property
    def offsets(self) -> list[int]:
        out, o = [], 0
        for k in self.n_groups:
            out.append(o)
            o += 1 + k + self.n_labels + k * self.n_labels
        return out + [o]

    @property
    def size(self) -> int:
        return self.offsets[-1]

    @classmethod
    def of(cls, spec: AttributeSpec) -> MomentLayout:
        if spec.entry_labels and spec.label_entry_ids is None:
            raise ValueError(
                f"{spec.source}: labels from metadata entries are resolved from the entry "
                "counts first (curation.attributes.resolve_entry_labels)"
            )
        return cls(
            tuple(a.first_group for a in spec.attributes),
            tuple(len(a.groups) for a in spec.attributes),
            len(spec.labels),
            spec.label_entry_ids if spec.entry_labels else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "first_groups": list(self.first_groups),
            "n_groups": list(self.n_groups),
            "n_labels": self.n_labels,
        }
        if self.label_entries is not None:
            out["label_entries"] = list(self.label_entries)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MomentLayout:
        entries = d.get("label_entries")
        return cls(
            tuple(d["first_groups"]),
            tuple(d["n_groups"]),
            int(d["n_labels"]),
            None if entries is None else tuple(int(j) for j in entries),
        )

    def label_csr(self, batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Every row's label ids (CSR): ``attribute_labels``, or with labels from entries the
        positions of the row's entry ids in ``label_entries`` (ascending both, so sorted)."""
        if self.label_entries is None:
            return list_array_to_csr(batch.column(LABELS_COL))
        indptr, ids = list_array_to_csr(batch.column("entry_ids"))
        table = np.asarray(self.label_entries, dtype=np.int64)
        pos = np.searchsorted(table, ids)
        hit = pos < table.size
        hit[hit] = table[pos[hit]] == ids[hit]
        kept = np.concatenate([[0], np.cumsum(hit)]).astype(np.int64)
        return kept[indptr], pos[hit].astype(np.int32)


def base_features(
    layout: MomentLayout,
    g_indptr: np.ndarray,
    g_indices: np.ndarray,
    l_indptr: np.ndarray,
    l_indices: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, sorted column ids) of every row's 0/1 base features."""
    offsets, L = layout.offsets, layout.n_labels
    indptr = np.zeros(len(g_indptr), dtype=np.int64)
    cols: list[int] = []
    for i in range(len(g_indptr) - 1):
        groups = g_indices[g_indptr[i] : g_indptr[i + 1]]
        labels = l_indices[l_indptr[i] : l_indptr[i + 1]]
        if groups.size:
            for o, g0, K in zip(offsets, layout.first_groups, layout.n_groups, strict=False):
                ks = [int(g) - g0 for g in groups if g0 <= g < g0 + K]
                if not ks:
                    continue
                cols.append(o)
                cols.extend(o + 1 + k for k in ks)
                cols.extend(o + 1 + K + int(r) for r in labels)
                cols.extend(o + 1 + K + L + k * L + int(r) for k in ks for r in labels)
        indptr[i + 1] = len(cols)
    return indptr, np.asarray(cols, dtype=np.int32)


# ------------------------------------------------------------------------------- blocks
@dataclass
class MomentBlock:
    """Rows of the M4 table: multiplicity, utility and base features (CSR)."""

    pid: int
    mult: np.ndarray
    utility: np.ndarray
    indptr: np.ndarray
    cols: np.ndarray
    n_base: int

    @property
    def rows(self) -> np.ndarray:
        """The row of every incidence."""
        return np.repeat(np.arange(self.mult.size), np.diff(self.indptr))


def block_from_arrow(
    batch: pa.RecordBatch | pa.Table,
    layout: MomentLayout,
    utility_col: str | None = None,
    pid: int = 0,
    base: ScoreParams | None = None,
) -> MomentBlock:
    """A block from rows with ``attribute_groups``, ``attribute_labels``, ``multiplicity``
    (and the utility column; or, with ``base``, the rows' entry ids and margins: the utility is
    then the base method's π, for rake with attributes)."""
    gp, gi = list_array_to_csr(batch.column(GROUPS_COL))
    lp, li = layout.label_csr(batch)
    indptr, cols = base_features(layout, gp, gi, lp, li)
    mult = np.asarray(batch.column("multiplicity").to_numpy(zero_copy_only=False), np.float64)
    if base is not None:
        utility = score_arrow(base, batch)[1]
    else:
        utility = utility_values(batch, utility_col)
    return MomentBlock(pid, mult, utility, indptr, cols, layout.size)


def utility_values(batch: pa.RecordBatch | pa.Table, utility_col: str | None) -> np.ndarray:
    """u_i (1 without a utility column); a null or non-finite utility is an error."""
    if not utility_col:
        return np.ones(batch.num_rows)
    col = batch.column(utility_col)
    if col.null_count:
        raise ValueError(f"utility column {utility_col!r} holds nulls; fill them or drop the rows")
    u = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    if not np.all(np.isfinite(u)):
        raise ValueError(f"utility column {utility_col!r} holds a non-finite value")
    return u


def row_q(block: MomentBlock, mu: np.ndarray, nu: float) -> np.ndarray:
    """q_i = clip(u_i − ν − b_i·μ, 0, 1) (fixed-order row arithmetic)."""
    h = block.utility - nu - segment_sum(mu[block.cols], block.indptr)
    return np.clip(h, 0.0, 1.0)


def m4_pass_kernel(
    block: MomentBlock, mu: np.ndarray | None = None, nu: float = 0.0
) -> dict[str, Any]:
    """One pass on a block: the dual's terms as exact binned sums. ``mu=None``: q = 1 (the pool
    before balancing)."""
    if mu is None:
        q = np.ones(block.mult.size)
        dual = np.zeros(block.mult.size)
    else:
        h = block.utility - nu - segment_sum(mu[block.cols], block.indptr)
        q = np.clip(h, 0.0, 1.0)
        dual = block.mult * (0.5 * (q - block.utility) ** 2 + (block.utility - h) * q)
    w = block.mult * q
    with np.errstate(divide="ignore", invalid="ignore"):
        qlogq = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return {
        "utility": binned_sum(block.mult * block.utility),
        "dual": binned_sum(dual),
        "size": binned_sum(w),
        "sq": binned_sum(block.mult * q * q),
        "qlogq": binned_sum(block.mult * qlogq),
        "n": binned_sum(block.mult),
        "feat": binned_columns(block.cols, w[block.rows], block.n_base),
    }


class MemoryMomentOperator:
    """The M4 table on the driver, in blocks (the same kernel and sums as on Spark)."""

    path = "driver"

    def __init__(self, blocks: Sequence[MomentBlock]) -> None:
        self.blocks = list(blocks)
        self.passes = 0

    def run(self, mu: np.ndarray | None, nu: float) -> dict[str, Any]:
        self.passes += 1
        parts = [m4_pass_kernel(b, mu, nu) for b in self.blocks]
        out = parts[0]
        for p in parts[1:]:
            out = combine(out, p)
        return finalize(out)

    def row_q(self, mu: np.ndarray, nu: float) -> np.ndarray:
        return np.concatenate([row_q(b, mu, nu) for b in self.blocks])


# ------------------------------------------------------------------------------- constraints
@dataclass
class Constraint:
    """One linear bias constraint (a row of T)."""

    attribute: str
    kind: str  # representation | association
    group: str
    other: str | None = None  # parity: the second group
    label: str | None = None
    side: int = 1


def group_shares(feat: np.ndarray, layout: MomentLayout, a: int) -> np.ndarray:
    o, K = layout.offsets[a], layout.n_groups[a]
    P = feat[o]
    return feat[o + 1 : o + 1 + K] / P if P > 0 else np.full(K, np.nan)


def constrained_labels(spec: AttributeSpec, layout: MomentLayout, pool_feat: np.ndarray) -> list:
    """Per attribute, the label ids with ≥ ``min_label_count`` mentions among the captions with
    the attribute (in the pool before balancing)."""
    out = []
    for a, K in enumerate(layout.n_groups):
        base = layout.offsets[a] + 1 + K
        counts = pool_feat[base : base + layout.n_labels]
        out.append([r for r in range(layout.n_labels) if counts[r] >= spec.min_label_count])
    return out


def build_constraints(
    spec: AttributeSpec,
    layout: MomentLayout,
    labels: list[list[int]],
    linear_shares: list[np.ndarray],
    association_safety: float = ASSOCIATION_SAFETY,
) -> tuple[np.ndarray, list[Constraint]]:
    """T (constraints × base features) and what each row is; G q = T Σ m q b ≤ 0 (the AB
    bounds at ``association_safety`` · ε_a)."""
    rows: list[np.ndarray] = []
    what: list[Constraint] = []
    L, eps_a = layout.n_labels, spec.epsilon_association
    eps_r = REPRESENTATION_SAFETY * spec.epsilon_representation
    for a, attr in enumerate(spec.attributes):
        o, K = layout.offsets[a], layout.n_groups[a]
        if attr.target == "parity":
            for k in range(K):
                for m in range(K):
                    if k != m:
                        t = np.zeros(layout.size)
                        t[o + 1 + k], t[o + 1 + m], t[o] = 1.0, -1.0, -eps_r
                        rows.append(t)
                        what.append(
                            Constraint(attr.name, "representation", attr.groups[k], attr.groups[m])
                        )
        else:
            for k in range(K):
                for side in (1, -1):
                    t = np.zeros(layout.size)
                    t[o + 1 + k] = side
                    t[o] = -side * attr.target[k] - eps_r
                    rows.append(t)
                    what.append(Constraint(attr.name, "representation", attr.groups[k], side=side))
        p = linear_shares[a]
        for k in range(K):
            bound = association_safety * eps_a * p[k] * (1 - p[k])
            for r in labels[a]:
                for side in (1, -1):
                    t = np.zeros(layout.size)
                    t[o + 1 + K + L + k * L + r] = side
                    t[o + 1 + K + r] = -side * p[k]
                    t[o] = -bound
                    rows.append(t)
                    what.append(
                        Constraint(
                            attr.name,
                            "association",
                            attr.groups[k],
                            label=spec.labels[r],
                            side=side,
                        )
                    )
    T = np.vstack(rows) if rows else np.zeros((0, layout.size))
    return T, what


# ------------------------------------------------------------------------------- bias
def bias_from_sums(
    spec: AttributeSpec, layout: MomentLayout, feat: np.ndarray, labels: list[list[int]]
) -> dict[str, Any]:
    """RB, shares and AB per attribute and label from Σ w b (w = m q): the definitions of
    ``docs/balancing.md``."""
    out: dict[str, Any] = {}
    L = layout.n_labels
    for a, attr in enumerate(spec.attributes):
        o, K = layout.offsets[a], layout.n_groups[a]
        P = float(feat[o])
        S = feat[o + 1 : o + 1 + K]
        shares = S / P if P > 0 else np.full(K, np.nan)
        if attr.target == "parity":
            rb = float(np.max(shares) - np.min(shares)) if P > 0 else float("nan")
        else:
            rb = float(np.max(np.abs(shares - np.asarray(attr.target)))) if P > 0 else float("nan")
        per_label = {}
        for r in range(L):
            Y = float(feat[o + 1 + K + r])
            ab = {}
            for k in range(K):
                YS = float(feat[o + 1 + K + L + k * L + r])
                if S[k] > 0 and P - S[k] > 0:
                    ab[attr.groups[k]] = float(YS / S[k] - (Y - YS) / (P - S[k]))
                else:
                    ab[attr.groups[k]] = float("nan")
            per_label[spec.labels[r]] = {
                "mass": Y,
                "constrained": r in labels[a],
                "ab": ab,
                "max_abs_ab": max((abs(v) for v in ab.values() if math.isfinite(v)), default=0.0),
            }
        constrained = [v["max_abs_ab"] for v in per_label.values() if v["constrained"]]
        out[attr.name] = {
            "mass": P,
            "shares": dict(zip(attr.groups, shares.tolist(), strict=True)),
            "rb": rb,
            "ab": max(constrained, default=0.0),
            "labels": per_label,
        }
    return out


# ------------------------------------------------------------------------------- solve
@dataclass
class M4Result:
    """What :func:`m4_solve` returns."""

    mu: np.ndarray
    nu: float
    lam: np.ndarray
    status: str  # converged | infeasible | unmet
    constraints: list[Constraint]
    values: np.ndarray  # constraint values G q / N at the solution
    before: dict[str, Any]
    after: dict[str, Any]
    labels: list[list[int]]
    size: float
    target_size: float
    n_eligible: float
    entropy: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    passes: int = 0
    seconds: float = 0.0
    rounds: int = 0
    infeasible: list[dict[str, Any]] = field(default_factory=list)
    base: dict[str, Any] | None = None  # the bias at q = u (rake with attributes: rake's π)


def solve_dual(
    op: MemoryMomentOperator,
    T: np.ndarray,
    N: float,
    x0: np.ndarray,
    bound: float,
    tol: float,
    max_passes: int,
    history: list[dict[str, Any]],
) -> np.ndarray:
    """L-BFGS-B on −D/N over x = (ν, λ), ν free, 0 ≤ λ ≤ B; returns the best x."""

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        nu, lam = float(x[0]), x[1:]
        out = op.run(T.T @ lam, nu)
        g = np.empty_like(x)
        g[0] = (out["size"] - N) / N
        g[1:] = (T @ out["feat"]) / N
        value = (out["dual"] - nu * N) / N
        history.append(
            {
                "iter": len(history),
                "passes": op.passes,
                "dual": value,
                "size_rel_err": abs(g[0]),
                "max_violation": float(np.max(g[1:], initial=0.0)),
            }
        )
        return -value, -g

    bounds = [(None, None)] + [(0.0, bound)] * (x0.size - 1)
    res = minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={
            "maxfun": max_passes,
            "maxiter": max_passes,
            "ftol": 1e-15,
            "gtol": tol,
            "maxcor": 30,
        },
    )
    return np.asarray(res.x, dtype=np.float64)


def _entropy(out: dict[str, Any]) -> float:
    """Entropy (nats) of the selection distribution q / Σq over samples."""
    S = out["size"]
    return float(math.log(S) - out["qlogq"] / S) if S > 0 else float("nan")


def target_shares(spec: AttributeSpec, layout: MomentLayout, feat: np.ndarray) -> list:
    """π_k per attribute: parity (the groups' mean share in the pool) or the given shares,
    kept inside (0, 1)."""
    shares = []
    for a, attr in enumerate(spec.attributes):
        if attr.target == "parity":
            s = group_shares(feat, layout, a)
            share = np.full(len(attr.groups), float(np.nanmean(s)) if s.size else 0.5)
        else:
            share = np.asarray(attr.target, dtype=np.float64)
        shares.append(np.nan_to_num(np.clip(share, 1e-6, 1 - 1e-6), nan=0.5))
    return shares


def infeasible_constraints(
    spec: AttributeSpec,
    what: list,
    values: np.ndarray,
    lam: np.ndarray,
    bound: float,
    before: dict[str, Any],
    after: dict[str, Any],
) -> list[dict[str, Any]]:
    """The constraints held at the multiplier bound with a positive violation, and the
    attributes kept within ε only by dropping all their captions."""
    infeasible = [
        {**vars(c), "value": float(v), "multiplier": float(lv)}
        for c, v, lv in zip(what, values, lam, strict=True)
        if lv >= bound * (1 - 1e-9) and v > 1e-9
    ]
    for attr in spec.attributes:
        if after[attr.name]["mass"] <= 1e-9 * before[attr.name]["mass"]:
            # the linear constraints hold trivially with the attribute gone (P = 0)
            infeasible.append(
                {
                    "attribute": attr.name,
                    "kind": "presence",
                    "note": "the constraints hold only with every caption of the attribute "
                    "dropped (no q keeps it within epsilon)",
                }
            )
    return infeasible


def entropy_facts(pool: dict[str, Any], out: dict[str, Any], n_eligible: float) -> dict:
    return {
        "before": _entropy(pool),
        "after": _entropy(out),
        "uniform": math.log(n_eligible),
        "kish_ess": float(out["size"] ** 2 / out["sq"]) if out["sq"] > 0 else 0.0,
    }


def bounds_met(spec: AttributeSpec, after: dict[str, Any]) -> bool:
    """Every attribute's RB ≤ ε_representation and AB ≤ ε_association (to 1e-6 relative: the
    solver meets its constraints to a tolerance, not exactly)."""
    return all(
        after[a.name]["rb"] <= spec.epsilon_representation * (1 + 1e-6)
        and after[a.name]["ab"] <= spec.epsilon_association * (1 + 1e-6)
        for a in spec.attributes
    )


def achieved_shares(spec: AttributeSpec, layout: MomentLayout, feat: np.ndarray) -> list:
    """The group shares p̂ of each attribute at a solution (from its feature sums), where the
    next round re-linearises AB; kept inside (0, 1) (0.5 where the attribute is absent)."""
    return [
        np.clip(np.nan_to_num(group_shares(feat, layout, a), nan=0.5), 1e-6, 1 - 1e-6)
        for a in range(len(spec.attributes))
    ]


def _linearised_rounds(
    op: MemoryMomentOperator,
    spec: AttributeSpec,
    layout: MomentLayout,
    labels: Any,
    shares: list,
    sizes: tuple[float, float],
    solver: tuple[float, float, int],
    history: list[dict[str, Any]],
    callback: Callable[[int], None] | None,
) -> tuple:
    """Solve the dual with the association moments linearised at the group shares ``shares``,
    re-linearise at the achieved shares, and repeat until every RB and AB is within ε (or
    :data:`MAX_ROUNDS`). Returns (rounds, T, constraints, λ, ν, the final pass, bias after, ok)."""
    target_size, n_eligible = sizes
    bound, tol, max_passes = solver
    x = None
    for rounds in range(1, MAX_ROUNDS + 1):
        T, what = build_constraints(spec, layout, labels, shares)
        x0 = np.zeros(1 + len(what))
        x0[0] = 1.0 - target_size / n_eligible  # q = N/n everywhere (u = 1)
        if x is not None and x.size == x0.size:
            x0 = x
        x = solve_dual(op, T, target_size, x0, bound, tol, max_passes, history)
        lam, nu = x[1:], float(x[0])
        out = op.run(T.T @ lam, nu)
        after = bias_from_sums(spec, layout, out["feat"], labels)
        ok = bounds_met(spec, after)
        if ok or rounds == MAX_ROUNDS:
            break
        shares = achieved_shares(spec, layout, out["feat"])
        if callback is not None:
            callback(op.passes)
    return rounds, T, what, lam, nu, out, after, ok


def m4_solve(
    op: MemoryMomentOperator,
    spec: AttributeSpec,
    target_size: float | None,
    *,
    tol: float = 1e-9,
    max_passes: int = 2000,
    bound: float = DEFAULT_BOUND,
    callback: Callable[[int], None] | None = None,
    base_bias: bool | None = None,
) -> M4Result:
    """Solve M4 on the table behind ``op`` (module docstring); ``target_size`` = N (None: Σ m u,
    the size of the base method's solution when the utility is its π)."""
    t0 = time.perf_counter()
    layout = MomentLayout.of(spec)
    if base_bias is None:
        base_bias = target_size is None  # a base method's π as the utility: measure it too
    pool = op.run(None, 0.0)
    n_eligible = float(pool["n"])
    if target_size is None:
        target_size = float(pool["utility"])
    if not 0 < target_size <= n_eligible * (1 + 1e-12):
        raise ValueError(
            f"target size {target_size:g} is not in (0, {n_eligible:g}], the eligible samples"
        )
    labels = constrained_labels(spec, layout, pool["feat"])
    before = bias_from_sums(spec, layout, pool["feat"], labels)
    at_utility = op.run(np.zeros(layout.size), 0.0) if base_bias else None  # q = clip(u, 0, 1)
    history: list[dict[str, Any]] = []
    rounds, T, what, lam, nu, out, after, ok = _linearised_rounds(
        op,
        spec,
        layout,
        labels,
        target_shares(spec, layout, pool["feat"]),
        (target_size, n_eligible),
        (bound, tol, max_passes),
        history,
        callback,
    )
    values = (T @ out["feat"]) / target_size
    infeasible = infeasible_constraints(spec, what, values, lam, bound, before, after)
    status = "converged" if ok else ("infeasible" if infeasible else "unmet")
    return M4Result(
        mu=T.T @ lam,
        nu=nu,
        lam=lam,
        status=status,
        constraints=what,
        values=values,
        before=before,
        after=after,
        labels=labels,
        size=float(out["size"]),
        target_size=float(target_size),
        n_eligible=n_eligible,
        entropy=entropy_facts(pool, out, n_eligible),
        history=history,
        passes=op.passes,
        seconds=time.perf_counter() - t0,
        rounds=rounds,
        infeasible=infeasible,
        base=None
        if at_utility is None
        else {
            "bias": bias_from_sums(spec, layout, at_utility["feat"], labels),
            "entropy": _entropy(at_utility),
            "size": float(at_utility["size"]),
        },
    )


# ------------------------------------------------------------------------------- bias.json
def bias_report(spec: AttributeSpec, result: M4Result, method: str = "m4") -> dict[str, Any]:
    """``bias.json``: RB and AB before and after per attribute and label, with statuses
    (``method``: ``m4``, or ``rake+attributes`` when the utility was rake's π)."""
    eps_r, eps_a = spec.epsilon_representation, spec.epsilon_association
    held = {(c["attribute"], c["kind"], c.get("label")) for c in result.infeasible}
    removed = {c["attribute"] for c in result.infeasible if c["kind"] == "presence"}
    out: dict[str, Any] = {
        "method": method,
        "status": result.status,
        "epsilon": {"representation": eps_r, "association": eps_a},
        "min_label_count": spec.min_label_count,
        "attributes": {},
    }

    def status(attr: str, kind: str, label: str | None, value: float, eps: float) -> str:
        if attr in removed:
            return "infeasible"
        if value <= eps * (1 + 1e-6):
            return "met"
        return "infeasible" if (attr, kind, label) in held else "unmet"

    for attr in spec.attributes:
        b, a = result.before[attr.name], result.after[attr.name]
        labels = {}
        for name, lb in b["labels"].items():
            la = a["labels"][name]
            labels[name] = {
                "constrained": lb["constrained"],
                "count_before": lb["mass"],
                "expected_after": la["mass"],
                "ab_before": lb["ab"],
                "ab_after": la["ab"],
                "max_abs_ab_before": lb["max_abs_ab"],
                "max_abs_ab_after": la["max_abs_ab"],
                "status": status(attr.name, "association", name, la["max_abs_ab"], eps_a)
                if lb["constrained"]
                else f"not constrained (fewer than {spec.min_label_count} mentions)",
            }
        out["attributes"][attr.name] = {
            "target": attr.target if isinstance(attr.target, str) else list(attr.target),
            "count_before": b["mass"],
            "expected_after": a["mass"],
            "shares_before": b["shares"],
            "shares_after": a["shares"],
            "rb_before": b["rb"],
            "rb_after": a["rb"],
            "rb_status": status(attr.name, "representation", None, a["rb"], eps_r),
            "ab_before": b["ab"],
            "ab_after": a["ab"],
            "ab_status": "met"
            if a["ab"] <= eps_a * (1 + 1e-6) and attr.name not in removed
            else ("infeasible" if any(k[0] == attr.name for k in held) else "unmet"),
            "labels": labels,
        }
        if result.base is not None:
            u = result.base["bias"][attr.name]
            entry = out["attributes"][attr.name]
            entry.update(
                shares_base=u["shares"], rb_base=u["rb"], ab_base=u["ab"], expected_base=u["mass"]
            )
            for name, lb in u["labels"].items():
                entry["labels"][name]["ab_base"] = lb["ab"]
                entry["labels"][name]["max_abs_ab_base"] = lb["max_abs_ab"]
    out["size"] = {
        "target": result.target_size,
        "expected": result.size,
        "eligible": result.n_eligible,
    }
    out["entropy"] = dict(result.entropy)
    if result.base is not None:
        out["entropy"]["base"] = result.base["entropy"]
    out["solver"] = {
        "passes": result.passes,
        "rounds": result.rounds,
        "seconds": result.seconds,
        "infeasible_constraints": result.infeasible[:100],
    }
    return out


def score_moment_batch(
    moments: dict[str, Any], batch: pa.RecordBatch | pa.Table, matched: np.ndarray
) -> np.ndarray:
    """q of pool rows from the broadcast M4 parameters (``ScoreParams.moments``); 0 on rows
    that are not eligible (``matched`` False)."""
    layout = MomentLayout.from_dict(moments["layout"])
    mu, nu = np.asarray(moments["mu"], dtype=np.float64), float(moments["nu"])
    utility = moments.get("utility_col") or None
    block = block_from_arrow(with_multiplicity(batch), layout, utility, base=base_params(moments))
    q = row_q(block, mu, nu)
    return np.where(matched, q, 0.0)


_BASES: dict[int, tuple[Any, ScoreParams]] = {}


def base_params(moments: dict[str, Any]) -> ScoreParams | None:
    """The base method's parameters (rake with attributes), parsed once per broadcast dict."""
    raw = moments.get("base")
    if raw is None:
        return None
    hit = _BASES.get(id(raw))
    if hit is None or hit[0] is not raw:
        _BASES.clear()
        hit = (raw, ScoreParams.from_dict(raw))
        _BASES[id(raw)] = hit
    return hit[1]


def with_multiplicity(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if "multiplicity" in table.column_names:
        return table
    return table.append_column("multiplicity", pa.array(np.ones(table.num_rows, np.int64)))
