"""The ``balance`` stage: per-entry factors, per-sample weights and inclusion probabilities.

Reads the ``count`` stage's distinct-signature table, solves one of the methods of
``docs/balancing.md`` (``metaclip``, ``balance``, ``rake``), and scores every sample of the matched pool with the solved parameters.

Output directory (committed atomically)::

    params.json              the solved parameters (ScoreParams: per-entry and per-level vectors
                             and scalars); ``select`` rescores the pool from this file, so weights
                             and decisions always come from the same numbers
    entry_factors.parquet    entry_id, entry, count, target, factor (p_j, a_j or λ_j),
                             expected (n_j(π) after balancing) [, residual (rake)]
    weights/                 Parquet: uid, weight, inclusion_prob [, expected_repeats]
    history.parquet          per iteration: iter, max_rel_err, l1
    diagnostics.json         the diagnostics of the spec (pool, entries before/after, weights,
                             inclusion, convergence, plot data)
    summary.json             method, cap, sizes, solver status, the headline diagnostics

Per-sample scoring runs in ``mapInArrow`` with the parameters broadcast once: no join, and the
score of a row depends only on its own entry ids and margin values, so it is the same on any
partitioning.

The solve runs over the signature table (summed over the margins not balanced), on the driver
or, for a table above ``--max-driver-nnz`` incidences (``--execution auto``), on the executors
(:func:`curation.balancing.run_method_spark`). Either way the solved parameters do not depend on
how Spark partitioned the table: the driver path sorts it into a canonical order (entry ids,
then margin values) before its order-dependent float sums, and the Spark path makes every sum
an exact, order-free binned sum.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from curation import progress, storage
from curation.balancing import (
    BalanceResult,
    ScoreParams,
    SignatureTable,
    TargetSizeError,
    diagnostics,
    expected_repeats,
    run_method,
    score_arrow,
)
from curation.balancing.broadcast import broadcast_params, cached_params
from curation.balancing.degenerate import check_result
from curation.balancing.distributed import (
    choose_execution,
    run_method_spark,
    signature_table_size,
)
from curation.balancing.params import history_table
from curation.stages.base import Stage, StageResult, input_field, output_field
from curation.summaries import (
    BalanceSummary,
    CountSummary,
    EntryStats,
    Headline,
    SolverInfo,
    WeightStats,
)

log = logging.getLogger(__name__)

Method = Literal["metaclip", "balance", "rake", "m4"]


class BalanceConfigError(ValueError):
    """Options that do not fit together; the message says which and what to do."""


@dataclass
class BalanceConfig:
    """Options of the ``balance`` stage (``[balance]`` in a config file)."""

    input: str = input_field(
        "matched", "matched pool directory (output of match)", producers=("match",)
    )
    counts: str = input_field("counts", "counts directory (output of count)", producers=("count",))
    output: str = output_field("output directory of the balancing")
    method: Method = field(
        default="metaclip",
        metadata={
            "help": "metaclip (MetaCLIP's rule), balance (Liu et al. 2024), rake (capped raking that keeps MetaCLIP's tail and flattens the head) or m4 (moment matching of attribute representation and association, Alabdulmohsin et al. 2024; needs --target-size or --target-fraction and a pool matched with --attributes)"
        },
    )
    rake_objective: Literal["tail", "l1"] = field(
        default="tail",
        metadata={
            "help": "rake only: tail (keep every sample MetaCLIP keeps for its tail entries, rake the head-only samples toward min(c_j, t)) or l1 (rake every sample, exact L1 to min(c_j, t); drops tail samples that co-occur with head entries)"
        },
    )
    # The size options form one group: one set by a later layer (--set over the file, a flag over
    # both) replaces the others (see curation.config).
    cap: float = field(
        default=0.0,
        metadata={
            "min": 0,
            "group": "size",
            "help": "per-entry cap t (0: solve it from the target size)",
        },
    )
    target_size: int = field(
        default=0,
        metadata={
            "min": 0,
            "group": "size",
            "help": "target output size N (expected number of samples)",
        },
    )
    target_fraction: float = field(
        default=0.0,
        metadata={
            "min": 0,
            "group": "size",
            "help": "target size as a fraction of the matched samples (above 1 only with --with-replacement)",
        },
    )
    tail_share: float = field(
        default=0.0,
        metadata={
            "min": 0,
            "below": 1,
            "group": "size",
            "help": "MetaCLIP 2's rule: t such that entries below t hold this share of all matches",
        },
    )
    margins: list[str] = field(
        default_factory=list,
        metadata={
            "help": "extra margin column, counted by the count stage (repeatable)",
            "repeatable": True,
        },
    )
    margin_target: str = field(
        default="empirical",
        metadata={
            "help": "margin target: empirical, uniform, or a JSON file {level: share} or {column: {level: share}}"
        },
    )
    entry_target: str = field(
        default="capped",
        metadata={
            "help": "balance method's entry target: capped, uniform, power:ALPHA, or a JSON file {entry: share}"
        },
    )
    tol: float = field(
        default=0.0,
        metadata={
            "min": 0,
            "below": 1,
            "help": "solver tolerance (0: the method's default: rake 1e-3, balance 1e-6)",
        },
    )
    max_iter: int = field(
        default=0, metadata={"min": 0, "help": "solver iteration limit (0: the method's default)"}
    )
    keep_unmatched: bool = field(
        default=False,
        metadata={
            "help": "keep unmatched samples as one pseudo-entry <unmatched> with its own cap"
        },
    )
    unmatched_cap: float = field(
        default=0.0, metadata={"min": 0, "help": "cap of <unmatched> (0: the same as t)"}
    )
    with_replacement: bool = field(
        default=False,
        metadata={
            "help": "solve for integer repeats with E[r_i] = N w_i / Σw (N may exceed the pool)"
        },
    )
    execution: Literal["driver", "spark", "auto"] = field(
        default="auto",
        metadata={
            "help": "where the solver runs: driver (the signature table is collected), spark (it stays cached on the executors; one pass per iteration), auto (spark when the table has more than --max-driver-nnz entry incidences)"
        },
    )
    max_driver_nnz: int = field(
        default=50_000_000,
        metadata={
            "min": 0,
            "help": "with --execution auto: the largest table (Σ|S|) solved on the driver",
        },
    )
    attributes: str = field(
        default="",
        metadata={
            "help": "attribute file (YAML) with the bias targets and epsilons: m4 (default: the one the pool was matched with), or rake (the bias bounds added to rake's entry balancing, see --rake-attributes); its groups and labels must be those the pool was matched with"
        },
    )
    rake_attributes: Literal["joint", "two-step"] = field(
        default="joint",
        metadata={
            "help": "rake with --attributes: joint (rake's entry balancing and the bias constraints in one dual; the bias bounds first, then rake's kept tail samples, then its entry targets) or two-step (rake, then the closest π in squared distance that meets the bias bounds)"
        },
    )
    utility_col: str = field(
        default="",
        metadata={
            "help": "m4: a quality score column of the matched pool as the utility u_i that q is kept close to (default: u = 1)"
        },
    )


def _resolve_target_size(config: BalanceConfig, n_matched: int) -> float | None:
    given = [x for x in (config.target_size, config.target_fraction) if x]
    if len(given) > 1:
        raise BalanceConfigError("give either --target-size or --target-fraction, not both")
    if config.target_size < 0 or config.target_fraction < 0:
        raise BalanceConfigError("the target size must be positive")
    if config.target_fraction:
        if config.target_fraction > 1 and not config.with_replacement:
            raise BalanceConfigError(
                f"--target-fraction {config.target_fraction} > 1 asks for more samples than the "
                "matched pool holds; use --with-replacement for repeats"
            )
        return config.target_fraction * n_matched
    return float(config.target_size) if config.target_size else None


def _read_json_file(path: str, what: str) -> Any:
    try:
        return storage.read_json(path)
    except FileNotFoundError as exc:
        raise BalanceConfigError(f"{path}: {what} file not found") from exc
    except ValueError as exc:
        raise BalanceConfigError(f"{path}: {what} file is not valid JSON ({exc})") from exc


def _entry_target(spec: str, entries: list[str]) -> str | np.ndarray:
    if spec in ("capped", "uniform") or spec.startswith("power:"):
        return spec
    data = _read_json_file(spec, "entry target")
    if isinstance(data, list):
        if len(data) != len(entries):
            raise BalanceConfigError(f"{spec}: {len(data)} shares for {len(entries)} entries")
        return np.asarray(data, dtype=np.float64)
    if not isinstance(data, dict):
        raise BalanceConfigError(f"{spec}: an entry target file holds {{entry: share}} or a list")
    index = {e: j for j, e in enumerate(entries)}
    values = np.zeros(len(entries))
    for entry, share in data.items():
        if entry not in index:
            raise BalanceConfigError(f"{spec}: entry {entry!r} is not in the metadata list")
        values[index[entry]] = float(share)
    return values


def _margin_targets(spec: str, margins: list[str]) -> dict[str, Any] | None:
    if not margins:
        return None
    if spec in ("empirical", "uniform"):
        return {col: spec for col in margins}
    data = _read_json_file(spec, "margin target")
    if not isinstance(data, dict):
        raise BalanceConfigError(f"{spec}: a margin target file holds {{level: share}}")
    if all(isinstance(v, dict) for v in data.values()) and set(data) <= set(margins):
        return {col: data.get(col, "empirical") for col in margins}
    if len(margins) != 1:
        raise BalanceConfigError(f"{spec}: with several margins, key the file by column name")
    return {margins[0]: data}


def check_options(config: BalanceConfig) -> None:
    """Refuse options that do not fit together (before any Spark work; the message names them)."""
    _resolve_target_size(config, 1)
    caps = [x for x in (config.cap, config.tail_share) if x]
    if len(caps) > 1:
        raise BalanceConfigError("give either --cap or --tail-share, not both")
    if config.cap < 0:
        raise BalanceConfigError(f"--cap {config.cap}: the cap must be positive")
    if config.tail_share and not 0 < config.tail_share < 1:
        raise BalanceConfigError("--tail-share must lie strictly between 0 and 1")
    given_size = bool(config.target_size or config.target_fraction)
    if not caps and not given_size:
        raise BalanceConfigError(
            "nothing fixes the output: give --cap T, --target-size N, --target-fraction F or "
            "--tail-share P (0 means not given: a cap or size of 0 would keep nothing)"
        )
    if config.cap and given_size and not config.with_replacement and config.method != "balance":
        raise BalanceConfigError(
            "--cap and a target size both fix the size for this method; give one of them"
        )
    if config.with_replacement and not given_size:
        raise BalanceConfigError("--with-replacement needs --target-size or --target-fraction")
    if config.method != "balance" and config.entry_target != "capped":
        raise BalanceConfigError("--entry-target applies to --method balance only")
    if config.method != "rake" and config.rake_objective != "tail":
        raise BalanceConfigError("--rake-objective applies to --method rake only")
    if config.method == "metaclip" and config.margins:
        raise BalanceConfigError("MetaCLIP's rule has no margins; use --method balance or rake")
    if config.method != "metaclip" and config.tail_share:
        raise BalanceConfigError("--tail-share is MetaCLIP 2's rule for --method metaclip")
    if config.method not in ("m4", "rake") and config.attributes:
        raise BalanceConfigError("--attributes applies to --method m4 and --method rake only")
    if (config.method != "rake" or not config.attributes) and config.rake_attributes != "joint":
        raise BalanceConfigError("--rake-attributes applies to --method rake --attributes only")
    if config.method != "m4" and config.utility_col:
        raise BalanceConfigError("--utility-col applies to --method m4 only")
    if config.method == "rake" and config.attributes:
        refused = [
            flag
            for flag, given in (
                ("--keep-unmatched", config.keep_unmatched),
                ("--with-replacement", config.with_replacement),
            )
            if given
        ]
        if refused:
            raise BalanceConfigError(
                f"--method rake --attributes does not take {', '.join(refused)} (the bias "
                "constraints are over the matched samples, without repeats)"
            )
    if config.method == "m4":
        refused = [
            flag
            for flag, given in (
                ("--cap", config.cap),
                ("--margin", config.margins),
                ("--keep-unmatched", config.keep_unmatched),
                ("--with-replacement", config.with_replacement),
            )
            if given
        ]
        if refused or not given_size:
            raise BalanceConfigError(
                "--method m4 takes --target-size or --target-fraction"
                + (f", not {', '.join(refused)}" if refused else "")
            )


def method_options(config: BalanceConfig, entries: list[str], n_matched: int) -> dict[str, Any]:
    """The keyword arguments of :func:`curation.balancing.run_method` for this config."""
    check_options(config)
    target_size = _resolve_target_size(config, n_matched)
    options: dict[str, Any] = {
        "keep_unmatched": config.keep_unmatched,
        "unmatched_cap": config.unmatched_cap or None,
        "with_replacement": config.with_replacement,
        "target_size": target_size,
    }
    if config.cap:
        options["t"] = config.cap
    if config.method == "metaclip":
        if config.tail_share:
            options["tail_share_p"] = config.tail_share
        return options
    if config.method == "m4":
        return {"target_size": target_size}
    options["margins"] = list(config.margins)
    options["margin_targets"] = _margin_targets(config.margin_target, list(config.margins))
    if config.tol:
        options["tol"] = config.tol
    if config.max_iter:
        options["max_iter"] = config.max_iter
    if config.method == "balance":
        options["entry_target"] = _entry_target(config.entry_target, entries)
    if config.method == "rake":
        options["objective"] = config.rake_objective
    return options


def _size_options(config: BalanceConfig) -> dict[str, float]:
    """The options that fix the output's size and shape, by flag (for error messages)."""
    return {
        "--cap": config.cap,
        "--tail-share": config.tail_share,
        "--target-size": config.target_size,
        "--target-fraction": config.target_fraction,
        "--tol": config.tol,
    }


