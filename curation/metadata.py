"""Metadata lists: loading MetaCLIP's format and checking entry hygiene.

A metadata list is an ordered list of entry strings; an entry's id is its position in the list
(MetaCLIP's convention, so ids stay stable across tools). Two file formats are read:

- MetaCLIP's ``metadata.json``: one JSON array of strings;
- plain text: one entry per line (UTF-8, ``\\n`` separated; a trailing newline is allowed).

Hygiene (``docs/matching.md``, "Metadata hygiene"): an empty or whitespace-only entry is
an error naming its line (1-based; for JSON, the array index + 1 is reported as the "line" together
with the index). An all-punctuation entry (``-``, ``...``, ``!?``) is kept, so that the ids of a
MetaCLIP-format list stay as they are, with a warning and a count (``punctuation_entries``): some
match (``-`` matches ``" - "``), those made of the punctuation MetaCLIP's spacing splits off
(``...``) never do and are counted as unmatchable too. Duplicate entries are an error, or with
``drop_duplicates=True`` the later copies are dropped (the first keeps its id) with a warning that
names them. Dropping a duplicate shifts the ids of later entries, so the matched output always carries
the list that was actually used (``metadata.json`` in the match stage's output).

Padded entries: an entry with leading or trailing white space or invisible format characters
(``' cat'``, ``'dog '``, NBSP, ZWSP, BOM) matches only captions holding the same characters
(``'dog '`` needs two spaces after ``dog`` in the spaced caption). Such entries are kept as written,
since an entry's text is its identity, and are counted and named in a warning; ``strip=True``
(``--strip-entries``) strips them (ids stay the same unless a stripped entry then repeats another,
which is a duplicate like any other). An entry that is nothing but such characters is empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.storage import join, read_bytes, url_to_fs

log = logging.getLogger(__name__)

# Characters that MetaCLIP's spacing rule surrounds with spaces, and those it turns into a space.
# An entry containing one of them can never occur in a spaced caption (see ``curation.matching``).
WRAPPED_PUNCTUATION = ",.;:?!`"
SPACED_CONTROLS = "\t\n\r"

#: The list shipped with the package (WordNet synset head names; see ``metadata/README``).
DEFAULT_METADATA = str(Path(__file__).resolve().parents[1] / "metadata" / "default.json")


def entries_fingerprint(entries: Sequence[str]) -> str:
    """A content hash of a list (its entries in order): the same list at two paths, or written
    twice, has one fingerprint; any change of an entry or of an id changes it.

    The SHA-256 of ``json.dumps(entry) + "\\n"`` for every entry in order (escaped: no entry spans
    two lines); ``encode_basestring_ascii`` is what ``json.dumps`` calls for a string, without its
    per-call overhead (a 500k-entry list: 0.04 s instead of 0.2–0.9 s)."""
    text = "".join(f"{_json_string(entry)}\n" for entry in entries)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class MetadataError(ValueError):
    """A metadata list that cannot be used as it is; the message names the file and the line."""


def is_edge_char(ch: str) -> bool:
    """White space, or an invisible format character (category Cf: ZWSP, ZWJ, BOM, soft hyphen)."""
    return ch.isspace() or unicodedata.category(ch) == "Cf"


# Fast paths of the checks (the same verdicts, in C): a letter or digit (``[^\W_]``: str.isalnum()
# characters, none of which is punctuation or white space) rules out an all-punctuation entry; an
# entry holding a character MetaCLIP's spacing splits off or turns into a space never matches.
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")
_NEVER_MATCHES = re.compile("[" + re.escape(WRAPPED_PUNCTUATION + SPACED_CONTROLS) + "]")


def strip_edges(entry: str) -> str:
    """``entry`` without leading and trailing :func:`is_edge_char` characters."""
    start, end = 0, len(entry)
    while start < end and is_edge_char(entry[start]):
        start += 1
    while end > start and is_edge_char(entry[end - 1]):
        end -= 1
    return entry[start:end]


@dataclass(frozen=True)
class MetadataList:
    """A checked metadata list plus what the checks found.

    ``entries[j]`` is entry j. ``dropped_duplicates`` lists ``(line, entry)`` pairs that were dropped;
    ``unmatchable`` lists ``(entry_id, entry)`` pairs that can never match under MetaCLIP's spacing
    (they contain ``, . ; : ? ! `` `` or a tab/newline), kept so that ids stay MetaCLIP-compatible.
    ``padded`` lists ``(line, entry as written)`` of entries with leading or trailing white space or
    invisible characters; ``stripped`` says whether they were stripped. ``punctuation`` lists
    ``(line, entry)`` of the entries made only of punctuation (kept, see the module docstring).
    """

    entries: list[str]
    source: str
    dropped_duplicates: list[tuple[int, str]] = field(default_factory=list)
    unmatchable: list[tuple[int, str]] = field(default_factory=list)
    padded: list[tuple[int, str]] = field(default_factory=list)
    stripped: bool = False
    punctuation: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self) -> dict:
        summary = {
            "source": self.source,
            "entries": len(self.entries),
            "dropped_duplicates": [{"line": ln, "entry": e} for ln, e in self.dropped_duplicates],
            "unmatchable_entries": len(self.unmatchable),
            "unmatchable_examples": [e for _, e in self.unmatchable[:20]],
        }
        if self.padded:  # only then, so a clean list's summary is as it always was
            summary["padded_entries"] = len(self.padded)
            summary["padded_examples"] = [{"line": ln, "entry": e} for ln, e in self.padded[:20]]
            summary["padded_entries_stripped"] = self.stripped
        if self.punctuation:  # likewise
            summary["punctuation_entries"] = len(self.punctuation)
            summary["punctuation_examples"] = [
                {"line": ln, "entry": e} for ln, e in self.punctuation[:20]
            ]
        return summary


def is_all_punctuation(text: str) -> bool:
    """True when every character is Unicode punctuation (category P*) or white space.

    Symbols (``$``, ``+``, emoji) are not punctuation: a user may want them as entries.
    """
    return all(unicodedata.category(ch)[0] in "PZ" or ch.isspace() for ch in text)


def check_entries(
    entries: Sequence[object],
    source: str = "<list>",
    *,
    drop_duplicates: bool = False,
    strip: bool = False,
) -> MetadataList:
    """Check a list of entries and return it as a :class:`MetadataList`.

    Raises :class:`MetadataError` naming ``source`` and the 1-based line of the first bad entry.
    """
    clean = _check_clean_list(entries, source)
    if clean is not None:
        return clean
    out: list[str] = []
    first_line: dict[str, int] = {}
    dropped: list[tuple[int, str]] = []
    duplicates: list[str] = []
    padded: list[tuple[int, str]] = []
    punctuation: list[tuple[int, str]] = []
    edge_chars: dict[str, bool] = {}  # a list's first and last characters repeat: memoised

    def edge(ch: str) -> bool:
        found = edge_chars.get(ch)
        if found is None:
            found = edge_chars[ch] = is_edge_char(ch)
        return found

    has_letter_or_digit = _LETTER_OR_DIGIT.search
    for index, entry in enumerate(entries):
        line = index + 1
        if not isinstance(entry, str):
            raise MetadataError(
                f"{source}: line {line}: entry {entry!r} is a {type(entry).__name__}, "
                "not a string; a metadata list holds strings only"
            )
        padded_edge = not entry or edge(entry[0]) or edge(entry[-1])
        stripped = strip_edges(entry) if padded_edge else entry
        if stripped == "":
            raise MetadataError(
                f"{source}: line {line}: empty entry {entry!r}; remove the line "
                "(an empty entry would match every caption)"
            )
        if stripped != entry:
            padded.append((line, entry))
            entry = stripped if strip else entry
        if not has_letter_or_digit(entry) and is_all_punctuation(entry):
            punctuation.append((line, entry))
        if entry in first_line:
            if drop_duplicates:
                dropped.append((line, entry))
                continue
            duplicates.append(f"line {line} repeats line {first_line[entry]} ({entry!r})")
            continue
        first_line[entry] = line
        out.append(entry)
    if duplicates:
        shown = "; ".join(duplicates[:10])
        more = f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
        raise MetadataError(
            f"{source}: {len(duplicates)} duplicate entries: {shown}{more}. "
            "Remove them, or pass --drop-duplicate-entries to keep the first copy of each"
        )
    if padded:
        _warn_padded(source, padded, strip)
    never_matches = _NEVER_MATCHES.search
    unmatchable = [(j, e) for j, e in enumerate(out) if never_matches(e)]
    _log_kept_and_dropped(source, punctuation, dropped, unmatchable)
    return MetadataList(
        out, source, dropped, unmatchable, padded, strip and bool(padded), punctuation
    )


def _check_clean_list(entries: Sequence[object], source: str) -> MetadataList | None:
    """:func:`check_entries` for the common list, checked in bulk with Arrow kernels (a
    500k-entry list: ~0.1 s instead of ~1 s); ``None`` when the list is not plain (an entry that is
    not a string, empty, padded at either end, or a duplicate), for the entry-by-entry checks.

    The verdicts are the same: an entry with a letter or digit (RE2 ``[\\pL\\pN]``, a superset
    of ``str.isalnum()`` holding no punctuation or white space) is not all punctuation, the others
    go through :func:`is_all_punctuation`."""
    try:
        arr = pa.array(entries, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if arr.null_count:
        return None
    ends = pc.unique(
        pa.concat_arrays([pc.utf8_slice_codeunits(arr, 0, 1), pc.utf8_slice_codeunits(arr, -1)])
    )
    if any(not ch or is_edge_char(ch) for ch in ends.to_pylist()):
        return None
    if len(pc.unique(arr)) != len(arr):
        return None
    out = arr.to_pylist()
    maybe_punctuation = pc.invert(pc.match_substring_regex(arr, r"[\pL\pN]"))
    punctuation = [
        (j + 1, out[j])
        for j in np.flatnonzero(maybe_punctuation.to_numpy(zero_copy_only=False)).tolist()
        if is_all_punctuation(out[j])
    ]
    never = pc.match_substring_regex(arr, _NEVER_MATCHES.pattern)
    unmatchable = [
        (j, out[j]) for j in np.flatnonzero(never.to_numpy(zero_copy_only=False)).tolist()
    ]
    _log_kept_and_dropped(source, punctuation, [], unmatchable)
    return MetadataList(out, source, [], unmatchable, [], False, punctuation)


def _log_kept_and_dropped(
    source: str,
    punctuation: list[tuple[int, str]],
    dropped: list[tuple[int, str]],
    unmatchable: list[tuple[int, str]],
) -> None:
    """Say which entries were kept although they are odd, and which duplicates were dropped."""
    if punctuation:
        log.warning(
            "%s: %d entries are only punctuation, e.g. %s; kept so that ids stay as they are "
            "(one such as '-' matches ' - ' in a caption; one holding , . ; : ? ! or ` never "
            "matches)",
            source,
            len(punctuation),
            ", ".join(f"line {ln} {e!r}" for ln, e in punctuation[:5]),
        )
    if dropped:
        log.warning(
            "%s: dropped %d duplicate entries (first copy kept): %s",
            source,
            len(dropped),
            ", ".join(f"line {ln} {e!r}" for ln, e in dropped[:20]),
        )
    if unmatchable:
        log.info(
            "%s: %d entries contain punctuation that MetaCLIP's spacing splits off captions and "
            "can never match (kept for id compatibility), e.g. %s",
            source,
            len(unmatchable),
            ", ".join(repr(e) for _, e in unmatchable[:5]),
        )


def _warn_padded(source: str, padded: list[tuple[int, str]], stripped: bool) -> None:
    shown = ", ".join(f"line {ln} {e!r}" for ln, e in padded[:5])
    more = f" and {len(padded) - 5} more" if len(padded) > 5 else ""
    if stripped:
        what = "stripped (--strip-entries)"
    else:
        what = (
            "kept as written: each matches only captions with the same characters (e.g. 'dog ' "
            "needs two spaces after dog); fix the list, or pass --strip-entries to strip them"
        )
    log.warning(
        "%s: %d entries have leading or trailing white space or invisible characters (%s%s); %s",
        source,
        len(padded),
        shown,
        more,
        what,
    )


def parse_metadata(data: bytes, source: str) -> list[object]:
    """Parse the bytes of a metadata file: a JSON array (``.json``, or text starting with ``[``),
    or else one entry per line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MetadataError(f"{source}: line {line}: not valid UTF-8 ({exc.reason})") from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    if source.endswith(".json") or text.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{source}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(value, list):
            raise MetadataError(f"{source}: a JSON metadata file must hold one array of strings")
        return value
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def load_metadata(path: str, *, drop_duplicates: bool = False, strip: bool = False) -> MetadataList:
    """Load and check a metadata list from a local path or any fsspec URL."""
    try:
        data = read_bytes(path)
    except FileNotFoundError as exc:
        raise MetadataError(f"{path}: metadata file not found") from exc
    entries = parse_metadata(data, path)
    if not entries:
        raise MetadataError(f"{path}: the metadata list is empty")
    return check_entries(entries, path, drop_duplicates=drop_duplicates, strip=strip)


def is_metadata_directory(path: str) -> bool:
    """True when ``path`` is a directory of per-language lists (the metadata stage's --lang-col output)."""
    fs, p = url_to_fs(path)
    return fs.isdir(p)


def load_language_lists(
    path: str, *, drop_duplicates: bool = False, strip: bool = False
) -> dict[str, MetadataList]:
    """Load a directory of per-language lists ``{lang}.json`` (or ``{lang}.txt``), sorted by language.

    ``summary.json`` and names starting with ``_`` or ``.`` are not lists. Each list is checked like
    a single list; a directory with no list is an error.
    """
    fs, root = url_to_fs(path)
    lists: dict[str, MetadataList] = {}
    for name in sorted(fs.ls(root, detail=False)):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        stem, _, ext = base.rpartition(".")
        if ext not in ("json", "txt") or not stem or base == "summary.json" or base[0] in "_.":
            continue
        lists[stem] = load_metadata(join(path, base), drop_duplicates=drop_duplicates, strip=strip)
    if not lists:
        raise MetadataError(
            f"{path}: a metadata directory must hold per-language lists named {{lang}}.json; none found"
        )
    return lists
