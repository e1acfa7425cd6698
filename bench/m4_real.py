"""M4 on real captions: RB and AB before and after, size kept and the entropy cost.

    .venv/bin/python bench/m4_real.py [--attributes configs/attributes/gender_activities.yaml]
                                      [--fraction 0.5] [--out bench/out/m4]

Pool: COCO val2017, Flickr8k, Flickr30k (Multi30k task 1 English train captions) and RedCaps
(explore sample) from ``../shared/data`` (the project's workspace; not shipped), matched against
the shipped metadata list (``metadata/default.json``) with ``curation.matching.Matcher`` and
against the attribute file with ``AttributeMatcher`` — the code the ``match`` stage runs. M4 is
solved on the driver (``MemoryMomentOperator``, the same passes as ``balance --method m4``) at
N = ``--fraction`` × matched samples, per caption set and on their union.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import SHARED_DATA, load_real_captions  # noqa: E402

from curation.attributes import AttributeMatcher, load_spec  # noqa: E402
from curation.balancing.m4 import (  # noqa: E402
    MemoryMomentOperator,
    MomentLayout,
    bias_report,
    block_from_arrow,
    m4_solve,
)
from curation.matching import Matcher  # noqa: E402
from curation.metadata import DEFAULT_METADATA, load_metadata  # noqa: E402


def caption_sets() -> dict[str, list[str]]:
    found = load_real_captions()
    sets = {k: found[k] for k in ("coco_val2017", "flickr8k", "redcaps") if k in found}
    f30k = SHARED_DATA / "multi30k" / "task1" / "raw" / "train.en.gz"
    if f30k.exists():
        with gzip.open(f30k, "rt", encoding="utf-8") as f:
            sets["flickr30k"] = f.read().splitlines()
    return sets


def pattern_table(captions: list[str], entries: Matcher, attrs: AttributeMatcher) -> pa.Table:
    """Matched captions grouped by (groups, labels): the table ``balance --method m4`` solves."""
    matched = [c for c, ids in zip(captions, entries.match_many(captions).to_pylist()) if ids]
    groups, labels = attrs.match_many(matched)
    keys = Counter(zip(map(tuple, groups.to_pylist()), map(tuple, labels.to_pylist())))
    rows = sorted(keys.items())
    return pa.table(
        {
            "attribute_groups": pa.array([list(g) for (g, _), _ in rows], pa.list_(pa.int32())),
            "attribute_labels": pa.array([list(lb) for (_, lb), _ in rows], pa.list_(pa.int32())),
            "multiplicity": pa.array([m for _, m in rows], pa.int64()),
        }
    )


def run(name: str, table: pa.Table, spec, fraction: float) -> dict:
    op = MemoryMomentOperator([block_from_arrow(table, MomentLayout.of(spec))])
    n = float(sum(table.column("multiplicity").to_pylist()))
    t0 = time.perf_counter()
    result = m4_solve(op, spec, fraction * n)
    bias = bias_report(spec, result)
    g = bias["attributes"]["gender"]
    constrained = sum(v["constrained"] for v in g["labels"].values())
    row = {
        "pool": name,
        "matched": int(n),
        "with_gender": g["count_before"],
        "labels_constrained": constrained,
        "rb_before": g["rb_before"],
        "rb_after": g["rb_after"],
        "ab_before": g["ab_before"],
        "ab_after": g["ab_after"],
        "size_kept": result.size / n,
        "entropy_before": result.entropy["before"],
        "entropy_after": result.entropy["after"],
        "entropy_cost": result.entropy["before"] - result.entropy["after"],
        "kish_ess_share": result.entropy["kish_ess"] / n,
        "status": result.status,
        "passes": result.passes,
        "seconds": time.perf_counter() - t0,
    }
    return {"row": row, "bias": bias}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attributes", default=str(REPO / "configs/attributes/gender_activities.yaml"))
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--out", default=str(REPO / "bench/out/m4"))
    args = ap.parse_args()
    spec = load_spec(args.attributes)
    entries = Matcher(load_metadata(DEFAULT_METADATA).entries)
    attrs = AttributeMatcher(spec)
    sets = caption_sets()
    if not sets:
        sys.exit(f"no caption sets under {SHARED_DATA}")
    sets["all"] = [c for k in list(sets) for c in sets[k]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, captions in sets.items():
        res = run(name, pattern_table(captions, entries, attrs), spec, args.fraction)
        rows.append(res["row"])
        (out / f"bias-{name}.json").write_text(json.dumps(res["bias"], indent=1))
        print(json.dumps(res["row"]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(
        "| pool | matched | with gender | labels constrained | RB before → after | "
        "AB before → after | size kept | entropy cost (nats) | Kish ESS / matched | status | "
        "passes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pool']} | {r['matched']:,} | {r['with_gender']:,.0f} | "
            f"{r['labels_constrained']} | {r['rb_before']:.3f} → {r['rb_after']:.4f} | "
            f"{r['ab_before']:.3f} → {r['ab_after']:.4f} | {r['size_kept']:.3f} | "
            f"{r['entropy_cost']:.4f} | {r['kish_ess_share']:.3f} | {r['status']} | "
            f"{r['passes']} |"
        )


if __name__ == "__main__":
    main()
