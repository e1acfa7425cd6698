"""The `metadata` stage: WordNet parsing, corpus counting and PMI, titles, hygiene, determinism."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import cli
from curation.matching import Matcher
from curation.metadata import check_entries, load_metadata
from curation.metadata_build.corpus import (
    bigram_candidates,
    corpus_stats,
    count_ngrams_spark,
    read_table,
    unigram_candidates,
)
from curation.metadata_build.tokenize import count_ngrams, tokenize
from curation.metadata_build.wordnet import metaclip_head_name, read_wordnet
from curation.stages.metadata import MetadataConfig, run_metadata, sidecar_paths

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEBIAN_WORDNET = Path("/usr/share/wordnet")
FLICKR8K = DATA / "flickr8k" / "Flickr8k.token.txt"
COCO = DATA / "coco_captions" / "captions_val2017.json"
COCO_CN = DATA / "coco_cn" / "coco-cn_ext.icap2020.txt"


def flickr8k_captions() -> list[str]:
    if not FLICKR8K.exists():
        pytest.skip(f"{FLICKR8K} not found (real caption data lives in the project's workspace)")
    return [
        ln.split("\t", 1)[1]
        for ln in FLICKR8K.read_text(encoding="utf-8").splitlines()
        if "\t" in ln
    ]


def coco_captions() -> list[str]:
    if not COCO.exists():
        pytest.skip(f"{COCO} not found (real caption data lives in the project's workspace)")
    return [a["caption"] for a in json.loads(COCO.read_text(encoding="utf-8"))["annotations"]]


def coco_cn_captions() -> list[str]:
    if not COCO_CN.exists():
        pytest.skip(f"{COCO_CN} not found (real caption data lives in the project's workspace)")
    return [
        ln.split("\t", 1)[1]
        for ln in COCO_CN.read_text(encoding="utf-8").splitlines()
        if "\t" in ln
    ]


def read_provenance(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t"))


# --- tokenisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # MetaCLIP's split characters end tokens and break bigrams; "." is never inside a token.
        ("A dog, a cat.", [("A", None), ("dog", " "), ("a", None), ("cat", " ")]),
        ("U.S. flag", [("U", None), ("S", None), ("flag", None)]),
        # Punctuation at the ends is stripped and breaks the chain; inner punctuation stays.
        ('(born 1950) "red car"', [("born", None), ("1950", " "), ("red", None), ("car", " ")]),
        ("mother-in-law's cat -- ok", [("mother-in-law's", None), ("cat", " "), ("ok", None)]),
        ("C++ | $100 `x`", [("C++", None), ("$100", None), ("x", None)]),
        # No-space scripts: characters; bigrams joined as written.
        ("猫咪。T恤", [("猫", None), ("咪", ""), ("T", None), ("恤", "")]),
        ("猫 dog", [("猫", None), ("dog", " ")]),
        ("", []),
        ("  \t\n ", []),
    ],
)
def test_tokenize(text, expected):
    assert tokenize(text) == expected


def test_no_corpus_token_is_unmatchable_or_punctuation():
    texts = ["Hello, world! `x` y; z: w? ...", "泳装的女人，躺在海水里。", "a\tb\nc (d) [e] 'f'"]
    unigrams, bigrams = count_ngrams(texts)
    for token in unigrams:
        assert not any(ch in ",.;:?!`\t\n\r " for ch in token), token
    check_entries(list(unigrams))
    # Every bigram is found by MetaCLIP matching in the text it came from.
    for w1, sep, w2 in bigrams:
        entry = f"{w1}{sep}{w2}"
        assert any(Matcher([entry]).match(t) == [0] for t in texts), entry


# --- WordNet ------------------------------------------------------------------------------------

HEADER = "".join(f"  {i} WordNet license header line {i}  \n" for i in range(1, 30))
FIXTURE = {
    "data.noun": [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which exists",
        "00001930 03 n 02 Physical_Entity 0 thing 0 000 | an entity that has physical existence",
        "00002000 20 n 01 St._John's_wort 0 000 | a plant",
        "00002100 06 n 01 .22_caliber 0 000 | a caliber",
    ],
    "data.verb": ["00004000 29 v 01 entity 0 000 01 + 02 00 | not a verb, a repeated name"],
    "data.adj": [
        "00003000 00 a 02 outback(a) 0 remote 0 000 | inland",
        "00003100 00 s 01 used_to(p) 0 000 | accustomed",
    ],
    "data.adv": ["00005000 02 r 01 O.K. 0 000 | all right"],
}


@pytest.fixture
def wordnet_dir(tmp_path) -> Path:
    directory = tmp_path / "wordnet"
    directory.mkdir()
    for name, lines in FIXTURE.items():
        (directory / name).write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("lemma", "name"),
    [
        ("dog", "dog"),
        ("Physical_Entity", "physical entity"),  # NLTK lower-cases the first lemma
        ("St._John's_wort", "st"),  # MetaCLIP cuts ss.name() at its first "."
        (".22_caliber", ""),
        ("outback(a)", "outback"),  # NLTK strips the adjective marker
        ("used_to(p)", "used to"),
    ],
)
def test_metaclip_head_name(lemma, name):
    assert metaclip_head_name(lemma) == name


def test_wordnet_fixture(wordnet_dir):
    wn = read_wordnet(str(wordnet_dir))
    assert wn.synsets == 8
    assert wn.per_file == {"data.noun": 4, "data.verb": 1, "data.adj": 2, "data.adv": 1}
    assert wn.names == {
        "entity": ["n00001740", "v00004000"],
        "physical entity": ["n00001930"],
        "st": ["n00002000"],
        "": ["n00002100"],
        "outback": ["a00003000"],
        "used to": ["s00003100"],
        "o": ["r00005000"],
    }
    assert wn.cut_at_dot == 3

    out = wordnet_dir.parent / "out" / "list.json"
    result = run_metadata(None, MetadataConfig(output=str(out), wordnet=str(wordnet_dir)))
    entries = json.loads(out.read_text())
    names = ["entity", "o", "outback", "physical entity", "st", "used to"]  # by code point
    assert entries == [str(i) for i in range(100)] + names
    assert load_metadata(str(out)).entries == entries
    summary = result.summary
    assert summary["entries_per_source"] == {"numbers": 100, "wordnet": 6}
    assert summary["rejected"]["by_reason"] == {"empty": 1}
    provenance, _ = sidecar_paths(str(out))
    rows = {r["entry"]: r for r in read_provenance(Path(provenance)) if r["source"] == "wordnet"}
    assert rows["entity"]["count"] == "2" and rows["entity"]["detail"] == "n00001740"
    assert rows["physical entity"]["detail"] == "n00001930 Physical_Entity"


def test_wordnet_missing_file_is_a_clear_error(wordnet_dir):
    (wordnet_dir / "data.adv").unlink()
    with pytest.raises(ValueError, match=r"data.adv: WordNet data file not found.*wordnet-base"):
        read_wordnet(str(wordnet_dir))


@pytest.mark.skipif(
    not (DEBIAN_WORDNET / "data.noun").exists(),
    reason="Debian's wordnet-base is not installed (apt-get install wordnet-base); the test installs nothing",
)
def test_debian_wordnet_and_the_shipped_default(tmp_path):
    wn = read_wordnet(str(DEBIAN_WORDNET))
    assert wn.synsets == 117_659  # WordNet 3.0
    assert wn.names["dog"][0] == "n02084071"
    assert "physical entity" in wn.names and "st" in wn.names and "" in wn.names

    default = REPO / "metadata" / "default.json"
    if not default.exists():
        pytest.skip("metadata/default.json is not built yet")
    shipped = json.loads((REPO / "metadata" / "default.summary.json").read_text())
    if shipped["inputs"]["wordnet"]["sha256"] != wn.sha256:
        pytest.skip("the installed WordNet files differ from those the default was built from")
    # `make metadata` must rebuild the shipped list and provenance byte for byte.
    out = tmp_path / "default.json"
    run_metadata(None, MetadataConfig(output=str(out), wordnet=str(DEBIAN_WORDNET)))
    assert out.read_bytes() == default.read_bytes()
    provenance = REPO / "metadata" / "default.provenance.tsv"
    assert (tmp_path / "default.provenance.tsv").read_bytes() == provenance.read_bytes()
    assert load_metadata(str(default)).entries[:100] == [str(i) for i in range(100)]


# --- corpus counting (Spark) --------------------------------------------------------------------


def pmi(n12: int, n1: int, n2: int, total: int) -> float:
    """The test's own PMI in bits, on Python integers: log2(n12 N / (n1 n2))."""
    return math.log2(n12 * total) - math.log2(n1 * n2)


