"""Caption matching with MetaCLIP's whole-phrase semantics, by Aho–Corasick.

The rule (MetaCLIP, Xu et al. 2023, ``metaclip/substr_matching.py``; ``docs/matching.md``):

1. spacing: the caption is surrounded by one space, each of ``, . ; : ? !`` and the backtick gets a
   space on both sides, and tab, newline and carriage return become a space;
2. entry ``e`` occurs in a caption iff ``" " + e + " "`` is a substring of the spaced caption, so
   ``cat`` matches ``"a cat."`` but not ``cats`` or ``cat-like``;
3. case is kept (``Gas`` and ``gas`` are different entries) unless case folding is asked for, which
   folds both sides with :py:meth:`str.casefold`; entries that collide after folding are merged into
   the first one's id (the merge is reported);
4. no-space scripts (MetaCLIP 2): an entry end whose character belongs to a script written without
   spaces between words (CJK, kana, Thai, Lao, Myanmar, Khmer, Tibetan) is not padded on that side, so
   ``猫`` matches inside ``我的猫很可爱``.

An Aho–Corasick automaton over the padded keys reports every occurrence, overlapping ones included,
so the set of ids it finds is exactly the set the naive rule finds (:func:`naive_match` is that rule,
kept as the reference the tests compare against). The automaton is built once on the driver, shipped
as a pickle file, and loaded once per Python worker process (:func:`cached_matcher`).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import ahocorasick
import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

_SPACING = str.maketrans({**{p: f" {p} " for p in ",.;:?!`"}, **{c: " " for c in "\t\n\r"}})

# Scripts written without spaces between words. Hangul is not among them: Korean uses spaces.
NO_SPACE_CHAR = re.compile(
    "["
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff\u19e0-\u19ff"  # Khmer, Khmer symbols
    "\u2e80-\u2fdf"  # CJK radicals, Kangxi radicals
    "\u3001-\u303f"  # CJK symbols and punctuation (not U+3000, the ideographic space)
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f\u31a0-\u31ff"  # Bopomofo, CJK strokes, Katakana extensions
    "\u3200-\u33ff"  # enclosed CJK, CJK compatibility
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (+ extension A)
    "\ua9e0-\ua9ff\uaa60-\uaa7f"  # Myanmar extensions
    "\uf900-\ufaff\ufe30-\ufe4f"  # CJK compatibility ideographs and forms
    "\uff00-\uffef"  # half-width and full-width forms
    "\U00020000-\U0003134f"  # CJK unified ideographs extensions B–H
    "]"
)


def spacing(caption: str) -> str:
    """MetaCLIP's caption spacing: ``" " + caption + " "`` with punctuation split off."""
    return " " + caption.translate(_SPACING) + " "


def is_no_space_char(ch: str) -> bool:
    """True for a character of a script written without spaces between words."""
    return NO_SPACE_CHAR.match(ch) is not None


def padded_key(entry: str) -> str:
    """The substring that must occur in a spaced caption for ``entry`` to match."""
    left = "" if is_no_space_char(entry[0]) else " "
    right = "" if is_no_space_char(entry[-1]) else " "
    return f"{left}{entry}{right}"


def _fold(text: str, casefold: bool) -> str:
    return text.casefold() if casefold else text


@dataclass
class KeyTable:
    """Padded keys and the entry id each one reports, plus the merges case folding made."""

    key_ids: dict[str, int]
    casefold: bool
    merges: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, entries: Sequence[str], casefold: bool = False) -> KeyTable:
        key_ids: dict[str, int] = {}
        merges: dict[int, list[int]] = {}
        for entry_id, entry in enumerate(entries):
            key = padded_key(_fold(entry, casefold))
            first = key_ids.setdefault(key, entry_id)
            if first != entry_id:
                merges.setdefault(first, []).append(entry_id)
        log_merges(entries, merges)
        return cls(key_ids, casefold, merges)


def log_merges(entries: Sequence[str], merges: dict[int, list[int]]) -> None:
    """Warn about the entries case folding merged (``merges``: first id -> the ids merged into it)."""
    if merges:
        shown = ", ".join(
            f"{entries[k]!r} <- {[entries[m] for m in v]}" for k, v in list(merges.items())[:10]
        )
        log.warning(
            "case folding merged %d entries into %d (first id kept): %s",
            sum(len(v) for v in merges.values()),
            len(merges),
            shown,
        )


