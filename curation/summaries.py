"""Typed stage summaries: one dataclass per stage, written by the stage and read by the report.

Each summary is a :class:`Record`, a dataclass whose field names are the JSON keys. The stage
builds it and writes :meth:`Record.to_json`; the report (:mod:`curation.report`) reads it back
with :meth:`Record.from_json` (as can any other reader of a run). Because both sides go through the
same class, renaming a key means renaming a field, and every reader that still uses the old name
fails with an ``AttributeError`` in the tests instead of silently showing a blank.

Reading is tolerant, so that the report still reads the outputs of older versions:

- a key missing from the file reads as the field's default (``None``, or an empty nested record);
- a key the class does not know is kept in :attr:`Record.unknown` and written back, in the
  file's key order, so a round trip gives the same JSON.

Writing keeps the key order of the fields (of the file, for a record read from one). A field
declared with :func:`optional` is left out when it is ``None`` (keys that only some runs have,
such as ``warning`` or ``unmet_targets``), unless the file read had it.

The files: ``summary.json`` of match (:class:`MatchSummary`), count (:class:`CountSummary`),
balance (:class:`BalanceSummary`) and select (:class:`SelectSummary`); ``_summary.json`` of
demo-pool (:class:`PoolSummary`); ``_stats.json`` of a shard set written by download or reshard
(:class:`ShardStats`). ``diagnostics.json`` of balance is written by
:func:`curation.balancing.diagnostics.diagnostics`; :class:`BalanceDiagnostics` reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")

_NESTED = "record"  # field metadata: the Record class of a nested object
_LIST_OF = "list_of"  # field metadata: the Record class of each item of a list
_OPTIONAL = "optional"  # field metadata: left out of the JSON when None


def nested(cls: type[Record]) -> Any:
    """A nested object; reads as an empty ``cls`` when missing."""
    return field(default_factory=cls, metadata={_NESTED: cls})


def nested_optional(cls: type[Record]) -> Any:
    """A nested object that only some files have; ``None`` (and not written) when absent."""
    return field(default=None, metadata={_NESTED: cls, _OPTIONAL: True})


def list_of(cls: type[Record]) -> Any:
    """A list of nested objects; empty when missing."""
    return field(default_factory=list, metadata={_LIST_OF: cls})


def optional(default: Any = None) -> Any:
    """A key that only some files have: not written when ``None``."""
    return field(default=default, metadata={_OPTIONAL: True})


@dataclass
class Record:
    """A JSON object with typed fields (see the module docstring)."""

    #: Keys of the file this class does not know, kept for the round trip.
    unknown: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)
    #: The key order of the file read (None: the field order), so a round trip is exact.
    key_order: tuple[str, ...] | None = field(default=None, repr=False, compare=False, kw_only=True)

    @classmethod
    def from_json(cls: type[R], data: Any) -> R:
        """The record of ``data`` (a dict read from JSON); anything but a dict reads as empty."""
        data = data if isinstance(data, Mapping) else {}
        known = {}
        for f in cls._json_fields():
            if f.name not in data:
                continue
            value = data[f.name]
            if _NESTED in f.metadata and value is not None:
                value = f.metadata[_NESTED].from_json(value)
            elif _LIST_OF in f.metadata:
                value = [f.metadata[_LIST_OF].from_json(v) for v in value or []]
            known[f.name] = value
        names = {f.name for f in cls._json_fields()}
        unknown = {k: v for k, v in data.items() if k not in names}
        return cls(**known, unknown=unknown, key_order=tuple(data))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the fields in order (optional ones only when set), then unknown keys."""
        out: dict[str, Any] = {}
        for f in self._json_fields():
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OPTIONAL) and f.name not in (self.key_order or ()):
                continue
            if isinstance(value, Record):
                value = value.to_json()
            elif _LIST_OF in f.metadata:
                value = [v.to_json() for v in value]
            out[f.name] = value
        out.update(self.unknown)
        if self.key_order is not None:
            rank = {k: i for i, k in enumerate(self.key_order)}
            out = dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))
        return out

    def is_empty(self) -> bool:
        """True when every field has its default and no unknown key was read (a missing file,
        or an empty object)."""
        if self.unknown:
            return False
        for f in self._json_fields():
            value = getattr(self, f.name)
            if isinstance(value, Record):
                if not value.is_empty():
                    return False
                continue
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if value != default:
                return False
        return True

    @classmethod
    def _json_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in ("unknown", "key_order")]


