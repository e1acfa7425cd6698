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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage

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


def pool_table(
    entries: list[str],
    rows: int,
    seed: int,
    exponent: float,
    vocabulary: int,
    url_prefix: str,
) -> pa.Table:
    """The demo pool as one table: uid, url, caption, source, lang (see the module docstring)."""
    captions, source = generate_captions(entries, rows, seed, exponent, vocabulary)
    uids = [hashlib.md5(f"demo-{seed}-{i}".encode()).hexdigest() for i in range(rows)]
    urls = [f"{url_prefix}{i:08d}.jpg" for i in range(rows)]
    return pa.table(
        {
            "uid": pa.array(uids, pa.string()),
            "url": pa.array(urls, pa.string()),
            "caption": pa.array(captions, pa.string()),
            "source": pa.DictionaryArray.from_arrays(
                pa.array(source.astype(np.int32)), pa.array(SOURCES)
            ).cast(pa.string()),
            "lang": pa.array(["en"] * rows, pa.string()),
        }
    )


def write_parquet_files(table: pa.Table, directory: str, files: int) -> None:
    """``table`` as ``files`` Parquet files of (nearly) equal row counts in ``directory``."""
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for f in range(files):
        part = table.slice(bounds[f], bounds[f + 1] - bounds[f])
        fs, path = storage.url_to_fs(storage.join(directory, f"part-{f:05d}.parquet"))
        with fs.open(path, "wb") as out:
            pq.write_table(part, out, row_group_size=32_768)