def signatures_frame(spark: SparkSession, counts: str, margins: list[str]) -> DataFrame:
    """The count stage's signature table over ``margins`` (summed over the other margins), so
    that (entry ids, margin values) is a unique key: sorted by it, the table has one canonical
    order, and the driver's solved parameters do not depend on how Spark partitioned it."""
    df = spark.read.parquet(storage.spark_url(storage.join(counts, "signatures")))
    missing = [m for m in margins if m not in df.columns]
    if missing:
        raise storage.StageInputError(
            f"{counts}: margin {missing[0]!r} was not counted; rerun count with --margin {missing[0]}"
        )
    # Summed over the margins not asked for: otherwise (entry ids, margins) repeat, their order
    # among equals follows the partitioning, and so would the last bits of every solved number.
    return df.groupBy("entry_ids", *margins).agg(F.sum("multiplicity").alias("multiplicity"))


def _score_partition(batches, broadcast, key: str, with_repeats: bool):
    params = cached_params(broadcast, key)
    for batch in batches:
        weight, pi = score_arrow(params, batch)
        columns = [batch.column("uid"), pa.array(weight), pa.array(pi)]
        names = ["uid", "weight", "inclusion_prob"]
        if with_repeats:
            columns.append(pa.array(expected_repeats(params, weight)))
            names.append("expected_repeats")
        yield pa.RecordBatch.from_arrays(columns, names=names)