def test_counts_and_pmi_equal_python(spark, tmp_path):
    lines = flickr8k_captions()[:12_000]  # real captions; a subset keeps the test fast
    path = tmp_path / "flickr8k.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    df, fmt = read_table(spark, str(path), "corpus")
    assert fmt == "text"
    counts = count_ngrams_spark(df.withColumnRenamed("value", "text")).persist()
    try:
        rows = counts.collect()
        stats = corpus_stats(counts)
        uni_spark = {r["w1"]: r["n"] for r in rows if r["kind"] == 1}
        bi_spark = {(r["w1"], r["sep"], r["w2"]): r["n"] for r in rows if r["kind"] == 2}
        uni, bi = count_ngrams(lines)
        assert uni_spark == dict(uni)
        assert bi_spark == dict(bi)
        total = sum(uni.values())
        assert stats.languages[""].tokens == total and stats.languages[""].rows == len(lines)

        unigrams = unigram_candidates(counts, 30)
        assert {t: n for _, t, n in unigrams.rows} == {t: n for t, n in uni.items() if n >= 30}

        theta, floor = 12.0, 3
        bigrams = bigram_candidates(counts, {"": total}, theta, floor)
    finally:
        counts.unpersist()
    expected = {
        k: pmi(n, uni[k[0]], uni[k[2]], total)
        for k, n in bi.items()
        if n >= floor and pmi(n, uni[k[0]], uni[k[2]], total) >= theta
    }
    got = {(b.w1, b.sep, b.w2): b for b in bigrams.rows}
    assert set(got) == set(expected) and len(got) > 50
    for key, value in expected.items():
        b = got[key]
        assert b.pmi == pytest.approx(value, abs=1e-9)
        assert (b.n, b.n1, b.n2) == (bi[key], uni[key[0]], uni[key[2]])


