"""The ``download`` stage: fetch the selected URLs with img2dataset into a balanced shard set.

    curate download --input SELECTED --output DIR [--image-size 256 --resize-mode border ...]

1. The selection's URLs (one row per uid, sorted by uid) go to ``DIR/_work/urls.parquet``.
2. img2dataset downloads them into ``DIR/_work/raw/`` with its ``pyspark`` distributor on *this*
   Spark session (no second session; see :func:`use_session_for_img2dataset`), resizing as
   configured, with ``uid``, ``weight``, ``inclusion_prob``, ``entry_ids`` and ``repeats`` saved
   into each sample's ``.json``. Its incremental mode is the resume: a raw shard with its
   ``_stats.json`` is done and not fetched again.
3. The raw shards are resharded (:func:`curation.shards.engine.reshard_into`) into the final set:
   each selected sample is downloaded **once** and written ``repeats`` times as ``{uid}-{j}``,
   keys are the sanitised uids (img2dataset's numeric keys stay in the ``.json`` as
   ``source.key``), samples are in uid order (unless shuffled), shards hold exactly ``samples_per_shard`` samples, and the weights are
   renormalised over the samples that arrived.

Retries: a URL that failed (timeout, HTTP error, a server that was down) is not fetched again by
img2dataset's resume. When a download fails (nothing arrived), a rerun of the same command retries
the URLs that failed into ``DIR/_work/retry-NN/`` (one round per rerun, at most ``max_retries``
rounds; the last attempt of a URL counts), and the error says how many retries are left.
``max_retries`` is not in the manifest, so raising it does not start over; ``--force`` does.

Order: without ``shuffle`` the shard set is ordered by (uid, repeat index), not by img2dataset's
order, which follows the download threads' completion; so the same downloads give the same shards.

``_stats.json`` has img2dataset's successes and failures by reason; ``_rejects.parquet`` lists each
selected sample that is not in the output with its reason (``http_404``, ``timeout``,
``decode_error``, ...). The raw shards are deleted on commit unless ``keep_raw``; kept raw shards
are reused when only the resharding options change (``samples_per_shard``, ``shuffle``, ``seed``),
so such a rerun does not download again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from curation import storage
from curation.shards import layout
from curation.shards.engine import ReshardOptions, reshard_into
from curation.shards.writer import atomic_open
from curation.stages.base import input_field, output_field
from curation.stages.shard_stage import S3Fields, ShardSetStage
from curation.summaries import DownloadStats

log = logging.getLogger(__name__)

SAVED_COLUMNS = ["uid", "weight", "inclusion_prob", "entry_ids", "repeats"]
RESHARD_OPTIONS = ("samples_per_shard", "shuffle", "seed", "keep_raw")
#: Options that change no byte of the output (how often a rerun retries failed URLs).
UNRECORDED_OPTIONS = ("max_retries",)
#: ``_work/retry-NN/``: the img2dataset output of the NN-th rerun's retry of the failed URLs.
RETRY_DIR = "retry-{:02d}"
STATUS_COLUMNS = ("uid", "url", "status", "error_message")


@dataclass
class _DownloadOptions:
    input: str = input_field(
        "selected", "output directory of the select stage", producers=("select",)
    )
    output: str = output_field("output directory of the shard set")
    samples_per_shard: int = field(
        default=10_000,
        metadata={"min": 1, "help": "samples per output shard (the last may hold fewer)"},
    )
    shuffle: bool = field(
        default=False, metadata={"help": "mix samples across output shards (seeded)"}
    )
    seed: int = field(
        default=0, metadata={"min": 0, "below": 2**64, "help": "seed of the shuffle order"}
    )
    image_size: int = field(default=256, metadata={"min": 1, "help": "img2dataset image_size"})
    resize_mode: str = field(
        default="border",
        metadata={
            "help": "img2dataset resize_mode: no, border, keep_ratio, keep_ratio_largest, center_crop"
        },
    )
    resize_only_if_bigger: bool = field(
        default=False, metadata={"help": "img2dataset resize_only_if_bigger"}
    )
    encode_format: str = field(default="jpg", metadata={"help": "jpg, png or webp"})
    encode_quality: int = field(
        default=95,
        metadata={
            "min": 0,
            "max": 101,
            "help": "img2dataset encode_quality: jpg and webp 0-100 (webp above 100: lossless), "
            "png compression 0-9",
        },
    )
    skip_reencode: bool = field(default=False, metadata={"help": "img2dataset skip_reencode"})
    disable_all_reencoding: bool = field(
        default=False, metadata={"help": "keep the downloaded bytes as they are (no resizing)"}
    )
    min_image_size: int = field(
        default=0, metadata={"min": 0, "help": "img2dataset min_image_size"}
    )
    max_aspect_ratio: float = field(
        default=0.0, metadata={"min": 0, "help": "img2dataset max_aspect_ratio (0: no limit)"}
    )
    timeout: int = field(default=10, metadata={"min": 1, "help": "seconds per HTTP request"})
    retries: int = field(default=0, metadata={"min": 0, "help": "HTTP retries per URL"})
    thread_count: int = field(
        default=64, metadata={"min": 1, "help": "download threads per Spark task"}
    )
    download_shard_size: int = field(
        default=10_000,
        metadata={"min": 1, "help": "URLs per img2dataset task (its number_sample_per_shard)"},
    )
    max_shard_retry: int = field(
        default=1, metadata={"min": 0, "help": "times img2dataset retries a failed download shard"}
    )
    max_retries: int = field(
        default=3,
        metadata={
            "min": 0,
            "help": "a rerun of a download that failed retries the URLs that failed, up to this "
            "many reruns (0: never; not part of the manifest, so raising it keeps what arrived)",
        },
    )
    user_agent_token: str = field(
        default="", metadata={"help": "token added to the User-Agent (img2dataset's)"}
    )
    respect_robots_headers: bool = field(
        default=True,
        metadata={"help": "skip images whose X-Robots-Tag says noai/noimageai/noindex"},
    )
    extract_exif: bool = field(default=False, metadata={"help": "save EXIF into each .json"})
    keep_raw: bool = field(
        default=False, metadata={"help": "keep img2dataset's raw shards in DIR/_work/raw"}
    )


@dataclass
class DownloadConfig(S3Fields, _DownloadOptions):
    """Options of the ``download`` stage (``[download]`` in a config file)."""


# --- img2dataset on our session ---------------------------------------------------------------


@contextlib.contextmanager
def use_session_for_img2dataset(spark: SparkSession, env: dict[str, str]) -> Iterator[None]:
    """Make img2dataset's pyspark distributor run on ``spark``.

    img2dataset (``distributor._spark_session``) takes ``SparkSession.getActiveSession()`` and,
    when that is ``None``, builds a session of its own with ``spark.driver.memory=16G`` and
    *stops it afterwards*, which stops our shared SparkContext too. The active session is
    per thread, so we make ``spark`` active on this thread and check that img2dataset will
    see it. ``env`` is added to the Python workers' environment for the duration (fsspec's
    ``FSSPEC_S3`` defaults, and albumentations' update check switched off).
    """
    from pyspark.sql import SparkSession as _S

    jvm_session = spark._jvm.org.apache.spark.sql.SparkSession  # type: ignore[union-attr]
    jvm_session.setActiveSession(spark._jsparkSession)
    _S._activeSession = spark  # type: ignore[attr-defined]
    active = _S.getActiveSession()
    if active is None or not active._jsparkSession.equals(spark._jsparkSession):
        raise RuntimeError("could not make the stage's Spark session the active one")
    sc = spark.sparkContext
    saved_env = {k: sc.environment.get(k) for k in env}
    sc.environment.update(env)
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        # img2dataset installs a SIGINT handler that exits with status 0; put ours back.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, previous_sigint)
        for k, v in saved_env.items():
            if v is None:
                sc.environment.pop(k, None)
            else:
                sc.environment[k] = v
    if sc._jsc is None or spark.sparkContext._jsc.sc().isStopped():  # type: ignore[union-attr]
        raise RuntimeError("img2dataset stopped the Spark session")


def img2dataset_arguments(config: DownloadConfig, urls: str, raw: str, processes: int) -> dict:
    """Keyword arguments of ``img2dataset.download`` for this config."""
    return dict(
        url_list=urls,
        output_folder=raw,
        input_format="parquet",
        output_format="webdataset",
        url_col="url",
        caption_col="caption",
        save_additional_columns=list(SAVED_COLUMNS),
        distributor="pyspark",
        processes_count=processes,
        thread_count=config.thread_count,
        number_sample_per_shard=config.download_shard_size,
        subjob_size=1000,
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        resize_only_if_bigger=config.resize_only_if_bigger,
        encode_format=config.encode_format,
        encode_quality=config.encode_quality,
        skip_reencode=config.skip_reencode,
        disable_all_reencoding=config.disable_all_reencoding,
        min_image_size=config.min_image_size,
        max_aspect_ratio=config.max_aspect_ratio or float("inf"),
        timeout=config.timeout,
        retries=config.retries,
        max_shard_retry=config.max_shard_retry,
        extract_exif=config.extract_exif,
        compute_hash="sha256",
        incremental_mode="incremental",
        enable_wandb=False,
        oom_shard_count=5,
        user_agent_token=config.user_agent_token or None,
        disallowed_header_directives=None if config.respect_robots_headers else [],
    )


# --- failure reasons ----------------------------------------------------------------------------

_HTTP = re.compile(r"HTTP Error (\d{3})")


def failure_reason(status: str | None, message: str | None) -> str:
    """A short, stable reason for one failed URL from img2dataset's status and message."""
    message = message or ""
    if status == "failed_to_resize":
        if "too small" in message or "aspect ratio" in message or "too large" in message:
            return "filtered_by_size"
        return "decode_error"
    if m := _HTTP.search(message):
        return f"http_{m.group(1)}"
    low = message.lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "x-robots-tag" in low:
        return "disallowed_by_robots"
    if "hash mismatch" in low:
        return "hash_mismatch"
    if "refused" in low or "urlopen error" in low or "name or service" in low:
        return "connection_error"
    return "other"