# --- demo-pool ----------------------------------------------------------------------------------


@dataclass
class PoolSummary(Record):
    """``_summary.json`` of demo-pool (``_``-prefixed: a Parquet reader of the folder skips it)."""

    FILE: ClassVar[str] = "_summary.json"

    output: str | None = None
    rows: int | None = None
    files: int | None = None
    metadata: str | None = None
    seconds: float | None = None


# --- match --------------------------------------------------------------------------------------


@dataclass
class MetadataListSummary(Record):
    """The metadata list a match run used (:meth:`curation.metadata.Metadata.summary`, or the
    per-language form with ``languages``)."""

    source: str | None = None
    entries: int | None = None


@dataclass
class MatchSummary(Record):
    """``summary.json`` of match."""

    FILE: ClassVar[str] = "summary.json"

    stage: str = "match"
    input: str | None = None
    input_format: str | None = None
    columns: dict[str, str] | None = None
    metadata: MetadataListSummary = nested(MetadataListSummary)
    casefold: bool | None = None
    input_rows: int | None = None
    usable_rows: int | None = None
    matched: int | None = None
    unmatched: int | None = None
    matched_share: float | None = None
    rejected: int | None = None
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    matches_per_sample: dict[str, int] = field(default_factory=dict)
    total_matches: int | None = None
    #: Usable captions holding U+FFFD (matched; ``--reject-replacement-char`` rejects them).
    replacement_char_captions: int | None = optional()
    seconds: float | None = optional()
    #: ``match --attributes``: the attribute file and captions per group and per label.
    attributes: dict[str, Any] | None = optional()


# --- count --------------------------------------------------------------------------------------


@dataclass
class TopEntry(Record):
    entry_id: int | None = None
    entry: str | None = None
    count: int | None = None


@dataclass
class CountSummary(Record):
    """``summary.json`` of count."""

    FILE: ClassVar[str] = "summary.json"

    stage: str = "count"
    input: str | None = None
    samples: int | None = None
    matched: int | None = None
    unmatched: int | None = None
    total_matches: int | None = None
    entries: int | None = None
    entries_observed: int | None = None
    signatures: int | None = None
    matches_per_sample: dict[str, int] = field(default_factory=dict)
    top_entries: list[TopEntry] = list_of(TopEntry)
    margins: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float | None = optional()


# --- balance ------------------------------------------------------------------------------------


@dataclass
class EntryStats(Record):
    """Entry-distribution statistics (:func:`curation.balancing.diagnostics.entry_stats`); the
    summary's headline holds the first five keys only."""

    l1_error: float | None = optional()
    max_rel_err_head: float | None = optional()
    max_rel_err: float | None = optional()
    entropy_nats: float | None = optional()
    entropy_max_nats: float | None = optional()
    top100_share: float | None = optional()
    tail_entries: int | None = optional()
    tail_entries_fully_kept: int | None = optional()
    tail_entries_fully_kept_share: float | None = optional()
    expected_matches: float | None = optional()


@dataclass
class WeightStats(Record):
    """Weight statistics (:func:`curation.balancing.diagnostics.weight_summary`)."""

    n: float | None = optional()
    kish_ess: float | None = optional()
    design_effect: float | None = optional()
    max_over_mean: float | None = optional()
    mean: float | None = optional()
    share_above_2x_mean: float | None = optional()
    share_above_5x_mean: float | None = optional()
    share_above_10x_mean: float | None = optional()


@dataclass
class Headline(Record):
    """The few numbers a user compares between balance runs."""

    before: EntryStats = nested(EntryStats)
    after: EntryStats = nested(EntryStats)
    weights: WeightStats = nested(WeightStats)


