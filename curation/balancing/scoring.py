"""Per-row scores (weight, π) of pool rows for every method, from the broadcast parameters.

The entry methods (metaclip, balance, rake) score a row from its entry ids and margin levels
(:func:`.params.score_arrow`); m4 scores it from its attribute columns (:func:`.m4.score_moment_batch`:
π_i = clip(u_i − ν − b_i·μ, 0, 1); rake with attributes solved jointly:
:func:`.joint.score_joint_batch`). This module dispatches, so that :mod:`.params` does not
depend on the M4 solver.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import params as entry_scoring
from .joint import score_joint_batch
from .m4 import score_moment_batch
from .params import ScoreParams
from .signatures import list_array_to_csr

__all__ = ["score_arrow"]


def score_arrow(
    params: ScoreParams, batch: pa.RecordBatch | pa.Table, entry_col: str = "entry_ids"
) -> tuple[np.ndarray, np.ndarray]:
    """(weight, π) of each row of ``batch``; weight = weight_scale · π for m4."""
    if params.method != "m4":
        return entry_scoring.score_arrow(params, batch, entry_col)
    indptr, _ = list_array_to_csr(batch.column(entry_col))
    moments = dict(params.moments or {})
    score = score_joint_batch if moments.get("link") == "joint" else score_moment_batch
    pi = score(moments, batch, np.diff(indptr) > 0)
    return params.weight_scale * pi, pi
