"""Read a finished shard set back, as a training loader would, and check it.

    python -m curation.shards.verify DIR

Uses the real ``webdataset`` library for local shard sets (what open_clip uses) and this
package's own tar reader for other URLs. Checks: ``_SUCCESS`` present, shards numbered without
gaps, every shard's sample count equal to ``sizes.json``, unique keys without dots, every image
decodes, every sample has a ``.txt`` and a ``.json`` with its uid.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator
from typing import Any

from curation import storage
from curation.shards.layout import SIZES
from curation.shards.plan import shard_name
from curation.shards.tario import IMAGE_EXTS, iter_samples


def _samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    if storage.is_local(url):
        import webdataset as wds

        for s in wds.WebDataset(storage.local_path(url), shardshuffle=False):
            yield s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}
    else:
        fs, path = storage.url_to_fs(url)
        with fs.open(path, "rb") as f:
            yield from iter_samples(f)


def verify_shard_set(url: str, decode_images: bool = True) -> dict[str, Any]:
    """Check the shard set at ``url``; returns counts, raises ``ValueError`` naming a problem."""
    from PIL import Image

    storage.require_complete(url, "shard set")
    sizes: dict[str, int] = storage.read_json(storage.join(url, SIZES))
    n = len(sizes)
    if list(sizes) != [f"{shard_name(i, n)}.tar" for i in range(n)]:
        raise ValueError(f"{url}: shards are not numbered 0..{n - 1} without gaps")
    keys: set[str] = set()
    total = 0
    for name, expected in sizes.items():
        count = 0
        for key, members in _samples(storage.join(url, name)):
            count += 1
            if "." in key or key in keys:
                raise ValueError(f"{url}/{name}: key {key!r} has a dot or is not unique")
            keys.add(key)
            images = [e for e in members if e in IMAGE_EXTS]
            if not images or "txt" not in members or "json" not in members:
                raise ValueError(f"{url}/{name}: sample {key!r} lacks image, txt or json")
            if "uid" not in json.loads(members["json"]):
                raise ValueError(f"{url}/{name}: sample {key!r} has no uid in its json")
            if decode_images:
                with Image.open(io.BytesIO(members[images[0]])) as img:
                    img.load()
        if count != expected:
            raise ValueError(f"{url}/{name}: {count} samples, sizes.json says {expected}")
        total += count
    return {"shards": n, "samples": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="shard set directory (output of download or reshard)")
    args = parser.parse_args(argv)
    try:
        result = verify_shard_set(args.url)
    except (ValueError, storage.StageInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.url}: {result['samples']:,} samples in {result['shards']} shards, all readable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
