"""Solved parameters on Spark's workers: broadcast once, rebuilt once per Python worker.

``balance`` (scoring the pool) and ``select`` (drawing from it) both run :func:`score_arrow` in
``mapInArrow`` tasks with the same :class:`ScoreParams`. The parameters travel as one broadcast of
their dict form; each Python worker rebuilds the vectors at most once, keyed by a digest of their
JSON, so a reused worker does not rebuild them for every task.
"""

from __future__ import annotations

import hashlib
from typing import Any

from curation.balancing.params import ScoreParams

_PARAMS: dict[str, ScoreParams] = {}


def cached_params(broadcast: Any, key: str) -> ScoreParams:
    """The broadcast ScoreParams, rebuilt at most once per Python worker process."""
    params = _PARAMS.get(key)
    if params is None:
        _PARAMS.clear()
        params = _PARAMS[key] = ScoreParams.from_dict(broadcast.value)
    return params


def broadcast_params(spark: Any, params: ScoreParams) -> tuple[Any, str]:
    """Broadcast ``params`` once; returns the broadcast and its cache key."""
    payload = params.to_dict()
    key = hashlib.sha256(params.to_json().encode()).hexdigest()[:24]
    return spark.sparkContext.broadcast(payload), key
