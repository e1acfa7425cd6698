"""Compare metaclip, balance and rake on real captions at the same expected output size.

    .venv/bin/python bench/compare_methods.py [--fractions 0.1 0.3 0.5] [--min-unigram-count 20]

Pool: every caption of RedCaps (explore sample), COCO val2017 and Flickr8k found in
``../shared/data`` (the project's workspace; not shipped). Metadata: built from the same captions
by the ``metadata`` stage (unigrams seen at least ``--min-unigram-count`` times, bigrams with PMI
of at least ``--min-bigram-pmi`` bits and ``--min-bigram-count`` occurrences), as a user would
build one from their own corpus; and, second, the shipped WordNet list (``metadata/default.json``).
Then ``match`` and ``count`` as in any run, and each method solved on the driver for the same target
size N = each of ``--fractions`` × matched samples: metaclip, balance, rake (default, tail-keeping)
and rake with ``objective="l1"``.

Every method is scored against MetaCLIP's cap t_mc at N (:func:`entry_quality`): the share kept of
tail entries (c_j ≤ t_mc) and head entries, the head overshoot over t_mc, entropy and top-100 share
of the expected entry distribution, TV distance to the best capped target, Kish ESS, max/mean weight,
solver passes, status and KKT error. Results: ``bench/out/compare/results.json``, a Markdown table
on stdout and, per list and size, a plot of entropy against tail share
(``tail-entropy-<list>-<fraction>.png``, the report's plot). Run it on your own pool by pointing the pool and metadata paths at it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import load_real_captions  # noqa: E402

from curation.balancing import SignatureTable, diagnostics, run_method  # noqa: E402
from curation.balancing.diagnostics import entry_quality  # noqa: E402
from curation.report import plot_tail_entropy  # noqa: E402
from curation.spark import SparkConfig, get_spark  # noqa: E402
from curation.stages.count import CountConfig, run_count  # noqa: E402
from curation.stages.match import MatchConfig, run_match  # noqa: E402
from curation.stages.metadata import MetadataConfig, run_metadata  # noqa: E402

SETS = ("redcaps", "coco_val2017", "flickr8k")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5], help="N / matched samples"
    )
    parser.add_argument("--min-unigram-count", type=int, default=20)
    parser.add_argument("--min-bigram-pmi", type=float, default=12.0)
    parser.add_argument("--min-bigram-count", type=int, default=20)
    parser.add_argument("--workdir", default=str(REPO / "bench" / "out" / "compare"))
    args = parser.parse_args()

    captions = load_real_captions()
    rows = [(name, c) for name in SETS for c in captions.get(name, [])]
    if not rows:
        sys.exit("no real caption sets under ../shared/data")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "url": [f"https://example.invalid/{name}/{i}" for i, (name, _) in enumerate(rows)],
                "caption": [c for _, c in rows],
                "source": [name for name, _ in rows],
            }
        ),
        work / "pool.parquet",
    )
    (work / "corpus.txt").write_text("\n".join(c.replace("\n", " ") for _, c in rows) + "\n")
    spark = get_spark(SparkConfig(master="local[2]"))
    started = time.perf_counter()
    run_metadata(
        spark,
        MetadataConfig(
            output=str(work / "metadata.json"),
            corpus=str(work / "corpus.txt"),
            min_unigram_count=args.min_unigram_count,
            min_bigram_pmi=args.min_bigram_pmi,
            min_bigram_count=args.min_bigram_count,
        ),
    )
    matched = run_match(
        spark,
        MatchConfig(
            input=str(work / "pool.parquet"),
            output=str(work / "matched"),
            metadata=str(work / "metadata.json"),
        ),
    ).output
    counts = run_count(
        spark, CountConfig(input=matched, output=str(work / "counts"), margins=["source"])
    ).output
    tables = {"corpus": (work / "metadata.json", counts)}
    wordnet = REPO / "metadata" / "default.json"
    matched_wn = run_match(
        spark,
        MatchConfig(
            input=str(work / "pool.parquet"),
            output=str(work / "matched-wordnet"),
            metadata=str(wordnet),
        ),
    ).output
    counts_wn = run_count(
        spark,
        CountConfig(input=matched_wn, output=str(work / "counts-wordnet"), margins=["source"]),
    ).output
    tables["wordnet"] = (wordnet, counts_wn)
    prep_seconds = time.perf_counter() - started
    summary = {
        "captions": len(rows),
        "sets": {name: len(captions.get(name, [])) for name in SETS},
        "prep_seconds": prep_seconds,
        "lists": {},
    }
    lines = [
        "| list | N | method | cap t | tail share kept | head share kept | head overshoot | entropy (nats) | top-100 share | TV to capped target | Kish ESS | max/mean w | passes | status | KKT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for list_name, (meta_path, counts_dir) in tables.items():
        entries = json.loads(Path(meta_path).read_text())
        signatures = (
            spark.read.parquet(str(Path(counts_dir) / "signatures"))
            .groupBy("entry_ids")
            .sum("multiplicity")
            .withColumnRenamed("sum(multiplicity)", "multiplicity")
            .orderBy("entry_ids")
            .toArrow()
        )
        table = SignatureTable.from_arrow(signatures, len(entries))
        per_list = summary["lists"][list_name] = {
            "entries": len(entries),
            "entries_observed": int((table.entry_counts() > 0).sum()),
            "matched": int(table.n_matched),
            "sizes": {},
        }
        for fraction in args.fractions:
            n_target = fraction * table.n_matched
            rows_out = compare_at(table, n_target)
            per_list["sizes"][str(fraction)] = rows_out
            for method, r in rows_out.items():
                lines.append(
                    f"| {list_name} | {fraction:.0%} | {method} | {r['t']:.4g} | {r['tail_share']:.4f} | "
                    f"{r['head_share']:.3f} | {r['head_overshoot']:.3f} | {r['entropy_nats']:.3f} | "
                    f"{r['top100_share']:.3f} | {r['tv_to_capped']:.3f} | {r['kish_ess']:,.0f} | "
                    f"{r['max_over_mean']:.2f} | {r['passes']} | {r['status']} | "
                    + (f"{r['kkt_err']:.1e} |" if r.get("kkt_err") is not None else "— |")
                )
            plot = plot_tail_entropy(
                [(method, r, method == "metaclip") for method, r in rows_out.items()]
            )
            if plot is not None:
                (work / f"tail-entropy-{list_name}-{fraction:g}.png").write_bytes(plot.png)
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    print(
        f"{summary['captions']:,} captions; lists: "
        + ", ".join(
            f"{k} ({v['entries']:,} entries, {v['matched']:,} matched)"
            for k, v in summary["lists"].items()
        )
    )
    print("\n".join(lines))


def compare_at(table: SignatureTable, n_target: float) -> dict:
    """Every method at the same expected size N, scored by
    :func:`~curation.balancing.diagnostics.entry_quality` against MetaCLIP's cap t_mc at N."""
    solved = {
        "metaclip": run_method(table, "metaclip", target_size=n_target),
        "balance": run_method(table, "balance", target_size=n_target),
        "rake": run_method(table, "rake", target_size=n_target),
        "rake (l1)": run_method(table, "rake", target_size=n_target, objective="l1"),
    }
    t_mc = solved["metaclip"].info["t"]
    counts = table.entry_counts()
    out = {}
    for method, result in solved.items():
        weights = diagnostics(table, result)["weights"]
        out[method] = {
            "t": result.info.get("t") or t_mc,
            "expected_size": float(result.pi @ table.multiplicity),
            **entry_quality(table.entry_sums(table.multiplicity * result.pi), counts, t_mc),
            "kish_ess": weights["kish_ess"],
            "max_over_mean": weights["max_over_mean"],
            "passes": result.info.get("passes", 0),
            "status": result.info.get("status", "closed form"),
            "kkt_err": result.info.get("kkt_err"),
        }
    return out


if __name__ == "__main__":
    main()
