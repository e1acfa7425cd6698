"""Sensitive attributes and labels for bias measurement and moment matching (M4).

An attribute file (YAML) defines, in text, everything M4 ("CLIP the Bias", Alabdulmohsin et al.,
ICLR 2024) needs, so that it works on any caption pool::

    attributes:                 # sensitive attributes: groups of keywords
      gender:
        female: [woman, women, girl, she, her]
        male: [man, men, boy, he, his, him]
    labels: [doctor, nurse, kitchen]       # each keyword is one label y_r
    # or: labels: {entries: {min_count: 50}}  every metadata entry with ≥ 50 matched samples
    targets:
      gender: parity            # or {female: 0.5, male: 0.5}
    epsilon: {representation: 0.01, association: 0.01}
    min_label_count: 30         # labels rarer than this among captions with the attribute are not
                                # constrained
    casefold: true              # fold case when matching (default false, as in `match`)

Keywords are matched with the project's whole-phrase rule and Aho–Corasick machinery
(:mod:`curation.matching`). Group ids are global over the file: the groups of the first
attribute in file order, then the next attribute's, ... (``gender/female`` = 0,
``gender/male`` = 1). Label ids are positions in ``labels``.

Representation in the matched pool (``match --attributes``) and the signature table (``count``):
two columns ``attribute_groups: list<int32>`` and ``attribute_labels: list<int32>`` (sorted,
distinct; empty when nothing matched), plus ``attributes.json`` (this spec, resolved) beside
the pool. Id lists keep the table narrow whatever the number of labels, and group by as one key.

Labels from metadata entries (``labels: {entries: {min_count: N}}``). A label is then a metadata
entry, and a caption has it when the entry is in the caption's entry ids: labels = entries, so
nothing is matched for them (``attribute_labels`` stays empty) and the signature table already
holds them. The entry counts are known only after ``count``, so the list resolves at ``balance``
(:func:`resolve_entry_labels`, from ``entry_counts.parquet``): every entry with c_j ≥ N, except
those in whose text a group keyword occurs (whole-phrase rule, the spec's casefold: "woman",
"young woman" — as labels their association with their own group is 1 by construction). The
resolved spec carries the labels' texts and entry ids (``label_entries`` in ``attributes.json``
and in the broadcast M4 layout).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from curation.matching import Matcher

GROUPS_COL = "attribute_groups"
LABELS_COL = "attribute_labels"
ATTRIBUTES_FILE = "attributes.json"
_TOP_KEYS = {"attributes", "labels", "targets", "epsilon", "min_label_count", "casefold"}


class AttributeFileError(ValueError):
    """A bad attribute file; the message names the file, the key and the entry."""


@dataclass(frozen=True)
class Attribute:
    """One sensitive attribute: its groups (keyword lists) and its representation target."""

    name: str
    groups: tuple[str, ...]
    keywords: tuple[tuple[str, ...], ...]
    target: str | tuple[float, ...]  # "parity" or one share per group
    first_group: int  # global id of its first group

    @property
    def group_ids(self) -> range:
        return range(self.first_group, self.first_group + len(self.groups))


@dataclass(frozen=True)
class AttributeSpec:
    """A validated attribute file (see the module docstring)."""

    attributes: tuple[Attribute, ...]
    labels: tuple[str, ...]
    epsilon_representation: float = 0.01
    epsilon_association: float = 0.01
    min_label_count: int = 30
    casefold: bool = False
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: ``labels: {entries: {min_count: N}}``: N (None: keyword labels)
    label_min_count: int | None = None
    #: the resolved labels' entry ids (ascending; :func:`resolve_entry_labels`), or None
    label_entry_ids: tuple[int, ...] | None = None
    #: entries with c_j ≥ N left out because a group keyword occurs in them
    excluded_label_entries: tuple[str, ...] = ()

    @property
    def entry_labels(self) -> bool:
        """Labels are metadata entries (``labels: {entries: ...}``)."""
        return self.label_min_count is not None

    @property
    def group_names(self) -> list[str]:
        return [f"{a.name}/{g}" for a in self.attributes for g in a.groups]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "attributes": {
                a.name: {
                    "groups": {g: list(k) for g, k in zip(a.groups, a.keywords, strict=True)},
                    "target": a.target if isinstance(a.target, str) else list(a.target),
                    "group_ids": list(a.group_ids),
                }
                for a in self.attributes
            },
            "groups": self.group_names,
            "labels": list(self.labels),
            "epsilon": {
                "representation": self.epsilon_representation,
                "association": self.epsilon_association,
            },
            "min_label_count": self.min_label_count,
            "casefold": self.casefold,
            "label_entries": None
            if not self.entry_labels
            else {
                "min_count": self.label_min_count,
                "entry_ids": None if self.label_entry_ids is None else list(self.label_entry_ids),
                "excluded": list(self.excluded_label_entries),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeSpec:
        """The inverse of :meth:`to_dict` (``attributes.json``)."""
        raw = {
            "attributes": {n: a["groups"] for n, a in d["attributes"].items()},
            "labels": d["labels"],
            "targets": {n: a["target"] for n, a in d["attributes"].items()},
            "epsilon": d["epsilon"],
            "min_label_count": d["min_label_count"],
            "casefold": d["casefold"],
        }
        entries = d.get("label_entries")
        if not entries:
            return parse_spec(raw, d.get("source", ""))
        raw["labels"] = {"entries": {"min_count": entries["min_count"]}}
        spec = parse_spec(raw, d.get("source", ""))
        if entries.get("entry_ids") is None:
            return spec
        return replace(
            spec,
            labels=tuple(d["labels"]),
            label_entry_ids=tuple(int(j) for j in entries["entry_ids"]),
            excluded_label_entries=tuple(entries.get("excluded", ())),
        )


def _fail(source: str, where: str, what: str) -> AttributeFileError:
    return AttributeFileError(f"{source}: {where}: {what}")


def _keyword_list(source: str, where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(source, where, "give a non-empty list of keywords, e.g. [woman, girl]")
    out = []
    for i, kw in enumerate(value):
        if not isinstance(kw, str) or not kw.strip():
            raise _fail(source, f"{where}[{i}]", f"{kw!r} is not a non-empty keyword string")
        if kw != kw.strip():
            raise _fail(source, f"{where}[{i}]", f"{kw!r} has leading or trailing white space")
        out.append(kw)
    return tuple(out)


def _share_target(source: str, name: str, groups: Sequence[str], value: Any) -> tuple[float, ...]:
    where = f"targets.{name}"
    if not isinstance(value, Mapping):
        raise _fail(source, where, "give 'parity' or a share per group, e.g. {female: 0.5}")
    unknown = [g for g in value if g not in groups]
    if unknown:
        raise _fail(source, f"{where}.{unknown[0]}", f"no such group; groups are {list(groups)}")
    shares = []
    for g in groups:
        if g not in value:
            raise _fail(source, f"{where}.{g}", "missing: give a share for every group")
        try:
            x = float(value[g])
        except (TypeError, ValueError):
            raise _fail(source, f"{where}.{g}", f"{value[g]!r} is not a number") from None
        if not 0 <= x <= 1:
            raise _fail(source, f"{where}.{g}", f"share {x} is not in [0, 1]")
        shares.append(x)
    return tuple(shares)


def _epsilon(source: str, raw: Any) -> tuple[float, float]:
    if raw is None:
        return 0.01, 0.01
    if not isinstance(raw, Mapping):
        raise _fail(source, "epsilon", "give {representation: 0.01, association: 0.01}")
    unknown = set(raw) - {"representation", "association"}
    if unknown:
        raise _fail(source, f"epsilon.{sorted(unknown)[0]}", "unknown key")
    out = []
    for key in ("representation", "association"):
        try:
            x = float(raw.get(key, 0.01))
        except (TypeError, ValueError):
            raise _fail(source, f"epsilon.{key}", f"{raw[key]!r} is not a number") from None
        if not 0 < x < 1:
            raise _fail(source, f"epsilon.{key}", f"{x} must lie strictly between 0 and 1")
        out.append(x)
    return out[0], out[1]


def _attributes(
    source: str, raw: Any, targets: Mapping[str, Any], casefold: bool
) -> tuple[Attribute, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(source, "attributes", "give at least one attribute with its groups")
    out, first, seen = [], 0, {}
    for name, groups in raw.items():
        if not isinstance(groups, Mapping) or len(groups) < 2:
            raise _fail(source, f"attributes.{name}", "give at least two groups of keywords")
        names = tuple(str(g) for g in groups)
        keywords = tuple(_keyword_list(source, f"attributes.{name}.{g}", groups[g]) for g in groups)
        for g, kws in zip(names, keywords, strict=True):
            for kw in kws:
                other = seen.setdefault(kw.casefold() if casefold else kw, f"{name}.{g}")
                if other != f"{name}.{g}":
                    raise _fail(
                        source, f"attributes.{name}.{g}", f"keyword {kw!r} is also in {other}"
                    )
        target = targets.get(name, "parity")
        if target != "parity":
            target = _share_target(source, name, names, target)
        out.append(Attribute(str(name), names, keywords, target, first))
        first += len(names)
    unknown = [t for t in targets if t not in raw]
    if unknown:
        raise _fail(source, f"targets.{unknown[0]}", "no such attribute")
    return tuple(out)


def parse_spec(raw: Any, source: str = "<attributes>") -> AttributeSpec:
    """Validate a parsed attribute file; errors name the file, the key and the entry."""
    if not isinstance(raw, Mapping):
        raise _fail(source, "top level", "the file must hold a mapping with 'attributes'")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _fail(source, sorted(unknown)[0], f"unknown key; keys are {sorted(_TOP_KEYS)}")
    targets = raw.get("targets") or {}
    if not isinstance(targets, Mapping):
        raise _fail(source, "targets", "give {attribute: parity | {group: share}}")
    casefold = raw.get("casefold", False)
    if not isinstance(casefold, bool):
        raise _fail(source, "casefold", f"{casefold!r} is not true or false")
    attributes = _attributes(source, raw.get("attributes"), targets, casefold)
    labels_raw = raw.get("labels", [])
    label_min_count = None
    if isinstance(labels_raw, Mapping):
        label_min_count, labels = _entry_labels(source, labels_raw), ()
    else:
        labels = _keyword_list(source, "labels", labels_raw) if labels_raw else ()
    dup = [kw for i, kw in enumerate(labels) if kw in labels[:i]]
    if dup:
        raise _fail(source, "labels", f"label {dup[0]!r} is listed twice")
    eps_r, eps_a = _epsilon(source, raw.get("epsilon"))
    min_count = raw.get("min_label_count", 30)
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 0:
        raise _fail(source, "min_label_count", f"{min_count!r} is not a non-negative integer")
    return AttributeSpec(
        attributes,
        labels,
        eps_r,
        eps_a,
        min_count,
        casefold,
        source,
        label_min_count=label_min_count,
    )


def _entry_labels(source: str, raw: Mapping[str, Any]) -> int:
    """N of ``labels: {entries: {min_count: N}}``."""
    usage = "give a list of label keywords, or {entries: {min_count: N}} (N ≥ 1)"
    if set(raw) != {"entries"} or not isinstance(raw["entries"], Mapping):
        raise _fail(source, "labels", usage)
    inner = raw["entries"]
    if set(inner) != {"min_count"}:
        raise _fail(source, "labels.entries", usage)
    n = inner["min_count"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _fail(source, "labels.entries.min_count", f"{n!r} is not a positive integer")
    return n


def resolve_entry_labels(
    spec: AttributeSpec, entries: Sequence[str], counts: Sequence[int] | np.ndarray
) -> AttributeSpec:
    """The spec with labels = the metadata entries with c_j ≥ ``label_min_count``, in entry id
    order, except the entries in which a group keyword occurs (whole-phrase rule, the spec's
    casefold); a spec with keyword labels is returned as it is."""
    if not spec.entry_labels:
        return spec
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size != len(entries):
        raise ValueError(f"{len(entries)} entries but {counts.size} counts")
    keywords = [kw for a in spec.attributes for kws in a.keywords for kw in kws]
    holds_keyword = Matcher(keywords, casefold=spec.casefold)
    ids, excluded = [], []
    for j in np.flatnonzero(counts >= spec.label_min_count).tolist():
        if holds_keyword.match(entries[j]):
            excluded.append(entries[j])
        else:
            ids.append(j)
    return replace(
        spec,
        labels=tuple(entries[j] for j in ids),
        label_entry_ids=tuple(ids),
        excluded_label_entries=tuple(excluded),
    )


def load_spec(path: str) -> AttributeSpec:
    """Read and validate an attribute file (YAML; JSON is YAML too)."""
    from curation import storage

    try:
        text = storage.read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise AttributeFileError(f"{path}: attribute file not found") from None
    except UnicodeDecodeError as exc:
        raise AttributeFileError(f"{path}: not UTF-8 text ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AttributeFileError(f"{path}: not valid YAML ({exc})") from None
    return parse_spec(raw, path)


class AttributeMatcher:
    """Finds the group ids and label ids of each caption (whole-phrase rule, Aho–Corasick)."""

    def __init__(self, spec: AttributeSpec) -> None:
        keywords, owners = [], []
        for a in spec.attributes:
            for gid, kws in zip(a.group_ids, a.keywords, strict=True):
                keywords.extend(kws)
                owners.extend([gid] * len(kws))
        self.group_of = np.asarray(owners, dtype=np.int32)
        self.groups = Matcher(keywords, casefold=spec.casefold)
        self.labels = Matcher(list(spec.labels), casefold=spec.casefold) if spec.labels else None

    def match(self, caption: str) -> tuple[list[int], list[int]]:
        groups = sorted({int(self.group_of[k]) for k in self.groups.match(caption)})
        labels = self.labels.match(caption) if self.labels else []
        return groups, labels

    def match_many(self, captions: Iterable[str | None]) -> tuple[pa.ListArray, pa.ListArray]:
        """``(attribute_groups, attribute_labels)`` as ``list<int32>`` arrays."""
        captions = list(captions)
        found = self.groups.match_many(captions)
        offsets = found.offsets.to_numpy()
        ids = self.group_of[found.values.to_numpy()]
        lists = [sorted(set(ids[offsets[i] : offsets[i + 1]].tolist())) for i in range(len(found))]
        groups = pa.array(lists, type=pa.list_(pa.int32()))
        if self.labels is None:
            labels = pa.array([[] for _ in captions], type=pa.list_(pa.int32()))
        else:
            labels = self.labels.match_many(captions)
        return groups, labels

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
