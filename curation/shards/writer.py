"""Writing one output shard: fetch its members' bytes, write tar and parquet, commit each whole.

A shard ``NNNNN`` is two files, ``NNNNN.parquet`` then ``NNNNN.tar``, each written under a temporary
name and moved into place when complete; the tar goes last, so a present ``.tar`` means the shard
is whole (the resume test). On object stores (``s3://``, ``gs://``, ...) "temporary name" is a local
spool file that is uploaded in one piece: an upload is atomic there (an object appears whole or not
at all), while a server-side rename would be a second full copy.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curation.shards.plan import PlannedSample, output_members
from curation.shards.tario import TarWriter

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"})
TMP_MARK = ".tmp-"
FETCH_BATCH = 256

# Fault injection for the resume tests: seconds to sleep after each sample written. Read from the
# environment of the Python worker, so a test can slow down a run it then kills.
DELAY_ENV = "CURATION_SHARD_WRITE_DELAY"


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in OBJECT_STORES for p in proto)


class PendingFile:
    """A file being written that becomes visible at ``path`` only on :meth:`commit`.

    Local and other file systems: a ``<path>.tmp-<id>`` sibling, renamed on commit. Object
    stores: a local spool file uploaded on commit (see the module docstring).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs, self.path = fs, path
        self._spool: str | None = None
        if is_object_store(fs):
            fd, self._spool = tempfile.mkstemp(prefix="curation-shard-", suffix=".spool")
            self.file: IO[bytes] = os.fdopen(fd, "wb")
            self.tmp = self._spool
        else:
            self.tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
            self.file = fs.open(self.tmp, "wb")

    def commit(self) -> int:
        """Close and move into place; returns the size in bytes."""
        self.file.close()
        if self._spool is not None:
            size = os.path.getsize(self._spool)
            self.fs.put_file(self._spool, self.path)
            os.unlink(self._spool)
            self._spool = None
            return size
        size = int(self.fs.size(self.tmp))
        self.fs.mv(self.tmp, self.path)
        return size

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        with contextlib.suppress(Exception):
            if self._spool is not None:
                os.unlink(self._spool)
            else:
                self.fs.rm(self.tmp)


