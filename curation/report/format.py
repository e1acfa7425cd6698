"""Number formatting for the report: every value a person reads goes through one of these."""

from __future__ import annotations

import math
from typing import Any

DASH = "–"


def finite(x: Any) -> bool:
    """A real, finite number (not a bool, not None, not NaN or ±∞)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_int(x: Any) -> str:
    """An integer with thousands separators (``199,800``); ``–`` for missing values."""
    if not finite(x):
        return DASH
    return f"{int(round(x)):,}"


def fmt_num(x: Any, sig: int = 4) -> str:
    """A number for people: integers with separators, floats to ``sig`` significant digits."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if not finite(x):
        return DASH
    if isinstance(x, int):
        return f"{x:,}"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 10**sig:
        return f"{x:,.0f}"
    if a >= 1e-3:
        return f"{x:,.{sig}g}"
    return f"{x:.3g}"


def fmt_pct(x: Any) -> str:
    """A share as a percentage: ``87.9%``, ``0.35%``; ``–`` for missing values."""
    if not finite(x):
        return DASH
    v = 100.0 * float(x)
    if v == 0:
        return "0%"
    if v == 100:
        return "100%"
    if abs(v) < 1:
        return f"{v:.2g}%"
    return f"{v:.1f}%"


def fmt_bytes(n: Any) -> str:
    """A size in bytes with a binary unit: ``41.0 MiB``."""
    if not finite(n):
        return DASH
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return DASH  # pragma: no cover - the loop always returns


def fmt_seconds(s: Any) -> str:
    """A duration: ``53.2 s``, ``2 min 28 s``, ``1 h 05 min``."""
    if not finite(s):
        return DASH
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round(s % 3600 / 60)):02d} min"


def fmt_signed(x: Any, pct: bool = False) -> str:
    """A difference with its sign: ``+61``, ``−3.2``; ``+1.3%`` with ``pct``."""
    if not finite(x):
        return DASH
    text = fmt_pct(abs(x)) if pct else fmt_num(abs(x))
    return ("+" if x >= 0 else "−") + text
