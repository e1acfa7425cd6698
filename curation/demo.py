"""The built-in demo pool: a deterministic, seeded synthetic pool that looks like web alt-text.

Captions draw keywords from the metadata list with a Zipf-like law, the way real pools do: a few head
entries ("photo", "man", "water") in a large share of captions and a long tail seen a handful of times.
Each caption mixes 1–6 keywords with filler words, casing and punctuation; about 12 % hold no keyword
(camera file names such as ``IMG_01234``), and a small share are unusable (empty, white space only, overlong) so that the rejects table has something to show.

Formula: entry of popularity rank r (a seeded permutation of the list) is drawn with probability
∝ (r + 3)^(−zipf_exponent); the number of keywords per caption is 1 + Poisson(1.6), capped at 6.
Columns: ``uid`` (128-bit hex), ``url``, ``caption``, ``source`` (a categorical margin with shares
60/30/10 %, the smaller sources drawing from a flatter law), ``lang`` (``en``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage
from curation.cli import Command
from curation.metadata import load_metadata
from curation.stages.match import DEFAULT_METADATA

log = logging.getLogger(__name__)

FILLERS = (
    "photo of",
    "picture of",
    "image of",
    "close up of",
    "view of",
    "stock photo",
    "with",
    "and",
    "in the",
    "on a",
    "near the",
    "at",
    "for sale",
    "vintage",
    "beautiful",
    "my",
    "this is",
    "our",
    "new",
    "best",
    "free",
    "from above",
    "background",
    "isolated on white",
)
UNMATCHED_SHARE = 0.12
SOURCES = ("web-a", "web-b", "web-c")
SOURCE_SHARES = (0.6, 0.3, 0.1)


@dataclass
class DemoPoolConfig:
    """Options of ``curate demo-pool`` (``[demo]`` in a config file)."""

    output: str = field(
        default="runs/demo/pool", metadata={"help": "output directory of Parquet files"}
    )
    rows: int = field(default=200_000, metadata={"min": 1, "help": "number of captions"})
    files: int = field(default=8, metadata={"min": 1, "help": "number of Parquet files"})
    seed: int = field(default=0, metadata={"min": 0, "below": 2**64, "help": "random seed"})
    metadata: str = field(
        default=DEFAULT_METADATA, metadata={"help": "metadata list the keywords come from"}
    )
    zipf_exponent: float = field(
        default=1.1, metadata={"min": 0, "help": "exponent of the keyword popularity law"}
    )
    vocabulary: int = field(
        default=5_000,
        metadata={
            "min": 0,
            "help": "keywords come from this many entries of the list (0: all of them)",
        },
    )
    url_prefix: str = field(
        default="https://demo.invalid/images/",
        metadata={"help": "URL prefix of the (synthetic) images"},
    )


def _rank_weights(n: int, exponent: float) -> np.ndarray:
    w = (np.arange(n, dtype=np.float64) + 3.0) ** (-exponent)
    return np.cumsum(w / w.sum())


def generate_captions(
    entries: list[str], rows: int, seed: int, exponent: float, vocabulary: int = 0
) -> tuple[list[str | None], np.ndarray]:
    """Captions and their source codes, deterministic in all arguments."""
    rng = np.random.default_rng(seed)
    # Drop entries MetaCLIP's spacing can never match (they hold split-off punctuation).
    usable = np.array(
        [j for j, e in enumerate(entries) if not any(c in ",.;:?!`\t\n\r" for c in e)]
    )
    popularity = usable[rng.permutation(len(usable))]
    if vocabulary:
        # Real pools see a small part of a 500k-entry list often; a 200k demo drawing from all
        # 86k WordNet names would make nearly every entry a singleton.
        popularity = popularity[:vocabulary]
    source = rng.choice(len(SOURCES), size=rows, p=SOURCE_SHARES)
    cdfs = [_rank_weights(len(popularity), exponent * f) for f in (1.0, 0.85, 0.7)]
    k = np.minimum(1 + rng.poisson(1.6, size=rows), 6)
    starts = np.concatenate([[0], np.cumsum(k)])
    u = rng.random(int(starts[-1]))
    ranks = np.empty(len(u), dtype=np.int64)
    keyword_source = np.repeat(source, k)
    for s, cdf in enumerate(cdfs):
        sel = keyword_source == s
        ranks[sel] = np.minimum(np.searchsorted(cdf, u[sel]), len(cdf) - 1)
    keyword_ids = popularity[ranks]
    fillers = rng.integers(0, len(FILLERS), size=(rows, 3))
    style = rng.random((rows, 4))
    captions: list[str | None] = []
    for i in range(rows):
        if style[i, 3] < UNMATCHED_SHARE:
            # Camera file names and the like: alt-text with no keyword, as in real pools.
            captions.append(
                f"{('IMG', 'DSC', 'P', 'image')[fillers[i, 0] % 4]}_{fillers[i, 1] * 397 + i % 1000:05d}"
            )
            continue
        words = [entries[j] for j in keyword_ids[starts[i] : starts[i + 1]]]
        parts = [FILLERS[fillers[i, 0]], words[0]]
        for n, word in enumerate(words[1:]):
            parts.append(FILLERS[fillers[i, 1 + n % 2]] if style[i, 0] < 0.7 else ",")
            parts.append(word)
        text = " ".join(parts).replace(" ,", ",")
        if style[i, 1] < 0.5:
            text = text[:1].upper() + text[1:]
        if style[i, 2] < 0.4:
            text += "."
        elif style[i, 2] < 0.45:
            text += "!"
        captions.append(text)
    # A few unusable rows, so the rejects table shows what it is for (~0.1 %).
    bad = rng.choice(rows, size=max(3, rows // 1000), replace=False)
    for n, i in enumerate(bad):
        captions[i] = (None, "", "   \t", "photo " * 3000)[n % 4]
    return captions, source


def write_demo_pool(config: DemoPoolConfig) -> dict:
    """Write the demo pool as ``config.files`` Parquet files; returns a summary."""
    if config.rows <= 0 or config.files <= 0:
        raise ValueError("demo-pool: rows and files must be positive")
    manifest = storage.make_manifest("demo-pool", vars(config), {"metadata": config.metadata})
    if storage.is_up_to_date(config.output, manifest):
        log.info("demo-pool: %s is up to date; skipped", config.output)
        return {**storage.read_json(storage.join(config.output, "_summary.json")), "skipped": True}
    started = time.perf_counter()
    metadata = load_metadata(config.metadata)
    captions, source = generate_captions(
        metadata.entries, config.rows, config.seed, config.zipf_exponent, config.vocabulary
    )
    uids = [hashlib.md5(f"demo-{config.seed}-{i}".encode()).hexdigest() for i in range(config.rows)]
    urls = [f"{config.url_prefix}{i:08d}.jpg" for i in range(config.rows)]
    table = pa.table(
        {
            "uid": pa.array(uids, pa.string()),
            "url": pa.array(urls, pa.string()),
            "caption": pa.array(captions, pa.string()),
            "source": pa.DictionaryArray.from_arrays(
                pa.array(source.astype(np.int32)), pa.array(SOURCES)
            ).cast(pa.string()),
            "lang": pa.array(["en"] * config.rows, pa.string()),
        }
    )
    with storage.atomic_directory(config.output, manifest) as tmp:
        bounds = np.linspace(0, config.rows, config.files + 1).astype(int)
        for f in range(config.files):
            part = table.slice(bounds[f], bounds[f + 1] - bounds[f])
            fs, path = storage.url_to_fs(storage.join(tmp, f"part-{f:05d}.parquet"))
            with fs.open(path, "wb") as out:
                pq.write_table(part, out, row_group_size=32_768)
        summary = {
            "output": config.output,
            "rows": config.rows,
            "files": config.files,
            "metadata": config.metadata,
            "seconds": round(time.perf_counter() - started, 2),
        }
        storage.write_json(storage.join(tmp, "_summary.json"), summary)
    log.info("demo-pool: %d rows in %d files -> %s", config.rows, config.files, config.output)
    return summary


@dataclass
class DemoPoolResult:
    summary: dict

    def report(self) -> str:
        s = self.summary
        return f"demo-pool: {s['rows']:,} captions in {s['files']} Parquet files -> {s['output']}"


def _run(config: DemoPoolConfig, spark: object, force: bool) -> DemoPoolResult:
    return DemoPoolResult(write_demo_pool(config))


COMMAND = Command(
    name="demo-pool",
    help="write the built-in synthetic demo pool (deterministic, seeded)",
    config_cls=DemoPoolConfig,
    section="demo",
    run=_run,
    needs_spark=False,
)
