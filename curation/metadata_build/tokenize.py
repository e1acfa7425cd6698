"""Tokenising a text corpus into the unigrams and bigrams that a metadata list can hold.

MetaCLIP counted Wikipedia unigrams and bigrams; its matcher (``curation.matching``) then looks for
``" " + entry + " "`` in a caption spaced by its rule. A token is only useful as an entry if that
rule can find it, so the tokeniser follows the matcher, not a linguistic word definition:

1. **Spacing**: the text gets MetaCLIP's caption spacing, so ``, . ; : ? !`` and the backtick become
   separate chunks, and tab, newline and carriage return become spaces. An entry holding one of
   those characters could never match, so no token holds one.
2. **Chunks**: the spaced text is split on Unicode white space (:py:meth:`str.split`).
3. **No-space scripts** (CJK, kana, Thai, Lao, Myanmar, Khmer, Tibetan; the characters for which
   :func:`curation.matching.is_no_space_char` is true): inside a chunk, every such character is a
   token of its own, and the runs of other characters between them are tokens too (``"T恤"`` gives
   ``T`` and ``恤``). These scripts have no word boundaries that a rule could find without a
   dictionary, so unigrams are characters and bigrams are character pairs: a high-PMI pair is
   usually a two-character word. The matcher does not pad no-space ends, so such entries match
   inside words, as in MetaCLIP 2. Nothing is dropped for its script.
4. **Punctuation**: a chunk or piece made only of punctuation (Unicode category ``P*``, plus the
   ASCII symbols of Python's ``string.punctuation`` — ``$ + < = > ^ ` | ~`` — and ``～``, which
   MetaCLIP 2's ``is_pure_punctuations`` also counts) is no token (``-``, ``"``, ``|``, ``。``) and
   breaks the bigram chain, as in MetaCLIP 2's ``count_ngrams``. Punctuation (``P*``) at either end
   of a token is stripped (``"(born"`` counts as ``born``; ``cat's``, ``mother-in-law``, ``C++`` and
   ``$100`` stay whole) and a stripped end also breaks the chain, so a bigram never spans
   punctuation.
5. **Bigrams** are pairs of consecutive tokens with no break between them. The bigram's text is
   what the caption holds between them: ``w1 + " " + w2`` across white space, ``w1 + w2`` inside a
   chunk (only possible next to a no-space character). Both forms of one pair are kept apart.

Case is kept (MetaCLIP keeps it: ``Apple`` and ``apple`` are different entries). Each text (a line
of a text file, a row of a table) is one document: no bigram spans two of them.
"""

from __future__ import annotations

import functools
import re
import string
import sys
import unicodedata
from collections import Counter

from curation.matching import NO_SPACE_CHAR  # the matcher's own character class
from curation.metadata import SPACED_CONTROLS, WRAPPED_PUNCTUATION

_SPACING = str.maketrans(
    {**{p: f" {p} " for p in WRAPPED_PUNCTUATION}, **{c: " " for c in SPACED_CONTROLS}}
)
_NO_SPACE_CLASS = NO_SPACE_CHAR.pattern  # "[...]"
_HAS_NO_SPACE = re.compile(_NO_SPACE_CLASS)
# A no-space character, or a maximal run of other characters.
_PIECES = re.compile(f"{_NO_SPACE_CLASS}|[^{_NO_SPACE_CLASS[1:]}+")


@functools.cache
def punctuation_chars() -> str:
    """Every code point of Unicode general category ``P*``, as one string (for ``str.strip``)."""
    return "".join(
        chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")
    )


@functools.cache
def _punctuation_set() -> frozenset[str]:
    return frozenset(punctuation_chars())


# Symbols that make no token on their own (MetaCLIP 2's is_pure_punctuations), besides P*.
_SYMBOLS_ONLY = frozenset(string.punctuation) | {"～"}


def _is_symbols(core: str) -> bool:
    return all(ch in _SYMBOLS_ONLY for ch in core)


def scan(text: str) -> tuple[list[str], list[str | None]]:
    """The tokens of ``text`` (see the module docstring) and, for each, its link to the one before.

    ``links[i]`` is ``None`` when no bigram joins ``tokens[i - 1]`` and ``tokens[i]``, else that
    bigram's separator (``" "`` or ``""``). ``links[0]`` is always ``None``.
    """
    punct = punctuation_chars()
    is_punct = _punctuation_set().__contains__
    spaced = text.translate(_SPACING)
    any_no_space = _HAS_NO_SPACE.search(spaced) is not None
    tokens: list[str] = []
    links: list[str | None] = []
    linkable = False  # may the next token form a bigram with the last one?
    for chunk in spaced.split():
        pieces = (
            _PIECES.findall(chunk) if any_no_space and _HAS_NO_SPACE.search(chunk) else (chunk,)
        )
        sep = " "
        for piece in pieces:
            # Set lookups first: stripping with the ~800 punctuation characters is slower.
            lead = piece.lstrip(punct) if is_punct(piece[0]) else piece
            if not lead:  # all punctuation: no token, and a break
                linkable = False
                continue
            core = lead.rstrip(punct) if is_punct(lead[-1]) else lead
            if core[0] in _SYMBOLS_ONLY and _is_symbols(core):  # e.g. "|", "+", "`": no token
                linkable = False
                continue
            tokens.append(core)
            links.append(sep if linkable and len(lead) == len(piece) else None)
            linkable = len(core) == len(lead)
            sep = ""
    return tokens, links


def tokenize(text: str) -> list[tuple[str, str | None]]:
    """``(token, link)`` pairs of :func:`scan`: the link is the separator of the bigram that joins
    the token to the previous one (``" "`` or ``""``), or ``None``."""
    tokens, links = scan(text)
    return list(zip(tokens, links, strict=True))


def bigram_keys(tokens: list[str], links: list[str | None]) -> list[tuple[str, str, str]]:
    """The ``(w1, sep, w2)`` bigrams of one scanned text."""
    return [(tokens[i - 1], sep, tokens[i]) for i, sep in enumerate(links) if sep is not None]


def count_ngrams(
    texts, unigrams: Counter | None = None, bigrams: Counter | None = None
) -> tuple[Counter, Counter]:
    """Count unigrams (``token → n``) and bigrams (``(w1, sep, w2) → n``) over ``texts``.

    The pure-Python reference of the Spark counting; ``None`` or empty texts count nothing.
    """
    unigrams = Counter() if unigrams is None else unigrams
    bigrams = Counter() if bigrams is None else bigrams
    for text in texts:
        if not text:
            continue
        tokens, links = scan(text)
        unigrams.update(tokens)
        bigrams.update(bigram_keys(tokens, links))
    return unigrams, bigrams
