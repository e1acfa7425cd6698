"""WebDataset shard sets: keys, tar reading and writing, the reshard plan, sizes and stats.

Everything here but :mod:`.engine` is plain Python on bytes, Arrow tables and file objects, so it
is unit-tested without Spark; the engine is the thin Spark glue around it, run by the ``download``
and ``reshard`` stages. See ``docs/shards.md`` for the layout of a shard set and its guarantees.
"""

from curation.shards.keys import member_name, sample_key, sanitize_key, split_member_name

__all__ = ["member_name", "sample_key", "sanitize_key", "split_member_name"]
