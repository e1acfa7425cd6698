"""Progress of long single-process loops: solver iterations, metadata building.

Spark shows its own console progress bar for distributed work (``spark.progress``); the loops
that run in the driver's Python process (the balancing solvers' iterations, WordNet parsing,
list assembly) report here instead. The library code only *reports* (:func:`tick`, a no-op
unless a bar is open); the stages decide where a bar is open (:func:`bar`), so the math stays
free of I/O and a test or a notebook that calls the solvers sees nothing.

A bar is drawn with ``tqdm`` on stderr when stderr is a terminal, and never in a log file or
CI output; ``CURATION_PROGRESS=1`` forces it on, ``CURATION_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm import tqdm

_current: ContextVar[tqdm | None] = ContextVar("curation_progress_bar", default=None)


def enabled() -> bool:
    """Whether bars are drawn: ``CURATION_PROGRESS`` if set, else whether stderr is a terminal."""
    forced = os.environ.get("CURATION_PROGRESS", "").strip().lower()
    if forced in {"1", "true", "yes", "on"}:
        return True
    if forced in {"0", "false", "no", "off"}:
        return False
    return sys.stderr.isatty()


@contextmanager
def bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[tqdm | None]:
    """Open a bar for the loops run inside the ``with`` block (nested bars are not opened:
    the outer one keeps counting). Yields the bar, or None when bars are off."""
    if _current.get() is not None or not enabled():
        yield _current.get()
        return
    progress = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
        mininterval=0.5,
    )
    token = _current.set(progress)
    try:
        yield progress
    finally:
        _current.reset(token)
        progress.close()


def tick(n: int = 1, **postfix: Any) -> None:
    """Advance the open bar by ``n`` and show ``postfix`` (numbers are formatted compactly);
    nothing when no bar is open."""
    progress = _current.get()
    if progress is None:
        return
    if postfix:
        progress.set_postfix(
            {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in postfix.items()},
            refresh=False,
        )
    progress.update(n)