@dataclass
class EntryQuality(Record):
    """A set scored against MetaCLIP's cap (:func:`curation.balancing.diagnostics.entry_quality`)."""

    tail_share: float | None = optional()
    tail_min_share: float | None = optional()
    head_share: float | None = optional()
    head_overshoot: float | None = optional()
    entropy_nats: float | None = optional()
    top100_share: float | None = optional()
    tv_to_capped: float | None = optional()


@dataclass
class VsMetaclip(Record):
    """This run against MetaCLIP's rule at the same expected size
    (:func:`curation.balancing.reference.metaclip_reference`)."""

    t_mc: float | None = None
    expected_size: float | None = None
    this: EntryQuality = nested(EntryQuality)
    metaclip: EntryQuality = nested(EntryQuality)


@dataclass
class SolverInfo(Record):
    """The solver's info (free-form per method; the keys the report reads are typed, the others
    are kept as they are)."""

    t: float | None = optional()
    status: str | None = optional()
    iterations: int | None = optional()
    vs_metaclip: VsMetaclip | None = nested_optional(VsMetaclip)


@dataclass
class BalanceSummary(Record):
    """``summary.json`` of balance."""

    FILE: ClassVar[str] = "summary.json"

    stage: str = "balance"
    method: str | None = None
    t: float | None = None
    status: str | None = None
    target_size: float | None = None
    expected_size: float | None = None
    with_replacement: bool | None = None
    execution: dict[str, Any] | None = None
    margins: list[str] = field(default_factory=list)
    headline: Headline = nested(Headline)
    info: SolverInfo = nested(SolverInfo)
    seconds: float | None = None
    #: The targets the solver left unmet (:func:`curation.stages.balance.unmet_targets`).
    unmet_targets: dict[str, Any] | None = optional()


@dataclass
class DiagnosticsPool(Record):
    n: int | None = optional()
    signatures: int | None = optional()
    matched: int | None = optional()
    matched_share: float | None = optional()
    k_histogram: dict[str, int] | None = optional()
    entries: int | None = optional()
    entries_observed: int | None = optional()
    head_entries: int | None = optional()
    t: float | None = optional()


@dataclass
class Inclusion(Record):
    expected_size: float | None = optional()
    target_size: float | None = optional()
    size_rel_err: float | None = optional()
    pi_histogram: dict[str, list[float]] = field(default_factory=dict)
    pi_equal_1_share: float | None = optional()


@dataclass
class RankPlots(Record):
    """The rank–frequency curves of a balance run (each ``{"rank": [...], "value": [...]}``)."""

    rank_frequency_before: dict[str, list[float]] | None = optional()
    rank_frequency_target: dict[str, list[float]] | None = optional()
    rank_frequency_after: dict[str, list[float]] | None = optional()


@dataclass
class BalanceDiagnostics(Record):
    """``diagnostics.json`` of balance, as the report reads it."""

    FILE: ClassVar[str] = "diagnostics.json"

    method: str | None = optional()
    pool: DiagnosticsPool = nested(DiagnosticsPool)
    entries_before: EntryStats | None = nested_optional(EntryStats)
    entries_after: EntryStats | None = nested_optional(EntryStats)
    weights: WeightStats | None = nested_optional(WeightStats)
    inclusion: Inclusion = nested(Inclusion)
    convergence: list[dict[str, Any]] = field(default_factory=list)
    plots: RankPlots = nested(RankPlots)
    info: SolverInfo | None = nested_optional(SolverInfo)


# --- select -------------------------------------------------------------------------------------


@dataclass
class SelectSummary(Record):
    """``summary.json`` of select."""

    FILE: ClassVar[str] = "summary.json"

    stage: str = "select"
    seed: int | None = None
    with_replacement: bool | None = None
    all_eligible: bool | None = None
    method: str | None = None
    expected_size: float | None = None
    selected: int | None = None
    total_repeats: int | None = None
    seconds: float | None = None
    warning: str | None = optional()


