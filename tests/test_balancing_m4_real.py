"""M4 on the real captions of ../shared/data (COCO val2017, Flickr8k, Flickr30k = Multi30k's
English train captions, RedCaps explore): gender groups and the activity/occupation labels of
configs/attributes/gender_activities.yaml, at 50 % of the matched samples. Skips cleanly when
../shared is absent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from curation.attributes import AttributeMatcher, load_spec
from curation.balancing.m4 import (
    MemoryMomentOperator,
    MomentLayout,
    bias_report,
    block_from_arrow,
    m4_solve,
)
from curation.matching import Matcher
from curation.metadata import DEFAULT_METADATA, load_metadata

ATTRIBUTES = Path(__file__).resolve().parents[1] / "configs/attributes/gender_activities.yaml"
SETS = ("coco_val2017", "flickr8k", "multi30k_en", "redcaps")


def test_m4_meets_both_bounds_on_real_captions(real_captions):
    captions = [c for name in SETS for c in real_captions.get(name, [])]
    if not captions:
        pytest.skip("none of the English caption sets is present")
    spec = load_spec(str(ATTRIBUTES))
    entries = Matcher(load_metadata(DEFAULT_METADATA).entries)
    matched = [c for c, ids in zip(captions, entries.match_many(captions).to_pylist()) if ids]
    groups, labels = AttributeMatcher(spec).match_many(matched)
    keys = Counter(zip(map(tuple, groups.to_pylist()), map(tuple, labels.to_pylist())))
    rows = sorted(keys.items())
    table = pa.table(
        {
            "attribute_groups": pa.array([list(g) for (g, _), _ in rows], pa.list_(pa.int32())),
            "attribute_labels": pa.array([list(lb) for (_, lb), _ in rows], pa.list_(pa.int32())),
            "multiplicity": pa.array([m for _, m in rows], pa.int64()),
        }
    )
    op = MemoryMomentOperator([block_from_arrow(table, MomentLayout.of(spec))])
    n = len(matched)
    result = m4_solve(op, spec, 0.5 * n)
    g = bias_report(spec, result)["attributes"]["gender"]
    constrained = [k for k, v in g["labels"].items() if v["constrained"]]
    assert len(constrained) >= 50
    assert g["rb_before"] > 0.1 and g["ab_before"] > 0.02  # the pool is biased to begin with
    assert result.status == "converged"
    assert g["rb_after"] <= 0.01 and g["ab_after"] <= 0.01
    assert all(g["labels"][k]["max_abs_ab_after"] <= 0.01 for k in constrained)
    assert result.size == pytest.approx(0.5 * n, rel=1e-6)
    assert 0 < result.entropy["before"] - result.entropy["after"] < 0.05
