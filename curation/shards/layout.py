"""A shard set's directory: inputs listed, selection read, output prepared, verified, committed.

Output directory of ``download`` and ``reshard``::

    00000.tar ... NNNNN.tar   WebDataset shards: key.<image ext>, key.txt, key.json per sample
    00000.parquet ...         one row per sample of the shard with the same number
    sizes.json                {"00000.tar": n, ...}: what open_clip's --train-num-samples needs
    _stats.json               counts of the run: inputs, written, dropped and missing by reason
    _rejects.parquet          selected samples that are not in the output, with the reason
    _manifest.json            inputs' fingerprints and the config (no credentials)
    _SUCCESS                  written last: the set is complete

Unlike the other stages, these two write in place rather than into a renamed temporary directory:
a shard set can be terabytes on an object store, where renaming a directory is a full copy, and
work must survive a kill at shard granularity. Completeness is carried by ``_SUCCESS`` (which
later stages require) and each shard appears whole (see :mod:`curation.shards.writer`).
``_manifest.json`` is written first: a directory holding it without ``_SUCCESS`` is a run in
progress, resumed only by a run with the same manifest; anything else wipes it first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage

log = logging.getLogger(__name__)

WORK = "_work"
SIZES = "sizes.json"
STATS = "_stats.json"
REJECTS = "_rejects.parquet"
REQUIRED_SELECTION_COLUMNS = ("uid", "caption", "repeats")
SELECTION_COLUMNS = ("uid", "url", "caption", "weight", "inclusion_prob", "entry_ids", "repeats")


def with_protocol(url: str, path: str) -> str:
    """``path`` (as fsspec returns it, without protocol) under the protocol of ``url``."""
    if storage.is_local(url):
        return path
    protocol = url.split("://", 1)[0]
    return f"{protocol}://{path}"


def list_input_shards(url: str) -> list[str]:
    """Every ``*.tar`` directly under ``url``, sorted by name, as full URLs."""
    fs, path = storage.url_to_fs(url)
    if not fs.exists(path):
        raise storage.StageInputError(f"{url}: input shard directory not found")
    found = sorted(p for p in fs.glob(f"{path.rstrip('/')}/*.tar") if ".tmp-" not in p)
    if not found:
        raise storage.StageInputError(
            f"{url}: no *.tar shards found (expected img2dataset-style 00000.tar, 00001.tar, ...)"
        )
    return [with_protocol(url, p) for p in found]


def selection_table_url(selected: str) -> str:
    return storage.join(selected, "selected")


def read_selection(selected: str, columns: Sequence[str] = SELECTION_COLUMNS) -> pa.Table:
    """The committed selection (``SELECTED/selected``) as Arrow, through fsspec, validated.

    Raises :class:`~curation.storage.StageInputError` naming the problem: not committed, a
    required column missing, a duplicate uid, a null uid or caption, repeats below 1.
    """
    storage.require_complete(selected, "selection (output of the select stage)")
    fs, path = storage.url_to_fs(selection_table_url(selected))
    files = sorted(
        p for p in fs.find(path) if p.endswith(".parquet") and "/_" not in p[len(path) :]
    )
    if not files:
        raise storage.StageInputError(f"{selected}: selected/ holds no Parquet files")
    schema_names = pq.read_schema(fs.open(files[0], "rb")).names
    missing = [c for c in REQUIRED_SELECTION_COLUMNS if c not in schema_names]
    if missing:
        raise storage.StageInputError(
            f"{files[0]}: selection lacks column(s) {', '.join(missing)}; expected the select "
            "stage's output (uid, url, caption, weight, inclusion_prob, entry_ids, repeats)"
        )
    wanted = [c for c in columns if c in schema_names]
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh, columns=wanted))
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, _DEFAULT_TYPES[name]))
    table = table.select(list(columns))
    try:  # a pool's uid may be an integer: keys and joins use its string form
        table = table.cast(pa.schema([(c, _DEFAULT_TYPES[c]) for c in table.column_names]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise storage.StageInputError(f"{selected}: unexpected column types: {exc}") from exc
    validate_selection(table, selected)
    return table


_DEFAULT_TYPES = {
    "url": pa.string(),
    "weight": pa.float64(),
    "inclusion_prob": pa.float64(),
    "entry_ids": pa.list_(pa.int32()),
    "repeats": pa.int32(),
    "caption": pa.string(),
    "uid": pa.string(),
}


def validate_selection(table: pa.Table, where: str) -> None:
    """Errors that would otherwise surface as a wrong shard set much later."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        raise storage.StageInputError(f"{where}: the selection is empty (0 rows)")
    for col in ("uid", "caption", "repeats"):
        nulls = table.column(col).null_count
        if nulls:
            i = pc.index(pc.is_null(table.column(col)), True).as_py()
            raise storage.StageInputError(
                f"{where}: {nulls} selected row(s) have a null {col} (first at row {i})"
            )
    repeats = table.column("repeats")
    if pc.min(repeats).as_py() < 1:
        i = pc.index(pc.less(repeats, 1), True).as_py()
        raise storage.StageInputError(
            f"{where}: row {i} (uid {table.column('uid')[i].as_py()!r}) has repeats < 1"
        )
    uids = table.column("uid")
    if pc.count_distinct(uids).as_py() != table.num_rows:
        counts = pc.value_counts(uids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise storage.StageInputError(
            f"{where}: uid {dup!r} is selected more than once; the selection must have unique "
            "uids (repeats go in the repeats column)"
        )


def prepare_output(url: str, manifest: dict[str, Any], force: bool, keep_work: bool = False) -> str:
    """Make ``url`` ready for a run with ``manifest``; returns ``"fresh"`` or ``"resume"``.

    A finished output (``_SUCCESS``) with another manifest, ``force``, or an unfinished one with
    another manifest is wiped, ``_SUCCESS`` first so that it never looks whole meanwhile.
    Leftover temporary files of killed writers are removed either way. ``keep_work`` spares
    ``_work/`` when wiping (``download`` keeps its raw downloads when only the resharding
    options changed).
    """
    fs, path = storage.url_to_fs(url)
    path = path.rstrip("/")
    state = "fresh"
    if fs.exists(path):
        success = storage.join(path, storage.SUCCESS)
        same = _read_manifest(fs, path) == json.loads(json.dumps(manifest))
        if fs.exists(success) or force or not same:
            if fs.exists(success):
                fs.rm(success)
            if keep_work:
                for child in fs.ls(path, detail=False):
                    if child.rstrip("/").rsplit("/", 1)[-1] != WORK:
                        fs.rm(child, recursive=True)
            else:
                fs.rm(path, recursive=True)
        else:
            state = "resume"
            from curation.shards.writer import remove_temporaries

            removed = remove_temporaries(url, storage.url_to_fs)
            log.info("resuming the unfinished run in %s (%d temporary files removed)", url, removed)
    fs.makedirs(path, exist_ok=True)
    if state == "fresh":
        with fs.open(storage.join(path, storage.MANIFEST), "wb") as f:
            f.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return state


def _read_manifest(fs: Any, path: str) -> Any:
    try:
        with fs.open(storage.join(path, storage.MANIFEST), "rb") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def verify_layout(url: str, sizes: dict[str, int]) -> None:
    """The directory holds exactly the shards of ``sizes``, each with its parquet, no strays."""
    fs, path = storage.url_to_fs(url)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    tars = {n for n in names if n.endswith(".tar")}
    parquets = {n[: -len(".parquet")] + ".tar" for n in names if n.endswith(".parquet")}
    parquets.discard(REJECTS[: -len(".parquet")] + ".tar")
    expected = set(sizes)
    if tars != expected or parquets != expected:
        extra = sorted((tars | parquets) - expected)[:5]
        lacking = sorted(expected - (tars & parquets))[:5]
        raise RuntimeError(
            f"{url}: shard set is inconsistent (unexpected {extra}, missing {lacking}); "
            "rerun the stage with --force"
        )


def commit_output(url: str, sizes: dict[str, int], stats: dict[str, Any], keep_work: bool) -> None:
    """Write ``sizes.json`` and ``_stats.json``, drop the work area, then mark ``_SUCCESS``."""
    from curation.shards.writer import remove_temporaries

    # Leftovers of writers that outlived a killed run (orphaned Python workers).
    remove_temporaries(url, storage.url_to_fs)
    verify_layout(url, sizes)
    storage.write_json(storage.join(url, SIZES), sizes)
    storage.write_json(storage.join(url, STATS), stats)
    fs, path = storage.url_to_fs(url)
    work = storage.join(path, WORK)
    if not keep_work and fs.exists(work):
        fs.rm(work, recursive=True)
    fs.touch(storage.join(path, storage.SUCCESS))
