"""The benchmarks' data generators, one place for every synthetic input (deterministic by seed).

- :func:`ensure_data`: a metadata list and a caption pool (Parquet) with Zipf-distributed entry
  popularity, Latin syllable words and CJK entries, cached by its parameters (``bench_match``;
  ``bench_report`` makes its run from it).
- :func:`generate_image_shards`: img2dataset-style input shards of real JPEGs with ``.txt``,
  ``.json`` and a ``.parquet`` per shard, plus a committed selection keeping every sample
  (``bench_shards``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

GENERATOR_VERSION = 1  # bump when the caption generator changes, so cached data is not reused
IMAGE_GENERATOR_VERSION = 1  # the same, for the image shards


ONSETS = ("", "") + tuple(
    "b c d f g h j k l m n p r s t v w z br ch cl cr dr fl gr pl pr sh sl st th tr sp".split()
)
NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ee", "io", "ou", "oo", "y")
CODAS = ("", "", "", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "rk", "st", "ck", "x")
ENTRY_SHARE = 0.55  # share of caption tokens drawn from the list (the rest is filler)
CJK_ALPHABET = 3000  # characters U+4E00.. drawn for CJK entries and CJK filler


def _syllables() -> pa.Array:
    return pa.array([o + n + c for o in ONSETS for n in NUCLEI for c in CODAS])


def _join_tokens(vocab: pa.Array, ids: np.ndarray, counts: np.ndarray, sep: str) -> pa.Array:
    """``sep.join(vocab[ids[row]])`` for every row, vectorised (``counts`` tokens per row)."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(ids)))
    return pc.binary_join(lists, sep)


