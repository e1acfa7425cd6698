"""Reading and writing WebDataset tars with the standard ``tarfile`` module.

Reading is a single forward pass (``tarfile`` stream mode), so it works on any file object fsspec
gives, including an S3 object read sequentially. Scanning records where each member's bytes are
(``offset_data``, ``size``) so that a later pass can fetch exactly the bytes it needs with ranged
reads, without unpacking anything to disk.

Writing is deterministic: every header field that is not the name or the size is fixed (mode 0644,
owner 0/0 without names, mtime :data:`FIXED_MTIME`), so the same samples in the same order give
byte-identical tars, which is what makes a resumed reshard equal an uninterrupted one.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from curation.shards.keys import split_member_name

FIXED_MTIME = 0
MAX_JSON_BYTES = 1 << 20
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


class CorruptTarError(ValueError):
    """An input tar that is cut short or holds a damaged header; the message says where."""


class _CheckedTarInfo(tarfile.TarInfo):
    """Headers that ``tarfile`` would take for the end of the archive are errors here.

    ``tarfile`` stops silently at a damaged or truncated header after the first member, and at a
    file that ends without the end-of-archive blocks, which would drop every later sample without
    a word. Only the all-zero end-of-archive block ends a scan normally.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        offset = tarfile_.offset
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.EmptyHeaderError:
            if offset == 0:
                raise CorruptTarError("empty file, not a tar") from None
            raise CorruptTarError(
                f"truncated: the file ends at byte {offset} without the end-of-archive blocks"
            ) from None
        except tarfile.TruncatedHeaderError:
            raise CorruptTarError(f"truncated: the header at byte {offset} is cut short") from None
        except tarfile.InvalidHeaderError as exc:
            raise CorruptTarError(f"damaged header at byte {offset} ({exc})") from None


@dataclass
class ScannedSample:
    """One input sample: its key, where its members' bytes are, and its parsed ``.json``."""

    seq: int
    key: str
    exts: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    meta: dict[str, Any] | None = None
    meta_error: str | None = None

    def image_ext(self) -> str | None:
        for ext in self.exts:
            if ext in IMAGE_EXTS:
                return ext
        return None


