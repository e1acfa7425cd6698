"""Rescoring a distinct-signature table with a balance run's parameters: expected samples per level.

The balance and select stages score rows with :func:`~curation.balancing.score_arrow`; applied to
the count stage's distinct-signature table (one row per (entry set, margin levels), with its
``multiplicity``), the same function gives the expected selection per margin level exactly,
without reading the pool:

    after[c][ℓ] = Σ_{signatures s with s[c] = ℓ} multiplicity_s · v_s

with v_s = π_s, or the expected number of repeats e_s when sampling with replacement. The input
is a stream of Arrow batches, so memory is bounded by the batch size and the number of levels,
not by the number of signatures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from curation.balancing.params import ScoreParams, expected_repeats
from curation.balancing.scoring import score_arrow
from curation.balancing.signatures import encode_margin


def rescoring_columns(params: ScoreParams, columns: Sequence[str]) -> list[str]:
    """The signature-table columns :func:`expected_by_level` reads, in order."""
    margins = list(dict.fromkeys([*columns, *params.margin_values]))
    return ["entry_ids", *margins, "multiplicity"]


def expected_by_level(
    params: ScoreParams, batches: Iterable[pa.RecordBatch], columns: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Expected samples per level of each margin column in ``columns`` after balancing with
    ``params``: Σ multiplicity · π (Σ multiplicity · e with replacement) over the signatures in
    ``batches`` (each holding :func:`rescoring_columns`). Levels are strings, nulls
    :data:`~curation.balancing.signatures.NULL_LEVEL`."""
    sums: dict[str, dict[str, float]] = {c: defaultdict(float) for c in columns}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        weight, pi = score_arrow(params, batch)
        value = expected_repeats(params, weight) if params.repeat_scale is not None else pi
        value = value * batch.column("multiplicity").to_numpy(zero_copy_only=False)
        for col in columns:
            codes, levels = encode_margin(batch.column(col))
            per_level = np.bincount(codes, weights=value, minlength=len(levels))
            for level, v in zip(levels, per_level):
                sums[col][level] += float(v)
    return {c: dict(v) for c, v in sums.items()}
