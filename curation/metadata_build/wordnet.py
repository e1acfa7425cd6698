"""WordNet synset head names, read from the WordNet 3.0 database files (``wndb(5WN)`` format).

MetaCLIP's WordNet source (``metaclip/build_metadata.py:wordnet_synsets`` in facebookresearch/MetaCLIP)
is::

    for ss in nltk.corpus.wordnet.all_synsets():
        name = ss.name()                      # e.g. "dog.n.01"
        entries.append(name[:name.find(".")].replace("_", " "))

NLTK's ``WordNetCorpusReader`` builds ``ss.name()`` from the synset's **first lemma, lower-cased**,
after stripping an adjective's syntactic marker (``(a)``, ``(p)``, ``(ip)``), as
``f"{lemma.lower()}.{pos}.{sense:02d}"``. Cutting at the first ``.`` therefore keeps the lower-cased
first lemma up to its own first dot, if it has one: ``St._John's_wort`` gives ``st``, ``.22_caliber``
gives the empty string (MetaCLIP drops empty names; here they are rejected as ``empty``). This module
reproduces exactly that rule without NLTK, by reading the ``data.noun``, ``data.verb``, ``data.adj``
and ``data.adv`` files directly, as Debian's ``wordnet-base`` installs them in /usr/share/wordnet
(any copy of the same format works, from any fsspec URL):

- lines that start with two spaces are the license header and are skipped;
- every other line is one synset: ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id…] …``
  where ``w_cnt`` is two hexadecimal digits and ``word`` has ``_`` for spaces; adjective satellites
  (``ss_type`` ``s``) live in ``data.adj``, as in NLTK's ``all_synsets()``.

The list is the set of distinct names (MetaCLIP put them in a set), each with the number of synsets
that gave it and the first of those (files in the order noun, verb, adj, adv; lines in file order).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from curation import progress
from curation.storage import StageInputError, join, read_bytes

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
SS_TYPES = frozenset("nvasr")
# NLTK's rule for a lemma's syntactic marker: the non-greedy name, then an optional "(…)" at the end.
_MARKER = re.compile(r"(.*?)(\(.*\))?$")


@dataclass(frozen=True)
class Synset:
    """One synset line: its id (``ss_type`` + 8-digit offset, e.g. ``n02084071``) and first lemma."""

    synset_id: str
    first_lemma: str


@dataclass
class WordNetNames:
    """Distinct head names, in first-seen order, with the synsets behind each."""

    names: dict[str, list[str]] = field(default_factory=dict)  # name -> synset ids
    first_lemma: dict[str, str] = field(default_factory=dict)  # name -> first synset's lemma
    synsets: int = 0
    per_file: dict[str, int] = field(default_factory=dict)
    cut_at_dot: int = 0  # synsets whose name was cut at a dot inside the lemma
    sha256: str = ""  # of the data files' bytes, in DATA_FILES order


def metaclip_head_name(first_lemma: str) -> str:
    """MetaCLIP's entry for a synset whose first lemma (as stored in ``data.*``) is ``first_lemma``.

    ``strip_marker(lemma).lower()``, cut before its first ``.``, with ``_`` replaced by a space.
    """
    lemma = _MARKER.match(first_lemma).group(1)
    name = lemma.lower()
    cut = name.find(".")
    if cut >= 0:
        name = name[:cut]
    return name.replace("_", " ")


def parse_data_file(text: str, source: str) -> list[Synset]:
    """Parse one ``data.*`` file; a malformed synset line is an error naming ``source`` and the line."""
    synsets = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip() or line.startswith("  "):
            continue
        fields = line.split(" ", 5)
        try:
            offset, lex_filenum, ss_type, w_cnt, word = fields[:5]
            if not (len(offset) == 8 and offset.isdigit() and lex_filenum.isdigit()):
                raise ValueError("bad offset or lex_filenum")
            if ss_type not in SS_TYPES:
                raise ValueError(f"unknown ss_type {ss_type!r}")
            if int(w_cnt, 16) < 1 or not word:
                raise ValueError("a synset needs at least one word")
        except ValueError as exc:
            raise StageInputError(
                f"{source}: line {lineno}: not a WordNet data line ({exc}): {line[:80]!r}"
            ) from exc
        synsets.append(Synset(f"{ss_type}{offset}", word))
    return synsets


def read_wordnet(directory: str) -> WordNetNames:
    """Read the four ``data.*`` files under ``directory`` and collect MetaCLIP's head names."""
    result = WordNetNames()
    digest = hashlib.sha256()
    for name in DATA_FILES:
        path = join(directory, name)
        try:
            data = read_bytes(path)
        except FileNotFoundError as exc:
            raise StageInputError(
                f"{path}: WordNet data file not found; --wordnet takes a directory holding "
                f"{', '.join(DATA_FILES)} (Debian/Ubuntu: apt-get install wordnet-base, then "
                "--wordnet /usr/share/wordnet)"
            ) from exc
        digest.update(name.encode() + b"\0" + data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StageInputError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        synsets = parse_data_file(text, path)
        result.per_file[name] = len(synsets)
        progress.tick(len(synsets), source=f"wordnet {name}")
        for synset in synsets:
            head = metaclip_head_name(synset.first_lemma)
            if "." in _MARKER.match(synset.first_lemma).group(1):
                result.cut_at_dot += 1
            ids = result.names.get(head)
            if ids is None:
                result.names[head] = [synset.synset_id]
                result.first_lemma[head] = synset.first_lemma
            else:
                ids.append(synset.synset_id)
        result.synsets += len(synsets)
    result.sha256 = digest.hexdigest()
    return result
