"""``curate inspect``: questions about a committed run, answered with Polars, without Spark.

:mod:`curation.inspect.outputs` finds a run's stage outputs, :mod:`curation.inspect.queries`
holds the questions (entries, captions, sample, compare) and :mod:`curation.inspect.render`
prints their answers as a table, CSV or JSON. Nothing here writes.
"""

from curation.inspect.outputs import RunLayoutError, RunOutputs
from curation.inspect.queries import Answer, captions, compare, entries, sample
from curation.inspect.render import FORMATS, render

__all__ = [
    "FORMATS",
    "Answer",
    "RunLayoutError",
    "RunOutputs",
    "captions",
    "compare",
    "entries",
    "render",
    "sample",
]
