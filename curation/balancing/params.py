"""Per-sample scoring from small broadcastable parameter vectors.

Every method's result is a :class:`ScoreParams`: one float vector over entries, one float vector
per margin column (over its levels) and a few scalars. :func:`score_batch` turns it into each
row's weight w_i and inclusion probability π_i from the row's entry ids (CSR) and margin codes.
The same function scores the distinct-signature table on the driver and the pool's Arrow batches
on the executors (Spark ``mapInArrow``), so the two can never disagree and no join is needed.

Per method (``S_i`` = entry ids of row i, ``x(i)`` = its margin levels):

* ``metaclip`` (Xu et al. 2023, "Demystifying CLIP Data"): ``entry_values = p`` with
  p_j = min(1, t/c_j); raw_i = π_i = 1 − Π_{j∈S_i}(1 − p_j), computed as
  −expm1(Σ_j log1p(−p_j)) (exactly 1 when some p_j = 1, exactly 0 for an empty row).
* ``balance`` (Liu et al. 2024, "The Benefits of Balance"): ``entry_values = a`` (entry factors),
  ``margin_values[col] = b`` (level factors); raw_i = Π_cols b_{x(i)} · (Σ_{j∈S_i} a_j) / k_i,
  which is n_matched · Σ_j P(i, j) for the balanced pair table P; π_i = min(1, prob_scale · raw_i).
* ``rake`` (capped raking; Darroch & Ratcliff 1972, Deville & Särndal 1992):
  ``entry_values = λ``, ``margin_values[col] = μ`` (log factors);
  η_i = Σ_{j∈S_i} λ_j + Σ_cols μ_{x(i)}; π_i = raw_i = exp(min(η_i, 0)) = min(1, e^{η_i}).
  With ``capped=False`` (raking without the bound π ≤ 1, used for sampling with replacement)
  raw_i = e^{η_i} and π_i = min(1, raw_i).

For all methods ``weight_i = weight_scale · raw_i`` (scaled on the driver to mean 1 over the
eligible samples) and, with replacement, ``expected_repeats_i = repeat_scale · weight_i``.

Unmatched rows (k_i = 0) get raw_i = 0 (so π_i = 0, w_i = 0), unless ``keep_unmatched``: then
they are scored as if they held the single pseudo-entry ``<unmatched>`` whose id is
``n_entries`` (so entry vectors then have length ``n_entries + 1``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .signatures import add_unmatched_entry, encode_margin, list_array_to_csr

Method = Literal["metaclip", "balance", "rake", "m4"]
METHODS: tuple[str, ...] = ("metaclip", "balance", "rake", "m4")


@dataclass(frozen=True, eq=False)
class ScoreParams:
    """The broadcastable result of a balancing run (see the module docstring for the formulas).

    Attributes:
        method: ``"metaclip"``, ``"balance"`` or ``"rake"``.
        n_entries: m, the number of real metadata entries.
        entry_values: ``float64[m]`` or ``float64[m+1]`` with ``keep_unmatched`` (index m =
            ``<unmatched>``): p_j (metaclip), a_j (balance) or λ_j (rake).
        margin_values: per margin column, ``float64[L]`` over its levels: b_x (balance) or μ_x
            (rake). Empty for metaclip.
        margin_levels: per margin column, level names (position = code), to encode pool values.
        keep_unmatched: score empty rows as holding the pseudo-entry with id ``n_entries``.
        weight_scale: weight_i = weight_scale · raw_i.
        prob_scale: balance only: π_i = min(1, prob_scale · raw_i).
        repeat_scale: with replacement: expected repeats = repeat_scale · weight_i (else None).
        capped: rake only; False = raking without the π ≤ 1 bound.
        offset: rake only: ν added to every row's η (meets the target size exactly).
        moments: m4 only: the layout of the base features, μ, ν and the utility column
            (:mod:`.m4`; π_i = clip(u_i − ν − b_i·μ, 0, 1) from the row's attribute groups
            and labels); ``entry_values`` is then all zeros.
        meta: free-form JSON-serialisable facts (cap t, status, ...), not used for scoring.
    """

    method: str
    n_entries: int
    entry_values: np.ndarray
    margin_values: Mapping[str, np.ndarray] = field(default_factory=dict)
    margin_levels: Mapping[str, list[str]] = field(default_factory=dict)
    keep_unmatched: bool = False
    weight_scale: float = 1.0
    prob_scale: float = 1.0
    repeat_scale: float | None = None
    capped: bool = True
    offset: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)
    moments: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}")
        ev = np.ascontiguousarray(self.entry_values, dtype=np.float64)
        want = self.n_entries + (1 if self.keep_unmatched else 0)
        if ev.shape != (want,):
            raise ValueError(f"entry_values must have length {want}, got {ev.shape}")
        object.__setattr__(self, "entry_values", ev)
        mv = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in self.margin_values.items()}
        if set(mv) != set(self.margin_levels):
            raise ValueError("margin_values and margin_levels must name the same columns")
        for k, v in mv.items():
            if v.shape != (len(self.margin_levels[k]),):
                raise ValueError(f"margin {k!r}: one value per level expected")
        object.__setattr__(self, "margin_values", mv)
        object.__setattr__(
            self, "margin_levels", {k: list(v) for k, v in self.margin_levels.items()}
        )

    @property
    def unmatched_id(self) -> int | None:
        """Id of the ``<unmatched>`` pseudo-entry (``n_entries``), or None."""
        return self.n_entries if self.keep_unmatched else None

    def score_columns(self) -> list[str]:
        """The pool columns :func:`score_arrow` reads."""
        cols = ["entry_ids", *self.margin_values]
        if self.moments is not None:
            from curation.attributes import GROUPS_COL, LABELS_COL

            cols += [GROUPS_COL, LABELS_COL]
            cols += [c for c in (self.moments.get("base") or {}).get("margin_values", {})]
            if self.moments.get("utility_col"):
                cols.append(self.moments["utility_col"])
        return cols

    def replace(self, **changes: Any) -> ScoreParams:
        """A copy with some fields changed."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d.update(changes)
        return ScoreParams(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (floats round-trip exactly through ``json``)."""
        return (
            {
                "method": self.method,
                "n_entries": self.n_entries,
                "entry_values": self.entry_values.tolist(),
                "margin_values": {k: v.tolist() for k, v in self.margin_values.items()},
                "margin_levels": {k: list(v) for k, v in self.margin_levels.items()},
                "keep_unmatched": self.keep_unmatched,
                "weight_scale": self.weight_scale,
                "prob_scale": self.prob_scale,
                "repeat_scale": self.repeat_scale,
                "capped": self.capped,
                "meta": _jsonable(self.meta),
            }
            | ({"offset": self.offset} if self.offset else {})
            | ({"moments": _jsonable(self.moments)} if self.moments is not None else {})
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreParams:
        return cls(
            method=d["method"],
            n_entries=int(d["n_entries"]),
            entry_values=np.asarray(d["entry_values"], dtype=np.float64),
            margin_values={k: np.asarray(v, np.float64) for k, v in d["margin_values"].items()},
            margin_levels=dict(d["margin_levels"]),
            keep_unmatched=bool(d["keep_unmatched"]),
            weight_scale=float(d["weight_scale"]),
            prob_scale=float(d["prob_scale"]),
            repeat_scale=None if d.get("repeat_scale") is None else float(d["repeat_scale"]),
            capped=bool(d.get("capped", True)),
            offset=float(d.get("offset", 0.0)),
            meta=dict(d.get("meta", {})),
            moments=d.get("moments"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=True)

    @classmethod
    def from_json(cls, s: str) -> ScoreParams:
        return cls.from_dict(json.loads(s))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def segment_sum(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Σ of ``values[indptr[r]:indptr[r+1]]`` for each row r (0 for empty rows), vectorised.

    Uses ``np.add.reduceat`` over the non-empty rows only (it mishandles empty segments).
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    n = indptr.shape[0] - 1
    out = np.zeros(n, dtype=np.float64)
    nonempty = indptr[1:] > indptr[:-1]
    if nonempty.any():
        vals = np.asarray(values, dtype=np.float64)[indptr[0] : indptr[-1]]
        out[nonempty] = np.add.reduceat(vals, indptr[:-1][nonempty] - indptr[0])
    return out


def raw_scores(
    params: ScoreParams,
    indptr: np.ndarray,
    indices: np.ndarray,
    margin_codes: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """raw_i of the module docstring for rows given in CSR form (``float64[n]``)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int32)
    n = indptr.shape[0] - 1
    k = np.diff(indptr)
    matched = k > 0
    if params.keep_unmatched:
        indptr, indices = add_unmatched_entry(indptr, indices, params.n_entries)
        k = np.diff(indptr)
        matched = k > 0
    margin_codes = margin_codes or {}
    missing = set(params.margin_values) - set(margin_codes)
    if missing:
        raise KeyError(f"margin codes missing for {sorted(missing)}")
    ev = params.entry_values
    if params.method == "m4":
        raise ValueError("m4 scores rows from their attribute columns: use score_arrow")
    if params.method == "metaclip":
        with np.errstate(divide="ignore"):
            logq = np.log1p(-ev)  # −inf where p_j = 1
        s = segment_sum(logq[indices], indptr)
        raw = -np.expm1(s)  # −expm1(−inf) = 1 exactly, −expm1(0) = 0 exactly
    elif params.method == "balance":
        kk = np.maximum(k, 1).astype(np.float64)
        raw = segment_sum(ev[indices], indptr) / kk
        for col, b in params.margin_values.items():
            raw *= b[np.asarray(margin_codes[col])]
    else:  # rake
        eta = segment_sum(ev[indices], indptr) + params.offset
        for col, mu in params.margin_values.items():
            eta += mu[np.asarray(margin_codes[col])]
        raw = np.exp(np.minimum(eta, 0.0)) if params.capped else np.exp(np.minimum(eta, 700.0))
    raw = np.where(matched, raw, 0.0)
    assert raw.shape == (n,)
    return raw


