"""Shared fixtures: one local Spark session for the whole run, and the real caption sets."""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Built matchers are cached on disk between runs; tests keep theirs apart from the user's cache.
os.environ["CURATION_CACHE"] = tempfile.mkdtemp(prefix="curation-test-cache-")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local[2] Spark session, shared by every test of the run."""
    from curation.spark import SparkConfig, get_spark

    session = get_spark(
        SparkConfig(
            master="local[2]",
            local_dir=str(tmp_path_factory.mktemp("spark-local")),
            driver_memory="2g",
            shuffle_partitions=4,
        )
    )
    yield session
    session.stop()


def _lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def load_real_captions() -> dict[str, list[str]]:
    """Every caption of the real sets in ../shared/data that is present, by set name.

    Returns an empty mapping when ../shared is absent (a user's clone); callers skip then.
    """
    if not SHARED_DATA.is_dir():
        return {}
    found: dict[str, list[str]] = {}
    coco = SHARED_DATA / "coco_captions" / "captions_val2017.json"
    if coco.exists():
        found["coco_val2017"] = [a["caption"] for a in json.loads(coco.read_text())["annotations"]]
    flickr = SHARED_DATA / "flickr8k" / "Flickr8k.token.txt"
    if flickr.exists():
        found["flickr8k"] = [ln.split("\t", 1)[1] for ln in _lines(flickr) if "\t" in ln]
    imagenet = SHARED_DATA / "imagenet_captions" / "imagenet_captions_val_c250.tsv"
    if imagenet.exists():
        found["imagenet_captions"] = [ln.split("\t")[0] for ln in _lines(imagenet)[1:] if ln]
    redcaps = SHARED_DATA / "redcaps_explore" / "explore"
    if redcaps.is_dir():
        found["redcaps"] = [
            row[3] for f in sorted(redcaps.glob("*.json")) for row in json.loads(f.read_text())
        ]
    for f in sorted((SHARED_DATA / "multi30k").glob("task1/raw/train.*.gz")):
        found[f"multi30k_{f.name.split('.')[1]}"] = _lines(f)
    cn = SHARED_DATA / "flickr8k_cn" / "flickr8kzhc.caption.txt"
    if cn.exists():
        found["flickr8k_cn"] = [ln.split(" ", 1)[-1] for ln in _lines(cn)]
    coco_cn = SHARED_DATA / "coco_cn" / "coco-cn_ext.icap2020.txt"
    if coco_cn.exists():
        found["coco_cn"] = [ln.split("\t", 1)[-1] for ln in _lines(coco_cn)]
    for f in sorted((SHARED_DATA / "mscoco_it").glob("*.json.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            found[f"mscoco_it_{f.name.split('.')[0]}"] = [
                a["caption"] for a in json.load(fh)["annotations"]
            ]
    return {k: v for k, v in found.items() if v}


@pytest.fixture(scope="session")
def real_captions() -> dict[str, list[str]]:
    sets = load_real_captions()
    if not sets:
        pytest.skip(
            f"real caption sets not found under {SHARED_DATA} (only in the project's workspace)"
        )
    return sets
