"""Building the lists: read every source the config names, then merge them (``assemble``)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from curation.metadata import MetadataError, parse_metadata
from curation.metadata_build.assemble import Candidate, ListBuilder
from curation.metadata_build.corpus import (
    TEXT_CANDIDATES,
    Cap,
    bigram_candidates,
    column,
    corpus_stats,
    count_ngrams_spark,
    language_column,
    pick_column,
    read_table,
    unigram_candidates,
)
from curation.metadata_build.titles import read_titles, title_candidates
from curation.metadata_build.wordnet import read_wordnet
from curation.storage import StageInputError, read_bytes

log = logging.getLogger(__name__)

NUMBERS = [str(i) for i in range(100)]


@dataclass(frozen=True)
class Sources:
    """Where the entries come from (each optional; see ``curate metadata --help``)."""

    wordnet: str = ""
    corpus: str = ""
    corpus_format: str = "auto"
    text_col: str = ""
    lang_col: str = ""  # one list per language when given
    titles: str = ""
    title_col: str = ""
    views_col: str = ""
    extra: str = ""


@dataclass(frozen=True)
class BuildRules:
    """What a candidate needs to become an entry, and how lists are capped and cleaned."""

    min_unigram_count: int = 100
    min_bigram_pmi: float = 30.0
    min_bigram_count: int = 1
    max_unigrams: int = 0
    max_bigrams: int = 0
    min_title_views: int = 70
    max_titles: int = 0
    numbers: bool = True
    wordnet_lang: str = "en"
    max_entry_chars: int = 256
    drop_unmatchable: bool = False
    partitions: int = 0


@dataclass
class BuildResult:
    """The lists (``lang → entries``; ``""`` is the only key without a language column)."""

    builders: dict[str, ListBuilder]
    multilingual: bool
    details: dict[str, Any] = field(default_factory=dict)  # per-source statistics for the summary

    def lists(self) -> dict[str, list[str]]:
        return {lang: b.entries for lang, b in sorted(self.builders.items())}


def _wordnet_detail(name: str, synset_id: str, lemma: str) -> str:
    return synset_id if lemma.replace("_", " ") == name else f"{synset_id} {lemma}"


def read_extra(path: str) -> list[Candidate]:
    """A user's entries (a JSON array or one per line), stripped, with their line numbers."""
    try:
        data = read_bytes(path)
    except FileNotFoundError as exc:
        raise StageInputError(f"{path}: extra entries file not found") from exc
    items = parse_metadata(data, path)
    out = []
    for line, item in enumerate(items, start=1):
        if not isinstance(item, str):
            raise MetadataError(
                f"{path}: line {line}: entry {item!r} is a {type(item).__name__}, not a string"
            )
        out.append(Candidate(item.strip(), detail=f"line {line}"))
    return out


def build_metadata(spark: SparkSession | None, sources: Sources, rules: BuildRules) -> BuildResult:
    """Read ``sources`` and merge them into one list per language by ``rules``.

    The sources are added in a fixed order (numbers, WordNet, corpus unigrams then bigrams,
    titles, extra entries), which is the order :class:`ListBuilder` resolves duplicates in.
    """
    lists = _Lists(sources, rules)
    if sources.wordnet:
        lists.read_wordnet()
    if not lists.multilingual or sources.wordnet:
        lists.builder(lists.wordnet_lang)
    if sources.corpus:
        if spark is None:
            raise ValueError("metadata: counting a corpus needs a Spark session")
        _add_corpus(spark, lists)
    if sources.titles:
        if spark is None:
            raise ValueError("metadata: reading a titles file needs a Spark session")
        _add_titles(spark, lists)
    if sources.extra:
        extra = read_extra(sources.extra)
        lists.details["extra"] = {"lines": len(extra)}
        for lang in sorted(lists.builders):
            lists.builders[lang].add_source("extra", extra)
    for lang, b in sorted(lists.builders.items()):
        b.check(f"metadata list{f' {lang!r}' if lists.multilingual else ''}")
    return BuildResult(lists.builders, lists.multilingual, lists.details)


