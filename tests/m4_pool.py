"""A planted caption pool for the M4 tests: "nurse" co-occurs with the female group 80 % of the
time, "doctor" with the male group 70 %, "car" with neither more than chance."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from curation.attributes import AttributeMatcher
    from curation.matching import Matcher

FEMALE = ["woman", "girl", "she"]
MALE = ["man", "boy", "he"]
LABELS = ["nurse", "doctor", "car", "kitchen"]
ENTRIES = ["nurse", "doctor", "car", "kitchen", "street", "dog", "woman", "man"]
ATTRIBUTES_YAML = """
attributes:
  gender:
    female: [woman, girl, she]
    male: [man, boy, he]
labels: [nurse, doctor, car, kitchen]
targets:
  gender: parity
epsilon: {representation: 0.01, association: 0.01}
min_label_count: 20
casefold: true
"""


def planted_captions(n: int, seed: int = 0) -> list[str]:
    """Captions with known associations (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            who = FEMALE if rng.random() < 0.8 else MALE
            what = "nurse"
        elif r < 0.45:
            who = MALE if rng.random() < 0.7 else FEMALE
            what = "doctor"
        elif r < 0.75:
            who = FEMALE if rng.random() < 0.45 else MALE
            what = str(rng.choice(["car", "kitchen", "street"]))
        else:
            who, what = None, str(rng.choice(["dog", "car", "street", "a tree"]))
        if who is None:
            out.append(f"a {what} in the park")
        else:
            word = str(rng.choice(who))
            first = word.capitalize() if rng.random() < 0.3 else word
            out.append(f"{first} with a {what}, near the {rng.choice(['street', 'dog'])}.")
    return out


def pattern_table(captions: list[str], entries: Matcher, attrs: AttributeMatcher) -> pa.Table:
    """Matched captions grouped by (entry ids, groups, labels): the signature table of ``count``
    after ``match --attributes``, matched rows only (what ``balance --method m4`` solves)."""
    ids = entries.match_many(captions).to_pylist()
    matched = [(c, e) for c, e in zip(captions, ids) if e]
    groups, labels = attrs.match_many([c for c, _ in matched])
    keys = Counter(
        zip(
            (tuple(e) for _, e in matched),
            map(tuple, groups.to_pylist()),
            map(tuple, labels.to_pylist()),
        )
    )
    rows = sorted(keys.items())
    lists = pa.list_(pa.int32())
    return pa.table(
        {
            "entry_ids": pa.array([list(e) for (e, _, _), _ in rows], lists),
            "attribute_groups": pa.array([list(g) for (_, g, _), _ in rows], lists),
            "attribute_labels": pa.array([list(lb) for (_, _, lb), _ in rows], lists),
            "multiplicity": pa.array([m for _, m in rows], pa.int64()),
        }
    )
