"""Check that two versions of the code write byte-identical data files on a demo-size run.

    # with the old code first on PYTHONPATH, then with the new code:
    PYTHONPATH=/old python bench/identical_outputs.py run  --dir /tmp/before --out before.json
    PYTHONPATH=/new python bench/identical_outputs.py run  --dir /tmp/after  --out after.json
    python bench/identical_outputs.py compare before.json after.json

Both runs must use the same ``--dir`` (the rejects table records each input file's path) and the
same ``--port`` (the demo pool's URLs hold it): move the first run's directory away, or delete it,
before the second.

``run`` writes a small metadata list with the ``metadata`` stage, then runs ``curate run`` on a
20,000-row demo pool (demo-pool, match, count with a margin, balance by rake to a target size,
select, download from a loopback image server, report), then a second balance (metaclip,
with replacement) and select on the same matched pool, and a ``reshard`` of the downloaded shards.
It records the SHA-256 of every data file (``.npy``, ``params.json``, metadata lists,
``sizes.json``), of every row of the Parquet files and of every member of the tar shards, per
directory (see :func:`data_hashes` for why rows and members rather than bytes). Manifests,
summaries and stats are left out: they hold timings and, after an upgrade, may gain fields.

``compare`` exits 1 and lists every directory whose data differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Not data: timings, paths, the config and the server's port.
SKIP = {
    "_manifest.json",
    "_SUCCESS",
    "summary.json",
    "_summary.json",
    "_stats.json",
    "_run.json",
    "diagnostics.json",  # holds the solver's time
    "index.html",
    "image-server.port",
    "run.yaml",
}


# Where a sample came from in the input shards: download's raw shards hold samples in
# img2dataset's completion order (its download threads), which varies from run to run.
PROVENANCE = ("source", "source_shard", "source_key")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet_rows(path: Path) -> list[str]:
    """Row hashes of a Parquet file, decoded: parquet-mr writes the footer's list of encodings in
    an order that varies between JVM runs, so the bytes of equal files may differ."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.drop_columns([c for c in PROVENANCE if c in table.column_names])
    return [
        _sha(json.dumps(row, sort_keys=True, default=str).encode()) for row in table.to_pylist()
    ]


def _tar_members(path: Path) -> list[str]:
    """Member hashes of a tar shard (``.json`` without the provenance fields)."""
    import tarfile

    out = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name.endswith(".json"):
                meta = {k: v for k, v in json.loads(data).items() if k not in PROVENANCE}
                data = json.dumps(meta, sort_keys=True).encode()
            out.append(_sha(member.name.encode() + b"\0" + data))
    return out


def data_hashes(root: Path) -> dict[str, list[str]]:
    """Per place below ``root``, the sorted hashes of its data: a whole file for most files; the
    rows of the Parquet files of a directory; the members of the tar shards of a shard set (the
    samples of a set, not their order, are compared: a download's order is not reproducible)."""
    out: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in SKIP or path.name.endswith(".summary.json"):
            continue
        if path.suffix == ".crc" or ".tmp-" in str(path) or "/_work/" in str(path):
            continue
        parent = str(path.relative_to(root).parent)
        if path.suffix == ".parquet":
            out.setdefault(f"{parent}/*.parquet rows", []).extend(_parquet_rows(path))
        elif path.suffix == ".tar":
            out.setdefault(f"{parent}/*.tar members", []).extend(_tar_members(path))
        else:
            out.setdefault(str(path.relative_to(root)), []).append(_sha(path.read_bytes()))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _curate(*argv: str) -> None:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "curation.cli", *argv], check=True)
    print(f"  {argv[0]} done in {time.perf_counter() - started:.1f} s", flush=True)


def run(directory: Path, rows: int, port: int) -> dict[str, list[str]]:
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "image-server.port"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "curation.shards.demo_server",
            "--port",
            str(port),
            "--port-file",
            str(port_file),
        ]
    )
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = port_file.read_text().strip()
        extra = directory / "extra.txt"
        extra.write_text("photo\nwater\nred car\n")
        _curate(
            "metadata",
            "--output",
            str(directory / "meta-built" / "metadata.json"),
            "--extra",
            str(extra),
        )
        run_dir = directory / "run"
        config = directory / "run.yaml"
        config.write_text(
            f"run:\n  dir: {run_dir}\n"
            "  stages: [demo-pool, match, count, balance, select, download, report]\n"
            f"spark: {{master: 'local[2]'}}\n"
            f"demo:\n  rows: {rows}\n  files: 4\n  url_prefix: http://127.0.0.1:{port}/images/\n"
            "count:\n  margins: [source]\n"
            f"balance:\n  method: rake\n  target_size: {rows // 10}\n"
            "select:\n  seed: 3\n"
            "download:\n  image_size: 32\n  samples_per_shard: 300\n  timeout: 5\n"
            "  thread_count: 8\n  download_shard_size: 1000\n"
        )
        _curate("run", "--config", str(config))
        _curate(
            "balance",
            "--master",
            "local[2]",
            "--input",
            f"{run_dir}/matched",
            "--counts",
            f"{run_dir}/counts",
            "--output",
            f"{run_dir}/balance-metaclip",
            "--method",
            "metaclip",
            "--target-fraction",
            "0.3",
            "--with-replacement",
        )
        _curate(
            "select",
            "--master",
            "local[2]",
            "--input",
            f"{run_dir}/matched",
            "--weights",
            f"{run_dir}/balance-metaclip",
            "--output",
            f"{run_dir}/selected-metaclip",
            "--with-replacement",
            "--seed",
            "5",
        )
        _curate(
            "reshard",
            "--master",
            "local[2]",
            "--input",
            f"{run_dir}/shards",
            "--selected",
            f"{run_dir}/selected",
            "--output",
            f"{directory}/resharded",
            "--samples-per-shard",
            "250",
            "--shuffle",
            "--seed",
            "7",
        )
    finally:
        server.terminate()
        server.wait()
    return data_hashes(directory)


def compare(a: dict[str, list[str]], b: dict[str, list[str]]) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--rows", type=int, default=20_000)
    r.add_argument("--port", type=int, default=18791, help="image server port (URLs hold it)")
    h = sub.add_parser("hash", help="the hashes of an existing run directory")
    h.add_argument("--dir", required=True)
    h.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "run":
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        hashes = run(Path(args.dir), args.rows, args.port)
        Path(args.out).write_text(json.dumps(hashes) + "\n")
        print(f"{sum(len(v) for v in hashes.values())} data files in {len(hashes)} places")
        return 0
    if args.command == "hash":
        Path(args.out).write_text(json.dumps(data_hashes(Path(args.dir))) + "\n")
        return 0
    a = json.loads(Path(args.a).read_text())
    b = json.loads(Path(args.b).read_text())
    differ = compare(a, b)
    for k in differ:
        print(f"differs: {k}")
    print(f"{len(set(a) | set(b)) - len(differ)} identical, {len(differ)} different")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