class _Lists:
    """The lists being built, one per language, and the per-source statistics."""

    def __init__(self, sources: Sources, rules: BuildRules) -> None:
        self.sources, self.rules = sources, rules
        self.multilingual = bool(sources.lang_col)
        self.wordnet_lang = rules.wordnet_lang if self.multilingual else ""
        self.builders: dict[str, ListBuilder] = {}
        self.details: dict[str, Any] = {}
        self.wordnet_candidates: list[Candidate] = []

    def read_wordnet(self) -> None:
        wn = read_wordnet(self.sources.wordnet)
        # detail: the first synset's id, and its first lemma when the name is not just that lemma
        # with spaces (lower-cased, marker stripped or cut at a dot).
        self.wordnet_candidates = [
            Candidate(
                name, count=len(ids), detail=_wordnet_detail(name, ids[0], wn.first_lemma[name])
            )
            for name, ids in sorted(wn.names.items())
        ]
        self.details["wordnet"] = {
            "synsets": wn.synsets,
            "synsets_per_file": wn.per_file,
            "distinct_names": len(wn.names),
            "names_cut_at_dot": wn.cut_at_dot,
            "sha256": wn.sha256,
        }
        if self.multilingual:
            self.details["wordnet"]["lang"] = self.wordnet_lang
        log.info(
            "metadata: WordNet %s: %d synsets, %d names",
            self.sources.wordnet,
            wn.synsets,
            len(wn.names),
        )

    def builder(self, lang: str) -> ListBuilder:
        """The list of ``lang``, created with the sources that precede the corpus."""
        b = self.builders.get(lang)
        if b is None:
            rules = self.rules
            b = ListBuilder(lang, rules.max_entry_chars, rules.drop_unmatchable)
            self.builders[lang] = b
            if rules.numbers:
                b.add_source("numbers", (Candidate(n) for n in NUMBERS))
            if self.sources.wordnet and lang == self.wordnet_lang:
                b.add_source("wordnet", self.wordnet_candidates)
        return b

    def cap(self, limit: int) -> Cap | None:
        """The per-language cap of a source (``limit`` entries beyond those already listed)."""
        if not limit:
            return None
        base = len(NUMBERS) if self.rules.numbers else 0
        return Cap(
            {lang: limit + len(b) for lang, b in self.builders.items()},
            limit + base,
            self.rules.max_entry_chars,
            self.rules.drop_unmatchable,
        )

    def add_ranked(self, source: str, by_lang: dict[str, list], key, make, limit: int) -> None:
        """Add ``source``'s candidates to each language's list, ranked by ``key``."""
        for lang in sorted(by_lang):
            ranked = sorted(by_lang[lang], key=key)
            self.builder(lang).add_source(source, (make(c) for c in ranked), limit)


def _corpus_counts(spark: SparkSession, sources: Sources, rules: BuildRules) -> tuple[Any, str]:
    """The corpus's n-gram counts (a DataFrame, not persisted) and its format."""
    df, fmt = read_table(spark, sources.corpus, "corpus", sources.corpus_format)
    if fmt == "text":
        if sources.lang_col:
            raise ValueError(
                f"{sources.corpus}: a plain-text corpus has no language column; give Parquet or "
                "JSONL with the --lang-col column to build per-language lists"
            )
        text = "value"
    else:
        text = pick_column(df.columns, sources.text_col, TEXT_CANDIDATES, "text", sources.corpus)
    selected = [column(text).alias("text")]
    if sources.lang_col:
        selected.append(language_column(df, sources.lang_col, sources.corpus))
    return count_ngrams_spark(df.select(*selected), rules.partitions), fmt


def _corpus_candidates(lists: _Lists, counts: Any) -> tuple[Any, Any, Any]:
    """Statistics, unigram and bigram candidates of the counted corpus (unigrams added)."""
    rules = lists.rules
    stats = corpus_stats(counts)
    if not any(s.rows for s in stats.languages.values()):
        raise StageInputError(
            f"{lists.sources.corpus}: the corpus holds no text (0 non-empty rows)"
        )
    for lang in sorted(stats.languages):
        lists.builder(lang)
    unigrams = unigram_candidates(counts, rules.min_unigram_count, lists.cap(rules.max_unigrams))
    by_lang: dict[str, list] = defaultdict(list)
    for lang, token, n in unigrams.rows:
        by_lang[lang].append((token, n))
    lists.add_ranked(
        "unigram",
        by_lang,
        lambda tn: (-tn[1], tn[0]),
        lambda tn: Candidate(tn[0], count=tn[1]),
        rules.max_unigrams,
    )
    totals = {lang: s.tokens for lang, s in stats.languages.items()}
    bigrams = bigram_candidates(
        counts,
        totals,
        rules.min_bigram_pmi,
        rules.min_bigram_count,
        lists.cap(rules.max_bigrams),
    )
    return stats, unigrams, bigrams


