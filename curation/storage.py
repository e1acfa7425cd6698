"""Storage: one place that knows how to read, write and atomically commit paths.

Every path a user gives may be a local path or any fsspec URL (``s3://``, ``gs://``, ``file://``,
``memory://``...). Python code reaches it through fsspec; Spark reaches it through Hadoop, so
:func:`spark_url` turns a path into the URL Hadoop expects (absolute ``file://`` for local paths,
``s3a://`` for ``s3://``).

A stage's output directory is committed atomically (:func:`atomic_directory`): the stage writes into
``<out>.tmp-<id>``, then ``_manifest.json`` and ``_SUCCESS`` are written last and the directory is
renamed to ``<out>``. A later stage accepts an input only when its ``_SUCCESS`` marker exists, so a
killed stage never leaves something that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
import fsspec.config
from fsspec.core import url_to_fs as _url_to_fs

from curation import __version__

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
#: In a stage's temporary directory: who writes it (host, pid), so that only a dead run's leftovers
#: are ever cleaned up, and a live run's are reported as "in use".
OWNER = "_owner.json"


class StageInputError(ValueError):
    """An input path that is missing, incomplete or unreadable; the message names it."""


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or fsspec URL (``s3a://`` is read as ``s3://``)."""
    if url.startswith("s3a://"):
        url = "s3://" + url[len("s3a://") :]
    return _url_to_fs(url)