def score_rows(
    params: ScoreParams,
    indptr: np.ndarray,
    indices: np.ndarray,
    margin_codes: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw_i, w_i = weight_scale · raw_i, π_i) of each row (all ``float64[n]``).

    π_i = min(1, prob_scale · raw_i) (balance), min(1, raw_i) (uncapped rake), raw_i (otherwise).
    """
    raw = raw_scores(params, indptr, indices, margin_codes)
    weight = params.weight_scale * raw
    if params.method == "balance":
        pi = np.minimum(1.0, params.prob_scale * raw)
    elif params.method == "rake" and not params.capped:
        pi = np.minimum(1.0, raw)
    else:
        pi = raw
    return raw, weight, pi


def score_batch(
    params: ScoreParams,
    indptr: np.ndarray,
    indices: np.ndarray,
    margin_codes: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weight w_i and inclusion probability π_i of each row (both ``float64[n]``).

    ``indptr``/``indices``: the rows' entry ids in CSR form (entry ids < ``params.n_entries``);
    ``margin_codes``: per margin column of ``params``, ``int32`` codes into its levels.
    Formulas: see the module docstring.
    """
    _, weight, pi = score_rows(params, indptr, indices, margin_codes)
    return weight, pi


def expected_repeats(params: ScoreParams, weight: np.ndarray) -> np.ndarray:
    """E[r_i] = repeat_scale · w_i (= N · w_i / Σw) for sampling with replacement."""
    if params.repeat_scale is None:
        raise ValueError("these parameters were not solved for sampling with replacement")
    return params.repeat_scale * np.asarray(weight, dtype=np.float64)


