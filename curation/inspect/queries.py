"""The questions ``curate inspect`` answers, as Polars lazy queries over a run's committed outputs.

Every answer is an :class:`Answer`: a few facts (name → value) and one table. Definitions
(c_j = count, τ_j = target, n_j = expected count after balancing, all from the balance stage's
``entry_factors.parquet``; the selected set from the select stage's ``selected/``):

* :func:`entries` — per entry: c_j, the cap t, τ_j, n_j, the factor (p_j, a_j or λ_j), the
  expected share kept n_j / c_j, the selected samples holding j (rows of ``selected/``) and their
  repeats, and the residual n_j / τ_j − 1 (rake's own residual when the file has it).
* :func:`captions` — captions matched to one entry, with each one's π, weight, repeats and
  whether it was selected: a sample of ``limit`` rows drawn by Polars' seeded ``sample`` from the
  candidates in uid order, so the same run, entry, flags and seed give the same rows.
* :func:`sample` — why one sample got its π: its entries with their counts and factors, its
  margins and other columns, π and weight recomputed from ``params.json`` with the function the
  balance and select stages use, the hashed uniform u = hash(uid, seed) and the decision.
* :func:`compare` — two runs: per entry the expected share s_j = n_j / Σ_k n_k in each and
  Δs_j = s_j(B) − s_j(A), the entries with the largest |Δs_j| first; facts: expected size Σπ,
  selected size, entropy −Σ s_j ln s_j (nats) and tail share Σ_{j: c_j ≤ t} s_j of each run.

Large folders (the matched pool, the selection) are read with projection and predicate pushdown
on Polars' streaming engine, so memory stays bounded on a large run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curation.balancing.params import score_arrow
from curation.inspect.outputs import RunLayoutError, RunOutputs
from curation.selection import draw_repeats, hash_uniform

ENTRY_COLUMNS = (
    "entry_id",
    "entry",
    "count",
    "cap",
    "target",
    "expected",
    "factor",
    "share_kept",
    "selected",
    "selected_repeats",
    "residual",
)
# Pool columns shown as a sample's text, not as its margins or attributes.
_ROLE_COLUMNS = ("uid", "url", "caption", "entry_ids")


@dataclass
class Answer:
    """What one ``curate inspect`` question returns: facts and a table."""

    title: str
    table: pl.DataFrame
    facts: dict[str, Any] = field(default_factory=dict)


def _collect(lf: pl.LazyFrame) -> pl.DataFrame:
    return lf.collect(engine="streaming")


def _selected_per_entry(out: RunOutputs) -> pl.LazyFrame:
    """entry_id, selected (rows of ``selected/`` holding it), selected_repeats (Σ repeats)."""
    sel = out.selection().select("entry_ids", "repeats")
    unmatched = out.params.unmatched_id
    if unmatched is not None:  # the <unmatched> pseudo-entry holds the empty rows
        sel = sel.with_columns(
            pl.when(pl.col("entry_ids").list.len() == 0)
            .then(pl.lit([unmatched], dtype=pl.List(pl.Int32)))
            .otherwise(pl.col("entry_ids"))
            .alias("entry_ids")
        )
    return (
        sel.explode("entry_ids")
        .drop_nulls("entry_ids")
        .group_by(pl.col("entry_ids").cast(pl.Int32).alias("entry_id"))
        .agg(pl.len().cast(pl.Int64).alias("selected"), pl.col("repeats").sum().cast(pl.Int64))
        .rename({"repeats": "selected_repeats"})
    )


def entries(
    out: RunOutputs,
    match: str = "",
    sort: str = "count",
    descending: bool = True,
    top: int = 20,
) -> Answer:
    """Per-entry before/after table (module docstring), filtered by the regex ``match`` on the
    entry text, sorted by ``sort``, first ``top`` rows (0: all)."""
    if sort not in ENTRY_COLUMNS:
        raise ValueError(f"--sort {sort!r}: sort by one of {', '.join(ENTRY_COLUMNS)}")
    ef = out.entry_factors()
    names = ef.collect_schema().names()
    residual = (
        pl.col("residual")
        if "residual" in names
        else (pl.col("expected") / pl.col("target") - 1.0).fill_nan(0.0)
    )
    lf = ef.with_columns(
        pl.lit(out.cap, dtype=pl.Float64).alias("cap"),
        (pl.col("expected") / pl.col("count")).alias("share_kept"),
        residual.alias("residual"),
    )
    if match:
        lf = lf.filter(pl.col("entry").str.contains(match))
    if out.selected is not None:
        lf = lf.join(_selected_per_entry(out), on="entry_id", how="left").with_columns(
            pl.col("selected", "selected_repeats").fill_null(0)
        )
    else:
        lf = lf.with_columns(
            pl.lit(None, dtype=pl.Int64).alias(c) for c in ("selected", "selected_repeats")
        )
    lf = lf.select(ENTRY_COLUMNS).sort(sort, descending=descending, nulls_last=True)
    if top:
        lf = lf.head(top)
    table = _collect(lf)
    facts = {
        "run": out.run,
        "balance": out.need("balance").name,
        "method": out.params.method,
        "cap_t": out.cap,
        "rows": table.height,
    }
    return Answer("entries", table, facts)


def entry_id_of(out: RunOutputs, text: str) -> int:
    """The id of the entry whose text is ``text`` (exact), or an error naming near misses."""
    ef = out.entry_factors().select("entry_id", "entry")
    hit = _collect(ef.filter(pl.col("entry") == text))
    if hit.height:
        return int(hit["entry_id"][0])
    near = _collect(ef.filter(pl.col("entry").str.to_lowercase() == text.lower()).head(5))
    hint = f"; did you mean {', '.join(repr(e) for e in near['entry'])}?" if near.height else ""
    raise ValueError(f"--entry {text!r}: no such entry in the run's metadata list{hint}")


def _with_selection(
    out: RunOutputs, rows: pl.LazyFrame, which_needs_selection: bool
) -> pl.LazyFrame:
    """``rows`` with ``repeats`` (0 when not selected) and ``selected`` from ``selected/``."""
    if out.selected is None:
        if which_needs_selection:
            out.need("selected")
        return rows.with_columns(
            pl.lit(None, dtype=pl.Int32).alias("repeats"),
            pl.lit(None, dtype=pl.Boolean).alias("selected"),
        )
    sel = out.selection().select("uid", "repeats")
    return rows.join(sel, on="uid", how="left").with_columns(
        pl.col("repeats").fill_null(0), pl.col("repeats").is_not_null().alias("selected")
    )


def _score(out: RunOutputs, table: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(weight, π) of pool rows, from ``params.json`` (as the balance and select stages do)."""
    params = out.params
    arrow = table.select("entry_ids", *params.margin_values).to_arrow()
    return score_arrow(params, arrow)