def read_raw_status(raw: str) -> pa.Table:
    """uid, url, status, error_message of every URL img2dataset tried (its per-shard parquet)."""
    fs, path = storage.url_to_fs(raw)
    tables = []
    for p in sorted(fs.glob(f"{path}/*.parquet")):
        with fs.open(p, "rb") as f:
            table = pq.read_table(f, columns=list(STATUS_COLUMNS))
        tables.append(table.cast(pa.schema([(c, pa.string()) for c in STATUS_COLUMNS])))
    return pa.concat_tables(tables) if tables else _no_status()


def _no_status() -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in STATUS_COLUMNS})


def latest_status(folders: list[str]) -> pa.Table:
    """The status of every URL tried, the last attempt winning: ``folders`` are the raw
    download then the retry rounds, in order."""
    tables = [read_raw_status(f) for f in folders]
    latest: dict[str, int] = {}
    rows = pa.concat_tables(tables) if tables else _no_status()
    for i, uid in enumerate(rows.column("uid").to_pylist()):
        latest[uid] = i
    return rows.take(pa.array(sorted(latest.values()), pa.int64())).sort_by("uid")


def raw_tars(folder: str) -> list[str]:
    """The raw shards img2dataset wrote into ``folder``, in name order."""
    fs, path = storage.url_to_fs(folder)
    return [layout.with_protocol(folder, p) for p in sorted(fs.glob(f"{path}/*.tar"))]


