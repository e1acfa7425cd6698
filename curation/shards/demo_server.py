"""A loopback image server for the demo: ``make demo`` downloads its shard set from it.

    python -m curation.shards.demo_server --port-file RUN/image-server.port [--max-seconds 3600]

Serves ``GET /images/<anything>`` with a small JPEG generated from the path (the same path always
gives the same image), and answers 404 for one path in ``--missing-every`` so that the download
stage's failure accounting shows up in the demo. Listens on 127.0.0.1 only, on a free port that it
writes to ``--port-file``, and stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def image_for(path: str, size: int = 96) -> bytes:
    """A deterministic JPEG for ``path``: a gradient in colours taken from its hash."""
    import numpy as np
    from PIL import Image

    digest = hashlib.sha256(path.encode()).digest()
    x = np.linspace(0, 1, size, dtype=np.float32)
    grad = np.outer(x, x[::-1])
    arr = np.stack([(grad * digest[k] + digest[k + 3] * (1 - grad)) for k in range(3)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    missing_every = 20

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        h = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16)
        if not path.startswith("/images/") or (self.missing_every and h % self.missing_every == 0):
            body, status, ctype = b"not found", 404, "text/plain"
        else:
            body, status, ctype = image_for(path), 200, "image/jpeg"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--port-file", required=True, help="file to write the port to")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop after this long")
    parser.add_argument("--missing-every", type=int, default=20, help="1 path in N is a 404")
    args = parser.parse_args(argv)
    Handler.missing_every = args.missing_every
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    httpd.daemon_threads = True
    tmp = f"{args.port_file}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.port_file)), exist_ok=True)
    with open(tmp, "w") as f:
        f.write(str(httpd.server_address[1]))
    os.replace(tmp, args.port_file)
    timer = threading.Timer(args.max_seconds, httpd.shutdown)
    timer.daemon = True
    timer.start()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