def _add_corpus(spark: SparkSession, lists: _Lists) -> None:
    """Count the corpus, add its unigrams and bigrams, record its statistics."""
    counts, fmt = _corpus_counts(spark, lists.sources, lists.rules)
    counts = counts.persist()
    try:
        stats, unigrams, bigrams = _corpus_candidates(lists, counts)
    finally:
        counts.unpersist()
    bi_by_lang: dict[str, list] = defaultdict(list)
    for b in bigrams.rows:
        bi_by_lang[b.lang].append(b)
    lists.add_ranked(
        "bigram",
        bi_by_lang,
        lambda b: (-b.pmi, -b.n, b.text),
        lambda b: Candidate(b.text, count=b.n, pmi=b.pmi, detail=f"n(w1)={b.n1} n(w2)={b.n2}"),
        lists.rules.max_bigrams,
    )
    per_lang = {
        lang: {
            **s.as_dict(),
            "unigrams_above_threshold": unigrams.above_threshold.get(lang, 0),
            "bigrams_above_threshold": bigrams.above_threshold.get(lang, 0),
        }
        for lang, s in sorted(stats.languages.items())
    }
    corpus: dict[str, Any] = {"format": fmt}
    if lists.multilingual:
        corpus["languages"] = per_lang
        corpus["bad_lang_rows"] = stats.bad_lang_rows
        corpus["bad_lang_examples"] = stats.bad_lang_examples
    else:
        corpus.update(per_lang.get("", {}))
    lists.details["corpus"] = corpus
    log.info(
        "metadata: corpus %s: %s",
        lists.sources.corpus,
        ", ".join(
            f"{lang or 'all'} {s.rows:,} rows {s.tokens:,} tokens"
            for lang, s in sorted(stats.languages.items())
        ),
    )


def _add_titles(spark: SparkSession, lists: _Lists) -> None:
    """Read the titles file, add the titles above the view threshold, record its statistics."""
    sources, rules, multilingual = lists.sources, lists.rules, lists.multilingual
    titles_df = read_titles(
        spark, sources.titles, sources.title_col, sources.views_col, sources.lang_col
    )
    titles = title_candidates(
        titles_df, rules.min_title_views, lists.cap(rules.max_titles), multilingual
    )
    if titles.rows == 0:
        raise StageInputError(f"{sources.titles}: the titles file is empty (0 rows)")
    t_by_lang: dict[str, list] = defaultdict(list)
    for lang, title, views in titles.candidates:
        t_by_lang[lang].append((title, views))
    lists.add_ranked(
        "title",
        t_by_lang,
        lambda tv: (-tv[1], tv[0]),
        lambda tv: Candidate(tv[0], views=tv[1]),
        rules.max_titles,
    )
    # Titles rejected for ":" are counted in their language's list (20 are listed by name).
    builders = lists.builders
    for lang, n in titles.colon_titles.items():
        if lang in builders:
            builders[lang].reject("title", "title_has_colon", None, n=n)
    for example in titles.colon_examples:
        b = builders.get(example["lang"])
        if b is not None:
            b.reject("title", "title_has_colon", example["entry"], n=0, views=example["views"])
    lists.details["titles"] = {
        "rows": titles.rows,
        "bad_rows": titles.bad_rows,
        "distinct_titles": titles.distinct_titles,
        "above_threshold": titles.above_threshold,
        "with_colon": sum(titles.colon_titles.values()),
        "with_colon_examples": titles.colon_examples,
    }
    if multilingual:
        lists.details["titles"]["bad_lang_rows"] = titles.bad_lang_rows
