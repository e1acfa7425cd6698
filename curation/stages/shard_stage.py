"""What the two stages that write a shard set (``download``, ``reshard``) share: the S3 options,
the in-place commit and the console report.

A shard set is committed in place (see :mod:`curation.shards.layout`): it can be terabytes on an
object store, where renaming a directory is a copy, and work must survive a kill at shard
granularity. So :meth:`ShardSetStage.commit` prepares the output (``_manifest.json`` first: a
resumable run in progress), lets :meth:`~ShardSetStage.write` fill it, and
:func:`curation.shards.layout.commit_output` writes ``sizes.json`` and ``_stats.json`` (the
summary) and marks ``_SUCCESS`` last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from curation import storage
from curation.shards import layout
from curation.shards.plan import shard_name
from curation.stages.base import Stage, StageResult, secret_field
from curation.summaries import ShardStats

log = logging.getLogger(__name__)


@dataclass
class S3Fields:
    """s3:// options shared by ``download`` and ``reshard`` (never written to manifests)."""

    s3_endpoint_url: str = secret_field(
        "", "S3 endpoint (MinIO, Ceph, moto...); empty: AWS's default"
    )
    s3_key: str = secret_field(
        "", "S3 access key; prefer AWS_ACCESS_KEY_ID or a profile (ps shows flags)"
    )
    s3_secret: str = secret_field("", "S3 secret key; prefer AWS_SECRET_ACCESS_KEY or a profile")
    s3_region: str = secret_field("", "S3 region name")
    s3_profile: str = secret_field("", "AWS profile of ~/.aws to use")
    s3_retries: int = secret_field(
        5, "attempts per S3 request (botocore standard retry mode)", min=0
    )
    s3_anon: bool = secret_field(False, "anonymous S3 access")

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(
            endpoint_url=self.s3_endpoint_url,
            key=self.s3_key,
            secret=self.s3_secret,
            region=self.s3_region,
            profile=self.s3_profile,
            retries=self.s3_retries,
            anon=self.s3_anon,
        )


class ShardSetStage(Stage):
    """A stage whose output is a shard set, committed in place."""

    summary_file: ClassVar[str] = layout.STATS

    def validate(self) -> None:
        super().validate()
        if self.config.samples_per_shard < 1:
            raise ValueError(f"{self.name}: samples_per_shard must be at least 1")
        self.s3 = self.config.s3_options()
        storage.apply_storage_options(self.s3)

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        storage.check_output_is_ours(self.output, list(self.input_urls().values()))
        sizes, stats, keep_work = self.write(manifest)
        layout.commit_output(self.output, sizes, stats, keep_work=keep_work)
        self.sizes = sizes
        self.log_done(stats)
        return stats

    def write(self, manifest: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any], bool]:
        """Prepare the output, write the shards; returns (sizes, stats, keep the work area)."""
        raise NotImplementedError

    def log_done(self, summary: dict[str, Any]) -> None:
        s = ShardStats.from_json(summary)
        log.info(
            "%s: %d samples in %d shards (%.1f s) -> %s",
            self.name,
            s.written_samples,
            len(self.sizes),
            s.seconds,
            self.output,
        )

    def committed_result(self) -> StageResult:
        self.sizes = storage.read_json(storage.join(self.output, layout.SIZES))
        result = self.result(self.read_summary())
        result.skipped = True
        return result

    def result(self, summary: dict[str, Any]) -> StageResult:
        return StageResult(
            type(self), self.output, summary, extra={"sizes": self.sizes, "stats": summary}
        )

    @classmethod
    def describe(cls, result: StageResult) -> str:
        s, sizes = result.record(ShardStats), result.sizes
        n = len(sizes)
        last = shard_name(n - 1, n) if n else "-"
        lines = [
            f"{cls.name}: {sum(sizes.values()):,} samples in {n} shard(s)"
            + (" (up to date, skipped)" if result.skipped else ""),
            f"  shards     {result.output}/{{{shard_name(0, n)}..{last}}}.tar",
            f"  selected   {_or(s.selected_uids, 0):,} uids, "
            f"{_or(s.selected_samples, 0):,} samples with repeats",
            f"  missing    {_or(s.missing_uids, 0):,} selected uids not in the output "
            f"(see {layout.REJECTS})",
            f"  weights    renormalised by {_or(s.weight_scale, 1.0):.6g}",
        ]
        if s.download is not None:
            d = s.download
            reasons = ", ".join(f"{k} {v}" for k, v in d.failures_by_reason.items()) or "none"
            lines.insert(1, f"  download   {d.successes:,} of {d.urls:,} urls ({reasons})")
        return "\n".join(lines)


def _or(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when the summary does not have it."""
    return default if value is None else value
