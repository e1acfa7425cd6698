"""metaclip: probabilities equal an independent closed-form computation (synthetic and real)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from curation.balancing import (
    SignatureTable,
    cap_from_tail_share,
    metaclip,
    metaclip_probs,
    tail_share,
)
from curation.balancing.synthetic import synthetic_table

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _loop_pi(rows: list[list[int]], mult: list[int], t: float, m: int) -> list[float]:
    """Direct per-row computation, independent of the library: counts by a loop, then
    π_i = 1 − Π_{j∈S_i} (1 − min(1, t / c_j))."""
    c = [0] * m
    for r, k in zip(rows, mult):
        for j in set(r):
            c[j] += k
    out = []
    for r in rows:
        q = 1.0
        for j in set(r):
            q *= 1.0 - min(1.0, t / c[j])
        out.append(1.0 - q if r else 0.0)
    return out


def _rows(tab: SignatureTable) -> list[list[int]]:
    return [
        tab.indices[tab.indptr[r] : tab.indptr[r + 1]].tolist() for r in range(tab.n_signatures)
    ]


@pytest.mark.parametrize("t", [1.0, 7.5, 40.0, 1e9])
def test_metaclip_equals_closed_form_synthetic(t):
    tab = synthetic_table(2000, 300, mean_k=3, n_unmatched=20, seed=5)
    res = metaclip(tab, t=t)
    expect = _loop_pi(_rows(tab), tab.multiplicity.tolist(), t, 300)
    np.testing.assert_allclose(res.pi, expect, rtol=1e-12, atol=1e-15)
    assert np.all(res.pi[tab.k == 0] == 0)


def test_metaclip_edge_cases_exact():
    # p_j = 1 must give π = 1 exactly; tiny p must not lose precision (expm1/log1p)
    tab = SignatureTable.from_lists([[0], [0, 1], [1], [], [2, 3]], [1, 1, 10**6, 4, 10**9])
    res = metaclip(tab, t=2.0)  # c = [2, 10**6 + 1, 10**9, 10**9]
    assert res.pi[0] == 1.0 and res.pi[1] == 1.0 and res.pi[3] == 0.0
    p2 = 2.0 / 10**9
    assert res.pi[4] == pytest.approx(2 * p2 - p2 * p2, rel=1e-12)
    assert res.pi[2] == pytest.approx(2.0 / (10**6 + 1), rel=1e-12)
    assert metaclip_probs(np.array([0, 5, 20]), 10.0).tolist() == [1.0, 1.0, 0.5]


def _real_caption_rows(limit_files: int = 40) -> list[str]:
    caps: list[str] = []
    coco = SHARED / "coco_captions" / "captions_val2017.json"
    if coco.exists():
        caps += [a["caption"] for a in json.loads(coco.read_text())["annotations"]]
    flickr = SHARED / "flickr8k" / "Flickr8k.token.txt"
    if flickr.exists():
        caps += [ln.split("\t", 1)[1] for ln in flickr.read_text().splitlines() if "\t" in ln]
    red = SHARED / "redcaps_explore" / "explore"
    if red.is_dir():
        for f in sorted(red.glob("*.json"))[:limit_files]:
            caps += [row[3] for row in json.loads(f.read_text())]
    return caps


def test_metaclip_equals_closed_form_on_real_captions():
    caps = _real_caption_rows()
    if not caps:
        pytest.skip(f"real caption sets not found under {SHARED}")
    # entries: whitespace tokens seen at least 3 times (a test-only rule); S_i = its token ids
    tokens = [set(c.split()) for c in caps]
    freq = Counter(w for s in tokens for w in s)
    vocab = {w: i for i, w in enumerate(sorted(w for w, n in freq.items() if n >= 3))}
    sig = Counter(tuple(sorted(vocab[w] for w in s if w in vocab)) for s in tokens)
    rows = [list(k) for k in sig]
    mult = list(sig.values())
    tab = SignatureTable.from_lists(rows, mult, n_entries=len(vocab))
    assert tab.n_samples == len(caps) and len(vocab) > 1000
    c = tab.entry_counts()
    for t in (20.0, float(np.quantile(c[c > 0], 0.99))):
        res = metaclip(tab, t=t)
        expect = _loop_pi(rows, mult, t, len(vocab))
        np.testing.assert_allclose(res.pi, expect, rtol=1e-12, atol=1e-15)
    # and the target-size solve works on real data
    n = 0.3 * tab.n_matched
    res = metaclip(tab, target_size=n)
    assert abs(res.pi @ tab.multiplicity - n) / n <= 1e-3


def test_tail_share_rule_matches_metaclip2_definition():
    counts = np.array([0, 1, 2, 2, 5, 9, 30, 100, 400])
    # MetaCLIP 2 p_to_t, written independently: sort, cumulative share, nearest index
    for p in (0.01, 0.05, 0.1, 0.3, 0.6):
        srt = sorted(counts.tolist())
        total = sum(srt)
        acc, best, best_d = 0, None, math.inf
        for v in srt:
            acc += v
            d = abs(acc / total - p)
            if d < best_d:
                best, best_d = v, d
        assert cap_from_tail_share(counts, p) == best
    assert tail_share(counts, 30) == pytest.approx(19 / 549)
    tab = synthetic_table(3000, 500, seed=1)
    res = metaclip(tab, tail_share_p=0.1)
    assert res.info["t"] == cap_from_tail_share(tab.entry_counts(), 0.1)
    assert res.info["tail_share_reached"] == pytest.approx(
        tail_share(tab.entry_counts(), res.info["t"])
    )


def test_keep_unmatched_pseudo_entry_gets_its_own_cap():
    tab = SignatureTable.from_lists([[0], [0], [], []], [10, 10, 30, 10], n_entries=1)
    res = metaclip(tab, t=5.0, keep_unmatched=True, unmatched_cap=8.0)
    assert res.counts.tolist() == [20, 40]
    np.testing.assert_allclose(res.pi, [0.25, 0.25, 0.2, 0.2])
    assert res.params.entry_values.shape == (2,)
