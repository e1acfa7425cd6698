"""Comparing results that come from two summation orders: floats to a tolerance, all else exactly."""

from __future__ import annotations

import math
from typing import Any


def assert_tree_close(
    got: Any, want: Any, *, rel: float = 1e-9, abs_tol: float = 1e-12, path: str = ""
) -> None:
    """Assert that two JSON-like trees agree: the same keys, lengths and non-float leaves, and every
    float within ``rel`` (relative) or ``abs_tol`` (absolute). For results of two different
    summation orders, which agree to rounding, not to the bit."""
    where = path or "<root>"
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__} is not a mapping"
        assert got.keys() == want.keys(), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_tree_close(got[key], want[key], rel=rel, abs_tol=abs_tol, path=f"{path}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_tree_close(g, w, rel=rel, abs_tol=abs_tol, path=f"{path}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        ok = math.isclose(got, want, rel_tol=rel, abs_tol=abs_tol) or (
            math.isnan(got) and math.isnan(want)
        )
        assert ok, f"{where}: {got!r} != {want!r} (rel {rel}, abs {abs_tol})"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