def missing_shards(folder: str, n_urls: int, shard_size: int) -> list[str]:
    """The img2dataset shards of ``folder`` that did not finish (no ``_stats.json``)."""
    fs, path = storage.url_to_fs(folder)
    done = {p.rsplit("/", 1)[-1].split("_")[0] for p in fs.glob(f"{path}/*_stats.json")}
    return [f"{i:05d}" for i in range(math.ceil(n_urls / shard_size)) if f"{i:05d}" not in done]


def download_stats(raw: str, status: pa.Table, n_urls: int, no_url: int) -> dict[str, Any]:
    failed = status.filter(pc.not_equal(status.column("status"), "success"))
    reasons: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for st, msg in zip(
        failed.column("status").to_pylist(), failed.column("error_message").to_pylist()
    ):
        reasons[failure_reason(st, msg)] += 1
        messages[(msg or st or "")[:200]] += 1
    statuses = Counter(status.column("status").to_pylist())
    if no_url:
        reasons["no_url"] += no_url
    return {
        "urls": n_urls,
        "tried": status.num_rows,
        "successes": statuses.get("success", 0),
        "failed_to_download": statuses.get("failed_to_download", 0),
        "failed_to_resize": statuses.get("failed_to_resize", 0),
        "failures_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failures_by_message": dict(messages.most_common(20)),
    }