@dataclass
class ScanCounts:
    """What a scan skipped, by reason (all of it also appears in ``_stats.json``)."""

    members: int = 0
    non_regular_members: int = 0
    bad_member_names: int = 0
    duplicate_members: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _read_member(tf: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes | None:
    if info.size > limit:
        return None
    f = tf.extractfile(info)
    return f.read() if f is not None else None


def scan_tar(fileobj: IO[bytes], counts: ScanCounts | None = None) -> Iterator[ScannedSample]:
    """Yield the samples of an uncompressed tar in order, in one forward pass.

    Consecutive members with the same key form a sample (WebDataset's rule). Directories, links
    and devices are skipped, as are names that :func:`split_member_name` rejects (absolute
    paths, ``..``), and a second member with the same extension in one sample; each is counted.
    Only ``.json`` members are read into memory; the others are located, not read: on a
    seekable file (local disk) their bytes are skipped with a seek, on a stream read through.

    Raises :class:`CorruptTarError` for a file that is not a tar, is cut short (also when the cut
    falls between members: the end-of-archive blocks are required) or holds a damaged header.
    """
    counts = counts if counts is not None else ScanCounts()
    seekable = getattr(fileobj, "seekable", lambda: False)()
    try:
        yield from _scan(fileobj, seekable, counts)
    except tarfile.ReadError as exc:  # data cut short inside a member, or not a tar at all
        raise CorruptTarError(f"unreadable or truncated tar ({exc})") from None


def _scan(fileobj: IO[bytes], seekable: bool, counts: ScanCounts) -> Iterator[ScannedSample]:
    current: ScannedSample | None = None
    seq = 0
    mode = "r:" if seekable else "r|"
    with tarfile.open(fileobj=fileobj, mode=mode, tarinfo=_CheckedTarInfo) as tf:
        for info in tf:
            counts.members += 1
            if not info.isreg():
                counts.non_regular_members += 1
                continue
            parsed = split_member_name(info.name)
            if parsed is None:
                counts.bad_member_names += 1
                continue
            key, ext = parsed
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = ScannedSample(seq=seq, key=key)
                seq += 1
            if ext in current.exts:
                counts.duplicate_members += 1
                continue
            current.exts.append(ext)
            current.offsets.append(info.offset_data)
            current.sizes.append(info.size)
            if ext == "json":
                data = _read_member(tf, info, MAX_JSON_BYTES)
                try:
                    value = json.loads(data) if data is not None else None
                    if isinstance(value, dict):
                        current.meta = value
                    else:
                        current.meta_error = "json is not an object or too large"
                except ValueError as exc:
                    current.meta_error = f"bad json: {exc}"
    if current is not None:
        yield current


def iter_samples(fileobj: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` for every sample of a tar, in order (a plain reader)."""
    current_key: str | None = None
    current: dict[str, bytes] = {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tf:
        for info in tf:
            if not info.isreg():
                continue
            parsed = split_member_name(info.name)
            if parsed is None:
                continue
            key, ext = parsed
            if key != current_key:
                if current_key is not None:
                    yield current_key, current
                current_key, current = key, {}
            f = tf.extractfile(info)
            current[ext] = f.read() if f is not None else b""
    if current_key is not None:
        yield current_key, current


_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_MAX_USTAR_SIZE = 8**11 - 1


def _octal(n: int, digits: int) -> bytes:
    return b"%0*o\0" % (digits - 1, n)


# Everything of a ustar header after ``name`` and before ``size``, and after ``mtime``: constant
# for the fixed fields this writer uses (what ``tarfile`` writes for them, byte for byte).
_MODE_UID_GID = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8)
_MTIME = _octal(FIXED_MTIME, 12)
_TAIL = (
    tarfile.REGTYPE
    + b"\0" * 100  # linkname
    + tarfile.POSIX_MAGIC
    + b"\0" * 32  # uname
    + b"\0" * 32  # gname
    + b"\0" * 8  # devmajor (empty for regular files)
    + b"\0" * 8  # devminor
    + b"\0" * 155  # prefix
    + b"\0" * 12
)


def member_header(name: str, size: int) -> bytes:
    """The tar header ``tarfile`` (PAX format) writes for a regular file with the fixed fields.

    A direct ustar header for the common case (ASCII name of at most 100 bytes), 10x cheaper
    than ``TarInfo.tobuf``; anything else goes through ``tarfile`` (PAX extended headers).
    """
    raw = name.encode("ascii", "strict") if name.isascii() else b""
    if raw and len(raw) <= 100 and size <= _MAX_USTAR_SIZE:
        head = raw.ljust(100, b"\0") + _MODE_UID_GID + _octal(size, 12) + _MTIME
        block = head + b" " * 8 + _TAIL
        chksum = sum(block)
        return head + b"%06o\0 " % chksum + _TAIL
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class TarWriter:
    """Append members to a tar with fixed headers (see the module docstring).

    Writes exactly what ``tarfile.open(mode="w|", format=PAX_FORMAT)`` writes for the same
    members with the same header fields (the tests check), without its per-member overhead.
    """

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._f = fileobj
        self._offset = 0
        self._closed = False
        self.members = 0
        self.data_bytes = 0

    def add(self, name: str, data: bytes) -> None:
        header = member_header(name, len(data))
        pad = -len(data) % _BLOCK
        self._f.write(header)
        self._f.write(data)
        if pad:
            self._f.write(b"\0" * pad)
        self._offset += len(header) + len(data) + pad
        self.members += 1
        self.data_bytes += len(data)

    def add_sample(self, key: str, members: Iterable[tuple[str, bytes]]) -> None:
        for ext, data in members:
            self.add(f"{key}.{ext}", data)

    def close(self) -> None:
        """Two zero blocks, then zeros up to a whole record (``tarfile``'s end of archive)."""
        if self._closed:
            return
        self._closed = True
        end = self._offset + 2 * _BLOCK
        end += -end % _RECORD
        self._f.write(b"\0" * (end - self._offset))
        self._offset = end

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
