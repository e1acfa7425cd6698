"""``match --attributes`` → ``count`` → ``balance --method m4`` on a local Spark session."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.attributes import AttributeFileError
from curation.matching import naive_match
from curation.stages.balance import BalanceConfig, BalanceConfigError, run_balance
from curation.stages.count import CountConfig, run_count
from curation.stages.match import MatchConfig, run_match
from curation.stages.select import SelectConfig, run_select
from tests.m4_pool import ATTRIBUTES_YAML, ENTRIES, FEMALE, LABELS, MALE, planted_captions

EPS = 0.01


@pytest.fixture(scope="module")
def pipeline(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("m4")
    captions = planted_captions(3000, seed=7)
    rng = np.random.default_rng(2)
    rows = [
        {"uid": f"{i:032x}", "url": f"http://x/{i}", "caption": c, "quality": float(q)}
        for i, (c, q) in enumerate(zip(captions, rng.uniform(0.2, 1.0, len(captions))))
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "pool.parquet")
    (root / "meta.json").write_text(json.dumps(ENTRIES))
    (root / "attr.yaml").write_text(ATTRIBUTES_YAML)
    matched = run_match(
        spark,
        MatchConfig(
            input=str(root / "pool.parquet"),
            output=str(root / "m"),
            metadata=str(root / "meta.json"),
            attributes=str(root / "attr.yaml"),
        ),
    )
    counts = run_count(spark, CountConfig(input=matched.output, output=str(root / "c")))
    return root, rows, matched, counts.output


def balance(spark, pipeline, name: str, **kw):
    root, _, matched, counts = pipeline
    return run_balance(
        spark,
        BalanceConfig(
            input=matched.output,
            counts=counts,
            output=str(root / name),
            method="m4",
            target_fraction=kw.pop("target_fraction", 0.5),
            **kw,
        ),
    )


def test_match_and_count_carry_the_attributes(pipeline):
    root, rows, matched, counts = pipeline
    pool = pq.read_table(os.path.join(matched.output, "pool")).to_pylist()
    assert len(pool) == len(rows)
    for r in pool:
        want = sorted(
            ({0} if naive_match(r["caption"], FEMALE, casefold=True) else set())
            | ({1} if naive_match(r["caption"], MALE, casefold=True) else set())
        )
        assert r["attribute_groups"] == want
        assert r["attribute_labels"] == naive_match(r["caption"], LABELS, casefold=True)
    summary = matched.summary["attributes"]
    assert summary["labels"]["nurse"] == sum(0 in r["attribute_labels"] for r in pool)
    sig = pq.read_table(os.path.join(counts, "signatures"))
    assert {"attribute_groups", "attribute_labels"} <= set(sig.column_names)
    assert sum(sig.column("multiplicity").to_pylist()) == len(rows)
    assert json.load(open(os.path.join(counts, "attributes.json")))["labels"] == LABELS


def pi_of(output: str) -> dict[str, float]:
    """π per uid, as ``balance`` wrote it in ``weights/``."""
    return {r["uid"]: r["inclusion_prob"] for r in pq.read_table(output + "/weights").to_pylist()}


def recompute_bias(rows, pi: dict[str, float], labels=LABELS, label_casefold=True) -> dict:
    """RB and AB of the gender attribute straight from the captions and π (the definitions of
    docs/balancing.md), without any of the package's m4 code."""
    P, S, Y, YS = 0.0, np.zeros(2), np.zeros(len(labels)), np.zeros((2, len(labels)))
    for r in rows:
        w = pi[r["uid"]]
        s = np.array(
            [bool(naive_match(r["caption"], g, casefold=True)) for g in (FEMALE, MALE)], float
        )
        if not s.any():
            continue
        y = np.zeros(len(labels))
        y[naive_match(r["caption"], labels, casefold=label_casefold)] = 1.0
        P += w
        S += w * s
        Y += w * y
        YS += w * s[:, None] * y[None, :]
    shares = S / P
    ab = YS / S[:, None] - (Y[None, :] - YS) / (P - S)[:, None]
    return {"rb": float(shares.max() - shares.min()), "ab": ab}