def captions(
    out: RunOutputs,
    entry: str,
    which: str = "all",
    limit: int = 10,
    seed: int = 0,
) -> Answer:
    """A reproducible sample of captions matched to ``entry`` (``which``: all, selected or
    dropped); see the module docstring."""
    if which not in ("all", "selected", "dropped"):
        raise ValueError(f"which={which!r}: all, selected or dropped")
    j = entry_id_of(out, entry)
    margins = list(out.params.margin_values)
    # Two passes, so that memory holds the candidates' uids, not their captions: draw the
    # sample from (uid, selected) of every candidate, then read the drawn rows.
    uids = out.pool().filter(pl.col("entry_ids").list.contains(j)).select("uid")
    uids = _with_selection(out, uids, which != "all")
    if which != "all":
        uids = uids.filter(pl.col("selected") == (which == "selected"))
    candidates = _collect(uids.sort("uid"))
    drawn = candidates.sample(n=min(limit, candidates.height), seed=seed)
    rows = _collect(
        out.pool()
        .filter(pl.col("uid").is_in(drawn["uid"].implode()))
        .select("uid", "caption", "entry_ids", *margins)
    )
    picked = drawn.join(rows, on="uid", how="left").sort("uid")
    weight, pi = _score(out, picked)
    table = picked.select(
        "uid",
        "caption",
        pl.Series("pi", pi, dtype=pl.Float64),
        pl.Series("weight", weight, dtype=pl.Float64),
        "repeats",
        "selected",
    )
    facts = {
        "entry": entry,
        "entry_id": j,
        "which": which,
        "candidates": candidates.height,
        "shown": table.height,
        "seed": seed,
    }
    return Answer("captions", table, facts)


def _find_row(out: RunOutputs, uid: str) -> pl.DataFrame:
    row = _collect(out.pool().filter(pl.col("uid") == uid))
    if row.height:
        return row
    try:
        rejected = _collect(out.rejects().filter(pl.col("uid") == uid).select("reason"))
    except (pl.exceptions.PolarsError, OSError):
        rejected = pl.DataFrame()
    if rejected.height:
        raise ValueError(
            f"--uid {uid}: rejected by match ({rejected['reason'][0]}), so it has no π; see "
            f"{out.need('matched').url}/rejects"
        )
    raise ValueError(f"--uid {uid}: not in the matched pool of {out.run}")


def _select_config(out: RunOutputs) -> dict[str, Any]:
    return (out.selected.manifest.get("config") or {}) if out.selected is not None else {}


def _decision(out: RunOutputs, uid: str, pi: float, weight: float) -> dict[str, Any]:
    """The select stage's draw for one sample, recomputed: u, the rule and the repeats."""
    config = _select_config(out)
    seed = int(config.get("seed", 0))
    u = float(hash_uniform([uid], seed)[0])
    if config.get("all_eligible"):
        rule, repeats = "all eligible: keep iff π > 0", int(pi > 0)
    elif config.get("with_replacement"):
        e = float(out.params.repeat_scale or 0.0) * weight
        rule = f"repeats = floor(e) + [u < frac(e)], e = {e:.6g}"
        repeats = int(draw_repeats(np.array([u]), np.array([e]))[0])
    else:
        rule, repeats = "keep iff u < π", int(u < pi)
    return {"seed": seed, "u": u, "rule": rule, "drawn_repeats": repeats}


