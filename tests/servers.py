"""Real parts on loopback for the shard tests: an HTTP image server, an S3 API server (moto),
and builders of the inputs the shard stages read (a committed selection, img2dataset-style
shards made with the real ``tarfile`` module and real images made with Pillow).

Everything listens on 127.0.0.1 on a free port chosen by the OS and stops with its fixture.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.storage import S3Options, atomic_directory, join

# --- images ---------------------------------------------------------------------------------


def make_image(i: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A small real image, different for every ``i`` (a gradient plus a coloured block)."""
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(i)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = (i * 37) % 256
    arr[..., 2] = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


# --- the HTTP image server ------------------------------------------------------------------


@dataclass
class ImageServer:
    """What the server serves, and a log of what it answered (path -> status)."""

    base: str = ""
    slow_seconds: float = 3.0
    served: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def record(self, path: str, status: str) -> None:
        with self.lock:
            self.served[(path, status)] += 1


def _handler(server_state: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """``/jpg/<i>``, ``/png/<i>``: images; ``/missing/<i>``: 404; ``/slow/<i>``: an image
        after ``slow_seconds``; ``/corrupt/<i>``: 200 with bytes that are not an image;
        ``/flakyK/<i>``: 503 for the first K requests of the path, then an image."""

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            parts = self.path.strip("/").split("/")
            kind, i = (
                (parts[0], int(parts[1])) if len(parts) == 2 and parts[1].isdigit() else ("", 0)
            )
            if kind == "jpg":
                server_state.record(self.path, "ok")
                self._send(200, make_image(i, "JPEG"), "image/jpeg")
            elif kind == "png":
                server_state.record(self.path, "ok")
                self._send(200, make_image(i, "PNG"), "image/png")
            elif kind == "slow":
                server_state.record(self.path, "slow")
                time.sleep(server_state.slow_seconds)
                self._send(200, make_image(i, "JPEG"), "image/jpeg")
            elif kind.startswith("flaky"):  # /flakyK/<i>: 503 for the first K requests
                failures = int(kind[len("flaky") :] or 1)
                with server_state.lock:
                    tried = sum(n for (p, _), n in server_state.served.items() if p == self.path)
                if tried < failures:
                    server_state.record(self.path, "503")
                    self._send(503, b"try again later", "text/plain")
                else:
                    server_state.record(self.path, "ok")
                    self._send(200, make_image(i, "JPEG"), "image/jpeg")
            elif kind == "corrupt":
                server_state.record(self.path, "corrupt")
                self._send(200, b"\xff\xd8\xff\xe0 this is not really a jpeg " * 8, "image/jpeg")
            else:
                server_state.record(self.path, "404")
                self._send(404, b"not found", "text/plain")

    return Handler


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    """A threading HTTP server on 127.0.0.1 serving real JPEG/PNG images, 404s, a slow URL and
    a corrupt image."""
    state = ImageServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- the S3 server --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    options: S3Options

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.options.storage_options(), skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 API in server mode on 127.0.0.1, with a ``test`` bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = S3Options(endpoint_url=endpoint, key="testing", secret="testing", retries=3)
    state = S3Server(endpoint, options)
    # moto keeps its buckets per process, not per server: a test module that imports this fixture
    # gets its own server, which already sees the bucket another module's server made
    if not state.fs().exists("test"):
        state.fs().mkdir("test")
    try:
        yield state
    finally:
        server.stop()


# --- inputs: a committed selection and img2dataset-style shards ------------------------------


def uid_of(i: int) -> str:
    """DataComp-style uid: 32 hex digits."""
    return hashlib.md5(f"sample-{i}".encode()).hexdigest()


def caption_of(i: int) -> str:
    return f"a photo of thing number {i} — ünïcode ok"


def write_selected(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    *,
    files: int = 2,
    manifest_tag: str = "test",
) -> str:
    """A directory as the select stage commits it: ``selected/`` Parquet, subset.npy,
    summary.json, ``_manifest.json`` and ``_SUCCESS``."""
    schema = pa.schema(
        [
            ("uid", pa.string()),
            ("url", pa.string()),
            ("caption", pa.string()),
            ("entry_ids", pa.list_(pa.int32())),
            ("weight", pa.float64()),
            ("inclusion_prob", pa.float64()),
            ("repeats", pa.int32()),
            ("source", pa.string()),
        ]
    )
    full = [{"source": "test", **r} for r in rows]
    table = pa.Table.from_pylist(full, schema=schema)
    url = str(path)
    with atomic_directory(url, {"stage": "select", "tag": manifest_tag, "n": len(rows)}) as tmp:
        os.makedirs(join(tmp, "selected"), exist_ok=True)
        step = max(1, -(-len(rows) // files))
        for k, start in enumerate(range(0, len(rows), step)):
            pq.write_table(
                table.slice(start, step), join(tmp, "selected", f"part-{k:05d}.snappy.parquet")
            )
        halves = sorted((int(r["uid"][:16], 16), int(r["uid"][16:32], 16)) for r in rows)
        np.save(join(tmp, "subset.npy"), np.array(halves, dtype="u8,u8"))
        Path(join(tmp, "summary.json")).write_text(json.dumps({"selected": len(rows)}))
    return url


def selection_row(i: int, url: str, repeats: int = 1, weight: float | None = None) -> dict:
    return {
        "uid": uid_of(i),
        "url": url,
        "caption": caption_of(i),
        "entry_ids": [i % 7, 10 + i % 3],
        "weight": weight if weight is not None else 0.5 + (i % 5) / 4,
        "inclusion_prob": 0.25 + (i % 3) / 4,
        "repeats": repeats,
    }


@dataclass
class InputSample:
    i: int
    key: str
    fmt: str = "jpg"
    uid_in_json: bool = True
    with_image: bool = True


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tf.addfile(info, io.BytesIO(data))


def write_input_shards(
    directory: str | Path,
    shards: Sequence[Sequence[InputSample]],
    *,
    hostile: bool = False,
) -> list[str]:
    """img2dataset-style shards ``{00000..}.tar`` with ``key.jpg|png``, ``key.txt``,
    ``key.json`` and a ``.parquet`` per shard (key, uid, caption, url, status).

    ``hostile`` adds members that must never be trusted: ``../`` and absolute names, a symlink
    and a directory entry.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for n, samples in enumerate(shards):
        tar_path = directory / f"{n:05d}.tar"
        rows = []
        with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tf:
            if hostile and n == 0:
                _add(tf, "../escape.jpg", make_image(999))
                _add(tf, "/abs/path.jpg", make_image(998))
                link = tarfile.TarInfo("link.jpg")
                link.type = tarfile.SYMTYPE
                link.linkname = "/etc/passwd"
                tf.addfile(link)
                d = tarfile.TarInfo("somedir")
                d.type = tarfile.DIRTYPE
                tf.addfile(d)
            for s in samples:
                meta = {"key": s.key, "caption": caption_of(s.i), "status": "success"}
                if s.uid_in_json:
                    meta["uid"] = uid_of(s.i)
                if s.with_image:
                    image = make_image(s.i, "PNG" if s.fmt == "png" else "JPEG")
                    _add(tf, f"{s.key}.{s.fmt}", image)
                _add(tf, f"{s.key}.txt", caption_of(s.i).encode())
                _add(tf, f"{s.key}.json", json.dumps(meta).encode())
                rows.append(
                    {
                        "key": s.key,
                        "uid": uid_of(s.i),
                        "caption": caption_of(s.i),
                        "url": f"http://example.invalid/{s.i}.jpg",
                        "status": "success",
                    }
                )
        pq.write_table(pa.Table.from_pylist(rows), directory / f"{n:05d}.parquet")
        out.append(str(tar_path))
    return out