def test_build_is_deterministic_across_partitionings(spark, tmp_path):
    captions = coco_captions()[:10_000]
    corpus = tmp_path / "coco.jsonl"
    corpus.write_text(
        "".join(json.dumps({"caption": c}) + "\n" for c in captions), encoding="utf-8"
    )
    outputs = {}
    for partitions in (1, 7):
        out = tmp_path / f"p{partitions}" / "meta.json"
        config = MetadataConfig(
            output=str(out),
            corpus=str(corpus),
            min_unigram_count=40,
            min_bigram_pmi=11.0,
            min_bigram_count=3,
            partitions=partitions,
        )
        summary = run_metadata(spark, config).summary
        provenance, _ = sidecar_paths(str(out))
        outputs[partitions] = (out.read_bytes(), Path(provenance).read_bytes(), summary)
    (list1, prov1, sum1), (list7, prov7, sum7) = outputs[1], outputs[7]
    assert list1 == list7
    assert prov1 == prov7
    drop = ("config", "files", "inputs")
    assert {k: v for k, v in sum1.items() if k not in drop} == {
        k: v for k, v in sum7.items() if k not in drop
    }

    # Thresholds are honoured, and the kept set is exactly what a Python recount keeps.
    rows = read_provenance(tmp_path / "p1" / "meta.provenance.tsv")
    uni, bi = count_ngrams(captions)
    total = sum(uni.values())
    got_uni = {r["entry"]: int(r["count"]) for r in rows if r["source"] == "unigram"}
    assert got_uni == {t: n for t, n in uni.items() if n >= 40}
    got_bi = {r["entry"]: float(r["pmi"]) for r in rows if r["source"] == "bigram"}
    want_bi = {}
    for (w1, sep, w2), n in bi.items():
        value = pmi(n, uni[w1], uni[w2], total)
        if n >= 3 and value >= 11.0:
            want_bi[f"{w1}{sep}{w2}"] = value
    assert set(got_bi) == set(want_bi) and got_bi
    for entry, value in got_bi.items():
        assert value == pytest.approx(want_bi[entry], abs=1e-6)  # written with 6 decimals
    # The order: numbers, then unigrams by count, then bigrams by PMI.
    entries = json.loads(list1)
    added = [(-got_uni[e], e) for e in entries[100:] if e in got_uni]
    assert added == sorted(added) and len(added) > 100


