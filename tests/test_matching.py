"""The Aho–Corasick matcher must give exactly the sets of the naive MetaCLIP rule."""

from __future__ import annotations

import pickle
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.matching import Matcher, naive_match, padded_key, spacing

# --- the rule, case by case -------------------------------------------------------------------


def ids(entries, caption, **kw):
    return Matcher(entries, **kw).match(caption)


def test_spacing_is_metaclips():
    assert spacing("a,b.c;d:e?f!g`h") == " a , b . c ; d : e ? f ! g ` h "
    assert spacing("x\ty\nz\rw") == " x y z w "


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a cat on a mat", ["cat"]),
        ("cats and kittens", []),
        ("a cat-like toy", []),
        ("Cat.", []),  # case is kept
        ("my cat.", ["cat"]),
        ("cat,dog", ["cat", "dog"]),
        ("(cat)", []),  # brackets are not split off by MetaCLIP
        ("hot dog stand", ["dog", "hot dog"]),  # overlapping phrases both match
        ("cat\tdog", ["cat", "dog"]),
        ("the cat cat", ["cat"]),  # a set: repeated entries count once
    ],
)
def test_whole_phrase_semantics(caption, expected):
    entries = ["cat", "dog", "hot dog"]
    assert [entries[i] for i in ids(entries, caption)] == expected


def test_case_kept_and_casefold_merges_collisions(caplog):
    entries = ["Gas", "gas", "GAS station", "Straße"]
    assert ids(entries, "gas and Gas") == [0, 1]
    matcher = Matcher(entries, casefold=True)
    assert matcher.merges == {0: [1]}
    assert "merged 1 entries" in caplog.text
    assert matcher.match("GAS Station") == [0, 2]
    assert matcher.match("STRASSE") == [3]  # casefold, not lower: ß folds to ss
    assert matcher.match("gas") == naive_match("gas", entries, casefold=True) == [0]


def test_no_space_scripts_match_inside_words():
    entries = ["猫", "可爱", "แมว", "cat", "東京 tower", "ねこ"]
    assert padded_key("猫") == "猫"
    assert padded_key("東京 tower") == "東京 tower "
    assert padded_key("cat") == " cat "
    assert ids(entries, "我的猫很可爱") == [0, 1]
    assert ids(entries, "แมวสีดำ") == [2]
    assert ids(entries, "大きいねこです") == [5]
    assert ids(entries, "見て東京 tower!") == [4]
    assert ids(entries, "見て東京 towers") == []
    assert ids(entries, "cat猫") == [0]  # "cat" is padded on both sides, 猫 is not


def test_entries_with_split_punctuation_never_match():
    entries = ["U.S.", "e.g", "friend's", "3:30"]
    assert ids(entries, "U.S. army, e.g. my friend's at 3:30") == [2]


def test_match_many_gives_sorted_int32_lists_and_empty_for_null():
    matcher = Matcher(["b", "a", "c"])
    out = matcher.match_many(["c a b", None, "", "x", "a"])
    assert str(out.type) == "list<item: int32>"
    assert out.to_pylist() == [[0, 1, 2], [], [], [], [1]]


def test_matcher_pickles():
    matcher = Matcher(["red car", "car", "红"])
    clone = pickle.loads(pickle.dumps(matcher))
    assert clone.match("a red car, 红色") == matcher.match("a red car, 红色") == [0, 1, 2]


# --- property: any caption, any list --------------------------------------------------------------

ALPHABET = st.sampled_from(
    list("abcAB 0123")
    + list(",.;:?!`-'()\t\n\r")
    + ["é", "É", "ß", "ﬁ", "İ", "猫", "可", "爱", "。", "ก", "ข", "ñ", "\u3000", "\u00a0", "😀"]
)
TEXT = st.text(ALPHABET, min_size=0, max_size=40)
ENTRY = st.text(ALPHABET, min_size=1, max_size=6).filter(lambda e: e.strip() != "")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(ENTRY, min_size=1, max_size=25, unique=True),
    captions=st.lists(TEXT, max_size=8),
)
def test_matcher_equals_naive_reference(entries, captions):
    matcher = Matcher(entries)
    folded = Matcher(entries, casefold=True)
    got = matcher.match_many(captions).to_pylist()
    for caption, found in zip(captions, got):
        assert found == naive_match(caption, entries)
        assert folded.match(caption) == naive_match(caption, entries, casefold=True)


@settings(max_examples=150, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(["cat", "Cat", "hot", "dog", "hot dog", "猫", "a"]), max_size=12
    ),
    seps=st.lists(st.sampled_from([" ", ", ", ". ", "-", "", "\n", "!"]), max_size=12),
)
def test_matcher_equals_naive_on_phrase_soup(words, seps):
    entries = ["cat", "Cat", "hot dog", "dog", "猫", "a", "a cat"]
    caption = "".join(w + s for w, s in zip(words, seps + [""] * len(words)))
    assert Matcher(entries).match(caption) == naive_match(caption, entries)


# --- real captions: every caption of every set in ../shared/data ---------------------------------

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_NO_SPACE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]")