def _random_words(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` pseudo-words of 1–3 syllables (lower case; duplicates possible)."""
    syl = _syllables()
    k = rng.choice([1, 2, 3], size=n, p=[0.3, 0.5, 0.2])
    ids = rng.integers(0, len(syl), size=int(k.sum()))
    return _join_tokens(syl, ids, k, "")


def _cjk_strings(rng: np.random.Generator, n: int, lengths: np.ndarray) -> pa.Array:
    """``n`` strings of CJK ideographs with the given lengths (1–4)."""
    cp = 0x4E00 + rng.integers(0, CJK_ALPHABET, size=(n, 4)).astype(np.uint32)
    cp[np.arange(4)[None, :] >= lengths[:, None]] = 0  # trailing NULs are dropped by numpy
    return pa.array(cp.view("<U4").ravel())


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    w = (np.arange(n, dtype=np.float64) + 3.0) ** (-exponent)
    return np.cumsum(w / w.sum())


def _zipf_draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size)), len(cdf) - 1)


def _unique(arr: pa.Array) -> pa.Array:
    return pc.unique(arr)  # keeps the order of first occurrence


def generate_metadata(n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """A MetaCLIP-like list of ``n`` distinct entries and a popularity rank for each.

    Shares before de-duplication, roughly MetaCLIP's mix: ~66 % unigrams (12 % Capitalised, 1.5 %
    UPPER), ~25 % bigrams and ~2.5 % trigrams of common unigrams, ~2 % numbers or word+digits,
    ~1.5 % hyphenated, ~1.5 % CJK (1–4 ideographs). Short unigrams are made more popular than
    phrases, so the head of the Zipf law looks like "a", "the", "photo".
    """
    m = int(n * 1.4) + 1000  # over-draw, then de-duplicate and cut to n
    n_uni = int(m * 0.66)
    words = _unique(_random_words(rng, n_uni))
    case = rng.random(len(words))
    words = pc.if_else(
        pa.array(case < 0.12),
        pc.utf8_capitalize(words),
        pc.if_else(pa.array(case > 0.985), pc.utf8_upper(words), words),
    )
    words = _unique(words)
    # Phrases are made of the more common lower-case unigrams, so their parts are entries too.
    lower = words.filter(pc.equal(words, pc.utf8_lower(words)))
    part_cdf = _zipf_cdf(len(lower), 0.7)
    n_bi, n_tri = int(m * 0.25), int(m * 0.025)
    bigrams = _join_tokens(lower, _zipf_draw(rng, part_cdf, 2 * n_bi), np.full(n_bi, 2), " ")
    trigrams = _join_tokens(lower, _zipf_draw(rng, part_cdf, 3 * n_tri), np.full(n_tri, 3), " ")
    n_num = int(m * 0.02)
    years = pc.cast(pa.array(rng.integers(1800, 2031, size=n_num // 2)), pa.string())
    alnum = pc.binary_join_element_wise(
        lower.take(pa.array(rng.integers(0, len(lower), size=n_num - n_num // 2))),
        pc.cast(pa.array(rng.integers(1, 999, size=n_num - n_num // 2)), pa.string()),
        pa.array(np.where(rng.random(n_num - n_num // 2) < 0.5, " ", "")),
    )
    n_hy = int(m * 0.015)
    hyphen = _join_tokens(lower, rng.integers(0, len(lower), size=2 * n_hy), np.full(n_hy, 2), "-")
    n_cjk = int(m * 0.015)
    cjk = _cjk_strings(rng, n_cjk, rng.choice([1, 2, 3, 4], size=n_cjk, p=[0.1, 0.5, 0.25, 0.15]))
    kinds = [words, bigrams, trigrams, years, alnum, hyphen, cjk]
    # Popularity: a random score scaled by kind (short unigrams first, phrases later).
    uni_weight = np.where(pc.utf8_length(words).to_numpy() <= 4, 0.15, 1.0)
    weights = [uni_weight, 3.0, 6.0, 2.0, 4.0, 4.0, 1.5]
    all_entries = pa.concat_arrays([pa.array(k, pa.string()) for k in kinds])
    score = np.concatenate(
        [
            rng.random(len(k)) * np.broadcast_to(w, len(k))
            for k, w in zip(kinds, weights, strict=True)
        ]
    )
    # Order of the list itself: shuffled (ids carry no meaning), first copy of a duplicate kept.
    order = rng.permutation(len(all_entries))
    shuffled = all_entries.take(pa.array(order))
    first = pc.index_in(shuffled, value_set=_unique(shuffled)).to_numpy()
    keep = np.zeros(len(shuffled), dtype=bool)
    _, first_pos = np.unique(first, return_index=True)
    keep[np.sort(first_pos)] = True
    if keep.sum() < n:
        raise RuntimeError(f"generator made only {keep.sum()} distinct entries, {n} needed")
    kept = np.flatnonzero(keep)[:n]
    entries = shuffled.take(pa.array(kept)).to_pylist()
    popularity = np.argsort(np.argsort(score[order[kept]], kind="stable"), kind="stable")
    return entries, popularity


def generate_pool(
    entries: list[str], popularity: np.ndarray, rows: int, rng: np.random.Generator
) -> pa.Table:
    """A pool of ``rows`` captions of ~100 characters (see the module docstring)."""
    entry_arr = pa.array(entries, pa.string())
    n_entries = len(entries)
    by_rank = np.argsort(popularity)  # entry id of each popularity rank
    is_cjk = np.array([("\u4e00" <= e[0] <= "\u9fff") for e in entries])
    # Filler: pseudo-words, codes and commas that are not entries.
    cand = _unique(_random_words(rng, 80_000))
    cand = cand.filter(pc.invert(pc.is_in(cand, value_set=entry_arr)))
    codes = pc.binary_join_element_wise(
        pa.array(rng.choice(["IMG_", "DSC", "P", "img-", "file"], size=4000)),
        pc.cast(pa.array(rng.integers(1000, 99999, size=4000)), pa.string()),
        "",
    )
    dims = pc.binary_join_element_wise(
        pc.cast(pa.array(rng.integers(100, 4000, size=1000)), pa.string()),
        pc.cast(pa.array(rng.integers(100, 4000, size=1000)), pa.string()),
        "x",
    )
    filler = pa.concat_arrays([pa.array([","]), cand, pa.array(codes), pa.array(dims)])
    filler = filler.filter(pc.invert(pc.is_in(filler, value_set=entry_arr)))
    n_filler = len(filler)
    filler_cdf = _zipf_cdf(n_filler, 0.9)
    entry_cdf = _zipf_cdf(n_entries, 1.0)
    vocab = pa.concat_arrays([entry_arr, filler])
    vocab_len = pc.utf8_length(vocab).to_numpy().astype(np.int32) + 1

    target = np.clip(rng.gamma(6.0, 100.0 / 6.0, size=rows), 15, 400)
    max_tokens = 48
    counts = np.empty(rows, dtype=np.int64)
    token_chunks = []
    for lo in range(0, rows, 100_000):
        hi = min(rows, lo + 100_000)
        r = hi - lo
        is_entry = rng.random((r, max_tokens)) < ENTRY_SHARE
        tok = np.where(
            is_entry,
            by_rank[_zipf_draw(rng, entry_cdf, r * max_tokens).reshape(r, max_tokens)],
            n_entries + _zipf_draw(rng, filler_cdf, r * max_tokens).reshape(r, max_tokens),
        )
        starts = np.cumsum(vocab_len[tok], axis=1) - vocab_len[tok]
        n_tok = np.maximum((starts < target[lo:hi, None]).sum(axis=1), 1)
        counts[lo:hi] = n_tok
        token_chunks.append(tok[np.arange(max_tokens)[None, :] < n_tok[:, None]])
    captions = _join_tokens(vocab, np.concatenate(token_chunks), counts, " ")
    captions = pc.replace_substring(captions, " , ", ", ")
    captions = pc.replace_substring_regex(captions, r"^, |,$", "")
    captions = pc.replace_substring_regex(captions, r" ,$", "")
    # Sentence case for 40 %, a final full stop for 35 % and "!" for 5 %.
    first = pc.utf8_slice_codeunits(captions, 0, 1)
    rest = pc.utf8_slice_codeunits(captions, 1)
    style = rng.random((rows, 2))
    captions = pc.if_else(
        pa.array(style[:, 0] < 0.4),
        pc.binary_join_element_wise(pc.utf8_upper(first), rest, ""),
        captions,
    )
    ending = pa.array(np.where(style[:, 1] < 0.35, ".", np.where(style[:, 1] < 0.40, "!", "")))
    captions = pc.binary_join_element_wise(captions, ending, "")
    # 2 % of the captions are CJK text: CJK entries and single ideographs, no spaces.
    cjk_rows = np.flatnonzero(rng.random(rows) < 0.02)
    if len(cjk_rows) and is_cjk.any():
        cjk_ids = np.flatnonzero(is_cjk)
        cjk_ids = cjk_ids[np.argsort(popularity[cjk_ids])]
        n_tok = rng.integers(6, 24, size=len(cjk_rows))
        total = int(n_tok.sum())
        chars = _cjk_strings(rng, total, np.ones(total, dtype=np.int64))
        use_entry = rng.random(total) < 0.4
        tok_vocab = pa.concat_arrays([entry_arr.take(pa.array(cjk_ids)), chars])
        tok = np.where(
            use_entry,
            _zipf_draw(rng, _zipf_cdf(len(cjk_ids), 1.0), total),
            len(cjk_ids) + np.arange(total),
        )
        cjk_caps = _join_tokens(tok_vocab, tok, n_tok, "").to_numpy(zero_copy_only=False)
        merged = captions.to_numpy(zero_copy_only=False)
        merged[cjk_rows] = cjk_caps
        captions = pa.array(merged, pa.string())

    raw = rng.integers(0, 256, size=(rows, 16), dtype=np.uint8)
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    uid_bytes = np.empty((rows, 32), dtype=np.uint8)
    uid_bytes[:, 0::2] = hexdigits[raw >> 4]
    uid_bytes[:, 1::2] = hexdigits[raw & 15]
    uids = pa.array(uid_bytes.view("S32").ravel()).cast(pa.string())
    urls = pc.binary_join_element_wise(
        "https://images.bench.invalid/", pc.utf8_slice_codeunits(uids, 0, 2), "/", uids, ".jpg", ""
    )
    return pa.table(
        {
            "uid": uids,
            "url": urls,
            "caption": captions,
            "width": pa.array(rng.integers(64, 4096, size=rows).astype(np.int32)),
            "height": pa.array(rng.integers(64, 4096, size=rows).astype(np.int32)),
        }
    )


def ensure_data(args: argparse.Namespace) -> dict:
    """Generate the metadata list and pool, or reuse them from the cache directory.

    Generation runs in a forked child process, so that its memory does not inflate the driver's
    RSS measured later.
    """
    params = {
        "version": GENERATOR_VERSION,
        "rows": args.rows,
        "entries": args.entries,
        "seed": args.seed,
        "files": args.files,
        "row_group": args.row_group,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    directory = Path(args.workdir) / "data" / f"r{args.rows}-e{args.entries}-s{args.seed}-{key}"
    info_path = directory / "info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("params") == params:
            info["cached"] = True
            return info
    ctx = multiprocessing.get_context("fork")  # before Spark starts: no JVM, no threads yet
    child = ctx.Process(target=_generate, args=(args, params, directory), name="generate")
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"data generation failed (exit code {child.exitcode})")
    info = json.loads(info_path.read_text())
    info["cached"] = False
    return info


def _generate(args: argparse.Namespace, params: dict, directory: Path) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "pool").mkdir(parents=True)
    started = time.perf_counter()
    rng = np.random.default_rng([args.seed, 0x6D61746368])
    entries, popularity = generate_metadata(args.entries, rng)
    t_meta = time.perf_counter() - started
    with open(tmp / "metadata.json", "w", encoding="utf-8") as f:
        json.dump(entries, f, ensure_ascii=False)
    table = generate_pool(entries, popularity, args.rows, rng)
    t_pool = time.perf_counter() - started - t_meta
    bounds = np.linspace(0, args.rows, args.files + 1).astype(int)
    for i in range(args.files):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(part, tmp / "pool" / f"part-{i:05d}.parquet", row_group_size=args.row_group)
    lengths = pc.utf8_length(table.column("caption")).to_numpy()
    info = {
        "params": params,
        "directory": str(directory),
        "metadata": str(directory / "metadata.json"),
        "pool": str(directory / "pool"),
        "pool_bytes": sum(p.stat().st_size for p in (tmp / "pool").iterdir()),
        "caption_chars_mean": round(float(lengths.mean()), 1),
        "caption_chars_p50": int(np.median(lengths)),
        "caption_chars_p99": int(np.percentile(lengths, 99)),
        "generate_seconds": round(time.perf_counter() - started, 1),
        "generate_metadata_seconds": round(t_meta, 1),
        "generate_pool_seconds": round(t_pool, 1),
    }
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


# --- image shards (bench_shards) ----------------------------------------------------------------


def make_jpeg(rng: np.random.Generator, side: int) -> bytes:
    """A noise image (it does not compress away) as a JPEG of ``side`` × ``side`` pixels."""
    from PIL import Image

    arr = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def generate_image_shards(data: Path, shards: int, per_shard: int, side: int, seed: int) -> None:
    """``shards`` tar shards of ``per_shard`` samples (a noise JPEG, ``.txt``, ``.json`` with the
    uid) with a ``.parquet`` each under ``data/shards``, and a committed selection keeping every
    sample once under ``data/selected``; skipped when ``data/done`` exists."""
    from curation.storage import atomic_directory

    if (data / "done").exists():
        return
    shutil.rmtree(data, ignore_errors=True)
    (data / "shards").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pool = [make_jpeg(rng, side) for _ in range(64)]  # reused: generation is not the point
    rows = []
    for s in range(shards):
        meta_rows = []
        with tarfile.open(data / "shards" / f"{s:05d}.tar", "w") as tf:
            for i in range(per_shard):
                n = s * per_shard + i
                key, uid = f"{n:09d}", f"{n:032x}"
                caption = f"benchmark caption {n}"
                meta = json.dumps({"key": key, "uid": uid, "caption": caption}).encode()
                for ext, blob in (("jpg", pool[n % 64]), ("txt", caption.encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
                meta_rows.append({"key": key, "uid": uid, "caption": caption, "status": "success"})
                rows.append(
                    {
                        "uid": uid,
                        "url": f"http://bench.invalid/{n}.jpg",
                        "caption": caption,
                        "entry_ids": [n % 100],
                        "weight": 1.0,
                        "inclusion_prob": 1.0,
                        "repeats": 1,
                    }
                )
        pq.write_table(pa.Table.from_pylist(meta_rows), data / "shards" / f"{s:05d}.parquet")
    with atomic_directory(str(data / "selected"), {"stage": "select", "bench": True}) as tmp:
        os.makedirs(f"{tmp}/selected")
        pq.write_table(pa.Table.from_pylist(rows), f"{tmp}/selected/part-00000.parquet")
    (data / "done").touch()