def test_bias_json_agrees_with_a_recomputation_from_captions_and_pi(spark, pipeline):
    root, rows, _, _ = pipeline
    out = balance(spark, pipeline, "b-driver", execution="driver")
    assert out.summary["status"] == "converged"
    bias = json.load(open(os.path.join(out.output, "bias.json")))
    pi = pi_of(out.output)
    # before: π = 1 on the matched captions (m4 balances the matched samples)
    before = recompute_bias(
        rows, {r["uid"]: float(bool(naive_match(r["caption"], ENTRIES))) for r in rows}
    )
    after = recompute_bias(rows, pi)
    g = bias["attributes"]["gender"]
    assert g["rb_before"] == pytest.approx(before["rb"], abs=1e-9)
    assert g["rb_after"] == pytest.approx(after["rb"], abs=1e-9)
    for r, label in enumerate(LABELS):
        for k, group in enumerate(("female", "male")):
            assert g["labels"][label]["ab_before"][group] == pytest.approx(
                before["ab"][k, r], abs=1e-9
            )
            assert g["labels"][label]["ab_after"][group] == pytest.approx(
                after["ab"][k, r], abs=1e-9
            )
    assert after["rb"] <= EPS and np.abs(after["ab"]).max() <= EPS
    assert abs(before["ab"][0, LABELS.index("nurse")]) > 0.3
    assert g["rb_status"] == "met" and g["ab_status"] == "met"
    n = sum(bool(naive_match(r["caption"], ENTRIES)) for r in rows)
    assert n == pipeline[2].summary["matched"]
    assert sum(pi.values()) == pytest.approx(0.5 * n, rel=1e-6)
    assert bias["size"]["expected"] == pytest.approx(0.5 * n, rel=1e-6)


def test_spark_path_agrees_with_the_driver(spark, pipeline):
    driver = balance(spark, pipeline, "b-d2", execution="driver")
    on_spark = balance(spark, pipeline, "b-spark", execution="spark")
    a = json.load(open(os.path.join(driver.output, "params.json")))["moments"]
    b = json.load(open(os.path.join(on_spark.output, "params.json")))["moments"]
    np.testing.assert_allclose(a["mu"], b["mu"], rtol=0, atol=1e-9)
    assert a["nu"] == pytest.approx(b["nu"], abs=1e-9)
    wa = pi_of(driver.output)
    wb = pi_of(on_spark.output)
    assert wa.keys() == wb.keys()
    assert max(abs(wa[u] - wb[u]) for u in wa) <= 1e-9


def test_select_draws_from_m4_probabilities(spark, pipeline):
    root, rows, matched, _ = pipeline
    out = balance(spark, pipeline, "b-sel", execution="driver")
    sel = run_select(
        spark,
        SelectConfig(input=matched.output, weights=out.output, output=str(root / "s"), seed=3),
    )
    kept = pq.read_table(os.path.join(sel.output, "selected")).column("uid").to_pylist()
    pi = pi_of(out.output)
    assert all(pi[u] > 0 for u in kept)
    assert abs(len(kept) - sum(pi.values())) < 4 * np.sqrt(len(rows))


def test_utility_column_keeps_q_close_to_the_quality_score(spark, pipeline):
    root, rows, _, _ = pipeline
    out = balance(
        spark, pipeline, "b-util", execution="driver", utility_col="quality", target_fraction=0.4
    )
    assert out.summary["status"] == "converged"
    pi = pi_of(out.output)
    q = np.array([pi[r["uid"]] for r in rows])
    u = np.array([r["quality"] for r in rows])
    assert np.corrcoef(q, u)[0, 1] > 0.5
    after = recompute_bias(rows, pi)
    assert after["rb"] <= EPS and np.abs(after["ab"]).max() <= EPS


