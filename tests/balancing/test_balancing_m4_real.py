"""M4 on the real captions of ../shared/data (COCO val2017, Flickr8k, Flickr30k = Multi30k's
English train captions, RedCaps explore): gender groups and the activity/occupation labels of
configs/attributes/gender_activities.yaml, at 50 % of the matched samples. Skips cleanly when
../shared is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from curation.attributes import AttributeMatcher, load_spec
from curation.balancing import SignatureTable, rake
from curation.balancing.joint import (
    JointProblem,
    MemoryJointOperator,
    joint_block_from_arrow,
    joint_solve,
)
from curation.balancing.m4 import (
    MemoryMomentOperator,
    MomentLayout,
    bias_report,
    block_from_arrow,
    m4_solve,
)
from curation.matching import Matcher
from curation.metadata import DEFAULT_METADATA, load_metadata
from tests.m4_pool import pattern_table

ATTRIBUTES = Path(__file__).resolve().parents[2] / "configs/attributes/gender_activities.yaml"
SETS = ("coco_val2017", "flickr8k", "multi30k_en", "redcaps")


def test_m4_and_rake_with_attributes_meet_both_bounds_on_real_captions(real_captions):
    captions = [c for name in SETS for c in real_captions.get(name, [])]
    if not captions:
        pytest.skip("none of the English caption sets is present")
    spec = load_spec(str(ATTRIBUTES))
    entries = Matcher(load_metadata(DEFAULT_METADATA).entries)
    table = pattern_table(captions, entries, AttributeMatcher(spec))
    layout = MomentLayout.of(spec)
    op = MemoryMomentOperator([block_from_arrow(table, layout)])
    n = int(pc.sum(table["multiplicity"]).as_py())  # the matched captions
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

    # rake with attributes: rake's entry balancing and the bounds in one dual (the default),
    # and the two-step projection (rake at N, then the closest π meeting the same bounds)
    signatures = SignatureTable.from_arrow(
        table.select(["entry_ids", "multiplicity"]), entries.n_entries
    )
    base = rake(signatures, target_size=0.5 * n)
    joint_op = MemoryJointOperator([joint_block_from_arrow(table, layout, base.params)])
    joint = joint_solve(joint_op, spec, JointProblem.of(base.params, base.targets, 0.5 * n))
    g = bias_report(spec, joint, "rake+attributes")["attributes"]["gender"]
    assert joint.status == "converged"
    assert g["rb_base"] > 0.1  # rake alone keeps the gender imbalance
    assert g["rb_after"] <= 0.01 and g["ab_after"] <= 0.01
    assert joint.size == pytest.approx(0.5 * n, rel=1e-6)
    pi_joint = joint_op.row_pi(joint.columns, joint.nu, joint.mu)
    op = MemoryMomentOperator([block_from_arrow(table, layout, base=base.params)])
    two = m4_solve(op, spec, None)
    g = bias_report(spec, two, "rake+attributes")["attributes"]["gender"]
    assert two.status == "converged"
    assert g["rb_after"] <= 0.01 and g["ab_after"] <= 0.01
    assert two.size == pytest.approx(0.5 * n, rel=1e-3)
    pi_two = op.row_q(two.mu, two.nu)

    m = signatures.multiplicity.astype(float)
    tau = np.asarray(base.targets, dtype=float)

    def l1(pi):
        return float(np.abs(signatures.entry_sums(m * pi) - tau).sum() / tau.sum())

    kept = joint_op.blocks[0].fixed > 0  # the samples rake keeps for their tail entries

    def tail_kept(pi):
        return float(np.dot(m[kept], pi[kept]) / m[kept].sum())

    # README: entry L1 0.495 against 0.500, tail kept 1.000 against 0.990
    assert l1(pi_joint) < l1(pi_two) - 0.003
    assert tail_kept(pi_joint) > 0.999 and tail_kept(pi_joint) > tail_kept(pi_two) + 0.005