def score_pool(pool: DataFrame, broadcast, key: str, with_repeats: bool) -> DataFrame:
    """uid, weight, inclusion_prob (and expected_repeats) for every row of the matched pool."""
    fields = [
        StructField("uid", StringType(), False),
        StructField("weight", DoubleType(), False),
        StructField("inclusion_prob", DoubleType(), False),
    ]
    if with_repeats:
        fields.append(StructField("expected_repeats", DoubleType(), False))
    return pool.mapInArrow(
        partial(_score_partition, broadcast=broadcast, key=key, with_repeats=with_repeats),
        StructType(fields),
    )


def _write_table(table: pa.Table, url: str) -> None:
    fs, path = storage.url_to_fs(url)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def unmet_targets(info: dict, entries: list[str]) -> dict | None:
    """The targets a solver left unmet (rake: infeasible or not converged), with entry names."""
    status = info.get("status")
    if status in (None, "converged", "closed_form"):
        return None
    ids = [int(j) for j in info.get("infeasible_entries", [])]
    return {
        "status": status,
        "entries": int(info.get("n_infeasible_entries", len(ids))),
        "examples": [entries[j] if j < len(entries) else "<unmatched>" for j in ids[:10]],
        "margin_levels": int(info.get("n_unmet_margin_levels", 0)),
    }