def list_data_files(url: str, what: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """``(filesystem, paths)`` of the data files at ``url``: the file itself, or every file below
    the directory (recursively, sorted) except those with a path part starting with ``_`` or
    ``.`` (Spark's ``_SUCCESS``, our ``_manifest.json``, hidden and temporary files). A missing
    path is a :class:`StageInputError` that names it and ``what`` it should have been."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        raise StageInputError(f"{url}: {what} not found")
    if not fs.isdir(path):
        return fs, [path]
    names = [
        p
        for p in sorted(fs.find(path))
        if not any(part.startswith(("_", ".")) for part in p[len(path) :].split("/") if part)
    ]
    return fs, names


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    """The absolute local path of a local path or ``file://`` URL."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    return os.path.abspath(url)


def spark_url(url: str) -> str:
    """The URL under which Spark (Hadoop) reads or writes ``url``."""
    if is_local(url):
        return "file://" + local_path(url)
    if url.startswith("s3://"):
        return "s3a://" + url[len("s3://") :]
    return url


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file under a temporary name, then rename it into place."""
    fs, path = url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_json(url: str, value: Any) -> None:
    write_bytes(
        url, (json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode()
    )


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def fingerprint(url: str) -> str:
    """A short content fingerprint of an input file or directory.

    A committed stage output is fingerprinted by its manifest (which itself fingerprints that stage's
    inputs and config), so fingerprints chain through the pipeline. Other inputs are fingerprinted by
    their file list with sizes and modification times.
    """
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        raise StageInputError(f"{url}: no such file or directory")
    manifest = join(path, MANIFEST)
    if fs.isdir(path) and fs.exists(manifest):
        with fs.open(manifest, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:32]
    digest = hashlib.sha256()
    files = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    for name in sorted(files):
        info = files[name]
        digest.update(
            f"{os.path.relpath(name, path)}\0{info.get('size')}\0{info.get('mtime', info.get('LastModified', ''))}\n".encode()
        )
    return digest.hexdigest()[:32]


def require_complete(url: str, what: str) -> None:
    """Raise :class:`StageInputError` unless ``url`` is a committed stage output."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        raise StageInputError(f"{url}: {what} not found; run the stage that writes it first")
    if not fs.exists(join(path, SUCCESS)):
        raise StageInputError(
            f"{url}: {what} is incomplete (no {SUCCESS} marker): the stage that writes it did not "
            "finish; rerun that stage"
        )


def make_manifest(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    """The manifest of a stage run: its config slice and its inputs' fingerprints."""
    return {
        "stage": stage,
        "version": __version__,
        "config": config,
        "inputs": {name: {"url": u, "fingerprint": fingerprint(u)} for name, u in inputs.items()},
    }


def is_up_to_date(url: str, manifest: dict[str, Any]) -> bool:
    """True when ``url`` is a committed output written from the same inputs and config."""
    fs, path = url_to_fs(url)
    if not fs.exists(join(path, SUCCESS)):
        return False
    try:
        with fs.open(join(path, MANIFEST), "rb") as f:
            return json.load(f) == json.loads(json.dumps(manifest))
    except (FileNotFoundError, ValueError):
        return False


@contextmanager
def atomic_directory(url: str, manifest: dict[str, Any]) -> Iterator[str]:
    """Yield a temporary directory URL; on success commit it to ``url`` with manifest and marker.

    On any exception the temporary directory is removed and ``url`` is left as it was. Stale
    temporary directories of killed runs (``<url>.tmp-*``) are removed first.

    The marker is written after the move, never moved: on an object store a "move" is a copy of
    every file (in name order, so ``_SUCCESS`` would come early) followed by deletes, and a kill
    in the middle must not leave a ``<url>`` that holds the marker but not all of its files. For
    the same reason an older output's marker is deleted before the older output is moved away.
    A kill at any point therefore leaves either the old committed output, or no output with a
    marker (the next stage says "not found" or "incomplete"; the rerun cleans up).
    """
    fs, path = url_to_fs(url)
    path = path.rstrip("/")
    protocol = url.split("://", 1)[0] + "://" if not is_local(url) else ""
    check_output_is_ours(url, [i["url"] for i in manifest.get("inputs", {}).values()])
    for stale in fs.glob(f"{path}.tmp-*"):
        _remove_if_dead(fs, stale, url)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    fs.makedirs(tmp, exist_ok=True)
    # written whole or not at all (temporary name, then a rename), so a run that reads it never
    # takes a half-written owner file for a dead run's
    write_bytes(
        protocol + join(tmp, OWNER),
        json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(),
    )
    try:
        # Two runs that passed the check above at the same moment: each wrote its owner file
        # before this look, so the later one sees the other (both may; neither goes on alone).
        for other in fs.glob(f"{path}.tmp-*"):
            if other.rstrip("/") != tmp:
                _refuse_if_in_use(fs, other, url)
        yield protocol + tmp
        with fs.open(join(tmp, MANIFEST), "wb") as f:
            f.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
        old = None
        if fs.exists(path):
            if fs.exists(join(path, SUCCESS)):
                fs.rm(join(path, SUCCESS))  # un-commit first: see the docstring
            old = f"{path}.tmp-{uuid.uuid4().hex[:12]}-old"
            fs.mv(path, old, recursive=True)
        else:
            parent = path.rsplit("/", 1)[0]
            if parent:
                fs.makedirs(parent, exist_ok=True)
        fs.mv(tmp, path, recursive=True)
        # The owner file stays until the move is done: a work area with a manifest and no owner
        # is a dead run's leftover to any other run, which would remove it mid-commit.
        fs.rm(join(path, OWNER))
        fs.touch(join(path, SUCCESS))  # last: the output is whole
        if old is not None and fs.exists(old):  # a run starting now may have removed it
            fs.rm(old, recursive=True)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise


class OutputNotOursError(StageInputError):
    """The output path holds something this tool did not write, or overlaps an input."""


def _norm(url: str) -> str:
    """``url`` as ``protocol://path`` with links resolved (local) and no trailing slash, so that
    two spellings of one place compare equal and two stores never do."""
    if is_local(url):
        return "file://" + os.path.realpath(local_path(url)).rstrip("/")
    fs, path = url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path.rstrip('/')}"


def same_place(a: str, b: str) -> bool:
    """Whether two URLs name one place (links resolved, trailing slashes ignored)."""
    return _norm(a) == _norm(b)


def check_output_is_ours(url: str, inputs: list[str]) -> None:
    """Refuse an output that would destroy what the stage did not write: a regular file, a
    non-empty directory without our manifest, or a path equal to, inside or around an input."""
    check_not_overlapping(url, inputs)
    fs, path = url_to_fs(url)
    path = path.rstrip("/")
    if not fs.exists(path):
        return
    if not fs.isdir(path):
        raise OutputNotOursError(
            f"{url}: exists and is a file, not a stage output directory; choose another output "
            "path (nothing was changed)"
        )
    if fs.exists(join(path, MANIFEST)) or not fs.ls(path):
        return  # our own output (committed or not), or an empty directory
    raise OutputNotOursError(
        f"{url}: exists and was not written by curate (it has no {MANIFEST}); refusing to replace "
        "it. Choose a new or empty output directory (nothing was changed)"
    )


def check_not_overlapping(url: str, inputs: list[str]) -> None:
    """Refuse an output path equal to, inside or around one of ``inputs``."""
    out = _norm(url)
    for inp in inputs:
        src = _norm(inp)
        if out == src:
            relation = "the same as"
        elif out.startswith(src + "/"):
            relation = "inside"
        elif src.startswith(out + "/"):
            relation = "around"
        else:
            continue
        raise OutputNotOursError(
            f"{url}: the output is {relation} the input {inp}; writing it would replace the "
            "input. Choose another output directory"
        )


def _refuse_if_in_use(fs: fsspec.AbstractFileSystem, stale: str, url: str) -> bool:
    """Raise :class:`OutputNotOursError` when another run is writing ``stale``; True when
    ``stale`` has an owner file (whose writer is gone)."""
    owner = join(stale, OWNER)
    try:
        with fs.open(owner, "rb") as f:
            who = json.load(f)
    except FileNotFoundError:
        return False
    except (ValueError, OSError):
        who = {}
    if who.get("host") == socket.gethostname() and _alive(int(who.get("pid", -1))):
        raise OutputNotOursError(
            f"{url}: in use by another run (process {who['pid']} is writing {stale}); wait "
            "for it to finish or choose another output directory"
        )
    if who.get("host") not in (None, socket.gethostname()):
        raise OutputNotOursError(
            f"{url}: {stale} is being written by a run on host {who['host']}, which cannot be "
            "checked from here; if that run is gone, delete the folder by hand"
        )
    return True


def _remove_if_dead(fs: fsspec.AbstractFileSystem, stale: str, url: str) -> None:
    """Remove a temporary directory of ours whose writer is gone; refuse one in use."""
    if not _refuse_if_in_use(fs, stale, url) and not fs.exists(join(stale, MANIFEST)):
        return  # neither an owner nor a manifest: not provably ours, leave it alone
    fs.rm(stale, recursive=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- Object-store options (s3:// through s3fs) --------------------------------------------------
#
# Where a stage reads or writes ``s3://`` paths, the endpoint, the credentials and the retry policy
# come from :class:`S3Options`. They are installed as fsspec's per-protocol defaults
# (``fsspec.config.conf["s3"]``), so every fsspec call in the process uses them, including those
# made inside libraries such as img2dataset. Spark tasks run in other processes: the stages pass
# the options into the task closure (:func:`apply_storage_options` on the worker) or, for code they
# do not control, through the ``FSSPEC_S3`` environment variable of the Python workers
# (:meth:`S3Options.worker_environment`). Credentials are never part of a manifest, a stats file
# or a log line: :meth:`S3Options.public` is the only view that is ever written.


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store (AWS, MinIO, Ceph, moto ...).

    Empty fields fall back to botocore's usual chain (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
    ``~/.aws``, instance roles), which is the recommended way to pass credentials: a key given on a
    command line is visible to other users of the machine in ``ps``.
    """

    endpoint_url: str = ""
    key: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    region: str = ""
    profile: str = ""
    retries: int = 5
    anon: bool = False

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem`` (empty when everything is default)."""
        opts: dict[str, Any] = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.key:
            opts["key"] = self.key
        if self.secret:
            opts["secret"] = self.secret
        if self.profile:
            opts["profile"] = self.profile
        if self.anon:
            opts["anon"] = True
        if self.region:
            opts["client_kwargs"] = {"region_name": self.region}
        # botocore's own retry loop (throttling, 5xx, connection errors) ...
        opts["config_kwargs"] = {"retries": {"max_attempts": self.retries, "mode": "standard"}}
        return opts

    def is_default(self) -> bool:
        return self == S3Options()

    def public(self) -> dict[str, Any]:
        """What may be logged or written to a manifest: no key, no secret."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "profile": self.profile,
            "retries": self.retries,
            "anon": self.anon,
            "credentials": "given" if (self.key or self.secret) else "default chain",
        }

    def worker_environment(self) -> dict[str, str]:
        """Environment for processes that build their own fsspec filesystems (fsspec reads
        ``FSSPEC_S3`` as JSON defaults for the ``s3`` protocol when it is imported)."""
        if self.is_default():
            return {}
        return {"FSSPEC_S3": json.dumps(self.storage_options(), sort_keys=True)}


def apply_storage_options(s3: S3Options | None) -> None:
    """Install ``s3`` as this process's fsspec defaults for ``s3://`` (idempotent).

    Called on the driver by the stages and at the start of every Spark task that touches storage,
    because Python workers are separate processes that do not share the driver's settings.
    """
    if s3 is None:
        return
    opts = s3.storage_options()
    # s3fs also retries reads itself, with a class-level count.
    current = fsspec.config.conf.get("s3")
    if current != opts:
        fsspec.config.conf["s3"] = opts
        fsspec.config.conf["s3a"] = opts