def test_bad_inputs_get_clear_errors(spark, pipeline, tmp_path):
    root, _, matched, counts = pipeline
    with pytest.raises(BalanceConfigError, match="--method m4 takes"):
        balance(spark, pipeline, "b-bad", cap=3.0, target_fraction=0.0)
    for method, kw, message in (
        ("metaclip", {"attributes": "a.yaml"}, "m4 and --method rake only"),
        ("rake", {"utility_col": "quality"}, "--utility-col applies to --method m4 only"),
        ("rake", {"attributes": "a.yaml", "keep_unmatched": True}, "does not take --keep-unm"),
        ("m4", {"rake_attributes": "two-step"}, "--method rake --attributes only"),
    ):
        with pytest.raises(BalanceConfigError, match=message):
            run_balance(
                spark,
                BalanceConfig(
                    input=matched.output,
                    counts=counts,
                    output=str(tmp_path / "x"),
                    method=method,
                    target_fraction=0.5,
                    **kw,
                ),
            )
    bad = tmp_path / "bad.yaml"
    bad.write_text("attributes:\n  gender:\n    female: [woman]\n")
    with pytest.raises(AttributeFileError, match=r"bad.yaml: attributes.gender: give at least two"):
        run_match(
            spark,
            MatchConfig(
                input=str(root / "pool.parquet"),
                output=str(tmp_path / "m"),
                metadata=str(root / "meta.json"),
                attributes=str(bad),
            ),
        )
    assert not (tmp_path / "m").exists()
    other = tmp_path / "other.yaml"
    other.write_text(ATTRIBUTES_YAML.replace("car, kitchen", "car, office"))
    with pytest.raises(Exception, match="differ from the attribute file"):
        balance(spark, pipeline, "b-other", attributes=str(other))


def test_rake_with_attributes_meets_the_bounds_at_rakes_size(spark, pipeline):
    """rake's entry balancing and the bias bounds in one dual (the default), at rake's size; and
    the two-step projection (rake, then the closest π in squared distance meeting the bounds)."""
    root, rows, matched, counts = pipeline
    plain = run_balance(
        spark,
        BalanceConfig(
            input=matched.output,
            counts=counts,
            output=str(root / "r-plain"),
            method="rake",
            target_fraction=0.5,
            execution="driver",
        ),
    )
    out = run_balance(
        spark,
        BalanceConfig(
            input=matched.output,
            counts=counts,
            output=str(root / "r-attr"),
            method="rake",
            target_fraction=0.5,
            execution="driver",
            attributes=str(root / "attr.yaml"),
        ),
    )
    assert out.summary["status"] == "converged"
    params = json.load(open(os.path.join(out.output, "params.json")))
    assert params["moments"]["base"]["method"] == "rake"
    pi = pi_of(out.output)
    pi_rake = pi_of(plain.output)
    assert sum(pi.values()) == pytest.approx(sum(pi_rake.values()), rel=1e-6)
    after = recompute_bias(rows, pi)
    assert after["rb"] <= EPS and np.abs(after["ab"]).max() <= EPS
    assert recompute_bias(rows, pi_rake)["rb"] > 2 * EPS  # rake alone does not debias
    bias = json.load(open(os.path.join(out.output, "bias.json")))
    g = bias["attributes"]["gender"]
    assert bias["method"] == "rake+attributes" and bias["combination"] == "joint"
    assert g["rb_after"] == pytest.approx(after["rb"], abs=1e-9)
    at_rake = recompute_bias(rows, pi_rake)  # "base": rake's own solution
    assert g["rb_base"] == pytest.approx(at_rake["rb"], abs=1e-9)
    assert g["labels"]["nurse"]["ab_base"]["female"] == pytest.approx(
        at_rake["ab"][0, LABELS.index("nurse")], abs=1e-9
    )
    # the entry-level diagnostics of the final π are written as for any method
    diag = json.load(open(os.path.join(out.output, "diagnostics.json")))
    assert diag["inclusion"]["expected_size"] == pytest.approx(sum(pi.values()), rel=1e-9)
    assert params["moments"]["link"] == "joint"
    assert diag["info"]["entries"]["kkt_test"] == "met"

    # the two-step projection meets the same bounds further from rake's entry targets
    two = run_balance(
        spark,
        BalanceConfig(
            input=matched.output,
            counts=counts,
            output=str(root / "r-two"),
            method="rake",
            target_fraction=0.5,
            execution="driver",
            attributes=str(root / "attr.yaml"),
            rake_attributes="two-step",
        ),
    )
    pi_two = pi_of(two.output)
    after_two = recompute_bias(rows, pi_two)
    assert after_two["rb"] <= EPS and np.abs(after_two["ab"]).max() <= EPS
    diag_two = json.load(open(os.path.join(two.output, "diagnostics.json")))
    l1 = diag["entries_after"]["l1_error"]
    assert l1 < diag_two["entries_after"]["l1_error"] - 0.03


