"""``balance --method m4``: moment matching (:mod:`curation.balancing.m4`) run for the balance stage.

Reads the count stage's signature table with its attribute columns (or, with ``--utility-col``,
the matched pool grouped by (entry ids, groups, labels, utility)), keeps the matched rows,
solves M4 on the driver or on Spark, and writes the usual balance outputs plus ``bias.json``.
Scoring: π_i = clip(u_i − ν − b_i·μ, 0, 1) from the row's attribute columns
(``ScoreParams.moments``), 0 for unmatched rows; weight_i = π_i · n_eligible / Σπ (mean 1).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from curation import storage
from curation.attributes import (
    ATTRIBUTES_FILE,
    GROUPS_COL,
    LABELS_COL,
    AttributeSpec,
    load_spec,
    resolve_entry_labels,
)
from curation.balancing import BalanceResult, ScoreParams, SignatureTable, diagnostics
from curation.balancing.distributed import choose_execution, signature_table_size
from curation.balancing.joint import (
    KEEP_PRICE,
    JointProblem,
    JointResult,
    MemoryJointOperator,
    joint_block_from_arrow,
    joint_solve,
)
from curation.balancing.m4 import (
    M4Result,
    MemoryMomentOperator,
    MomentLayout,
    block_from_arrow,
    m4_solve,
)
from curation.balancing.params import history_table as params_history_table

log = logging.getLogger(__name__)

#: What must agree between the attribute file given to balance and the one the pool was matched
#: with (the ids of groups and labels); targets, ε and min_label_count may differ.
_IDENTITY_KEYS = ("groups", "labels", "casefold")


def m4_spec(config: Any) -> AttributeSpec:
    """The attribute spec: ``--attributes FILE`` checked against the matched one, or the one
    the pool was matched with; labels from metadata entries resolved from the entry counts."""
    matched_file = storage.join(config.counts, ATTRIBUTES_FILE)
    if not storage.exists(matched_file):
        raise storage.StageInputError(
            f"{config.counts}: the pool was not matched with an attribute file; rerun match with "
            "--attributes FILE, then count"
        )
    matched = storage.read_json(matched_file)
    if not config.attributes:
        spec = AttributeSpec.from_dict(matched)
    else:
        spec = load_spec(config.attributes)
        _check_identity(spec, matched, config.attributes)
    return _with_entry_labels(spec, config.counts)


def _with_entry_labels(spec: AttributeSpec, counts_dir: str) -> AttributeSpec:
    """``labels: {entries: {min_count: N}}`` resolved from ``entry_counts.parquet`` (labels are
    entries, so they need no match: the signature table's entry ids hold them)."""
    if not spec.entry_labels:
        return spec
    fs, path = storage.url_to_fs(storage.join(counts_dir, "entry_counts.parquet"))
    with fs.open(path, "rb") as f:
        counts = pq.read_table(f, columns=["entry", "count"])
    resolved = resolve_entry_labels(
        spec, counts.column("entry").to_pylist(), counts.column("count").to_numpy()
    )
    log.info(
        "balance: %d metadata entries with at least %d matches are the labels (%d left out: "
        "they hold a group keyword)",
        len(resolved.labels),
        spec.label_min_count,
        len(resolved.excluded_label_entries),
    )
    return resolved


def _check_identity(spec: AttributeSpec, matched: dict[str, Any], source: str) -> None:
    """Groups (and keyword labels) must be the ones the pool was matched with."""
    given = spec.to_dict()
    keys = [k for k in _IDENTITY_KEYS if not (k == "labels" and spec.entry_labels)]
    for key in keys:
        keywords_match = all(
            given["attributes"].get(n, {}).get("groups") == a["groups"]
            for n, a in matched["attributes"].items()
        )
        if given[key] != matched[key] or not keywords_match:
            raise storage.StageInputError(
                f"{source}: its {key if keywords_match else 'keywords'} differ from "
                f"the attribute file the pool was matched with ({matched.get('source')}); "
                "targets, epsilon and min_label_count may change at balance (and labels from "
                "entries), groups and keyword labels need a new match"
            )


def m4_frame(spark: SparkSession, config: Any, margins: list[str] = ()) -> DataFrame:
    """Matched rows: (entry_ids[, margins], groups, labels[, utility], multiplicity)."""
    keys = ["entry_ids", *margins, GROUPS_COL, LABELS_COL]
    if config.utility_col:
        df = spark.read.parquet(storage.spark_url(storage.join(config.input, "pool")))
        if config.utility_col not in df.columns:
            raise storage.StageInputError(
                f"{config.input}: the utility column {config.utility_col!r} is not in the "
                f"matched pool; columns are {df.columns}"
            )
        df = df.select(*keys, F.col(config.utility_col).cast("double").alias(config.utility_col))
        keys.append(config.utility_col)
        df = df.withColumn("multiplicity", F.lit(1).cast("long"))
    else:
        df = spark.read.parquet(storage.spark_url(storage.join(config.counts, "signatures")))
        if GROUPS_COL not in df.columns:
            raise storage.StageInputError(
                f"{config.counts}: the signature table has no attribute columns; rerun count on a "
                "pool matched with --attributes"
            )
    df = df.filter(F.size("entry_ids") > 0)
    return df.groupBy(*keys).agg(F.sum("multiplicity").alias("multiplicity"))


def solve_m4(
    spark: SparkSession,
    config: Any,
    spec: AttributeSpec,
    target_size: float | None,
    n_entries: int,
    base: ScoreParams | None = None,
) -> tuple[M4Result, SignatureTable | None, np.ndarray | None, str]:
    """(result, signature table and per-row π on the driver path, execution). With ``base``
    (rake with attributes) the utility is the base method's π and N its size."""
    margins = list(base.margin_values) if base is not None else []
    frame = m4_frame(spark, config, margins)
    execution = config.execution
    if execution == "auto":
        execution = choose_execution(*signature_table_size(frame), config.max_driver_nnz)
    layout = MomentLayout.of(spec)
    utility = config.utility_col or None
    kw = {"tol": config.tol or 1e-9, "max_passes": config.max_iter or 2000}
    if execution == "driver":
        keys = ["entry_ids", *margins, GROUPS_COL, LABELS_COL] + ([utility] if utility else [])
        arrow = frame.orderBy(*keys).toArrow()
        op = MemoryMomentOperator([block_from_arrow(arrow, layout, utility, base=base)])
        result = m4_solve(op, spec, target_size, **kw)
        table = SignatureTable.from_arrow(
            arrow.select(["entry_ids", *margins, "multiplicity"]), n_entries, margins
        )
        return result, table, op.row_q(result.mu, result.nu), "driver"
    from curation.balancing.m4_spark import SparkMomentOperator

    op = SparkMomentOperator(spark, frame, layout, utility, base=base)
    try:
        result = m4_solve(op, spec, target_size, **kw)
    finally:
        op.unpersist()
    return result, None, None, "spark"


def solve_joint(
    spark: SparkSession,
    config: Any,
    spec: AttributeSpec,
    base: BalanceResult,
    n_entries: int,
) -> tuple[JointResult, SignatureTable | None, np.ndarray | None, str]:
    """Rake with attributes as one problem (:mod:`.joint`), from rake's solution ``base``:
    (result, signature table and per-row π on the driver path, execution)."""
    margins = list(base.params.margin_values)
    frame = m4_frame(spark, config, margins)
    execution = config.execution
    if execution == "auto":
        execution = choose_execution(*signature_table_size(frame), config.max_driver_nnz)
    layout = MomentLayout.of(spec)
    tau = np.concatenate(
        [np.asarray(base.targets, np.float64)]
        + [np.asarray(base.margin_targets[c], np.float64) for c in margins]
    )
    size = float(base.info.get("target_size") or base.info["expected_size"])
    prob = JointProblem.of(
        base.params, tau, size, tol=config.tol or 1e-3, max_passes=config.max_iter or 2000
    )
    if execution == "driver":
        keys = ["entry_ids", *margins, GROUPS_COL, LABELS_COL]
        arrow = frame.orderBy(*keys).toArrow()
        op = MemoryJointOperator([joint_block_from_arrow(arrow, layout, base.params)])
        result = joint_solve(op, spec, prob)
        table = SignatureTable.from_arrow(
            arrow.select(["entry_ids", *margins, "multiplicity"]), n_entries, margins
        )
        return result, table, op.row_pi(result.columns, result.nu, result.mu), "driver"
    from curation.balancing.m4_spark import SparkJointOperator

    op = SparkJointOperator(spark, frame, layout, base.params)
    try:
        result = joint_solve(op, spec, prob)
    finally:
        op.unpersist()
    return result, None, None, "spark"


def joint_base(result: JointResult, base: ScoreParams) -> ScoreParams:
    """Rake's parameters with the joint solve's λ (the size shift is the joint ν)."""
    lam = np.asarray(result.columns, dtype=np.float64)
    m = base.n_entries
    margin_values, o = {}, m
    for col, values in base.margin_values.items():
        margin_values[col] = lam[o : o + len(values)]
        o += len(values)
    return base.replace(entry_values=lam[:m], margin_values=margin_values, offset=0.0)


def m4_params(
    result: M4Result,
    spec: AttributeSpec,
    n_entries: int,
    utility: str,
    base: ScoreParams | None = None,
) -> ScoreParams:
    """The broadcastable parameters (weights scaled to mean 1 over the eligible samples). A
    joint rake-with-attributes result is scored as π = min(1, e^{η_rake + ν − b·μ}) on rake's
    raked rows (``moments.link = "joint"``), else π = clip(u − ν − b·μ, 0, 1)."""
    moments = {
        "layout": MomentLayout.of(spec).to_dict(),
        "mu": result.mu.tolist(),
        "nu": result.nu,
        "utility_col": utility,
    }
    if isinstance(result, JointResult) and base is not None:
        base = joint_base(result, base)
        moments["link"] = "joint"
        moments["keep_price"] = KEEP_PRICE
    if base is not None:
        moments["base"] = base.to_dict()
    return ScoreParams(
        method="m4",
        n_entries=n_entries,
        entry_values=np.zeros(n_entries),
        weight_scale=result.n_eligible / result.size if result.size > 0 else 1.0,
        moments=moments,
        meta={
            "status": result.status,
            "target_size": result.target_size,
            "base_method": base.method if base is not None else None,
        },
    )


def m4_info(result: M4Result, execution: str) -> dict[str, Any]:
    joint = {"entries": result.entries} if isinstance(result, JointResult) else {}
    return joint | {
        "status": result.status,
        "target_size": result.target_size,
        "expected_size": result.size,
        "size_rel_err": abs(result.size - result.target_size) / result.target_size,
        "passes": result.passes,
        "rounds": result.rounds,
        "seconds": result.seconds,
        "constraints": len(result.constraints),
        "n_infeasible_constraints": len(result.infeasible),
        "execution": {"path": execution, "passes": result.passes},
    }


def m4_balance_result(
    params: ScoreParams,
    result: M4Result,
    table: SignatureTable | None,
    pi: np.ndarray | None,
    base: BalanceResult | None = None,
) -> BalanceResult | None:
    """A :class:`BalanceResult` over the signature table (driver path), for the diagnostics:
    the entry targets are the base method's (rake with attributes), else the counts scaled to
    the size."""
    if table is None or pi is None:
        return None
    counts = table.entry_counts()
    if base is not None:
        targets = np.asarray(base.targets, dtype=np.float64)[: counts.size]
    else:
        targets = counts.astype(np.float64) * (result.size / max(result.n_eligible, 1.0))
    return BalanceResult(
        params=params,
        weight=params.weight_scale * pi,
        pi=pi,
        counts=counts,
        targets=targets,
        history=[
            {"iter": h["iter"], "max_rel_err": h["max_violation"], "l1": h["size_rel_err"]}
            for h in result.history
        ],
        info={"status": result.status, "t": None},
    )


def m4_diagnostics(
    params: ScoreParams,
    result: M4Result,
    table: SignatureTable | None,
    pi: np.ndarray | None,
    execution: str,
    base: BalanceResult | None = None,
) -> tuple[dict[str, Any], np.ndarray | None, BalanceResult | None]:
    """diagnostics.json (the entry-level diagnostics on the driver path) and n_j(π)."""
    br = m4_balance_result(params, result, table, pi, base)
    info = m4_info(result, execution)
    if br is None:
        return {"info": info, "entry_diagnostics": "not computed on the Spark path"}, None, None
    br.info.update(info)
    diag = diagnostics(table, br)
    return diag, table.entry_sums(table.multiplicity * pi), br


def history_table(result: M4Result) -> pa.Table:
    """history.parquet: per pass, the largest constraint violation and the size error."""
    return params_history_table(
        [
            {"iter": h["iter"], "max_rel_err": h["max_violation"], "l1": h["size_rel_err"]}
            for h in result.history
        ]
    )


def describe_bias(bias: dict[str, Any]) -> list[str]:
    """Lines for the stage's description: RB and AB before/after per attribute."""
    lines = []
    for name, a in bias["attributes"].items():
        lines.append(
            f"  {name}: RB {a['rb_before']:.4f} -> {a['rb_after']:.4f} ({a['rb_status']}), "
            f"AB {a['ab_before']:.4f} -> {a['ab_after']:.4f} ({a['ab_status']})"
        )
    return lines


def describe_m4(result: Any) -> str:
    """The stage's printed description of an m4 run (from its summary)."""
    s = result.summary
    e = s["entropy"]
    lines = [
        f"balance: method {s['method']}"
        + (" with attributes" if s["method"] != "m4" else "")
        + f", status {s['status']}"
        + (" (up to date, skipped)" if result.skipped else ""),
        f"  expected size   {s['expected_size']:,.1f} (target {s['target_size']:,.1f})",
        f"  entropy (nats)  {e['before']:.4f} -> {e['after']:.4f}, Kish ESS {e['kish_ess']:,.0f}",
    ]
    for name, a in s["bias"].items():
        lines.append(
            f"  {name}: RB {a['rb_before']:.4f} -> {a['rb_after']:.4f} ({a['rb_status']}), "
            f"AB {a['ab_before']:.4f} -> {a['ab_after']:.4f} ({a['ab_status']})"
        )
    lines.append(f"  output          {result.output}")
    return "\n".join(lines)