def describe_unmet(unmet: dict) -> str:
    """One line on unmet targets, for the log and the report."""
    why = (
        "the targets are infeasible (certified in diagnostics.json); the result is the "
        "closest to them in L1"
        if unmet["status"] == "infeasible"
        else f"the solver stopped with status {unmet['status']} before meeting them"
    )
    examples = ", ".join(repr(e) for e in unmet["examples"][:5])
    return (
        f"{unmet['entries']:,} entr{'y' if unmet['entries'] == 1 else 'ies'}"
        + (f" (e.g. {examples})" if examples else "")
        + f" and {unmet['margin_levels']} margin level(s) miss their targets: {why}"
    )


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


HEADLINE_KEYS = (
    "l1_error",
    "max_rel_err_head",
    "entropy_nats",
    "top100_share",
    "tail_entries_fully_kept_share",
)


def headline(diag: dict) -> Headline:
    """The few numbers a user compares between runs (from the full diagnostics)."""
    return Headline(
        before=EntryStats.from_json({k: diag["entries_before"].get(k) for k in HEADLINE_KEYS}),
        after=EntryStats.from_json({k: diag["entries_after"].get(k) for k in HEADLINE_KEYS}),
        weights=WeightStats.from_json(diag["weights"]),
    )


class BalanceStage(Stage):
    name = "balance"
    help = "solve per-sample weights and inclusion probabilities (metaclip, balance, rake or m4)"
    options = BalanceConfig

    @classmethod
    def check(cls, config: BalanceConfig) -> None:
        check_options(config)

    def resolve_inputs(self) -> dict[str, str]:
        """The inputs, then the options that need the counts (entries, matched samples)."""
        inputs = super().resolve_inputs()
        config = self.config
        self.entries = storage.read_json(storage.join(config.counts, "metadata.json"))
        counted = CountSummary.from_json(
            storage.read_json(storage.join(config.counts, "summary.json"))
        )
        self.n_matched = int(counted.matched)
        self.method_options = method_options(config, self.entries, self.n_matched)
        if self.n_matched == 0 and not config.keep_unmatched:
            raise storage.StageInputError(
                f"{config.counts}: no sample matched any entry; nothing to balance "
                "(check the metadata list, or use --keep-unmatched)"
            )
        return inputs

    def compute(self, tmp: str) -> dict:
        """Solve the method on the signature table and score every sample of the matched pool."""
        config, entries, options = self.config, self.entries, self.method_options
        if config.method == "m4" or config.attributes:
            return self.compute_m4(tmp)
        margins = list(dict.fromkeys(config.margins))
        table, result, execution = solve(
            self.spark, config, entries, margins, options, self.n_matched
        )
        diag = diagnostics(table, result)
        if table is not None:
            work = table.with_unmatched_entry() if result.params.keep_unmatched else table
            expected = work.entry_sums(table.multiplicity * result.pi)
        else:
            expected = result.stats.entry_sums
        write_solution(tmp, result, entries, expected)
        pool = self.spark.read.parquet(storage.spark_url(storage.join(config.input, "pool")))
        score_to(self.spark, pool, result.params, tmp)
        storage.write_json(storage.join(tmp, "diagnostics.json"), diag)
        summary = BalanceSummary(
            method=config.method,
            t=result.info.get("t"),
            status=result.info.get("status", "closed_form"),
            target_size=options.get("target_size"),
            expected_size=diag["inclusion"]["expected_size"],
            with_replacement=config.with_replacement,
            execution=execution,
            margins=margins,
            headline=headline(diag),
            info=SolverInfo.from_json(diag["info"]),
            seconds=self.seconds(),
        )
        unmet = unmet_targets(result.info, entries)
        if unmet:
            summary.unmet_targets = unmet
            log.warning("balance: %s", describe_unmet(unmet))
        return summary.to_json()

    def compute_m4(self, tmp: str) -> dict:
        """M4 (:mod:`curation.balancing.m4_run`): the usual outputs plus ``bias.json``."""
        from curation.balancing import m4_run as m4
        from curation.balancing.m4 import bias_report

        config, entries = self.config, self.entries
        spec = m4.m4_spec(config)
        target = self.method_options["target_size"]
        base = None
        if config.method == "rake":  # rake first: its cap, targets and solution
            margins = list(dict.fromkeys(config.margins))
            _, base, _ = solve(
                self.spark, config, entries, margins, self.method_options, self.n_matched
            )
            target = None  # the rake solution's size
        joint = base is not None and config.rake_attributes == "joint"
        with progress.bar(f"balance: m4 on the {config.execution}", unit="pass"):
            if joint:
                result, table, pi, execution = m4.solve_joint(
                    self.spark, config, spec, base, len(entries)
                )
            else:
                result, table, pi, execution = m4.solve_m4(
                    self.spark, config, spec, target, len(entries), base.params if base else None
                )
        params = m4.m4_params(
            result, spec, len(entries), config.utility_col, base.params if base else None
        )
        diag, expected, br = m4.m4_diagnostics(params, result, table, pi, execution, base)
        storage.write_bytes(storage.join(tmp, "params.json"), params.to_json().encode())
        if br is not None:
            table_ = br.entry_table(entries)
            table_ = table_.append_column("expected", pa.array(np.asarray(expected, np.float64)))
            _write_table(table_, storage.join(tmp, "entry_factors.parquet"))
        _write_table(m4.history_table(result), storage.join(tmp, "history.parquet"))
        pool = self.spark.read.parquet(storage.spark_url(storage.join(config.input, "pool")))
        score_to(self.spark, pool, params, tmp)
        bias = bias_report(spec, result, "m4" if base is None else f"{config.method}+attributes")
        if base is not None:
            bias["combination"] = config.rake_attributes  # joint | two-step
        storage.write_json(storage.join(tmp, "bias.json"), bias)
        storage.write_json(storage.join(tmp, "diagnostics.json"), diag)
        summary = {
            "stage": "balance",
            "method": config.method,
            "attributes": spec.source,
            "t": base.info.get("t") if base else None,
            "status": result.status,
            "target_size": self.method_options["target_size"],
            "expected_size": result.size,
            "with_replacement": False,
            "execution": execution,
            "margins": [],
            "bias": {
                name: {
                    k: a[k]
                    for k in (
                        "rb_before",
                        "rb_after",
                        "rb_status",
                        "ab_before",
                        "ab_after",
                        "ab_status",
                    )
                }
                for name, a in bias["attributes"].items()
            },
            "entropy": result.entropy,
            "info": m4.m4_info(result, execution),
            "seconds": self.seconds(),
        }
        if base is not None:
            summary["base"] = {k: base.info.get(k) for k in ("status", "t", "size_rel_err")}
        if result.status != "converged":
            log.warning("balance: m4 %s: %s", result.status, m4.describe_bias(bias))
        return summary

    def result(self, summary: dict) -> StageResult:
        return super().result(json.loads(json.dumps(summary)))

    def log_done(self, summary: dict) -> None:
        s = BalanceSummary.from_json(summary)
        log.info("balance: %s done in %.1f s -> %s", s.method, s.seconds, self.output)

    @classmethod
    def describe(cls, result: StageResult) -> str:
        s = result.record(BalanceSummary)
        # m4 and rake with attributes write their own summary (attributes, entropy, bias).
        if s.method == "m4" or s.unknown.get("attributes"):
            from curation.balancing.m4_run import describe_m4

            return describe_m4(result)
        d = s.headline
        lines = [
            f"balance: method {s.method}, cap t = {_fmt(s.t)}, status {s.status}"
            + (" (up to date, skipped)" if result.skipped else ""),
            f"  expected size   {s.expected_size:,.1f}"
            + (f" (target {s.target_size:,.1f})" if s.target_size else ""),
            f"  {'':<28}{'before':>12}{'after':>12}",
        ]
        for key, label in (
            ("l1_error", "L1 error to the target"),
            ("max_rel_err_head", "max head-entry rel. error"),
            ("entropy_nats", "entropy (nats)"),
            ("top100_share", "top-100 entries' share"),
            ("tail_entries_fully_kept_share", "tail entries fully kept"),
        ):
            before, after = getattr(d.before, key), getattr(d.after, key)
            lines.append(f"  {label:<28}{_fmt(before):>12}{_fmt(after):>12}")
        w = d.weights
        lines.append(
            f"  weights: Kish ESS {_fmt(w.kish_ess)}, design effect {_fmt(w.design_effect)}, "
            f"max/mean {_fmt(w.max_over_mean)}"
        )
        ref = s.info.vs_metaclip if s.info is not None else None
        if ref is not None and not ref.is_empty() and s.method != "metaclip":
            this, mc = ref.this, ref.metaclip
            lines.append(
                f"  vs MetaCLIP's rule at the same size (cap {_fmt(ref.t_mc)}): tail share "
                f"{_fmt(this.tail_share)} vs {_fmt(mc.tail_share)}, entropy "
                f"{_fmt(this.entropy_nats)} vs {_fmt(mc.entropy_nats)}, top-100 share "
                f"{_fmt(this.top100_share)} vs {_fmt(mc.top100_share)}"
            )
        if s.unmet_targets:
            lines.append(f"  unmet targets   {describe_unmet(s.unmet_targets)}")
        lines.append(f"  output          {result.output}")
        return "\n".join(lines)


