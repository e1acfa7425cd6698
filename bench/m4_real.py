"""M4 on real captions: RB and AB before and after, size kept and the entropy cost.

    .venv/bin/python bench/m4_real.py [--attributes configs/attributes/gender_activities.yaml]
                                      [--fraction 0.5] [--out bench/out/m4]

Pool: COCO val2017, Flickr8k, Flickr30k (Multi30k task 1 English train captions) and RedCaps
(explore sample) from ``../shared/data`` (the project's workspace; not shipped), matched against
the shipped metadata list (``metadata/default.json``) with ``curation.matching.Matcher`` and
against the attribute file with ``AttributeMatcher`` — the code the ``match`` stage runs. M4 is
solved on the driver (``MemoryMomentOperator``, the same passes as ``balance --method m4``) at
N = ``--fraction`` × matched samples, per caption set and on their union; and rake with
attributes, both ways (``balance --rake-attributes``): ``joint`` (rake's entry balancing and the
bias constraints in one dual, :mod:`curation.balancing.joint`, the default) and ``two-step``
(rake at N, then the closest π in squared distance meeting the bias bounds). "Before" is the
pool (m4) or rake's solution (rake+attributes); entropies are of q/Σq over samples and of the
expected entry distribution; the entry L1 error is to rake's own targets τ_j, and "tail kept" is
the expected share of the samples rake keeps for their tail entries that stay (Σ_kept π / #kept).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from conftest import SHARED_DATA, load_real_captions  # noqa: E402
from m4_pool import pattern_table  # noqa: E402

from curation.attributes import AttributeMatcher, load_spec  # noqa: E402
from curation.balancing import SignatureTable, rake  # noqa: E402
from curation.balancing.joint import (  # noqa: E402
    JointProblem,
    MemoryJointOperator,
    joint_block_from_arrow,
    joint_solve,
)
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


def entry_entropy(table: SignatureTable, pi) -> float:
    """Entropy (nats) of the expected entry distribution n_j = Σ_{i∋j} m_i π_i."""
    n = table.entry_sums(table.multiplicity * pi)
    p = n[n > 0] / n.sum()
    return float(-(p * np.log(p)).sum())


def solve(table: pa.Table, spec, sig: SignatureTable, n: float, fraction: float, mode: str):
    """(result, q per row, rake's result or None, the joint operator or None)."""
    layout = MomentLayout.of(spec)
    if mode == "m4":
        op = MemoryMomentOperator([block_from_arrow(table, layout)])
        result = m4_solve(op, spec, fraction * n)
        return result, op.row_q(result.mu, result.nu), None, None
    base = rake(sig, target_size=fraction * n)
    if mode == "two-step":
        op = MemoryMomentOperator([block_from_arrow(table, layout, base=base.params)])
        result = m4_solve(op, spec, None)
        return result, op.row_q(result.mu, result.nu), base, None
    op = MemoryJointOperator([joint_block_from_arrow(table, layout, base.params)])
    result = joint_solve(op, spec, JointProblem.of(base.params, base.targets, fraction * n))
    return result, op.row_pi(result.columns, result.nu, result.mu), base, op


def entry_facts(sig: SignatureTable, q: np.ndarray, base, kept: np.ndarray | None) -> dict:
    """Entry L1 error to rake's targets and the expected share of rake's kept samples (those
    with a tail entry) that stay: Σ_kept m π / Σ_kept m."""
    if base is None:
        return {"entry_l1_base": None, "entry_l1_after": None, "tail_kept": None}
    tau = np.asarray(base.targets, dtype=np.float64)
    m = sig.multiplicity.astype(np.float64)

    def l1(pi):
        return float(np.abs(sig.entry_sums(m * pi) - tau).sum() / tau.sum())

    return {
        "entry_l1_base": l1(base.pi),
        "entry_l1_after": l1(q),
        "tail_kept": float(np.dot(m[kept], q[kept]) / max(m[kept].sum(), 1.0)),
    }


def run(name: str, table: pa.Table, spec, fraction: float, n_entries: int, mode: str) -> dict:
    n = float(sum(table.column("multiplicity").to_pylist()))
    sig = SignatureTable.from_arrow(table.select(["entry_ids", "multiplicity"]), n_entries)
    t0 = time.perf_counter()
    result, q, base, joint_op = solve(table, spec, sig, n, fraction, mode)
    method = "m4" if mode == "m4" else f"rake+attributes ({mode})"
    bias = bias_report(spec, result, "m4" if mode == "m4" else "rake+attributes")
    before_pi = base.pi if base is not None else np.ones(sig.multiplicity.size)
    kept = joint_op.blocks[0].fixed > 0 if joint_op is not None else None
    if base is not None and kept is None:  # the same rows the joint solve keeps
        kept = joint_block_from_arrow(table, MomentLayout.of(spec), base.params).fixed > 0
    g = bias["attributes"]["gender"]
    constrained = sum(v["constrained"] for v in g["labels"].values())
    row = {
        "pool": name,
        "method": method,
        "rake_status": base.info.get("status") if base is not None else None,
        "rake_passes": base.info.get("passes") if base is not None else None,
        "entry_entropy_before": entry_entropy(sig, before_pi),
        "entry_entropy_after": entry_entropy(sig, q),
        **entry_facts(sig, q, base, kept),
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
        "rb_base": g.get("rb_base"),
        "ab_base": g.get("ab_base"),
        "entropy_base": result.base["entropy"] if result.base else result.entropy["before"],
        "entropy_cost": (result.base["entropy"] if result.base else result.entropy["before"])
        - result.entropy["after"],
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
    ap.add_argument("--sets", nargs="*", default=None, help="caption sets (default: all, union)")
    ap.add_argument("--modes", nargs="*", default=["m4", "joint", "two-step"])
    args = ap.parse_args()
    spec = load_spec(args.attributes)
    entries = Matcher(load_metadata(DEFAULT_METADATA).entries)
    attrs = AttributeMatcher(spec)
    sets = caption_sets()
    if not sets:
        sys.exit(f"no caption sets under {SHARED_DATA}")
    sets["all"] = [c for k in list(sets) for c in sets[k]]
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    n_entries = len(load_metadata(DEFAULT_METADATA).entries)
    for name, captions in sets.items():
        table = pattern_table(captions, entries, attrs)
        for mode in args.modes:
            res = run(name, table, spec, args.fraction, n_entries, mode)
            rows.append(res["row"])
            (out / f"bias-{name}-{mode}.json").write_text(json.dumps(res["bias"], indent=1))
            print(json.dumps(res["row"]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(
        "| pool | method | RB base → after | AB base → after | entry L1 to τ base → after | "
        "tail kept | entry entropy base → after | sample entropy base → after | "
        "Kish ESS / matched | status | passes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rb0 = r["rb_base"] if r["rb_base"] is not None else r["rb_before"]
        ab0 = r["ab_base"] if r["ab_base"] is not None else r["ab_before"]
        l1 = (
            f"{r['entry_l1_base']:.3f} → {r['entry_l1_after']:.3f}"
            if r["entry_l1_base"] is not None
            else "—"
        )
        tail = f"{r['tail_kept']:.3f}" if r["tail_kept"] is not None else "—"
        print(
            f"| {r['pool']} | {r['method']} | {rb0:.3f} → {r['rb_after']:.4f} | "
            f"{ab0:.3f} → {r['ab_after']:.4f} | {l1} | {tail} | "
            f"{r['entry_entropy_before']:.3f} → {r['entry_entropy_after']:.3f} | "
            f"{r['entropy_base']:.3f} → {r['entropy_after']:.3f} | {r['kish_ess_share']:.2f} | "
            f"{r['status']} | {r['passes']} |"
        )


if __name__ == "__main__":
    main()
