"""Benchmark of the ``match`` stage: Spark end to end vs the bare Aho–Corasick loop vs the naive rule.

Run with ``make bench-match`` (``ARGS="--rows 100000 --entries 50000"`` for a quick check) or
``.venv/bin/python bench/bench_match.py --help``. Not a test: it prints a table and writes
``<workdir>/results.json``; nothing is asserted. Numbers carry about ±15 % noise, more when the
machine is shared.

What it does, in order:

1. Generates (seeded, vectorised, cached in ``<workdir>/data/<key>/``) a MetaCLIP-like metadata list
   (unigrams, bigrams of common unigrams, a few trigrams, mixed case, digits, hyphens, some CJK) as a
   MetaCLIP JSON array, and a pool of captions of ~100 characters that draw entries with a Zipf law
   between non-entry filler words, as Parquet files with ``uid``, ``url``, ``caption``, ``width`` and
   ``height``.
2. Runs ``curation.stages.match.run_match`` twice on a fresh ``local[2]`` session: cold (the
   session's first job) and warm (same session, another output directory, ``force=True``).
   Captions/s = rows / wall seconds of ``run_match`` (read, reject checks, uid, match, Parquet
   write, rejects, summary). A background thread polls ``/proc`` every 0.2 s for the processes
   descended from this one (the JVM, the ``pyspark.daemon`` and the Python workers it forks) and
   records their peak RSS.
3. Stops Spark, then runs the same captions through ``Matcher.match_many`` in this process (the
   per-core ceiling), with build time, pickle size and load time.
4. Times ``naive_match`` (entry by entry) on a sample, within a time budget, extrapolates its
   captions/s and checks it agrees with the automaton on that sample.
5. With ``--profile``: extra Spark runs that split the stage into parts (read only, match without
   writing, caption-only match, rejects pass), vary the split size and the Arrow batch size, and
   record per task, inside the Python worker, automaton load time, time waiting for input and
   time matching.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GENERATOR_VERSION = 1  # bump when the generator changes, so cached data is not reused
NOISE = "±15 %"
MIB = 1024 * 1024

log = logging.getLogger("bench_match")


# --------------------------------------------------------------------------------------------------
# Data generation (deterministic in rows, entries, seed, files)
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Process memory monitor
# --------------------------------------------------------------------------------------------------


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


class CpuWindow:
    """Wall time, this process's CPU time and the whole machine's busy CPU time over a window.

    ``others_share`` is the share of the machine's cores that *other* processes kept busy meanwhile:
    the contention under which a number was measured (0 on an idle machine).
    """

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.busy0 = machine_busy_seconds()

    def result(self, own_cpu: float | None = None) -> dict:
        wall = time.perf_counter() - self.wall0
        own = time.process_time() - self.cpu0 if own_cpu is None else own_cpu
        busy = machine_busy_seconds() - self.busy0
        ncpu = os.cpu_count() or 1
        return {
            "wall_seconds": round(wall, 2),
            "own_cpu_seconds": round(own, 2),
            "machine_busy_cpu_seconds": round(busy, 2),
            "others_share_of_machine": round(max(0.0, busy - own) / (wall * ncpu), 3),
        }


class ProcessMonitor(threading.Thread):
    """Polls ``/proc`` for this process and its descendants: peak RSS and CPU time per kind.

    Kinds: ``driver`` (this process), ``jvm`` (java), ``daemon`` (``pyspark.daemon``, started by the
    JVM), ``worker`` (a Python worker: cmdline holds ``pyspark.daemon`` or ``pyspark/worker`` and its
    parent is the daemon), ``other``. Peaks are the max of sampled VmRSS and of VmHWM.
    Only descendants are watched, so other users' Spark processes on the machine are not counted.
    """

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-monitor")
        self.interval = interval
        self.root = os.getpid()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.begin()

    def begin(self) -> None:
        """Start a measurement window (peaks and CPU times are counted from here)."""
        with self._lock:
            self.peaks: dict[tuple[int, str], dict] = {}
            self.max_workers_total_kib = 0
            self.max_workers_alive = 0
            self.samples = 0
            self._cpu_base: dict[tuple[int, str], int] = {}
            self._cpu_last: dict[tuple[int, str], int] = {}
            self._window = CpuWindow()
        self.sample(baseline=True)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sample()
            except Exception as exc:  # a monitor must never kill the benchmark
                log.debug("monitor: %s", exc)
            self._halt.wait(self.interval)

    @staticmethod
    def _stats() -> dict[int, tuple[int, str, int]]:
        """pid -> (ppid, starttime, utime + stime ticks) for every process of the machine."""
        out: dict[int, tuple[int, str, int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            out[int(name)] = (int(fields[1]), fields[19], int(fields[11]) + int(fields[12]))
        return out

    @staticmethod
    def _cmdline(pid: int) -> str:
        # Read every time: spark-submit's shell script execs java in the same pid.
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def sample(self, baseline: bool = False) -> None:
        stats = self._stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        stack, tree = [self.root], [self.root]
        while stack:
            for child in children.get(stack.pop(), []):
                tree.append(child)
                stack.append(child)
        workers_total = workers_alive = 0
        with self._lock:
            self.samples += 1
            for pid in tree:
                if pid not in stats:
                    continue
                ppid, start, ticks = stats[pid]
                key = (pid, start)
                cmd = self._cmdline(pid)
                if pid == self.root:
                    kind = "driver"
                elif "pyspark.daemon" in cmd or "pyspark/worker" in cmd or "pyspark.worker" in cmd:
                    parent = self._cmdline(ppid)
                    kind = "worker" if "pyspark.daemon" in parent else "daemon"
                elif cmd.split(" ", 1)[0].endswith("java"):
                    kind = "jvm"
                else:
                    kind = "other"
                if baseline:
                    self._cpu_base[key] = ticks
                self._cpu_last[key] = ticks
                st = _status_kib(pid)
                if not st:
                    continue
                peak = self.peaks.setdefault(key, {"kind": kind, "rss_kib": 0, "hwm_kib": 0})
                peak["kind"] = kind
                peak["rss_kib"] = max(peak["rss_kib"], st.get("VmRSS", 0))
                peak["hwm_kib"] = max(peak["hwm_kib"], st.get("VmHWM", 0))
                if kind == "worker":
                    workers_total += st.get("VmRSS", 0)
                    workers_alive += 1
            self.max_workers_total_kib = max(self.max_workers_total_kib, workers_total)
            self.max_workers_alive = max(self.max_workers_alive, workers_alive)

    def end(self) -> dict:
        """Close the window: peaks per kind, CPU seconds per kind, and the machine's contention."""
        self.sample()
        with self._lock:
            by_kind: dict[str, dict] = {}
            for key, p in self.peaks.items():
                k = by_kind.setdefault(
                    p["kind"],
                    {"processes": 0, "peak_rss_mib": 0.0, "peak_hwm_mib": 0.0, "cpu_seconds": 0.0},
                )
                k["processes"] += 1
                k["peak_rss_mib"] = round(max(k["peak_rss_mib"], p["rss_kib"] / 1024), 1)
                k["peak_hwm_mib"] = round(max(k["peak_hwm_mib"], p["hwm_kib"] / 1024), 1)
                used = self._cpu_last.get(key, 0) - self._cpu_base.get(key, 0)
                k["cpu_seconds"] = round(k["cpu_seconds"] + used / CLK_TCK, 2)
            own = sum(k["cpu_seconds"] for k in by_kind.values())
            return {
                "samples": self.samples,
                "by_kind": by_kind,
                "max_workers_alive": self.max_workers_alive,
                "max_workers_total_rss_mib": round(self.max_workers_total_kib / 1024, 1),
                "cpu": self._window.result(own_cpu=own),
            }