def test_multilingual_lists_with_caps(spark, tmp_path, wordnet_dir):
    en = flickr8k_captions()[:4000]
    zh = coco_cn_captions()
    texts = en + zh + ["a null language row", "a bad one", "   "]
    langs = ["en"] * len(en) + ["zh"] * len(zh) + [None, "bad/lang", "en"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"text": texts, "lang": langs}), corpus / "part-0.parquet")
    out = tmp_path / "lists"
    config = MetadataConfig(
        output=str(out),
        corpus=str(corpus),
        lang_col="lang",
        wordnet=str(wordnet_dir),
        min_unigram_count=20,
        min_bigram_pmi=6.0,
        min_bigram_count=5,
        max_unigrams=30,
        max_bigrams=10,
    )
    result = run_metadata(spark, config)
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "_SUCCESS",
        "_manifest.json",
        "en.json",
        "provenance.tsv",
        "summary.json",
        "und.json",
        "zh.json",
    ]
    summary = result.summary
    assert summary["source_statistics"]["corpus"]["bad_lang_rows"] == 1
    assert summary["source_statistics"]["corpus"]["languages"]["en"]["empty_rows"] == 1
    lists = {lang: json.loads((out / f"{lang}.json").read_text()) for lang in ("en", "zh", "und")}
    for lang, entries in lists.items():
        assert entries[:100] == [str(i) for i in range(100)]
        check_entries(entries)
        per_source = summary["languages"][lang]["entries_per_source"]
        assert per_source.get("unigram", 0) <= 30 and per_source.get("bigram", 0) <= 10
    assert summary["languages"]["en"]["entries_per_source"]["wordnet"] == 6
    assert "wordnet" not in summary["languages"]["zh"]["entries_per_source"]
    assert summary["languages"]["zh"]["sources"]["unigram"]["cap_reached"]

    rows = read_provenance(out / "provenance.tsv")
    zh_uni = [r for r in rows if r["lang"] == "zh" and r["source"] == "unigram"]
    zh_bi = [r for r in rows if r["lang"] == "zh" and r["source"] == "bigram"]
    assert zh_bi and all(len(r["entry"]) == 2 and " " not in r["entry"] for r in zh_bi)
    # The cap counts new entries, most frequent first (an entry already listed, such as a digit,
    # is an overlap and does not count): the Python recount's ranking.
    uni, _ = count_ngrams(zh)
    ranked = sorted(((t, n) for t, n in uni.items() if n >= 20), key=lambda tn: (-tn[1], tn[0]))
    expected, new = [], 0
    for token, n in ranked:
        if new == 30:
            break
        expected.append((token, n))
        new += token not in lists["zh"][:100]
    assert sorted((r["entry"], int(r["count"])) for r in zh_uni) == sorted(expected)
    assert sum(len(t) == 1 for t, _ in expected) >= 25  # no-space script: characters
    # Entries of no-space scripts match inside words (MetaCLIP 2's rule).
    matcher = Matcher(lists["zh"])
    assert sum(bool(matcher.match(c)) for c in zh[:200]) > 190
    first_bigram = zh_bi[0]["entry"]
    caption = next(c for c in zh if first_bigram in c)
    assert Matcher([first_bigram]).match(caption) == [0]