# --- shard sets (download, reshard) -------------------------------------------------------------


@dataclass
class DownloadStats(Record):
    """img2dataset's outcome (``download`` in a downloaded shard set's ``_stats.json``)."""

    urls: int | None = None
    tried: int | None = None
    successes: int | None = None
    failed_to_download: int | None = None
    failed_to_resize: int | None = None
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    failures_by_message: dict[str, int] = field(default_factory=dict)
    seconds: float | None = optional()
    #: Reruns that retried the URLs that failed before (``--max-retries`` bounds them).
    retry_rounds: int | None = optional()


@dataclass
class ShardStats(Record):
    """``_stats.json`` of a shard set (download or reshard)."""

    FILE: ClassVar[str] = "_stats.json"

    input_shards: int | None = None
    input_samples: int | None = None
    input_members_skipped: dict[str, int] = field(default_factory=dict)
    input_samples_dropped: dict[str, int] = field(default_factory=dict)
    selected_uids: int | None = None
    selected_samples: int | None = None
    found_uids: int | None = None
    missing_uids: int | None = None
    written_samples: int | None = None
    output_shards: int | None = None
    samples_per_shard: int | None = None
    shuffle: bool | None = None
    seed: int | None = None
    weight_scale: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    bytes_written: int | None = optional()
    output_bytes: int | None = optional()
    shards_skipped_as_done: int | None = optional()
    download: DownloadStats | None = nested_optional(DownloadStats)
    rejects: int | None = optional()
    resumed: bool | None = optional()
    seconds: float | None = optional()


#: The summary class of each stage that writes one (metadata's summary is the list's build
#: record, :mod:`curation.stages.metadata`; the report's is its own summary.json).
BY_STAGE: dict[str, type[Record]] = {
    "demo-pool": PoolSummary,
    "match": MatchSummary,
    "count": CountSummary,
    "balance": BalanceSummary,
    "select": SelectSummary,
    "download": ShardStats,
    "reshard": ShardStats,
}


# --- bias (balance --method m4, or rake with --attributes) ---------------------------------------


@dataclass
class BiasLabel(Record):
    """One label y_r of an attribute in ``bias.json``: its mentions and association bias."""

    constrained: bool | None = None
    count_before: float | None = None
    expected_after: float | None = None
    max_abs_ab_before: float | None = None
    max_abs_ab_after: float | None = None
    max_abs_ab_base: float | None = optional()
    status: str | None = None


@dataclass
class BiasAttribute(Record):
    """One sensitive attribute in ``bias.json``: representation and association bias, before and
    after (and of the base method's solution, for rake with attributes)."""

    target: Any = None
    count_before: float | None = None
    expected_after: float | None = None
    shares_before: dict[str, float] | None = None
    shares_after: dict[str, float] | None = None
    rb_before: float | None = None
    rb_after: float | None = None
    rb_base: float | None = optional()
    rb_status: str | None = None
    ab_before: float | None = None
    ab_after: float | None = None
    ab_base: float | None = optional()
    ab_status: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def label_records(self) -> dict[str, BiasLabel]:
        return {name: BiasLabel.from_json(v) for name, v in self.labels.items()}


@dataclass
class BiasReport(Record):
    """``bias.json`` of balance (written by :func:`curation.balancing.m4.bias_report`)."""

    FILE: ClassVar[str] = "bias.json"

    method: str | None = None
    status: str | None = None
    epsilon: dict[str, float] = field(default_factory=dict)
    min_label_count: int | None = None
    #: rake with attributes: ``joint`` (one dual) or ``two-step`` (rake, then the projection)
    combination: str | None = optional()
    attributes: dict[str, Any] = field(default_factory=dict)
    size: dict[str, Any] = field(default_factory=dict)
    entropy: dict[str, Any] = field(default_factory=dict)
    solver: dict[str, Any] = field(default_factory=dict)

    def attribute_records(self) -> dict[str, BiasAttribute]:
        return {name: BiasAttribute.from_json(v) for name, v in self.attributes.items()}