def rss_mib() -> float:
    return _status_kib(os.getpid()).get("VmRSS", 0) / 1024


# --------------------------------------------------------------------------------------------------
# Spark measurements
# --------------------------------------------------------------------------------------------------


class PhaseTimer:
    """Wraps a few driver-side functions of the match stage to time them (no effect on results)."""

    def __init__(self) -> None:
        import curation.stages.match as stage

        self.stage = stage
        self.times: dict[str, float] = {}
        self._orig = {}
        for name in ("load_metadata", "Matcher", "ship_matcher", "summarize", "read_pool"):
            self._orig[name] = getattr(stage, name)
            setattr(stage, name, self._wrap(name, self._orig[name]))

    def _wrap(self, name, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t

        return timed

    def take(self) -> dict[str, float]:
        out, self.times = self.times, {}
        return {k: round(v, 2) for k, v in out.items()}

    def restore(self) -> None:
        for name, fn in self._orig.items():
            setattr(self.stage, name, fn)


def _probe_partition(batches, matcher_file: str, caption_index: int):
    """mapInArrow body for profiling: match like the stage, yield one row of timings per task."""
    import os as _os
    import time as _time

    import pyarrow as _pa
    from pyspark import SparkFiles

    from curation.matching import cached_matcher, is_matcher_cached

    t0 = _time.perf_counter()
    path = SparkFiles.get(matcher_file)
    cached = is_matcher_cached(path)
    matcher = cached_matcher(path)
    load = _time.perf_counter() - t0
    wait = match = match_cpu = 0.0
    rows = n_batches = matches = 0
    it = iter(batches)
    while True:
        t = _time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        wait += _time.perf_counter() - t
        t = _time.perf_counter()
        c = _time.thread_time()
        ids = matcher.match_arrow(batch.column(caption_index))
        match += _time.perf_counter() - t
        match_cpu += _time.thread_time() - c
        rows += batch.num_rows
        n_batches += 1
        matches += len(ids.values)
    yield _pa.RecordBatch.from_pylist(
        [
            {
                "pid": _os.getpid(),
                "cached": cached,
                "load_s": load,
                "wait_s": wait,
                "match_s": match,
                "match_cpu_s": match_cpu,
                "total_s": _time.perf_counter() - t0,
                "rows": rows,
                "batches": n_batches,
                "matches": matches,
            }
        ]
    )


def profile_spark(spark, data: dict, workdir: Path, rows: int, monitor: ProcessMonitor) -> dict:
    """Split the stage into parts and vary its knobs (see ``--profile``)."""
    from pyspark.sql import functions as F

    from curation.matching import Matcher
    from curation.metadata import load_metadata
    from curation.pool import read_pool
    from curation.stages.match import match_pool, metadata_fingerprint, prepare, ship_matcher

    out: dict = {}
    metadata = load_metadata(data["metadata"])
    matcher_file = ship_matcher(
        spark, Matcher(metadata.entries), metadata_fingerprint(metadata.entries, False)
    )

    def good_rows():
        df, roles, _ = read_pool(spark, data["pool"])
        prepared = prepare(df, roles.uid is not None, 10_000)
        return prepared, prepared.filter(F.col("reason").isNull()).drop("reason", "source_file")

    def measure(fn) -> dict:
        """Wall time and CPU seconds per process kind (robust to other users' load)."""
        monitor.begin()
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
        m = monitor.end()
        cpu = {k: v["cpu_seconds"] for k, v in sorted(m["by_kind"].items()) if v["cpu_seconds"]}
        return {
            "seconds": round(wall, 2),
            "captions_per_s": round(rows / wall),
            "cpu_seconds": cpu,
            "captions_per_cpu_s": round(rows / max(sum(cpu.values()), 1e-9)),
            "others_share_of_machine": m["cpu"]["others_share_of_machine"],
        }

    prepared, good = good_rows()
    out["input_partitions"] = good.rdd.getNumPartitions()
    out["max_partition_bytes"] = spark.conf.get("spark.sql.files.maxPartitionBytes")
    out["arrow_max_records_per_batch"] = spark.conf.get(
        "spark.sql.execution.arrow.maxRecordsPerBatch"
    )
    print(f"  profile: {out['input_partitions']} input tasks", flush=True)
    experiments = {
        "read_prepare_noop (JVM only)": lambda: good.write.format("noop").mode("overwrite").save(),
        "match_noop (no Parquet write)": lambda: (
            match_pool(good, matcher_file).write.format("noop").mode("overwrite").save()
        ),
        "match_caption_only_noop (no pass-through)": lambda: (
            match_pool(good.select("caption"), matcher_file)
            .write.format("noop")
            .mode("overwrite")
            .save()
        ),
        "match_write_parquet (pool only)": lambda: (
            match_pool(good, matcher_file)
            .write.mode("overwrite")
            .parquet(str(workdir / "profile-pool"))
        ),
        "match_write_parquet_no_dictionary": lambda: (
            match_pool(good, matcher_file)
            .write.mode("overwrite")
            .option("parquet.enable.dictionary", "false")
            .parquet(str(workdir / "profile-pool"))
        ),
        "rejects_pass": lambda: (
            prepared.filter(F.col("reason").isNotNull())
            .write.mode("overwrite")
            .parquet(str(workdir / "profile-rejects"))
        ),
    }
    for name, fn in experiments.items():
        out[name] = measure(fn)
        print(f"  profile: {name:45s} {out[name]}", flush=True)

    # In-worker timings per task.
    caption_index = good.columns.index("caption")
    from functools import partial

    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StructField,
        StructType,
    )

    schema = StructType(
        [
            StructField("pid", LongType()),
            StructField("cached", BooleanType()),
            *[
                StructField(n, DoubleType())
                for n in ("load_s", "wait_s", "match_s", "match_cpu_s", "total_s")
            ],
            *[StructField(n, LongType()) for n in ("rows", "batches", "matches")],
        ]
    )
    probe = partial(_probe_partition, matcher_file=matcher_file, caption_index=caption_index)
    t = time.perf_counter()
    tasks = [r.asDict() for r in good.mapInArrow(probe, schema).collect()]
    wall = time.perf_counter() - t
    out["probe"] = {
        "wall_seconds": round(wall, 2),
        "tasks": len(tasks),
        "worker_pids": len({r["pid"] for r in tasks}),
        "automaton_loads": sum(1 for r in tasks if not r["cached"]),
        "load_s_total": round(sum(r["load_s"] for r in tasks), 2),
        "wait_s_total": round(sum(r["wait_s"] for r in tasks), 2),
        "match_s_total": round(sum(r["match_s"] for r in tasks), 2),
        "task_s_total": round(sum(r["total_s"] for r in tasks), 2),
        "rows_per_task": sorted(r["rows"] for r in tasks),
        "batches_total": sum(r["batches"] for r in tasks),
        "match_cpu_s_total": round(sum(r["match_cpu_s"] for r in tasks), 2),
        "python_match_captions_per_cpu_s": round(
            sum(r["rows"] for r in tasks) / max(sum(r["match_cpu_s"] for r in tasks), 1e-9)
        ),
        "python_match_captions_per_s_per_worker": round(
            sum(r["rows"] for r in tasks) / max(sum(r["match_s"] for r in tasks), 1e-9)
        ),
    }
    print(f"  profile: probe {out['probe']}", flush=True)

    # Knobs: Arrow batch size and split size (both runtime SQL settings).
    default_batch = out["arrow_max_records_per_batch"]
    out["arrow_batch"] = {}
    for n in (2_000, 50_000):
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(n))
        out["arrow_batch"][n] = measure(experiments["match_noop (no Parquet write)"])
        print(f"  profile: arrow batch {n:>6}: {out['arrow_batch'][n]}", flush=True)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", default_batch)
    default_split = out["max_partition_bytes"]
    out["split_size"] = {}
    for size in ("8m", "128m"):
        spark.conf.set("spark.sql.files.maxPartitionBytes", size)
        _, g = good_rows()
        n_tasks = g.rdd.getNumPartitions()
        res = measure(
            lambda g=g: match_pool(g, matcher_file).write.format("noop").mode("overwrite").save()
        )
        out["split_size"][size] = {"tasks": n_tasks, **res}
        print(f"  profile: maxPartitionBytes {size}: {out['split_size'][size]}", flush=True)
    spark.conf.set("spark.sql.files.maxPartitionBytes", default_split)
    return out