def sample(out: RunOutputs, uid: str) -> Answer:
    """Why sample ``uid`` got its π (module docstring)."""
    row = _find_row(out, uid)
    params = out.params
    weight, pi = _score(out, row)
    ids = [int(i) for i in row["entry_ids"][0]]
    if not ids and params.unmatched_id is not None:
        ids = [params.unmatched_id]
    ef = out.entry_factors().filter(pl.col("entry_id").is_in(ids))
    table = _collect(
        ef.select("entry_id", "entry", "count", "target", "factor", "expected").sort("entry_id")
    )
    record = row.row(0, named=True)
    facts: dict[str, Any] = {"uid": uid}
    facts.update({c: record[c] for c in ("caption", "url") if c in record})
    facts["entries"] = len(row["entry_ids"][0])
    for col, levels in params.margin_levels.items():
        value = record.get(col)
        code = levels.index(value) if value in levels else None
        factor = None if code is None else float(params.margin_values[col][code])
        facts[f"margin {col}"] = f"{value} (factor {factor})" if code is not None else value
    for col, value in record.items():
        if col not in _ROLE_COLUMNS and col not in params.margin_levels:
            facts[f"attribute {col}"] = value
    facts.update(_pi_explained(out, ids))
    facts.update({"method": params.method, "pi": float(pi[0]), "weight": float(weight[0])})
    facts.update(_decision(out, uid, float(pi[0]), float(weight[0])))
    if out.selected is not None:
        hit = _collect(out.selection().filter(pl.col("uid") == uid).select("repeats"))
        facts["selected"] = bool(hit.height)
        facts["selected_repeats"] = int(hit["repeats"][0]) if hit.height else 0
    return Answer("sample", table, facts)


def _pi_explained(out: RunOutputs, ids: list[int]) -> dict[str, Any]:
    """The method's intermediate quantity for one sample (module docstring of ``params``)."""
    params = out.params
    values = params.entry_values[ids] if ids else np.zeros(0)
    if params.method == "metaclip":
        return {"formula": "π = 1 − Π_j (1 − p_j)"}
    if params.method == "rake":
        return {
            "formula": "π = min(1, exp(Σ_j λ_j + Σ μ_x + ν))",
            "sum_lambda": float(values.sum()),
            "offset_nu": float(params.offset),
        }
    return {
        "formula": "π = min(1, s · Π b_x · mean_j a_j)",
        "mean_a": float(values.mean()) if ids else 0.0,
        "prob_scale_s": float(params.prob_scale),
    }


def _shares(out: RunOutputs) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Per-entry expected share of one run, and its size, entropy and tail share."""
    ef = _collect(out.entry_factors().select("entry_id", "entry", "count", "expected"))
    total = float(ef["expected"].sum())
    shares = ef.with_columns((pl.col("expected") / total).alias("share"))
    s = shares["share"].to_numpy()
    entropy = float(-np.sum(s[s > 0] * np.log(s[s > 0])))
    t = out.cap
    tail = float(shares.filter(pl.col("count") <= t)["share"].sum()) if t is not None else math.nan
    selected = out.summary("selected").get("selected") if out.selected is not None else None
    balance = out.summary("balance")
    facts = {
        "expected_size": balance.get("expected_size"),
        "selected": selected,
        "entropy_nats": entropy,
        "tail_share": tail,
    }
    return shares, facts


def compare(a: RunOutputs, b: RunOutputs, top: int = 20) -> Answer:
    """Entries whose expected share changed most from run ``a`` to run ``b`` (module docstring)."""
    shares_a, facts_a = _shares(a)
    shares_b, facts_b = _shares(b)
    if shares_a.height != shares_b.height or not shares_a["entry"].equals(shares_b["entry"]):
        raise RunLayoutError(
            f"{a.run} and {b.run} were balanced over different metadata lists: their entries "
            "cannot be compared"
        )
    table = (
        shares_a.select(
            "entry_id",
            "entry",
            pl.col("expected").alias("expected_a"),
            pl.col("share").alias("share_a"),
        )
        .join(
            shares_b.select(
                "entry_id", pl.col("expected").alias("expected_b"), pl.col("share").alias("share_b")
            ),
            on="entry_id",
        )
        .with_columns((pl.col("share_b") - pl.col("share_a")).alias("delta_share"))
        .sort(pl.col("delta_share").abs(), "entry_id", descending=[True, False])
    )
    if top:
        table = table.head(top)
    facts: dict[str, Any] = {"run_a": a.run, "run_b": b.run}
    for key in facts_a:
        va, vb = facts_a[key], facts_b[key]
        facts[f"{key}_a"], facts[f"{key}_b"] = va, vb
        facts[f"{key}_delta"] = None if va is None or vb is None else vb - va
    return Answer("compare", table, facts)