# --- the stage ----------------------------------------------------------------------------------


class DownloadStage(ShardSetStage):
    name = "download"
    help = "download the selected URLs with img2dataset into a balanced WebDataset shard set"
    options = DownloadConfig

    def validate(self) -> None:
        super().validate()
        if self.config.download_shard_size < 1:
            raise ValueError("download: samples_per_shard and download_shard_size must be >= 1")

    def option_values(self) -> dict[str, Any]:
        values = super().option_values()
        for name in UNRECORDED_OPTIONS:
            values.pop(name, None)
        return values

    def write(self, manifest: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any], bool]:
        config = self.config
        raw = self._prepare(manifest)
        selection = layout.read_selection(config.input)
        has_url = pc.fill_null(
            pc.and_(
                pc.is_valid(selection.column("url")), pc.not_equal(selection.column("url"), "")
            ),
            False,
        )
        no_url = selection.filter(pc.invert(has_url))
        to_fetch = selection.filter(has_url).sort_by("uid")
        folders = self._fetch(to_fetch, raw)
        status = latest_status(folders)
        dstats = download_stats(raw, status, selection.num_rows, no_url.num_rows)
        dstats["seconds"] = self.seconds()
        dstats["retry_rounds"] = len(folders) - 1
        log.info(
            "download: %d of %d urls downloaded; failures %s",
            dstats["successes"],
            dstats["urls"],
            dstats["failures_by_reason"],
        )
        if dstats["successes"] == 0:
            raise storage.StageInputError(
                f"download: none of the {selection.num_rows:,} selected URLs could be downloaded "
                f"({dstats['failures_by_reason']}); see {raw}/*.parquet for each error. "
                + self._retry_hint(len(folders) - 1)
            )
        sources = [tar for folder in folders for tar in raw_tars(folder)]
        options = ReshardOptions(
            config.samples_per_shard, config.shuffle, config.seed, "uid", self.s3, by_uid=True
        )
        selected = self.spark.createDataFrame(selection)
        outcome = reshard_into(self.spark, sources, selected, config.output, options)
        stats = outcome.stats
        stats.download = DownloadStats.from_json(dstats)
        stats.rejects = _write_download_rejects(config.output, status, no_url)
        stats.seconds = self.seconds()
        return outcome.sizes, stats.to_json(), config.keep_raw

    def _prepare(self, manifest: dict[str, Any]) -> str:
        """Prepare the output, keeping the raw downloads when only resharding options changed;
        returns the raw shards' directory."""
        options = self.option_values()
        raw_manifest = storage.make_manifest(
            "download-raw",
            {k: v for k, v in options.items() if k not in RESHARD_OPTIONS},
            {"selected": self.config.input},
        )
        work = storage.join(self.config.output, layout.WORK)
        raw_manifest_url = storage.join(work, "raw_manifest.json")
        reuse_raw = (
            not self.force
            and storage.exists(raw_manifest_url)
            and storage.read_json(raw_manifest_url) == json.loads(json.dumps(raw_manifest))
        )
        # Only a rerun of this very download (same manifest, not committed: it failed or was
        # killed) retries the URLs that failed; reusing the raw downloads to reshard does not.
        state = layout.prepare_output(self.config.output, manifest, self.force, reuse_raw)
        self.resumed = state == "resume"
        if not reuse_raw:
            storage.write_json(raw_manifest_url, raw_manifest)
        return storage.join(work, "raw")

    def _retry_hint(self, rounds: int) -> str:
        """What a rerun does about the URLs that failed (for the error of a failed download)."""
        limit = self.config.max_retries
        if rounds < limit:
            return (
                f"Rerun the same command to retry the URLs that failed ({limit - rounds} of "
                f"--max-retries {limit} retries left); --force starts over"
            )
        return (
            f"The failed URLs were retried {rounds} time(s) (--max-retries {limit}): fix the "
            "cause, then rerun with a higher --max-retries, or with --force to start over"
        )

    def _run_img2dataset(self, urls: pa.Table | None, urls_file: str, folder: str) -> None:
        """Download ``urls`` (kept in ``urls_file``; None: read them from it) into ``folder``
        (img2dataset's incremental mode: a shard that has its ``_stats.json`` is not fetched
        again); a shard that failed is an error."""
        config = self.config
        fs, urls_path = storage.url_to_fs(urls_file)
        if not fs.exists(urls_path):
            with atomic_open(fs, urls_path) as f:
                pq.write_table(urls, f)
        if urls is None:
            with fs.open(urls_path, "rb") as f:
                urls = pq.read_table(f)
        processes = self.spark.sparkContext.defaultParallelism
        env = {"NO_ALBUMENTATIONS_UPDATE": "1", **self.s3.worker_environment()}
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        if urls.num_rows:
            import img2dataset

            with use_session_for_img2dataset(self.spark, env):
                img2dataset.download(**img2dataset_arguments(config, urls_file, folder, processes))
        missing = missing_shards(folder, urls.num_rows, config.download_shard_size)
        if missing:
            expected = math.ceil(urls.num_rows / config.download_shard_size)
            raise RuntimeError(
                f"download: {len(missing)} of {expected} download shard(s) failed "
                f"(first: {missing[0]}); rerun the same command to retry only those"
            )

    def _fetch(self, to_fetch: pa.Table, raw: str) -> list[str]:
        """Run img2dataset on the URLs not fetched yet, then, on a rerun, retry the URLs that
        failed before (one round per rerun, up to ``max_retries`` rounds); returns the folders
        holding raw shards: ``raw`` then the retry rounds."""
        work = storage.join(self.config.output, layout.WORK)
        fs, work_path = storage.url_to_fs(work)
        suffix = ".urls.parquet"
        rounds = sorted(
            p.rsplit("/", 1)[-1].removesuffix(suffix)
            for p in fs.glob(f"{work_path}/retry-*{suffix}")
        )
        folders = [raw] + [storage.join(work, name) for name in rounds]
        rerun = self.resumed and bool(fs.glob(f"{storage.url_to_fs(raw)[1]}/*_stats.json"))
        self._run_img2dataset(to_fetch, storage.join(work, "urls.parquet"), raw)
        for folder in folders[1:]:  # an unfinished round of a killed run is finished first
            self._run_img2dataset(None, folder + suffix, folder)
        if not rerun or len(rounds) >= self.config.max_retries:
            return folders
        status = latest_status(folders)
        failed = status.filter(pc.not_equal(status.column("status"), "success"))
        if failed.num_rows == 0:
            return folders
        retry = to_fetch.filter(
            pc.is_in(to_fetch.column("uid"), value_set=failed.column("uid").combine_chunks())
        )
        folder = storage.join(work, RETRY_DIR.format(len(rounds) + 1))
        log.info(
            "download: retrying %d URLs that failed before (rerun %d of --max-retries %d)",
            retry.num_rows,
            len(rounds) + 1,
            self.config.max_retries,
        )
        self._run_img2dataset(retry, folder + suffix, folder)
        return [*folders, folder]