def test_report_shows_bias_before_and_after(spark, pipeline):
    from curation.report import build_report
    from curation.report.format import fmt_num

    root, *_ = pipeline
    out = balance(spark, pipeline, "b-report", execution="driver")
    bias = json.load(open(os.path.join(out.output, "bias.json")))
    report = build_report(str(root))
    assert "Bias (representation and association)" in report.html
    part = report.html.split('id="bias-b-report"', 1)[1].split("<h3", 1)[0]
    shown = next(x for x in report.summary["bias"] if x["output"] == "b-report")
    for name, attr in bias["attributes"].items():
        assert shown[name] == {"rb_after": attr["rb_after"], "ab_after": attr["ab_after"]}
        for key in ("rb_before", "rb_after", "ab_before", "ab_after"):
            assert f">{fmt_num(attr[key])}<" in part
        constrained = [n for n, lab in attr["labels"].items() if lab["constrained"]]
        assert constrained and all(f">{e}<" in part for e in constrained[:5])
    assert "Scatter of each label&#x27;s association bias" in part


def test_labels_from_metadata_entries(spark, pipeline, tmp_path):
    """``labels: {entries: {min_count: N}}``: match adds no label ids, balance takes the labels
    from the entry counts (entries holding a group keyword left out) and the rows' entry ids."""
    root, rows, _, _ = pipeline
    attr = tmp_path / "entries.yaml"
    attr.write_text(
        ATTRIBUTES_YAML.replace(
            "labels: [nurse, doctor, car, kitchen]", "labels: {entries: {min_count: 200}}"
        )
    )
    matched = run_match(
        spark,
        MatchConfig(
            input=str(root / "pool.parquet"),
            output=str(tmp_path / "m"),
            metadata=str(root / "meta.json"),
            attributes=str(attr),
        ),
    )
    pool = pq.read_table(os.path.join(matched.output, "pool")).to_pylist()
    assert all(r["attribute_labels"] == [] for r in pool)
    counts = run_count(spark, CountConfig(input=matched.output, output=str(tmp_path / "c")))
    c = pq.read_table(os.path.join(counts.output, "entry_counts.parquet")).to_pylist()
    want = [e["entry"] for e in c if e["count"] >= 200 and e["entry"] not in ("woman", "man")]
    assert len(want) >= 3 and any(e["entry"] == "woman" and e["count"] >= 200 for e in c)
    out = run_balance(
        spark,
        BalanceConfig(
            input=matched.output,
            counts=counts.output,
            output=str(tmp_path / "b"),
            method="m4",
            target_fraction=0.5,
            execution="driver",
        ),
    )
    assert out.summary["status"] == "converged"
    bias = json.load(open(os.path.join(out.output, "bias.json")))
    g = bias["attributes"]["gender"]
    assert list(g["labels"]) == want
    pi = pi_of(out.output)
    after = recompute_bias(rows, pi, labels=want, label_casefold=False)
    assert g["rb_after"] == pytest.approx(after["rb"], abs=1e-9)
    for r, label in enumerate(want):
        assert g["labels"][label]["ab_after"]["female"] == pytest.approx(
            after["ab"][0, r], abs=1e-9
        )
    assert after["rb"] <= EPS and np.abs(after["ab"]).max() <= EPS
    assert abs(g["labels"]["nurse"]["ab_before"]["female"]) > 0.3


def test_rake_with_attributes_on_spark_agrees_with_the_driver(spark, pipeline):
    root, rows, matched, counts = pipeline
    outs = {
        path: run_balance(
            spark,
            BalanceConfig(
                input=matched.output,
                counts=counts,
                output=str(root / f"r-joint-{path}"),
                method="rake",
                target_fraction=0.5,
                execution=path,
                attributes=str(root / "attr.yaml"),
            ),
        )
        for path in ("driver", "spark")
    }
    pis = {path: pi_of(out.output) for path, out in outs.items()}
    assert outs["spark"].summary["execution"] == "spark"
    assert max(abs(pis["driver"][u] - pis["spark"][u]) for u in pis["driver"]) <= 1e-9
    after = recompute_bias(rows, pis["spark"])
    assert after["rb"] <= EPS and np.abs(after["ab"]).max() <= EPS