def solve(
    spark: SparkSession,
    config: BalanceConfig,
    entries: list[str],
    margins: list[str],
    options: dict[str, Any],
    n_matched: int,
) -> tuple[SignatureTable | None, BalanceResult, str]:
    """Solve on the driver or on the executors; returns (table or None, result, execution)."""
    frame = signatures_frame(spark, config.counts, margins)
    execution = config.execution
    if execution == "auto":
        execution = choose_execution(*signature_table_size(frame), config.max_driver_nnz)
    log.info(
        "balance: %s on the %s (%d matched samples, %d entries)",
        config.method,
        "driver" if execution == "driver" else "Spark executors",
        n_matched,
        len(entries),
    )
    table = None
    try:
        if execution == "driver":
            # The canonical order; the Spark path's sums do not depend on the row order, so it
            # skips the sort (a shuffle of the table).
            ordered = frame.orderBy("entry_ids", *margins)
            table = SignatureTable.from_arrow(ordered.toArrow(), len(entries), margins)
        # one bar over every solver iteration (all inner solves of a target-size search)
        with progress.bar(f"balance: {config.method} on the {execution}", unit="iter"):
            if table is not None:
                result: BalanceResult = run_method(table, config.method, reference=True, **options)
            else:
                result = run_method_spark(
                    spark, frame, len(entries), config.method, margins, reference=True, **options
                )
    except TargetSizeError as exc:
        if config.with_replacement and not config.cap:
            raise BalanceConfigError(
                f"infeasible target: --method {config.method} solves its cap from the target "
                f"size, and no cap reaches {options['target_size']:g} samples from "
                f"{n_matched:,} matched ones ({exc}); with --with-replacement give "
                "the cap as well (--cap T fixes the balanced shape, --target-size N the number "
                "of samples with repeats)"
            ) from exc
        raise BalanceConfigError(f"infeasible target: {exc}") from exc
    check_result(result, table, _size_options(config))  # NaN, inf or empty: never committed
    return table, result, execution


