"""``curate inspect``: its numbers against the stage outputs, recomputed with pyarrow and NumPy."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from curation.cli import main
from curation.inspect import RunOutputs, captions, compare, entries, render, sample
from tests.demo_run import demo_image_server, demo_run, metaclip_run  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
SEED = 5  # the demo run's select seed


def table(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


def u_of(uid: str, seed: int) -> float:
    """selection.py's hashed uniform, written out again from its docstring."""
    h = hashlib.blake2b(uid.encode(), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return (int.from_bytes(h, "little") >> 11) * 2.0**-53


class Truth:
    """A run's numbers recomputed from its stage outputs."""

    def __init__(self, run: Path) -> None:
        pool = table(run / "matched" / "pool")
        weights = table(run / "balance" / "weights")
        selected = table(run / "selected" / "selected")
        self.factors = table(run / "balance" / "entry_factors.parquet")
        m = len(self.factors["entry_id"])
        self.ids = dict(zip(pool["uid"], pool["entry_ids"]))
        self.pi = dict(zip(weights["uid"], weights["inclusion_prob"]))
        self.weight = dict(zip(weights["uid"], weights["weight"]))
        self.repeats = dict(zip(selected["uid"], selected["repeats"]))
        flat = np.array([j for ids in pool["entry_ids"] for j in ids], dtype=np.int64)
        pis = np.array([self.pi[u] for u, ids in self.ids.items() for _ in ids])
        self.count = np.bincount(flat, minlength=m)
        self.expected = np.bincount(flat, weights=pis, minlength=m)
        sel_flat = [j for ids in selected["entry_ids"] for j in ids]
        sel_rep = [r for ids, r in zip(selected["entry_ids"], selected["repeats"]) for _ in ids]
        self.selected = np.bincount(sel_flat, minlength=m)
        self.selected_repeats = np.bincount(sel_flat, weights=sel_rep, minlength=m)
        self.t = json.loads((run / "balance" / "params.json").read_text())["meta"]["t"]


@pytest.fixture(scope="module")
def truth(demo_run):  # noqa: F811
    return Truth(demo_run.dir)


@pytest.fixture(scope="module")
def out(demo_run):  # noqa: F811
    return RunOutputs.find(str(demo_run.dir))


def test_entries_match_the_pool_weights_and_selection(out, truth):
    got = entries(out, top=0).table.sort("entry_id")
    assert got["entry_id"].to_list() == list(range(len(truth.count)))
    assert got["count"].to_list() == truth.count.tolist()
    observed = truth.count > 0
    assert np.allclose(got["expected"].to_numpy(), truth.expected, rtol=1e-9, atol=1e-12)
    assert np.allclose(
        got["share_kept"].to_numpy()[observed],
        truth.expected[observed] / truth.count[observed],
        rtol=1e-9,
    )
    assert got["selected"].to_list() == truth.selected.tolist()
    assert got["selected_repeats"].to_list() == truth.selected_repeats.astype(int).tolist()
    assert got["factor"].to_list() == truth.factors["factor"]
    assert got["target"].to_list() == truth.factors["target"]
    assert set(got["cap"].to_list()) == {truth.t}
    assert got["selected"].sum() > 0


def test_entries_filter_sort_and_top(out, truth):
    got = entries(out, match=r"^w1\d$", sort="expected", top=5).table
    names = [e for e in truth.factors["entry"] if re.search(r"^w1\d$", e)]
    by_expected = sorted(names, key=lambda e: -truth.expected[truth.factors["entry"].index(e)])
    assert got["entry"].to_list() == by_expected[:5]
    with pytest.raises(ValueError, match="sort by one of"):
        entries(out, sort="nope")


def test_captions_are_every_matching_caption_with_its_pi_and_decision(out, truth):
    j = truth.factors["entry"].index("water")
    want = {u for u, ids in truth.ids.items() if j in ids}
    got = captions(out, "water", limit=10_000).table
    assert set(got["uid"]) == want and got.height == len(want)
    for row in got.iter_rows(named=True):
        assert row["pi"] == pytest.approx(truth.pi[row["uid"]], rel=1e-12, abs=1e-300)
        assert row["selected"] == (row["uid"] in truth.repeats)
        assert row["repeats"] == truth.repeats.get(row["uid"], 0)
    kept = captions(out, "water", "selected", limit=10_000).table
    dropped = captions(out, "water", "dropped", limit=10_000).table
    assert set(kept["uid"]) == want & set(truth.repeats)
    assert set(dropped["uid"]) == want - set(truth.repeats)


def test_captions_sample_is_reproducible_and_seeded(out, truth):
    first = captions(out, "the", limit=7, seed=3).table
    assert first.height == 7
    assert captions(out, "the", limit=7, seed=3).table.equals(first)
    assert set(captions(out, "the", limit=7, seed=4).table["uid"]) != set(first["uid"])
    with pytest.raises(ValueError, match="did you mean 'water'"):
        captions(out, "Water")


def test_sample_explains_pi_and_the_draw(out, truth):
    chosen = [u for u in truth.repeats][:3] + [u for u in truth.ids if u not in truth.repeats][:3]
    for uid in chosen:
        answer = sample(out, uid)
        facts = answer.facts
        assert facts["pi"] == pytest.approx(truth.pi[uid], rel=1e-12, abs=1e-300)
        assert facts["weight"] == pytest.approx(truth.weight[uid], rel=1e-12, abs=1e-300)
        assert facts["u"] == u_of(uid, SEED) and facts["seed"] == SEED
        assert facts["drawn_repeats"] == int(u_of(uid, SEED) < truth.pi[uid])
        assert facts["selected"] == (uid in truth.repeats)
        assert facts["drawn_repeats"] == truth.repeats.get(uid, 0)
        ids = answer.table["entry_id"].to_list()
        assert ids == sorted(truth.ids[uid])
        assert answer.table["count"].to_list() == [int(truth.count[j]) for j in ids]
        assert facts["margin source"].startswith(("web-a", "web-b", "web-c"))


def test_sample_of_a_rejected_or_unknown_uid_says_so(out, demo_run):  # noqa: F811
    rejects = table(demo_run.dir / "matched" / "rejects")
    assert rejects["uid"], "the demo pool has unusable captions"
    with pytest.raises(ValueError, match="rejected by match"):
        sample(out, rejects["uid"][0])
    with pytest.raises(ValueError, match="not in the matched pool"):
        sample(out, "no-such-uid")


def test_compare_against_a_metaclip_run(out, metaclip_run, truth):  # noqa: F811
    other = RunOutputs.find(str(metaclip_run))
    answer = compare(out, other, top=0)
    mc = table(metaclip_run / "balance" / "entry_factors.parquet")
    share_a = truth.expected / truth.expected.sum()
    share_b = np.array(mc["expected"]) / np.sum(mc["expected"])
    got = answer.table.sort("entry_id")
    assert np.allclose(got["delta_share"].to_numpy(), share_b - share_a, atol=1e-12)
    deltas = answer.table["delta_share"].abs().to_list()
    assert deltas == sorted(deltas, reverse=True)
    facts = answer.facts
    for key, share, t in (("a", share_a, truth.t), ("b", share_b, 20.0)):
        s = share[share > 0]
        assert facts[f"entropy_nats_{key}"] == pytest.approx(-(s * np.log(s)).sum(), rel=1e-9)
        assert facts[f"tail_share_{key}"] == pytest.approx(share[truth.count <= t].sum(), rel=1e-9)
    selected_b = json.loads((metaclip_run / "selected" / "summary.json").read_text())["selected"]
    assert facts["selected_delta"] == selected_b - len(truth.repeats)


def test_cli_formats(demo_run, out, capsys):  # noqa: F811
    run = str(demo_run.dir)
    assert main(["inspect", "entries", "--run", run, "--top", "5", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows == entries(out, top=5).table.to_dicts()
    assert main(["inspect", "entries", "--run", run, "--top", "5", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out), comment="#")
    assert frame["entry_id"].tolist() == [r["entry_id"] for r in rows]
    assert main(["inspect", "captions", "--run", run, "--entry", "water", "--dropped"]) == 0
    text = capsys.readouterr().out
    assert "candidates" in text and "caption" in text
    assert main(["inspect", "sample", "--run", run, "--uid", "nope"]) == 2
    assert "not in the matched pool" in capsys.readouterr().err


def test_inspect_starts_no_spark(demo_run, metaclip_run):  # noqa: F811
    code = (
        "import sys\n"
        "from curation.cli import main\n"
        f"assert main(['inspect', 'compare', {str(demo_run.dir)!r}, {str(metaclip_run)!r}]) == 0\n"
        "from pyspark import SparkContext\n"
        "assert SparkContext._active_spark_context is None\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "entropy_nats_delta" in done.stdout


def test_render_table_aligns_columns(out):
    text = render(entries(out, top=3), "table").splitlines()
    header = next(i for i, line in enumerate(text) if line.startswith("entry_id"))
    assert set(text[header + 1]) <= {"-", " "}
    assert len(text) == header + 2 + 3