def score_arrow(
    params: ScoreParams, batch: pa.RecordBatch | pa.Table, entry_col: str = "entry_ids"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_batch` on an Arrow batch of pool rows (margin columns given as strings).

    The entry methods only; :func:`curation.balancing.scoring.score_arrow` scores every method
    (m4 rows are scored from their attribute columns)."""
    if params.method == "m4":
        raise ValueError("m4 scores rows from their attribute columns: use scoring.score_arrow")
    indptr, indices = list_array_to_csr(batch.column(entry_col))
    codes = {
        col: encode_margin(batch.column(col), params.margin_levels[col])[0]
        for col in params.margin_values
    }
    return score_batch(params, indptr, indices, codes)


#: ``history.parquet`` of a balance output: per solver iteration, its largest error and its L1 error.
HISTORY_SCHEMA = pa.schema(
    [("iter", pa.int32()), ("max_rel_err", pa.float64()), ("l1", pa.float64())]
)


def history_table(history: Sequence[Mapping[str, Any]]) -> pa.Table:
    """``history.parquet`` (:data:`HISTORY_SCHEMA`) from a solver history's iter, max_rel_err
    and l1."""
    return pa.Table.from_pylist(
        [
            {"iter": int(h["iter"]), "max_rel_err": float(h["max_rel_err"]), "l1": float(h["l1"])}
            for h in history
        ],
        schema=HISTORY_SCHEMA,
    )


@dataclass(eq=False)
class BalanceResult:
    """What a method returns (driver or Spark execution).

    Attributes:
        params: the broadcastable parameters (score any row with :func:`score_batch`).
        weight, pi: per signature of the input table (``float64[s]``), from ``params``; None
            when the table lives on Spark (score the pool with :func:`score_arrow` instead).
        counts: c_j (``int64[m]``, or m+1 with the ``<unmatched>`` pseudo-entry).
        targets: the entry targets the method aimed at, in expected counts (``float64``).
        margin_targets: per margin column, target expected counts per level (or empty).
        history: per iteration ``{"iter", "max_rel_err", "l1"}`` (+ solver fields).
        info: solver facts (status, iterations, cap t, ...), JSON-serialisable.
        residual: rake only, the per-entry relative residual of the solver.
        stats: aggregated statistics for the diagnostics (``operators.AggregateStats``), set by
            the Spark execution (the driver computes them from ``weight`` and ``pi``).
    """

    params: ScoreParams
    weight: np.ndarray | None
    pi: np.ndarray | None
    counts: np.ndarray
    targets: np.ndarray
    margin_targets: dict[str, np.ndarray] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    residual: np.ndarray | None = None  # rake: n_j(π)/τ_j − 1 per entry (0 where τ_j = n_j = 0)
    stats: Any = None  # operators.AggregateStats (Spark execution)

    def entry_table(self, entries: list[str] | None = None) -> pa.Table:
        """Per-entry output: entry_id, (entry), count, target, factor (p_j, a_j or λ_j)."""
        m = self.counts.shape[0]
        cols: dict[str, Any] = {"entry_id": pa.array(np.arange(m, dtype=np.int32))}
        if entries is not None:
            names = list(entries) + (["<unmatched>"] if m == len(entries) + 1 else [])
            cols["entry"] = pa.array(names, type=pa.string())
        cols["count"] = pa.array(self.counts.astype(np.int64))
        cols["target"] = pa.array(self.targets.astype(np.float64))
        cols["factor"] = pa.array(self.params.entry_values[:m])
        if self.residual is not None:
            cols["residual"] = pa.array(self.residual[:m].astype(np.float64))
        return pa.table(cols)