def test_titles_extra_and_cli(spark, tmp_path):
    titles = tmp_path / "titles.csv"
    titles.write_text(
        "title,views\n"
        "Main_Page,50\n"
        "Main_Page,30\n"  # summed: 80
        "File:Cat.jpg,1000\n"  # ':' -> rejected
        "Cat,69\n"  # below the threshold
        "Dog,70\n"
        ",100\n"  # no title: a bad row
        "Bird,lots\n",  # views not a number: a bad row
        encoding="utf-8",
    )
    extra = tmp_path / "extra.txt"
    long_entry = "x" * 300
    extra.write_text(f"Dog\nmy brand\n\n!!!\n{long_entry}\nmy brand\nsay, hi\n", encoding="utf-8")
    out = tmp_path / "m.json"
    argv = [
        "metadata",
        "--titles",
        str(titles),
        "--extra",
        str(extra),
        "--output",
        str(out),
        "--no-numbers",
    ]
    assert cli.main(argv) == 0
    assert json.loads(out.read_text()) == ["Main Page", "Dog", "my brand", "say, hi"]
    summary = json.loads((tmp_path / "m.summary.json").read_text())
    assert summary["rejected"]["by_reason"] == {
        "empty": 1,
        "all_punctuation": 1,
        "too_long": 1,
        "duplicate_in_source": 1,
        "title_has_colon": 1,
    }
    assert summary["overlaps"] == {"title+extra": 1}
    assert summary["unmatchable_entries"] == 1
    assert summary["source_statistics"]["titles"]["bad_rows"] == 2
    rows = read_provenance(tmp_path / "m.provenance.tsv")
    assert [(r["entry"], r["source"], r["views"]) for r in rows[:3]] == [
        ("Main Page", "title", "80"),
        ("Dog", "title", "70"),
        ("Dog", "extra", ""),
    ]
    # A rerun with the same inputs is skipped; --drop-unmatchable is a new config, so it runs.
    result = cli.run_command(argv)
    assert result.skipped
    result = cli.run_command([*argv, "--drop-unmatchable"])
    assert not result.skipped
    assert json.loads(out.read_text()) == ["Main Page", "Dog", "my brand"]
    assert result.summary["rejected"]["by_reason"]["unmatchable"] == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "at least one source"),
        ({"extra": "x.txt", "lang_col": "lang"}, "--lang-col needs a --corpus"),
        ({"corpus": "c.parquet", "lang_col": "lang", "output": "out.json"}, "a directory"),
        ({"extra": "x.txt", "min_unigram_count": 0}, "min_unigram_count must be at least 1"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    config = MetadataConfig(**{"output": "out/m.json", **options})
    with pytest.raises(ValueError, match=message):
        run_metadata(None, config)


def test_extra_only_needs_no_spark_and_keeps_file_order(tmp_path):
    extra = tmp_path / "mine.json"
    extra.write_text(
        json.dumps(["zebra crossing", " apple ", "Zebra", "tab\tentry", "bad\ufffd"]),
        encoding="utf-8",
    )
    out = tmp_path / "m.json"
    summary = run_metadata(
        None, MetadataConfig(output=str(out), extra=str(extra), numbers=False)
    ).summary
    assert json.loads(out.read_text()) == ["zebra crossing", "apple", "Zebra"]
    assert summary["rejected"]["by_reason"] == {"control_character": 1, "replacement_character": 1}
    assert Counter(r["source"] for r in read_provenance(tmp_path / "m.provenance.tsv")) == {
        "extra": 3
    }