def write_solution(tmp: str, result: BalanceResult, entries: list[str], expected: Any) -> None:
    """``params.json``, ``entry_factors.parquet`` and ``history.parquet``."""
    storage.write_bytes(storage.join(tmp, "params.json"), result.params.to_json().encode())
    entry_table = result.entry_table(entries)
    entry_table = entry_table.append_column(
        "expected", pa.array(np.asarray(expected, dtype=np.float64)[: entry_table.num_rows])
    )
    _write_table(entry_table, storage.join(tmp, "entry_factors.parquet"))
    _write_table(history_table(result.history), storage.join(tmp, "history.parquet"))


def score_to(spark: SparkSession, pool: DataFrame, params: ScoreParams, tmp: str) -> None:
    """Score every row of ``pool`` with ``params`` into ``tmp/weights``."""
    pool = pool.select("uid", *params.score_columns())
    broadcast, key = broadcast_params(spark, params)
    try:
        score_pool(pool, broadcast, key, params.repeat_scale is not None).write.parquet(
            storage.spark_url(storage.join(tmp, "weights"))
        )
    finally:
        broadcast.unpersist()


def run_balance(spark: SparkSession, config: BalanceConfig, force: bool = False) -> StageResult:
    """Solve the method on the signature table and score every sample of the matched pool."""
    return BalanceStage(config, spark).run(force)


STAGE = BalanceStage
