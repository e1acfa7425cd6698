"""Metadata loading (MetaCLIP JSON and plain text) and hygiene errors that name the line."""

from __future__ import annotations

import json
import logging

import pytest

from curation.matching import Matcher, naive_match
from curation.metadata import MetadataError, check_entries, load_metadata


def write(path, text: str | bytes):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def test_metaclip_json_and_text_give_the_same_ids(tmp_path):
    entries = ["0", "1", "cat", "New York", "Gas", "gas", "猫", "hot dog"]
    as_json = load_metadata(write(tmp_path / "m.json", json.dumps(entries)))
    as_text = load_metadata(write(tmp_path / "m.txt", "\n".join(entries) + "\n"))
    assert as_json.entries == as_text.entries == entries


def test_text_without_trailing_newline_and_crlf(tmp_path):
    assert load_metadata(write(tmp_path / "m.txt", "a\r\nb\r\nc")).entries == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("cat\n\ndog\n", "line 2: empty entry"),
        ("cat\n   \n", "line 2: empty entry"),
        ("cat\ndog\ncat\n", "line 3 repeats line 1 ('cat')"),
        ('["cat", 3]', "line 2: entry 3 is a int, not a string"),
        ('["cat", null]', "line 2: entry None is a NoneType"),
        ('["cat", "dog"', "invalid JSON"),
        ('{"cat": 1}', "must hold one array of strings"),
        ("", "the metadata list is empty"),
        (b"cat\n\xff\xfe\n", "line 2: not valid UTF-8"),
    ],
)
def test_bad_metadata_names_file_and_line(tmp_path, content, message):
    path = write(tmp_path / ("bad.json" if content[:1] in ("[", "{") else "bad.txt"), content)
    with pytest.raises(MetadataError) as err:
        load_metadata(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_all_punctuation_entries_are_kept_with_a_warning_and_a_count(tmp_path, caplog):
    """MetaCLIP-format lists are used with their ids as they are: a punctuation entry keeps its
    id. ``-`` matches a caption's " - "; ``...`` (split-off punctuation) never matches."""
    path = write(tmp_path / "m.txt", "cat\n-\n...\ndog\n!?\n")
    with caplog.at_level(logging.WARNING):
        loaded = load_metadata(path)
    assert loaded.entries == ["cat", "-", "...", "dog", "!?"]
    assert "3 entries are only punctuation" in caplog.text and "line 2 '-'" in caplog.text
    summary = loaded.summary()
    assert summary["punctuation_entries"] == 3
    assert [e["entry"] for e in summary["punctuation_examples"]] == ["-", "...", "!?"]
    assert summary["unmatchable_entries"] == 2  # '...' and '!?'
    caption = "a cat - a dog... !?"
    assert naive_match(caption, loaded.entries) == [0, 1, 3]
    assert Matcher(loaded.entries).match(caption) == [0, 1, 3]
    assert naive_match("a well-known dog", loaded.entries) == [3]  # '-' inside a word: no match


def test_symbols_are_not_punctuation():
    assert check_entries(["$", "❤", "C++"]).entries == ["$", "❤", "C++"]


def test_duplicates_dropped_with_a_warning_when_asked(tmp_path, caplog):
    path = write(tmp_path / "dup.txt", "cat\ndog\ncat\nbird\ndog\n")
    with caplog.at_level(logging.WARNING):
        loaded = load_metadata(path, drop_duplicates=True)
    assert loaded.entries == ["cat", "dog", "bird"]
    assert loaded.dropped_duplicates == [(3, "cat"), (5, "dog")]
    assert "line 3 'cat'" in caplog.text and "line 5 'dog'" in caplog.text


def test_unmatchable_entries_are_kept_and_reported():
    checked = check_entries(["U.S.", "cat", "a\tb"])
    assert checked.entries == ["U.S.", "cat", "a\tb"]  # ids stay MetaCLIP-compatible
    assert checked.unmatchable == [(0, "U.S."), (2, "a\tb")]
    assert checked.summary()["unmatchable_entries"] == 2


def test_missing_file(tmp_path):
    with pytest.raises(MetadataError, match="not found"):
        load_metadata(str(tmp_path / "nope.json"))


def test_bulk_check_of_a_clean_list_finds_what_the_entry_by_entry_check_finds(monkeypatch):
    """A plain list is checked with Arrow kernels; a list the bulk check declines goes entry by
    entry. Both must report the same entries, punctuation and unmatchable entries."""
    import random

    import curation.metadata as metadata

    rng = random.Random(5)
    odd = [",", ".", ";", ":", "?", "!", "`", "\t", "\n", "\r", "-", "_", "…", "·", "$", "+", "é",
           "5", "²", "Ⅻ", "猫", "\u00a0", "\u200b", "a", "B", " "]  # fmt: skip
    entries = {"".join(rng.choice(odd) for _ in range(rng.randint(1, 4))) for _ in range(4000)}
    entries = sorted(e for e in entries if metadata.strip_edges(e) == e)  # no padded entries
    assert any("\t" in e for e in entries) and any("\n" in e for e in entries)
    bulk = check_entries(entries, "x.json")
    monkeypatch.setattr(metadata, "_check_clean_list", lambda entries, source: None)
    one_by_one = check_entries(entries, "x.json")
    assert bulk == one_by_one
    assert bulk.punctuation and bulk.unmatchable
    assert metadata._check_clean_list([*entries, entries[0]], "x") is None  # a duplicate
    assert metadata._check_clean_list(["cat", " dog"], "x") is None  # padded
    assert metadata._check_clean_list(["cat", 3], "x") is None  # not a string
