"""Sample keys and tar member names.

WebDataset groups tar members into samples by the part of the file name before the first dot
(``abc.jpg`` and ``abc.json`` are sample ``abc``), so a key must never contain a dot; and a member
name is a path, so a key must never contain a separator or ``..``. Uids come from the outside
(a pool's own ids, DataComp's hex digests, URLs hashed or not), so they are *sanitised* rather than
trusted:

- a uid made only of ``[A-Za-z0-9_]``, at most :data:`MAX_KEY_CHARS` long and not ending like a
  sanitised key (``_`` and 16 lower-case hex digits) is its own key (the common case: hex digests
  pass unchanged);
- anything else keeps its safe characters (others become ``_``, truncated) and gets ``_`` plus 16
  hex digits of the SHA-256 of the uid appended.

So the two kinds of keys never meet: a key kept as it is never ends like a sanitised one, and a
sanitised key always does. ``a.b`` becomes ``a_b_<16 hex>``; a uid spelled exactly ``a_b_<16 hex>``
is sanitised in turn (to ``a_b_<16 hex>_<16 other hex>``) rather than kept, so the two stay two
samples. Two sanitised keys are equal only if both the stems and 64 bits of SHA-256 are equal.

``-`` is reserved for repeats: the ``j``-th copy of a sample selected ``r > 1`` times is
``{key}-{j}`` (``j`` from 0), which can never collide with a sanitised key because sanitised keys
contain no ``-``.
"""

from __future__ import annotations

import hashlib
import re

MAX_KEY_CHARS = 96
_SAFE = re.compile(r"[A-Za-z0-9_]+")
_HASH_SUFFIX = re.compile(r"_[0-9a-f]{16}")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_]")
_EXT = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")


def sanitize_key(uid: str) -> str:
    """The tar key of ``uid``: itself when already safe, else a safe form with a hash suffix."""
    if not isinstance(uid, str) or uid == "":
        raise ValueError(f"a sample uid must be a non-empty string, got {uid!r}")
    if len(uid) <= MAX_KEY_CHARS and _SAFE.fullmatch(uid) and not _HASH_SUFFIX.fullmatch(uid[-17:]):
        return uid
    digest = hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem = _UNSAFE_CHAR.sub("_", uid)[: MAX_KEY_CHARS - 17]
    return f"{stem}_{digest}"


def sample_key(uid: str, repeat_index: int, repeats: int) -> str:
    """The key of copy ``repeat_index`` of a sample written ``repeats`` times.

    A sample written once keeps its plain key, so an unrepeated selection has the keys a user
    expects; repeats get ``-{j}`` so that each copy is a distinct sample for any loader.
    """
    if repeats < 1 or not 0 <= repeat_index < repeats:
        raise ValueError(f"repeat {repeat_index} of {repeats} is out of range")
    key = sanitize_key(uid)
    return key if repeats == 1 else f"{key}-{repeat_index}"


def member_name(key: str, ext: str) -> str:
    """``key.ext``, refusing anything that could leave the shard's namespace."""
    if not _SAFE.fullmatch(key.replace("-", "_")) or ".." in key:
        raise ValueError(f"unsafe sample key {key!r}")
    if not is_valid_ext(ext):
        raise ValueError(f"unsafe member extension {ext!r}")
    return f"{key}.{ext}"


def is_valid_ext(ext: str) -> bool:
    """Extensions are lower-case words joined by dots (``jpg``, ``seg.png``): no separators."""
    return bool(_EXT.fullmatch(ext))


def split_member_name(name: str) -> tuple[str, str] | None:
    """``(key, ext)`` of an input member name, WebDataset's way, or ``None`` when unusable.

    The key is the name up to the first dot of its last path component, with the directory
    part kept (WebDataset's grouping); the extension is lower-cased. Names with ``..``
    components, absolute names, empty keys and extensions that are not plain words are
    rejected: an input tar is data, and its member names are never used as output paths.

    A leading ``./`` (``tar -C dir .`` writes ``./000.jpg``) is dropped, so such a tar has the
    keys of the same tar written without it.
    """
    if not name or "\x00" in name or "\\" in name:
        return None
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if name.startswith("/") or any(p in ("..", ".") for p in parts) or parts[-1] == "":
        return None
    base = parts[-1]
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    ext = ext.lower()
    if not stem or not is_valid_ext(ext):
        return None
    return "/".join([*parts[:-1], stem]), ext