def realistic_entries(captions: list[str], rng: np.random.Generator) -> list[str]:
    """A MetaCLIP-like list for one caption set: head and tail unigrams and bigrams, case variants,
    entries with split-off punctuation, and characters and bigrams for no-space scripts."""
    if any(_NO_SPACE.search(c) for c in captions[:50]):
        chars = Counter(ch for c in captions for ch in c if _NO_SPACE.match(ch))
        pairs = Counter(
            c[i : i + 2]
            for c in captions
            for i in range(len(c) - 1)
            if _NO_SPACE.match(c[i]) and _NO_SPACE.match(c[i + 1])
        )
        entries = [ch for ch, _ in chars.most_common(300)] + [p for p, _ in pairs.most_common(300)]
        entries += ["一个 man", "猫", "。"[:0] + "白色的"]
        return list(dict.fromkeys(entries))
    words = Counter(w for c in captions for w in _WORD.findall(c))
    bigrams = Counter(
        f"{a} {b}" for c in captions for a, b in zip(_WORD.findall(c), _WORD.findall(c)[1:])
    )
    vocab = [w for w, _ in words.most_common(4000)]
    entries = vocab[:300] + [
        vocab[i] for i in rng.choice(len(vocab), size=min(200, len(vocab)), replace=False)
    ]
    entries += [b for b, _ in bigrams.most_common(200)]
    entries += [w.capitalize() for w in vocab[:50]] + [w.upper() for w in vocab[:10]]
    entries += ["U.S.", "e.g.", "Mr. Smith", "it's"]
    return list(dict.fromkeys(entries))


def naive_pairs(captions: list[str], entries: list[str], casefold: bool = False) -> np.ndarray:
    """The naive rule for every caption at once: each padded entry is searched (``str.find``) in the
    spaced captions joined by NUL, and each hit is mapped back to its caption. Returns the sorted
    distinct (caption, entry) pairs."""
    spaced = [spacing(c).casefold() if casefold else spacing(c) for c in captions]
    text = "\0".join(spaced)
    starts = np.cumsum([0] + [len(s) + 1 for s in spaced[:-1]])
    pairs = []
    seen: dict[str, int] = {}
    for entry_id, entry in enumerate(entries):
        key = padded_key(entry.casefold() if casefold else entry)
        reported = seen.setdefault(key, entry_id)  # folded collisions report the first id
        positions = []
        at = text.find(key)
        while at != -1:
            positions.append(at)
            at = text.find(key, at + 1)
        if positions:
            rows = np.searchsorted(starts, np.asarray(positions), side="right") - 1
            pairs.append(np.stack([rows, np.full(len(rows), reported)], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def matcher_pairs(matcher: Matcher, captions: list[str]) -> np.ndarray:
    lists = matcher.match_many(captions)
    offsets = lists.offsets.to_numpy()
    rows = np.repeat(np.arange(len(captions)), np.diff(offsets))
    return np.stack([rows, lists.values.to_numpy().astype(np.int64)], axis=1)


def test_matcher_equals_naive_on_every_real_caption(real_captions):
    rng = np.random.default_rng(0)
    total = 0
    for name, captions in real_captions.items():
        entries = realistic_entries(captions, rng)
        for casefold in (False, True) if name in ("coco_val2017", "multi30k_de") else (False,):
            got = matcher_pairs(Matcher(entries, casefold=casefold), captions)
            want = naive_pairs(captions, entries, casefold)
            assert len(want) > len(captions) // 10, f"{name}: the test list barely matches"
            assert np.array_equal(got, want), f"{name} (casefold={casefold}): sets differ"
            total += len(captions)
    assert total > 0


def test_the_matcher_cache_loads_a_pickle_once_and_keeps_one(tmp_path):
    from curation.matching import cached_matcher, clear_matcher_cache, is_matcher_cached

    paths = []
    for i, entries in enumerate((["dog"], ["cat"])):
        path = tmp_path / f"m{i}.pkl"
        path.write_bytes(pickle.dumps(Matcher(entries)))
        paths.append(str(path))
    clear_matcher_cache()
    assert not is_matcher_cached(paths[0])
    first = cached_matcher(paths[0])
    assert is_matcher_cached(paths[0]) and cached_matcher(paths[0]) is first
    assert first.match("a dog") == [0]
    cached_matcher(paths[1])
    assert is_matcher_cached(paths[1]) and not is_matcher_cached(paths[0])
    clear_matcher_cache()
    assert not is_matcher_cached(paths[1])


def test_casefold_merges_are_reported_from_the_cache_without_rebuilding(
    tmp_path, monkeypatch, caplog
):
    """The driver reports case-folding merges on every run; the second run reads them from the
    matcher cache instead of building the key table of the whole list again."""
    import curation.stages.match as stage

    monkeypatch.setenv("CURATION_CACHE", str(tmp_path))
    entries = ["Gas", "cat", "gas", "GAS"]
    with caplog.at_level("WARNING"):
        stage.report_casefold_merges(entries)
    first = [r.getMessage() for r in caplog.records if "case folding merged" in r.getMessage()]
    assert first == [
        "case folding merged 2 entries into 1 (first id kept): 'Gas' <- ['gas', 'GAS']"
    ]
    assert len(list((tmp_path / "matchers").glob("merges-*.json"))) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("the key table was built again")

    monkeypatch.setattr(stage.KeyTable, "build", no_build)
    caplog.clear()
    with caplog.at_level("WARNING"):
        stage.report_casefold_merges(entries)
    again = [r.getMessage() for r in caplog.records if "case folding merged" in r.getMessage()]
    assert again == first