class Matcher:
    """Finds the sorted distinct entry ids of each caption (see the module docstring)."""

    def __init__(self, entries: Sequence[str], casefold: bool = False) -> None:
        keys = KeyTable.build(entries, casefold)
        self.merges = keys.merges
        self.casefold = casefold
        self.n_entries = len(entries)
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for key, entry_id in keys.key_ids.items():
            automaton.add_word(key, entry_id)
        automaton.make_automaton()
        self.automaton = automaton

    def match(self, caption: str) -> list[int]:
        text = spacing(caption)
        if self.casefold:
            text = text.casefold()
        return sorted({entry_id for _, entry_id in self.automaton.iter(text)})

    def match_arrow(self, captions: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """Match an Arrow string array; returns ``list<int32>`` (nulls give an empty list)."""
        return self.match_many(captions.to_pylist())

    def match_many(self, captions: Iterable[str | None]) -> pa.ListArray:
        iterate = self.automaton.iter
        casefold = self.casefold
        table = _SPACING
        offsets = [0]
        values: list[int] = []
        for caption in captions:
            if caption:
                text = " " + caption.translate(table) + " "
                if casefold:
                    text = text.casefold()
                values.extend(sorted({entry_id for _, entry_id in iterate(text)}))
            offsets.append(len(values))
        return pa.ListArray.from_arrays(
            pa.array(np.asarray(offsets, dtype=np.int32)),
            pa.array(np.asarray(values, dtype=np.int32), type=pa.int32()),
        )

    def save(self, path: str) -> None:
        """Pickle the matcher (faster to load than rebuilding the automaton; docs/spark.md, pitfall 2)."""
        with open(path, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)


def naive_match(caption: str, entries: Sequence[str], casefold: bool = False) -> list[int]:
    """The reference rule, entry by entry: is the padded entry a substring of the spaced caption?"""
    text = _fold(spacing(caption), casefold)
    keys = KeyTable.build(entries, casefold) if casefold else None
    found = set()
    for entry_id, entry in enumerate(entries):
        key = padded_key(_fold(entry, casefold))
        if key in text:
            found.add(keys.key_ids[key] if keys else entry_id)
    return sorted(found)


class LanguageMatcher:
    """Per-language lists (MetaCLIP 2): each caption is matched against its language's list.

    The lists share one id space: language ``l`` (in sorted order) owns ids ``offset[l] …
    offset[l] + len(list_l) − 1``, so counting and balancing treat (language, entry) pairs as
    distinct entries. A caption whose language has no list matches nothing.
    """

    def __init__(self, lists: dict[str, Sequence[str]], casefold: bool = False) -> None:
        self.offsets: dict[str, int] = {}
        self.matchers: dict[str, Matcher] = {}
        offset = 0
        for lang in sorted(lists):
            self.offsets[lang] = offset
            self.matchers[lang] = Matcher(lists[lang], casefold=casefold)
            offset += len(lists[lang])
        self.n_entries = offset

    def match(self, caption: str, lang: str | None) -> list[int]:
        matcher = self.matchers.get(lang) if lang is not None else None
        if matcher is None:
            return []
        return [self.offsets[lang] + j for j in matcher.match(caption)]

    def match_arrow(self, captions: pa.Array, langs: pa.Array) -> pa.ListArray:
        """Match each caption with its language's list; returns ``list<int32>`` in row order."""
        texts = captions.to_pylist()
        codes = langs.to_pylist()
        rows_by_lang: dict[str, list[int]] = {}
        for row, lang in enumerate(codes):
            if lang in self.matchers:
                rows_by_lang.setdefault(lang, []).append(row)
        found: list[list[int]] = [[] for _ in texts]
        for lang, rows in rows_by_lang.items():
            lists = self.matchers[lang].match_many([texts[r] for r in rows]).to_pylist()
            offset = self.offsets[lang]
            for row, ids in zip(rows, lists):
                found[row] = [offset + j for j in ids]
        return pa.array(found, type=pa.list_(pa.int32()))

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)


# One matcher per Python worker process, keyed by the pickle file it came from. The cache lives in
# this importable module, not in a job script's globals: cloudpickle ships a function's globals with
# every task, so a cache there would be serialised with each task and start empty on the worker,
# while a module-level cache is imported once per worker process and, with Python worker reuse
# (spark.python.worker.reuse, on by default), stays warm between tasks. Use the functions below;
# nothing outside this module touches the dict.
_MATCHERS: dict[str, Matcher | LanguageMatcher] = {}


def cached_matcher(path: str) -> Matcher | LanguageMatcher:
    """Load the pickled matcher at ``path`` once per process (at most one stays resident)."""
    matcher = _MATCHERS.get(path)
    if matcher is None:
        with open(path, "rb") as f:
            matcher = pickle.load(f)
        _MATCHERS.clear()  # keep at most one automaton resident per worker
        _MATCHERS[path] = matcher
    return matcher


def is_matcher_cached(path: str) -> bool:
    """True when this process already holds the matcher of ``path`` (a warm worker)."""
    return path in _MATCHERS


def clear_matcher_cache() -> None:
    """Drop the matcher this process holds (the next :func:`cached_matcher` loads it again)."""
    _MATCHERS.clear()