@contextlib.contextmanager
def atomic_open(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing so that it appears only when complete."""
    pending = PendingFile(fs, path)
    try:
        yield pending.file
        pending.commit()
    except BaseException:
        pending.abort()
        raise


def fetch_members(
    fs: fsspec.AbstractFileSystem,
    sources: Sequence[str],
    samples: Sequence[PlannedSample],
    skip_exts: frozenset[str] = frozenset({"txt", "json"}),
) -> list[dict[str, bytes]]:
    """The bytes of every member of ``samples`` except ``skip_exts``, via ranged reads.

    Uses ``fs.cat_ranges`` (concurrent on s3fs), sorted by (source, offset) so that a local
    read is a forward sweep.
    """
    wanted = []
    for i, s in enumerate(samples):
        for ext, off, size in zip(s.exts, s.offsets, s.sizes):
            if ext not in skip_exts:
                wanted.append((sources[s.src], off, size, i, ext))
    wanted.sort(key=lambda w: (w[0], w[1]))
    out: list[dict[str, bytes]] = [{} for _ in samples]
    if not is_object_store(fs):
        # Local and other file systems: one open per source file, forward seeks.
        handle, current = None, None
        try:
            for path, off, size, i, ext in wanted:
                if path != current:
                    if handle is not None:
                        handle.close()
                    handle, current = fs.open(path, "rb"), path
                handle.seek(off)
                blob = handle.read(size)
                if len(blob) != size:
                    raise OSError(f"{path}: short read at offset {off}: {len(blob)} of {size}")
                out[i][ext] = blob
        finally:
            if handle is not None:
                handle.close()
        return out
    for start in range(0, len(wanted), FETCH_BATCH):
        batch = wanted[start : start + FETCH_BATCH]
        blobs = fs.cat_ranges(
            [w[0] for w in batch], [w[1] for w in batch], [w[1] + w[2] for w in batch]
        )
        for (path, off, size, i, ext), blob in zip(batch, blobs):
            if isinstance(blob, Exception):
                raise blob
            if len(blob) != size:
                raise OSError(f"{path}: short read at offset {off}: {len(blob)} of {size} bytes")
            out[i][ext] = blob
    return out


PARQUET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.string()),
        ("repeat_index", pa.int32()),
        ("repeats", pa.int32()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("weight", pa.float64()),
        ("weight_selected", pa.float64()),
        ("inclusion_prob", pa.float64()),
        ("entry_ids", pa.list_(pa.int32())),
        ("image_ext", pa.string()),
        ("image_bytes", pa.int64()),
        ("source_shard", pa.string()),
        ("source_key", pa.string()),
        ("status", pa.string()),
    ]
)


def write_output_shard(
    out_dir: str,
    name: str,
    samples: Sequence[PlannedSample],
    sources: Sequence[str],
    scale: float,
    url_to_fs: Callable[[str], tuple[fsspec.AbstractFileSystem, str]],
) -> dict[str, Any]:
    """Write shard ``name`` (``.parquet`` then ``.tar``) unless its ``.tar`` is already there.

    Returns ``{"shard", "samples", "bytes", "skipped"}``. ``samples`` must be in rank order.
    """
    started = time.perf_counter()
    out_fs, out_path = url_to_fs(out_dir)
    tar_path = f"{out_path}/{name}.tar"
    if out_fs.exists(tar_path):
        return {
            "shard": name,
            "samples": len(samples),
            "bytes": int(out_fs.size(tar_path)),
            "skipped": True,
            "seconds": 0.0,
        }
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    in_fs, _ = url_to_fs(sources[0]) if sources else (out_fs, "")
    source_paths = [url_to_fs(s)[1] for s in sources]
    source_names = [p.rsplit("/", 1)[-1] for p in source_paths]
    rows: dict[str, list[Any]] = {f.name: [] for f in PARQUET_SCHEMA}

    # The tar is written under its temporary name, then the parquet is written and committed,
    # then the tar is committed: a visible tar always has its parquet beside it.
    pending = PendingFile(out_fs, tar_path)
    try:
        with TarWriter(pending.file) as tar:
            for start in range(0, len(samples), FETCH_BATCH):
                batch = samples[start : start + FETCH_BATCH]
                for s, data in zip(batch, fetch_members(in_fs, source_paths, batch)):
                    members = output_members(s, data, scale, source_names[s.src])
                    tar.add_sample(s.key, members)
                    image_ext = next((e for e, _ in members if e not in ("txt", "json")), None)
                    _append_row(rows, s, scale, image_ext, data, source_names[s.src])
                    if delay:
                        time.sleep(delay)
        with atomic_open(out_fs, f"{out_path}/{name}.parquet") as f:
            pq.write_table(pa.Table.from_pydict(rows, schema=PARQUET_SCHEMA), f)
        size = pending.commit()
    except BaseException:
        pending.abort()
        raise
    return {
        "shard": name,
        "samples": len(samples),
        "bytes": int(size),
        "skipped": False,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _append_row(
    rows: dict[str, list[Any]],
    s: PlannedSample,
    scale: float,
    image_ext: str | None,
    data: dict[str, bytes],
    source_name: str,
) -> None:
    rows["key"].append(s.key)
    rows["uid"].append(s.uid)
    rows["repeat_index"].append(s.repeat_index)
    rows["repeats"].append(s.repeats)
    rows["caption"].append(s.caption)
    rows["url"].append(s.url)
    rows["weight"].append(None if s.weight is None else s.weight * scale)
    rows["weight_selected"].append(s.weight)
    rows["inclusion_prob"].append(s.inclusion_prob)
    rows["entry_ids"].append(s.entry_ids)
    rows["image_ext"].append(image_ext)
    rows["image_bytes"].append(len(data[image_ext]) if image_ext else 0)
    rows["source_shard"].append(source_name)
    rows["source_key"].append(s.src_key)
    rows["status"].append("success")


def remove_temporaries(out_dir: str, url_to_fs: Callable[[str], tuple[Any, str]]) -> int:
    """Delete ``*.tmp-*`` leftovers of killed writers in ``out_dir``; returns how many."""
    fs, path = url_to_fs(out_dir)
    stale = [p for p in fs.glob(f"{path}/*{TMP_MARK}*")]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(p, recursive=True)
    return len(stale)
