"""Compare metaclip, balance and rake on real captions at the same expected output size.

    .venv/bin/python bench/compare_methods.py [--fraction 0.3] [--min-unigram-count 20]

Pool: every caption of RedCaps (explore sample), COCO val2017 and Flickr8k found in
``../shared/data`` (the project's workspace; not shipped). Metadata: built from the same captions
by the ``metadata`` stage (unigrams seen at least ``--min-unigram-count`` times, bigrams with PMI
of at least ``--min-bigram-pmi`` bits and ``--min-bigram-count`` occurrences), as a user would
build one from their own corpus. Then ``match`` and ``count`` as in any run, and each method solved
on the driver for the same target size N = ``--fraction`` × matched samples.

Every method is scored against one common target, MetaCLIP's: τ_j = min(c_j, t) with t the cap
at which MetaCLIP's rule keeps N samples in expectation, and also against its own target. Results:
``bench/out/compare/results.json`` and a Markdown table on stdout.
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
from curation.balancing.targets import capped_targets  # noqa: E402
from curation.spark import SparkConfig, get_spark  # noqa: E402
from curation.stages.count import CountConfig, run_count  # noqa: E402
from curation.stages.match import MatchConfig, run_match  # noqa: E402
from curation.stages.metadata import MetadataConfig, run_metadata  # noqa: E402

SETS = ("redcaps", "coco_val2017", "flickr8k")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fraction", type=float, default=0.3)
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
    entries = json.loads((work / "metadata.json").read_text())
    signatures = (
        spark.read.parquet(str(Path(counts) / "signatures"))
        .orderBy("entry_ids", "source")
        .toArrow()
    )
    table = SignatureTable.from_arrow(signatures, len(entries), ["source"])
    n_target = args.fraction * table.n_matched
    prep_seconds = time.perf_counter() - started

    results: dict[str, dict] = {}
    solved = {}
    for method in ("metaclip", "balance", "rake"):
        t0 = time.perf_counter()
        solved[method] = run_method(table, method, target_size=n_target)
        results[method] = {"seconds": time.perf_counter() - t0, "t": solved[method].info.get("t")}
    t_common = solved["metaclip"].info["t"]
    common = capped_targets(table.entry_counts(), t_common)
    for method, result in solved.items():
        own = diagnostics(table, result)
        shared = diagnostics(table, result, targets=common)
        after = shared["entries_after"]
        results[method].update(
            {
                "expected_size": own["inclusion"]["expected_size"],
                "status": result.info.get("status", "closed_form"),
                "common_target": {
                    "l1_error": after["l1_error"],
                    "max_rel_err_head": after["max_rel_err_head"],
                },
                "own_target": {
                    "l1_error": own["entries_after"]["l1_error"],
                    "max_rel_err_head": own["entries_after"]["max_rel_err_head"],
                },
                "entropy_nats": after["entropy_nats"],
                "tail_entries_fully_kept_share": after["tail_entries_fully_kept_share"],
                "kish_ess": own["weights"]["kish_ess"],
                "max_over_mean": own["weights"]["max_over_mean"],
            }
        )
    summary = {
        "captions": len(rows),
        "sets": {name: len(captions.get(name, [])) for name in SETS},
        "entries": len(entries),
        "entries_observed": int((table.entry_counts() > 0).sum()),
        "matched": int(table.n_matched),
        "target_size": n_target,
        "t_common": t_common,
        "prep_seconds": prep_seconds,
        "methods": results,
    }
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    print(
        f"{summary['captions']:,} captions, {summary['entries']:,} entries "
        f"({summary['entries_observed']:,} observed), {summary['matched']:,} matched, "
        f"N = {n_target:,.0f}, common target min(c_j, {t_common:.4g})\n"
    )
    print(
        "| method | t | expected size | L1 error (common target) | max head rel. error (common) | L1 error (own target) | entropy (nats) | tail fully kept | Kish ESS | max/mean w | solve s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method, r in results.items():
        print(
            f"| {method} | {r['t']:.4g} | {r['expected_size']:,.0f} | {r['common_target']['l1_error']:.3f} | "
            f"{r['common_target']['max_rel_err_head']:.3g} | {r['own_target']['l1_error']:.3f} | "
            f"{r['entropy_nats']:.3f} | {r['tail_entries_fully_kept_share']:.1%} | {r['kish_ess']:,.0f} | "
            f"{r['max_over_mean']:.2f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