def _write_download_rejects(output: str, status: pa.Table, no_url: pa.Table) -> int:
    failed = status.filter(pc.not_equal(status.column("status"), "success"))
    reasons = [
        failure_reason(s, m)
        for s, m in zip(
            failed.column("status").to_pylist(), failed.column("error_message").to_pylist()
        )
    ]
    table = pa.table(
        {
            "uid": pa.concat_arrays(
                [failed.column("uid").combine_chunks(), no_url.column("uid").combine_chunks()]
            ),
            "url": pa.concat_arrays(
                [
                    failed.column("url").combine_chunks(),
                    no_url.column("url").cast(pa.string()).combine_chunks(),
                ]
            ),
            "reason": pa.array(reasons + ["no_url"] * no_url.num_rows, pa.string()),
            "error_message": pa.concat_arrays(
                [
                    failed.column("error_message").cast(pa.string()).combine_chunks(),
                    pa.nulls(no_url.num_rows, pa.string()),
                ]
            ),
        }
    ).sort_by("uid")
    fs, path = storage.url_to_fs(storage.join(output, layout.REJECTS))
    with atomic_open(fs, path) as f:
        pq.write_table(table, f)
    return table.num_rows


def run_download(spark: SparkSession, config: DownloadConfig, force: bool = False):
    """Download ``config.input``'s selection into the shard set ``config.output``."""
    return DownloadStage(config, spark).run(force)


STAGE = DownloadStage
