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
from curation.balancing import SignatureTable, rake
from curation.balancing.m4 import (
    MemoryMomentOperator,
    MomentLayout,
    bias_report,
    block_from_arrow,
    m4_solve,
)
from curation.matching import Matcher
from curation.metadata import DEFAULT_METADATA, load_metadata

ATTRIBUTES = Path(__file__).resolve().parents[2] / "configs/attributes/gender_activities.yaml"
SETS = ("coco_val2017", "flickr8k", "multi30k_en", "redcaps")


def test_m4_and_rake_with_attributes_meet_both_bounds_on_real_captions(real_captions):
    captions = [c for name in SETS for c in real_captions.get(name, [])]
    if not captions:
        pytest.skip("none of the English caption sets is present")
    spec = load_spec(str(ATTRIBUTES))
    entries = Matcher(load_metadata(DEFAULT_METADATA).entries)
    found = entries.match_many(captions).to_pylist()
    matched = [c for c, e in zip(captions, found) if e]
    ids = [e for e in found if e]
    groups, labels = AttributeMatcher(spec).match_many(matched)
    keys = Counter(
        zip(map(tuple, ids), map(tuple, groups.to_pylist()), map(tuple, labels.to_pylist()))
    )
    rows = sorted(keys.items())
    lists = pa.list_(pa.int32())
    table = pa.table(
        {
            "entry_ids": pa.array([list(e) for (e, _, _), _ in rows], lists),
            "attribute_groups": pa.array([list(g) for (_, g, _), _ in rows], lists),
            "attribute_labels": pa.array([list(lb) for (_, _, lb), _ in rows], lists),
            "multiplicity": pa.array([m for _, m in rows], pa.int64()),
        }
    )
    layout = MomentLayout.of(spec)
    op = MemoryMomentOperator([block_from_arrow(table, layout)])
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

    # rake with attributes: rake at N, then the closest π that meets the same bounds
    signatures = SignatureTable.from_arrow(
        table.select(["entry_ids", "multiplicity"]), entries.n_entries
    )
    base = rake(signatures, target_size=0.5 * n)
    op = MemoryMomentOperator([block_from_arrow(table, layout, base=base.params)])
    combined = m4_solve(op, spec, None)
    g = bias_report(spec, combined, "rake+attributes")["attributes"]["gender"]
    assert combined.status == "converged"
    assert g["rb_base"] > 0.1  # rake alone keeps the gender imbalance
    assert g["rb_after"] <= 0.01 and g["ab_after"] <= 0.01
    assert combined.size == pytest.approx(0.5 * n, rel=1e-3)
