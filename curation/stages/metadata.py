"""The ``metadata`` stage: build a MetaCLIP-style metadata list from the sources a user has.

    curate metadata --output metadata/default.json --wordnet /usr/share/wordnet
    curate metadata --output runs/meta.json --corpus enwiki.txt --titles titles.parquet --extra mine.txt
    curate metadata --output runs/meta/ --corpus wiki.parquet --lang-col lang --max-unigrams 250000

Sources, each optional and combinable (``curation.metadata_build`` documents each rule): the strings
"0"–"99" (``--numbers``, on by default, as MetaCLIP), WordNet synset head names (``--wordnet``),
corpus unigrams with a count ≥ ``--min-unigram-count`` and bigrams with PMI ≥ ``--min-bigram-pmi``
bits (``--corpus``, counted with Spark), titles with ≥ ``--min-title-views`` views and no ``:``
(``--titles``), and a user's own entries (``--extra``).

Outputs, each written atomically (temporary name, then rename):

- without ``--lang-col``: ``FILE`` (a JSON array of strings: MetaCLIP's format, one entry per line),
  ``STEM.provenance.tsv`` (one row per entry and source: ``id entry source count pmi views
  detail``) and ``STEM.summary.json`` (entries per source, overlaps, rejected entries with reasons,
  per-source statistics, the config and the inputs' fingerprints), where ``STEM`` is ``FILE``
  without ``.json``. The summary is written last; a rerun with the same config and inputs is
  skipped unless ``--force``.
- with ``--lang-col``: a directory, committed as a whole (``_SUCCESS``, ``_manifest.json``)::

      OUT/{lang}.json       one list per language (MetaCLIP's format); rows whose language is null
                            or empty go to und.json; WordNet goes to --wordnet-lang (en)
      OUT/provenance.tsv    as above, with a leading ``lang`` column
      OUT/summary.json      per-language summaries and corpus statistics

  A language value must be a file-name-safe code (letters, digits, ``_``, ``-``; up to 64
  characters); other rows are counted as ``bad_lang_rows`` and not used.

Every output is deterministic: the same inputs and options give the same bytes, whatever the
partitioning or cluster (counts are exact integer sums, and every order is fully specified).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from pyspark.sql import SparkSession

from curation import progress, storage
from curation.metadata_build.assemble import render_list, render_provenance
from curation.metadata_build.build import BuildResult, BuildRules, Sources, build_metadata
from curation.stages.base import Stage, StageResult, input_field, output_field

log = logging.getLogger(__name__)

# Bump when a change to the builder changes its output for the same inputs and options.
BUILDER_VERSION = 1


@dataclass
class MetadataConfig:
    """Options of the ``metadata`` stage (``[metadata]`` in a config file)."""

    output: str = output_field(
        "output JSON list FILE (plus FILE's .provenance.tsv and .summary.json); with --lang-col, a directory of {lang}.json lists"
    )
    wordnet: str = input_field(
        "wordnet",
        "WordNet 3.0 database directory holding data.noun/.verb/.adj/.adv (Debian's wordnet-base: /usr/share/wordnet)",
        required=False,
    )
    corpus: str = input_field(
        "corpus",
        "text corpus: plain text (one document per line), Parquet or JSONL; a file or directory, any fsspec URL",
        required=False,
    )
    corpus_format: Literal["auto", "text", "parquet", "jsonl", "csv", "tsv"] = field(
        default="auto", metadata={"help": "corpus format (auto: from the file extensions)"}
    )
    text_col: str = field(
        default="",
        metadata={
            "help": "text column of a table corpus (default: the first of text, caption, content, sentence, TEXT)"
        },
    )
    lang_col: str = field(
        default="",
        metadata={
            "help": "language column of the corpus (and titles): build one list per language into the output directory"
        },
    )
    min_unigram_count: int = field(
        default=100,
        metadata={
            "min": 1,
            "help": "keep corpus unigrams seen at least this many times (MetaCLIP: 100)",
        },
    )
    min_bigram_pmi: float = field(
        default=30.0,
        metadata={
            "help": "keep corpus bigrams with PMI = log2(n12*N/(n1*n2)) at least this, in bits (MetaCLIP: 30; needs N >= 2^PMI tokens)"
        },
    )
    min_bigram_count: int = field(
        default=1,
        metadata={
            "min": 1,
            "help": "score only bigrams seen at least this many times (MetaCLIP: 1, no floor)",
        },
    )
    max_unigrams: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "per language, at most this many new unigram entries, most frequent first (0: no cap)",
        },
    )
    max_bigrams: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "per language, at most this many new bigram entries, highest PMI first (0: no cap)",
        },
    )
    titles: str = input_field(
        "titles",
        "titles table with a views column (Parquet, CSV/TSV with a header, JSONL)",
        required=False,
    )
    title_col: str = field(
        default="",
        metadata={"help": "title column (default: the first of title, page_title, page, entry)"},
    )
    views_col: str = field(
        default="",
        metadata={
            "help": "views column (default: the first of views, view_count, pageviews, page_views, count)"
        },
    )
    min_title_views: int = field(
        default=70,
        metadata={
            "min": 0,
            "help": "keep titles with at least this many views, summed per title (MetaCLIP: 70)",
        },
    )
    max_titles: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "per language, at most this many new title entries, most viewed first (0: no cap)",
        },
    )
    extra: str = input_field(
        "extra",
        "your own entries (JSON array or one per line), added last to every list",
        required=False,
    )
    numbers: bool = field(
        default=True,
        metadata={"help": "start every list with the strings 0-99, as MetaCLIP's does"},
    )
    wordnet_lang: str = field(
        default="en",
        metadata={"help": "with --lang-col, the language whose list gets the WordNet entries"},
    )
    max_entry_chars: int = field(
        default=256,
        metadata={"min": 1, "help": "drop (and count) entries longer than this many characters"},
    )
    drop_unmatchable: bool = field(
        default=False,
        metadata={
            "help": "drop entries holding , . ; : ? ! or a backtick, which MetaCLIP's matching can never find (kept by default, as MetaCLIP)"
        },
    )
    partitions: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "repartition the corpus into this many tasks before counting (0: keep the input splits)",
        },
    )


def sidecar_paths(output: str) -> tuple[str, str]:
    """``(provenance, summary)`` paths next to a single-list ``output``."""
    stem = output[: -len(".json")] if output.endswith(".json") else output
    return f"{stem}.provenance.tsv", f"{stem}.summary.json"


def validate(config: MetadataConfig) -> None:
    if not (config.wordnet or config.corpus or config.titles or config.extra):
        raise ValueError(
            "metadata needs at least one source: --wordnet, --corpus, --titles or --extra"
        )
    if config.lang_col and not (config.corpus or config.titles):
        raise ValueError("--lang-col needs a --corpus or --titles that has the language column")
    if config.lang_col and config.output.endswith(".json"):
        raise ValueError(
            f"--output {config.output}: with --lang-col the output is a directory of per-language "
            "lists ({lang}.json); give a directory path"
        )
    for name in ("min_unigram_count", "min_bigram_count", "max_entry_chars"):
        if getattr(config, name) < 1:
            raise ValueError(f"metadata: {name} must be at least 1")
    for name in ("max_unigrams", "max_bigrams", "max_titles", "min_title_views", "partitions"):
        if getattr(config, name) < 0:
            raise ValueError(f"metadata: {name} must not be negative")
    if config.lang_col and not config.wordnet_lang:
        raise ValueError("metadata: wordnet_lang must name a language")


def input_fingerprints(config: MetadataConfig, result: BuildResult | None = None) -> dict:
    """The inputs as given, with a fingerprint each: WordNet by the SHA-256 of its data files
    (stable across machines, so the shipped default's summary is reproducible), others by
    :func:`curation.storage.fingerprint`."""
    inputs: dict[str, dict] = {}
    if config.wordnet:
        if result is not None and "wordnet" in result.details:
            sha = result.details["wordnet"]["sha256"]
        else:
            from curation.metadata_build.wordnet import read_wordnet

            sha = read_wordnet(config.wordnet).sha256
        inputs["wordnet"] = {"url": config.wordnet, "sha256": sha}
    for name in ("corpus", "titles", "extra"):
        url = getattr(config, name)
        if url:
            inputs[name] = {"url": url, "fingerprint": storage.fingerprint(url)}
    return inputs


def _summary(config: MetadataConfig, result: BuildResult, inputs: dict, files: dict) -> dict:
    summary: dict = {
        "stage": "metadata",
        "builder_version": BUILDER_VERSION,
        "config": vars(config).copy(),
        "inputs": inputs,
        "files": files,
    }
    if result.multilingual:
        summary["entries"] = {lang: len(b) for lang, b in sorted(result.builders.items())}
        summary["languages"] = {lang: b.summary() for lang, b in sorted(result.builders.items())}
    else:
        summary.update(result.builders[""].summary())
    summary["source_statistics"] = result.details
    return summary


def _up_to_date_single(config: MetadataConfig, inputs: dict) -> dict | None:
    provenance, summary_path = sidecar_paths(config.output)
    try:
        if not (storage.exists(config.output) and storage.exists(provenance)):
            return None
        old = storage.read_json(summary_path)
    except (FileNotFoundError, ValueError):
        return None
    same = (
        old.get("builder_version") == BUILDER_VERSION
        and old.get("config") == vars(config)
        and old.get("inputs") == inputs
    )
    return old if same else None


def sources_and_rules(config: MetadataConfig) -> tuple[Sources, BuildRules]:
    """The builder's inputs and rules, from the stage's options."""
    sources = Sources(**{f.name: getattr(config, f.name) for f in dataclasses.fields(Sources)})
    rules = BuildRules(**{f.name: getattr(config, f.name) for f in dataclasses.fields(BuildRules)})
    return sources, rules


class MetadataStage(Stage):
    """One list (a file and its sidecars) or a directory of per-language lists."""

    name = "metadata"
    help = "build a MetaCLIP-style metadata list from WordNet, a text corpus, titles and your own entries"
    options = MetadataConfig
    needs_spark = True

    def validate(self) -> None:
        super().validate()
        validate(self.config)

    def resolve_inputs(self) -> dict[str, str]:
        self.lineage = {}
        self.inputs = input_fingerprints(self.config)
        return self.input_urls()

    def build_manifest(self, inputs: dict[str, str]) -> dict:
        return {
            "stage": "metadata",
            "builder_version": BUILDER_VERSION,
            "config": vars(self.config).copy(),
            "inputs": self.inputs,
        }

    def is_up_to_date(self, manifest: dict) -> bool:
        if self.config.lang_col:
            return storage.is_up_to_date(self.output, manifest)
        self.old_summary = _up_to_date_single(self.config, self.inputs)
        return self.old_summary is not None

    def read_summary(self) -> dict:
        if self.config.lang_col:
            return storage.read_json(storage.join(self.output, "summary.json"))
        return self.old_summary

    def commit(self, manifest: dict) -> dict:
        config = self.config
        if not config.lang_col:
            _check_single_output_is_ours(config.output, [i["url"] for i in self.inputs.values()])
        with progress.bar("metadata: candidates", unit="cand"):
            result = build_metadata(self.spark, *sources_and_rules(config))
        if config.lang_col:
            summary = _commit_directory(config, result, self.inputs, manifest)
        else:
            summary = _commit_single(config, result)
        seconds = time.perf_counter() - self.started
        if config.lang_col:
            log.info(
                "metadata: %d languages, %d entries in %.1f s -> %s",
                len(result.builders),
                sum(len(b) for b in result.builders.values()),
                seconds,
                config.output,
            )
        else:
            entries = len(result.builders[""])
            log.info("metadata: %d entries in %.1f s -> %s", entries, seconds, config.output)
        return summary

    @classmethod
    def describe(cls, result: StageResult) -> str:
        s = result.summary
        lines = [
            f"metadata: {result.output}" + (" (up to date, skipped)" if result.skipped else "")
        ]
        lists = s["languages"] if "languages" in s else {"": s}
        for lang, part in lists.items():
            per_source = ", ".join(f"{k} {v:,}" for k, v in part["entries_per_source"].items())
            rejected = part["rejected"]["total"]
            label = f"{lang}: " if lang else ""
            lines.append(
                f"  {label}{part['entries']:,} entries ({per_source}); {rejected:,} rejected"
            )
        for name, path in s["files"].items():
            lines.append(f"  {name:<10} {path}")
        return "\n".join(lines)


def _check_single_output_is_ours(output: str, inputs: list[str]) -> None:
    """A single list is three files (the list, its provenance and its summary, written last):
    replace them only when the summary beside them says this stage wrote that list; refuse a
    directory in the list's place, a file of someone else's, and an output that overlaps an
    input (a list written into the corpus directory would join the corpus)."""
    storage.check_not_overlapping(output, inputs)
    fs, path = storage.url_to_fs(output)
    if fs.exists(path) and fs.isdir(path):
        raise storage.OutputNotOursError(
            f"{output}: is a directory; give a file name such as "
            f"{output.rstrip('/')}/metadata.json (nothing was changed)"
        )
    provenance, summary_path = sidecar_paths(output)
    existing = [p for p in (output, provenance, summary_path) if storage.exists(p)]
    if not existing:
        return
    try:
        ours = storage.same_place(storage.read_json(summary_path)["files"]["list"], output)
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        ours = False
    if not ours:
        raise storage.OutputNotOursError(
            f"{output}: {existing[0]} exists and was not written by curate metadata (no "
            f"{summary_path} naming this list); refusing to replace it. Choose another --output "
            "(nothing was changed)"
        )


def _commit_single(config: MetadataConfig, result: BuildResult) -> dict:
    provenance, summary_path = sidecar_paths(config.output)
    files = {"list": config.output, "provenance": provenance, "summary": summary_path}
    summary = _summary(config, result, input_fingerprints(config, result), files)
    storage.write_bytes(provenance, render_provenance(result.builders, with_lang=False))
    storage.write_bytes(config.output, render_list(result.builders[""].entries))
    storage.write_json(summary_path, summary)  # last: its presence marks a complete build
    return summary


def _commit_directory(
    config: MetadataConfig, result: BuildResult, inputs: dict, manifest: dict
) -> dict:
    files = {
        "lists": storage.join(config.output, "{lang}.json"),
        "provenance": storage.join(config.output, "provenance.tsv"),
        "summary": storage.join(config.output, "summary.json"),
    }
    summary = _summary(config, result, inputs, files)
    with storage.atomic_directory(config.output, manifest) as tmp:
        for lang, b in sorted(result.builders.items()):
            storage.write_bytes(storage.join(tmp, f"{lang}.json"), render_list(b.entries))
        storage.write_bytes(
            storage.join(tmp, "provenance.tsv"), render_provenance(result.builders, with_lang=True)
        )
        storage.write_json(storage.join(tmp, "summary.json"), summary)
    return summary


def run_metadata(
    spark: SparkSession | None, config: MetadataConfig, force: bool = False
) -> StageResult:
    """Build the list(s) of ``config`` and write them (see the module docstring)."""
    return MetadataStage(config, spark).run(force)


STAGE = MetadataStage