def bench_spark(args: argparse.Namespace, data: dict, monitor: ProcessMonitor) -> dict:
    from curation.spark import SparkConfig, get_spark
    from curation.stages.match import MatchConfig, run_match

    workdir = Path(args.workdir)
    local_dir = workdir / "spark-local"
    shutil.rmtree(local_dir, ignore_errors=True)
    local_dir.mkdir(parents=True)
    out: dict = {}
    t = time.perf_counter()
    conf = dict(item.split("=", 1) for item in args.conf)
    spark = get_spark(
        SparkConfig(master=args.master, app_name="bench-match", local_dir=str(local_dir), conf=conf)
    )
    out["session_start_seconds"] = round(time.perf_counter() - t, 2)
    out["cores"] = spark.sparkContext.defaultParallelism
    out["spark_version"] = spark.version
    out["max_partition_bytes"] = spark.conf.get("spark.sql.files.maxPartitionBytes")
    out["arrow_max_records_per_batch"] = spark.conf.get(
        "spark.sql.execution.arrow.maxRecordsPerBatch"
    )
    print(
        f"Spark {spark.version} on {args.master}: session started in {out['session_start_seconds']} s",
        flush=True,
    )
    timer = PhaseTimer()
    try:
        for run in ("cold", "warm"):
            output = workdir / f"run-{run}"
            shutil.rmtree(output, ignore_errors=True)
            config = MatchConfig(input=data["pool"], output=str(output), metadata=data["metadata"])
            monitor.begin()
            t = time.perf_counter()
            result = run_match(spark, config, force=True)
            seconds = time.perf_counter() - t
            mem = monitor.end()
            s = result.summary
            out[run] = {
                "seconds": round(seconds, 2),
                "captions_per_s": round(s["input_rows"] / seconds),
                "input_rows": s["input_rows"],
                "usable_rows": s["usable_rows"],
                "rejected": s["rejected"],
                "matched_share": round(s["matched_share"], 4),
                "total_matches": s["total_matches"],
                "matches_per_caption": round(s["total_matches"] / max(s["usable_rows"], 1), 2),
                "captions_per_cpu_s": round(
                    s["input_rows"] / max(mem["cpu"]["own_cpu_seconds"], 1e-9)
                ),
                "output_files": len(list((output / "pool").glob("*.parquet"))),
                "phases_seconds": timer.take(),
                "memory": mem,
            }
            print(
                f"  {run}: {seconds:.1f} s, {out[run]['captions_per_s']:,} captions/s, "
                f"phases {out[run]['phases_seconds']}",
                flush=True,
            )
    finally:
        timer.restore()
    if args.profile:
        out["profile"] = profile_spark(spark, data, workdir, out["cold"]["input_rows"], monitor)
    spark.stop()
    if not args.keep_outputs:  # ~200 MiB each; the data cache is kept
        for name in ("run-cold", "run-warm", "profile-pool", "profile-rejects", "spark-local"):
            shutil.rmtree(workdir / name, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------
# In-process loops
# --------------------------------------------------------------------------------------------------


def bench_bare(data: dict) -> tuple[dict, list[str], object]:
    from curation.matching import Matcher
    from curation.metadata import load_metadata

    out: dict = {}
    metadata = load_metadata(data["metadata"])
    entries = metadata.entries
    gc.collect()
    rss0 = rss_mib()
    t = time.perf_counter()
    matcher = Matcher(entries)
    out["build_seconds"] = round(time.perf_counter() - t, 2)
    out["build_rss_mib"] = round(rss_mib() - rss0, 1)
    t = time.perf_counter()
    blob = pickle.dumps(matcher, protocol=pickle.HIGHEST_PROTOCOL)
    out["pickle_dump_seconds"] = round(time.perf_counter() - t, 2)
    out["pickle_mib"] = round(len(blob) / MIB, 1)
    loads = []
    for _ in range(3):
        t = time.perf_counter()
        loaded = pickle.loads(blob)
        loads.append(time.perf_counter() - t)
        del loaded
    out["pickle_load_seconds"] = round(min(loads), 2)
    out["pickle_load_seconds_all"] = [round(x, 2) for x in loads]
    del blob
    t = time.perf_counter()
    column = pq.read_table(data["pool"], columns=["caption"]).column("caption")
    out["read_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    captions = column.to_pylist()
    out["to_pylist_seconds"] = round(time.perf_counter() - t, 2)
    del column
    gc.collect()
    window = CpuWindow()
    t = time.perf_counter()
    ids = matcher.match_many(captions)
    seconds = time.perf_counter() - t
    out["cpu"] = window.result()
    out["match_seconds"] = round(seconds, 2)
    out["rows"] = len(captions)
    out["captions_per_s"] = round(len(captions) / seconds)
    out["captions_per_cpu_s"] = round(len(captions) / max(out["cpu"]["own_cpu_seconds"], 1e-9))
    out["captions_per_s_incl_to_pylist"] = round(
        len(captions) / (seconds + out["to_pylist_seconds"])
    )
    out["total_matches"] = len(ids.values)
    out["matches_per_caption"] = round(len(ids.values) / len(captions), 2)
    lengths = np.diff(ids.offsets.to_numpy())
    out["matched_share"] = round(float((lengths > 0).mean()), 4)
    out["matches_per_caption_p50_p99_max"] = [
        int(np.median(lengths)),
        int(np.percentile(lengths, 99)),
        int(lengths.max()),
    ]
    out["process_rss_mib"] = round(rss_mib(), 1)
    return out, captions, (matcher, entries, ids)


def bench_naive(args: argparse.Namespace, captions: list[str], state) -> dict:
    from curation.matching import naive_match

    matcher, entries, ids = state
    rng = np.random.default_rng(args.seed + 1)
    sample = rng.choice(len(captions), size=min(args.naive_sample, len(captions)), replace=False)
    offsets = ids.offsets.to_numpy()
    values = ids.values.to_numpy()
    done = mismatches = 0
    window = CpuWindow()
    t = time.perf_counter()
    deadline = t + args.naive_seconds
    for i in sample:
        got = naive_match(captions[i], entries)
        expected = values[offsets[i] : offsets[i + 1]].tolist()
        mismatches += got != expected
        done += 1
        if time.perf_counter() > deadline:
            break
    seconds = time.perf_counter() - t
    return {
        "cpu": window.result(),
        "sample_requested": len(sample),
        "sample_timed": done,
        "seconds": round(seconds, 2),
        "captions_per_s": round(done / seconds, 2),
        "extrapolated": done < len(captions),
        "extrapolated_seconds_for_all_rows": round(len(captions) * seconds / done),
        "mismatches_vs_automaton": mismatches,
        "time_budget_seconds": args.naive_seconds,
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def machine_facts() -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "?"

    try:
        java = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30
        ).stderr.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        java = "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(mem_kib / MIB, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "java": java,
        "pyspark": version("pyspark"),
        "pyarrow": version("pyarrow"),
        "pyahocorasick": version("pyahocorasick"),
        "numpy": version("numpy"),
        "platform": platform.platform(),
    }


def print_table(r: dict) -> None:
    f, p, d, s, b, n = r["machine"], r["params"], r["data"], r["spark"], r["bare"], r["naive"]
    cores = s["cores"]

    def line(what: str, value: str, note: str = "") -> None:
        print(f"  {what:<40} {value:>14}  {note}")

    def busy(cpu: dict) -> str:
        return f"others kept {cpu['others_share_of_machine']:.0%} of the machine busy"

    print()
    print("=" * 110)
    print(f"match benchmark (numbers carry {NOISE} noise, more on a shared machine; see 'others')")
    print(
        f"machine: nproc {f['nproc']} ({f['cpu']}), {f['memory_gib']} GiB; load average at start "
        f"{f['loadavg_at_start']}, at end {r['loadavg_at_end']}"
    )
    print(
        f"versions: python {f['python']}, {f['java']}, pyspark {f['pyspark']}, pyarrow "
        f"{f['pyarrow']}, pyahocorasick {f['pyahocorasick']}, numpy {f['numpy']}"
    )
    generated = "cached" if d["cached"] else f"generated in {d['generate_seconds']} s"
    print(
        f"params: rows {p['rows']:,}, entries {p['entries']:,}, master {p['master']}, seed "
        f"{p['seed']}; pool {p['files']} Parquet files, {d['pool_bytes'] / MIB:.0f} MiB, "
        f"captions {d['caption_chars_mean']} chars mean (p50 {d['caption_chars_p50']}, p99 "
        f"{d['caption_chars_p99']}); data {generated}"
        + (f"; Spark conf {p['conf']}" if p.get("conf") else "")
    )
    print("-" * 110)
    line("Spark session start", f"{s['session_start_seconds']:.1f} s")
    for run in ("cold", "warm"):
        x = s[run]
        per_core = x["captions_per_s"] / cores
        line(
            f"match stage, {run}",
            f"{x['captions_per_s']:,} /s",
            f"run_match wall {x['seconds']:.1f} s for {x['input_rows']:,} rows; {busy(x['memory']['cpu'])}",
        )
        line(
            "  per core vs bare loop",
            f"{100 * per_core / b['captions_per_s']:.0f} %",
            f"{per_core:,.0f} /s per core (÷ {cores}) vs {b['captions_per_s']:,} /s; target >= 50 %",
        )
        kinds = x["memory"]["by_kind"]
        cpu_split = ", ".join(
            f"{k} {v['cpu_seconds']:.0f}"
            for k, v in sorted(kinds.items())
            if v["cpu_seconds"] >= 0.5
        )
        line(
            "  per CPU-second vs bare loop",
            f"{100 * x['captions_per_cpu_s'] / b['captions_per_cpu_s']:.0f} %",
            f"{x['captions_per_cpu_s']:,} captions per CPU-s (CPU s: {cpu_split}) vs "
            f"{b['captions_per_cpu_s']:,}",
        )
        ph = x["phases_seconds"]
        jobs = x["seconds"] - sum(ph.values())
        line(
            "  wall split",
            "",
            ", ".join(f"{k} {v:.1f}" for k, v in ph.items()) + f", Spark jobs {jobs:.1f} s",
        )
    line(
        "bare loop, Matcher.match_many",
        f"{b['captions_per_s']:,} /s",
        f"1 process, {b['match_seconds']:.1f} s for {b['rows']:,} captions; "
        f"{b['captions_per_cpu_s']:,} per CPU-s; {busy(b['cpu'])}",
    )
    line(
        "  automaton build",
        f"{b['build_seconds']:.2f} s",
        f"+{b['build_rss_mib']:.0f} MiB RSS; pickle {b['pickle_mib']:.0f} MiB, dump "
        f"{b['pickle_dump_seconds']:.2f} s, pickle.loads {b['pickle_load_seconds']:.2f} s (best of 3)",
    )
    line(
        "naive_match, entry by entry",
        f"{n['captions_per_s']:.2f} /s",
        f"EXTRAPOLATED from {n['sample_timed']} captions in {n['seconds']:.0f} s "
        f"(all rows: ~{n['extrapolated_seconds_for_all_rows'] / 3600:.0f} h); "
        f"{n['mismatches_vs_automaton']} mismatches vs automaton; {busy(n['cpu'])}",
    )
    line("  bare loop ÷ naive", f"{b['captions_per_s'] / n['captions_per_s']:,.0f} x")
    for run in ("cold", "warm"):
        m = s[run]["memory"]
        w, dmn = m["by_kind"].get("worker", {}), m["by_kind"].get("daemon", {})
        line(
            f"peak RSS per Python worker, {run}",
            f"{max(w.get('peak_rss_mib', 0), w.get('peak_hwm_mib', 0)):,.0f} MiB",
            f"{w.get('processes', 0)} workers seen, max {m['max_workers_alive']} at once "
            f"({m['max_workers_total_rss_mib']:,.0f} MiB together); daemon "
            f"{dmn.get('peak_hwm_mib', 0):,.0f} MiB; target < 2048 MiB",
        )
    for run in ("cold", "warm"):
        k = s[run]["memory"]["by_kind"]
        line(
            f"peak RSS driver (Python), {run}",
            f"{k.get('driver', {}).get('peak_rss_mib', 0):,.0f} MiB",
            f"JVM (driver + executor, local mode) {k.get('jvm', {}).get('peak_rss_mib', 0):,.0f} MiB",
        )
    line(
        "matches per caption (mean)",
        f"{s['warm']['matches_per_caption']:.2f}",
        f"from the stage's summary; bare loop {b['matches_per_caption']:.2f} (p50/p99/max "
        f"{b['matches_per_caption_p50_p99_max']}), {b['matched_share']:.1%} of captions match",
    )
    line(
        "tasks",
        f"{s['warm']['output_files']} files",
        f"written per run; maxPartitionBytes {s['max_partition_bytes']}, Arrow "
        f"maxRecordsPerBatch {s['arrow_max_records_per_batch']}, {cores} cores",
    )
    print("=" * 110)
    if "profile" in s:
        print("profile:")
        print(json.dumps(s["profile"], indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="captions in the pool")
    parser.add_argument("--entries", type=int, default=500_000, help="metadata entries")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--workdir", default="bench/out/match", help="data cache and outputs")
    parser.add_argument(
        "--naive-sample", type=int, default=2000, help="captions given to naive_match"
    )
    parser.add_argument(
        "--naive-seconds",
        type=float,
        default=60.0,
        help="time budget of the naive loop; it stops early and extrapolates",
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--files", type=int, default=8, help="Parquet files in the pool")
    parser.add_argument("--row-group", type=int, default=50_000, help="Parquet row group rows")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also split the Spark stage into parts and vary knobs",
    )
    parser.add_argument("--skip-spark", action="store_true", help="only run the in-process loops")
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting for the session (repeatable), e.g. to try a proposed change",
    )
    parser.add_argument(
        "--keep-outputs", action="store_true", help="keep the stage outputs (run-cold/, run-warm/)"
    )
    parser.add_argument(
        "--generate-only", action="store_true", help="only generate (and cache) the data"
    )
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.conf):
        parser.error("--conf takes KEY=VALUE")
    if args.rows <= 0 or args.entries <= 0 or args.files <= 0 or args.naive_sample <= 0:
        parser.error("--rows, --entries, --files and --naive-sample must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine_facts(), "params": vars(args).copy()}
    print(f"machine: {json.dumps(results['machine'])}", flush=True)
    t = time.perf_counter()
    data = ensure_data(args)
    results["data"] = data
    print(
        f"data: {'cached' if data['cached'] else 'generated'} in {time.perf_counter() - t:.1f} s "
        f"-> {data['directory']}",
        flush=True,
    )
    if args.generate_only:
        return 0
    if not args.skip_spark:
        monitor = ProcessMonitor()
        monitor.start()
        try:
            results["spark"] = bench_spark(args, data, monitor)
        finally:
            monitor.stop()
    print("bare loop ...", flush=True)
    bare, captions, state = bench_bare(data)
    results["bare"] = bare
    print(f"  {bare['captions_per_s']:,} captions/s", flush=True)
    print(
        f"naive loop (up to {args.naive_sample} captions or {args.naive_seconds:.0f} s) ...",
        flush=True,
    )
    results["naive"] = bench_naive(args, captions, state)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["noise"] = NOISE
    if "spark" in results:
        cores = results["spark"]["cores"]
        for run in ("cold", "warm"):
            x = results["spark"][run]
            x["per_core_captions_per_s"] = round(x["captions_per_s"] / cores)
            x["per_core_share_of_bare"] = round(
                x["captions_per_s"] / cores / bare["captions_per_s"], 3
            )
            x["cpu_efficiency_vs_bare"] = round(
                x["captions_per_cpu_s"] / bare["captions_per_cpu_s"], 3
            )
    out = workdir / "results.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if "spark" in results:
        print_table(results)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
