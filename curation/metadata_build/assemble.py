"""Merging the sources into one list per language: order, de-duplication, caps, hygiene, provenance.

Order (an entry's id is its position, MetaCLIP's convention), the same on every run:

1. ``numbers``: the strings ``"0"`` … ``"99"``, which MetaCLIP's list starts with (MetaCLIP 2 adds
   them to every language);
2. ``wordnet``: synset head names, by code point;
3. ``unigram``: corpus unigrams, by count descending, then code point;
4. ``bigram``: corpus bigrams, by PMI descending, then count descending, then code point;
5. ``title``: titles, by views descending, then code point;
6. ``extra``: the user's own entries, in file order.

An entry that several sources give keeps the position of the first; the provenance file lists every
source that gave it, and the summary counts the overlaps. A cap on a source (per language) counts the
entries that source adds, not those already listed: MetaCLIP 2's ``build_metadata.py`` rule.

Hygiene (the spec's "Metadata hygiene", checked again on the result with
:func:`curation.metadata.check_entries`): a candidate is rejected, with its reason, when it is
``empty``, ``all_punctuation``, ``too_long`` (more than ``max_chars`` characters), holds a control
character (``control_character``: it cannot sit on one line and never matches) or U+FFFD
(``replacement_character``: bytes lost upstream), repeats an entry of the same source
(``duplicate_in_source``, the ``extra`` file only), or, when asked, holds one of the characters
MetaCLIP's spacing splits off captions (``unmatchable``: ``, . ; : ? !`` and the backtick).
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from curation import progress
from curation.metadata import WRAPPED_PUNCTUATION, check_entries, is_all_punctuation

SOURCES = ("numbers", "wordnet", "unigram", "bigram", "title", "extra")
REJECT_REASONS = (
    "empty",
    "all_punctuation",
    "too_long",
    "control_character",
    "replacement_character",
    "duplicate_in_source",
    "unmatchable",
    "title_has_colon",
)
LISTED_REJECTS = 1000  # rejected entries listed by name in the summary (all are counted)


@dataclass(slots=True)
class Candidate:
    """One entry proposed by one source, with the evidence for it."""

    entry: str
    count: int | None = None  # unigram/bigram count, WordNet synsets, or None
    pmi: float | None = None
    views: int | None = None
    detail: str = ""


def entry_problem(entry: str, max_chars: int, drop_unmatchable: bool = False) -> str | None:
    """The reason ``entry`` cannot be listed, or None (see the module docstring)."""
    if not entry.strip():
        return "empty"
    if is_all_punctuation(entry):
        return "all_punctuation"
    if len(entry) > max_chars:
        return "too_long"
    if any(unicodedata.category(ch) == "Cc" for ch in entry):
        return "control_character"
    if "\ufffd" in entry:
        return "replacement_character"
    if drop_unmatchable and any(ch in WRAPPED_PUNCTUATION for ch in entry):
        return "unmatchable"
    return None


@dataclass
class SourceStats:
    offered: int = 0  # candidates examined
    accepted: int = 0  # listed: new or already present
    added: int = 0  # new entries
    rejected: int = 0
    cap: int = 0
    cap_reached: bool = False


class ListBuilder:
    """Builds one language's list, source by source, keeping provenance and rejects."""

    def __init__(self, lang: str, max_chars: int, drop_unmatchable: bool = False) -> None:
        self.lang = lang
        self.max_chars = max_chars
        self.drop_unmatchable = drop_unmatchable
        self.entries: list[str] = []
        self.index: dict[str, int] = {}
        self.provenance: list[list[tuple[str, Candidate]]] = []
        self.sources: dict[str, SourceStats] = {}
        self.rejects: Counter = Counter()  # (source, reason) -> n
        self.reject_list: list[dict] = []

    def __len__(self) -> int:
        return len(self.entries)

    def reject(
        self, source: str, reason: str, entry: str | None, *, n: int = 1, **evidence
    ) -> None:
        """Count ``n`` rejects of ``source`` for ``reason``, and list ``entry`` (if given)."""
        self.rejects[(source, reason)] += n
        if entry is not None and len(self.reject_list) < LISTED_REJECTS:
            item = {"entry": entry, "source": source, "reason": reason}
            item.update({k: v for k, v in evidence.items() if v is not None})
            self.reject_list.append(item)

    def add_source(self, source: str, candidates: Iterable[Candidate], cap: int = 0) -> SourceStats:
        """Add ``candidates`` (already in the source's order); at most ``cap`` new ones if ``cap``."""
        stats = self.sources.setdefault(source, SourceStats(cap=cap))
        seen: set[str] = set()
        for c in candidates:
            if cap and stats.added >= cap:
                stats.cap_reached = True
                break
            stats.offered += 1
            if stats.offered % 4096 == 0:
                progress.tick(4096, source=source)
            reason = entry_problem(c.entry, self.max_chars, self.drop_unmatchable)
            if reason is None and c.entry in seen:
                reason = "duplicate_in_source"
            if reason is not None:
                stats.rejected += 1
                self.reject(
                    source, reason, c.entry, count=c.count, views=c.views, detail=c.detail or None
                )
                continue
            seen.add(c.entry)
            stats.accepted += 1
            j = self.index.get(c.entry)
            if j is None:
                self.index[c.entry] = len(self.entries)
                self.entries.append(c.entry)
                self.provenance.append([(source, c)])
                stats.added += 1
            else:
                self.provenance[j].append((source, c))
        return stats

    def overlaps(self) -> dict[str, int]:
        """Entries given by both sources of each pair (``"wordnet+unigram": n``), non-zero pairs."""
        pairs: Counter = Counter()
        for rows in self.provenance:
            if len(rows) > 1:
                names = sorted({s for s, _ in rows}, key=SOURCES.index)
                for a, b in combinations(names, 2):
                    pairs[f"{a}+{b}"] += 1
        return dict(
            sorted(
                pairs.items(),
                key=lambda kv: (
                    SOURCES.index(kv[0].split("+")[0]),
                    SOURCES.index(kv[0].split("+")[1]),
                ),
            )
        )

    def check(self, source: str) -> None:
        """The result must pass the loader's hygiene; a failure here is a bug, not a user error."""
        check_entries(self.entries, source)

    def summary(self) -> dict:
        unmatchable = [e for e in self.entries if any(ch in WRAPPED_PUNCTUATION for ch in e)]
        by_reason: Counter = Counter()
        for (_, reason), n in self.rejects.items():
            by_reason[reason] += n
        return {
            "entries": len(self.entries),
            "entries_per_source": {s: st.added for s, st in self.sources.items()},
            "sources": {
                s: {
                    "offered": st.offered,
                    "accepted": st.accepted,
                    "added": st.added,
                    "rejected": st.rejected,
                    **({"cap": st.cap, "cap_reached": st.cap_reached} if st.cap else {}),
                }
                for s, st in self.sources.items()
            },
            "overlaps": self.overlaps(),
            "rejected": {
                "total": sum(self.rejects.values()),
                "by_reason": {r: by_reason[r] for r in REJECT_REASONS if by_reason[r]},
                "by_source": {
                    s: {r: n for (src, r), n in sorted(self.rejects.items()) if src == s}
                    for s in SOURCES
                    if any(src == s for src, _ in self.rejects)
                },
                "entries": self.reject_list,
                "entries_truncated": sum(self.rejects.values()) > len(self.reject_list),
            },
            "unmatchable_entries": len(unmatchable),
            "unmatchable_examples": unmatchable[:20],
        }


# --- rendering ----------------------------------------------------------------------------------


def render_list(entries: list[str]) -> bytes:
    """MetaCLIP's format, a JSON array of strings, written one entry per line (diff-friendly)."""
    if not entries:
        return b"[]\n"
    body = ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries)
    return f"[\n{body}\n]\n".encode()


PROVENANCE_COLUMNS = ("id", "entry", "source", "count", "pmi", "views", "detail")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def render_provenance(builders: dict[str, ListBuilder], with_lang: bool) -> bytes:
    """Tab-separated provenance, one row per (entry, source), in id order (``csv`` quoting)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow((("lang",) if with_lang else ()) + PROVENANCE_COLUMNS)
    for lang in sorted(builders):
        builder = builders[lang]
        for j, (entry, rows) in enumerate(zip(builder.entries, builder.provenance, strict=True)):
            for source, c in rows:
                row = [j, entry, source, _fmt(c.count), _fmt(c.pmi), _fmt(c.views), c.detail]
                writer.writerow(([lang] if with_lang else []) + row)
    return buf.getvalue().encode()
