"""The stage framework: one lifecycle for every stage, and the lineage check between stages.

A stage is a :class:`Stage` subclass that declares its options (a dataclass whose fields carry a
*role*) and implements :meth:`Stage.compute`. :meth:`Stage.run` is the lifecycle, the same for
every stage:

1. :meth:`~Stage.validate` the options (required paths given, values in range);
2. :meth:`~Stage.resolve_inputs`: each input path exists and, when it is a stage output, is
   committed (``_SUCCESS``), comes from the stage the option expects, and belongs with the other
   inputs (:func:`check_lineage`);
3. build the manifest from the field roles: ``option`` fields are the config it records,
   ``input`` fields are fingerprinted under their input name, ``output`` and ``secret`` fields are
   never written (an output path is where the manifest is; a secret, such as an S3 key, must
   never reach a file);
4. skip when the output is committed with the same manifest (unless ``force``);
5. :meth:`~Stage.compute` into the temporary directory, returning the summary;
6. commit: the summary is written, then :func:`curation.storage.atomic_directory` moves the
   directory into place, manifest and ``_SUCCESS`` last (it also refuses to replace what the tool
   did not write, or an input).

**Lineage.** Every manifest records, under ``lineage``, the outputs its inputs were made from, by
lineage name (``metadata``, ``matched``, ``counts``, ``balance``, ``selected``, ``shards``: see
:mod:`curation.pipeline`), each with its URL and fingerprint. The *identity* of an input is its
manifest's lineage plus the input itself under its own lineage name. Two inputs of one stage
belong together when every lineage name they share has the same fingerprint: ``balance --input
A/matched --counts B/counts`` is refused because the counts' ``matched`` is ``B/matched``, and
counts made with another metadata list are refused because their ``metadata`` differs. A stage
can narrow the names it compares (:attr:`Stage.lineage_keys`): ``reshard`` may pair shards
downloaded for one selection with another selection of the same matched pool.

An output written before lineage existed has none: it is checked only on the names it has.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from curation import storage
from curation.pipeline import BY_NAME, LINEAGE_ORDER, LINEAGE_WHAT, stage_info
from curation.summaries import Record

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

INPUT = "input"
OUTPUT = "output"
OPTION = "option"
SECRET = "secret"


def input_field(
    name: str,
    help: str,  # noqa: A002 - the dataclass field's help text
    *,
    producers: Iterable[str] = (),
    external: bool = False,
    required: bool = True,
    default: str = "",
) -> Any:
    """An input path option, fingerprinted in the manifest as ``name``.

    ``producers`` are the stages whose output it takes; unless ``external`` (a path from outside
    the pipeline is accepted too), the path must be a committed output of one of them.
    """
    return field(
        default=default,
        metadata={
            "help": help,
            "role": INPUT,
            "input": name,
            "producers": tuple(producers),
            "external": external or not tuple(producers),
            "required": required,
        },
    )


def output_field(help: str, *, default: str = "", required: bool = True) -> Any:  # noqa: A002
    """The output path option (never part of the manifest: it is where the manifest goes)."""
    return field(default=default, metadata={"help": help, "role": OUTPUT, "required": required})


def secret_field(default: Any, help: str, **bounds: Any) -> Any:  # noqa: A002
    """An option never written to a manifest, a summary or a log (credentials, endpoints);
    ``bounds`` are its range (``min=0``, see :mod:`curation.config`)."""
    return field(default=default, metadata={"help": help, "role": SECRET, **bounds})


def role(f: dataclasses.Field) -> str:
    return f.metadata.get("role", OPTION)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class LineageError(storage.StageInputError):
    """Inputs of one stage that were not made from the same run; the message names both."""


@dataclass
class StageResult:
    """What a stage run returns: its output, its summary, and whether it was skipped."""

    stage: type[Stage]
    output: str
    summary: dict[str, Any]
    skipped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        """Lines for the console (see :meth:`Stage.describe`)."""
        return self.stage.describe(self)

    def record(self, kind: type[R]) -> R:
        """The summary as the typed record ``kind`` (:mod:`curation.summaries`)."""
        return kind.from_json(self.summary)

    def __getattr__(self, name: str) -> Any:
        # Stage-specific results (a shard set's ``sizes`` and ``stats``) are in ``extra``.
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(name)


class Stage:
    """One stage: its options, its inputs and its compute (see the module docstring)."""

    #: The subcommand name, its ``--help`` line and its options dataclass.
    name: ClassVar[str]
    help: ClassVar[str]
    options: ClassVar[type]
    needs_spark: ClassVar[bool] = True
    #: The file in the output directory that holds the summary.
    summary_file: ClassVar[str] = "summary.json"
    #: Lineage names that inputs must agree on (None: every name they share).
    lineage_keys: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self, config: Any, spark: Any = None, spark_factory: Callable[[], Any] | None = None
    ) -> None:
        self.config = config
        self.spark = spark
        # Called for a session when the stage has work to do (none is started for a skip).
        self.spark_factory = spark_factory
        self.force = False
        self.started = time.perf_counter()

    # --- declarations read from the options' field roles ---------------------------------

    @classmethod
    def fields(cls, wanted: str) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls.options) if role(f) == wanted]

    @property
    def output(self) -> str:
        [out] = self.fields(OUTPUT)
        return getattr(self.config, out.name)

    def option_values(self) -> dict[str, Any]:
        """The config a manifest records: every ``option`` field."""
        return {f.name: getattr(self.config, f.name) for f in self.fields(OPTION)}

    # --- the lifecycle ---------------------------------------------------------------------

    def run(self, force: bool = False) -> StageResult:
        """Validate, resolve the inputs, skip when up to date, else compute and commit."""
        self.force = force
        self.validate()
        inputs = self.resolve_inputs()
        manifest = self.build_manifest(inputs)
        if not force and self.is_up_to_date(manifest):
            log.info("%s: %s is up to date; skipped", self.name, self.output)
            return self.committed_result()
        if self.spark is None and self.spark_factory is not None and self.needs_spark:
            self.spark = self.spark_factory()
        self.started = time.perf_counter()
        summary = self.commit(manifest)
        return self.result(summary)

    @classmethod
    def check(cls, config: Any) -> None:
        """Refuse options that do not fit together; runs before any Spark session starts (each
        option's own type and range are checked when it is loaded, see :mod:`curation.config`)."""

    @classmethod
    def preflight(
        cls,
        config: Any,
        name_of: Callable[[str], str] = flag,
        produced_in_run: Iterable[str] = (),
    ) -> None:
        """Every check that needs no Spark session, run by ``curate`` before it starts one: the
        options fit together (:meth:`check`), every required path is given, and every local
        input exists (a stage output: committed, and written by the stage the option expects).

        ``name_of`` names an option in errors: its flag, its config key, or ``run.pool``;
        ``produced_in_run``: inputs an earlier stage of the same ``curate run`` writes (not
        there yet). Remote inputs (``s3://``, ``hdfs://``) are checked when the stage starts.
        """
        cls.check(config)
        missing = [
            name_of(f.name)
            for f in dataclasses.fields(cls.options)
            if f.metadata.get("required") and role(f) in (INPUT, OUTPUT)
            if not getattr(config, f.name)
        ]
        if missing:
            raise ValueError(f"{cls.name} needs {' and '.join(missing)}")
        skip = set(produced_in_run)
        for f in cls.fields(INPUT):
            url = getattr(config, f.name)
            if url and f.name not in skip and storage.is_local(url):
                check_local_input(url, f, name_of(f.name))

    def validate(self) -> None:
        """Refuse options that cannot work, before any work (extend with ``super().validate()``)."""
        self.check(self.config)
        missing = [
            flag(f.name)
            for f in dataclasses.fields(self.options)
            if f.metadata.get("required") and role(f) in (INPUT, OUTPUT)
            if not getattr(self.config, f.name)
        ]
        if missing:
            raise ValueError(f"{self.name} needs {' and '.join(missing)}")

    def input_urls(self) -> dict[str, str]:
        """``{input name: url}`` of the inputs given."""
        return {
            f.metadata["input"]: getattr(self.config, f.name)
            for f in self.fields(INPUT)
            if getattr(self.config, f.name)
        }

    def resolve_inputs(self) -> dict[str, str]:
        """Check every input (committed, from the right stage) and that they belong together."""
        identities: dict[str, tuple[str, dict[str, dict]]] = {}
        for f in self.fields(INPUT):
            url = getattr(self.config, f.name)
            if not url:
                continue
            producers = f.metadata["producers"]
            if producers and not f.metadata["external"]:
                storage.require_complete(url, " or ".join(stage_info(p).what for p in producers))
            identities[flag(f.name)] = (url, input_identity(url, producers, flag(f.name)))
        check_lineage(self.name, identities, self.lineage_keys)
        self.lineage = merge_lineage(identity for _, identity in identities.values())
        self.lineage.update(self.own_lineage())
        return self.input_urls()

    def own_lineage(self) -> dict[str, dict]:
        """Lineage this stage adds itself (``match``: the metadata list's content hash)."""
        return {}

    def build_manifest(self, inputs: dict[str, str]) -> dict[str, Any]:
        manifest = storage.make_manifest(self.name, self.option_values(), inputs)
        manifest["lineage"] = self.lineage
        return manifest

    def is_up_to_date(self, manifest: dict[str, Any]) -> bool:
        return storage.is_up_to_date(self.output, manifest)

    def read_summary(self) -> dict[str, Any]:
        return storage.read_json(storage.join(self.output, self.summary_file))

    def committed_result(self) -> StageResult:
        """The result of a skipped run, read from the committed output."""
        return StageResult(type(self), self.output, self.read_summary(), skipped=True)

    def result(self, summary: dict[str, Any]) -> StageResult:
        return StageResult(type(self), self.output, summary)

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Compute into a temporary directory, write the summary, commit atomically."""
        with storage.atomic_directory(self.output, manifest) as tmp:
            summary = self.compute(tmp)
            storage.write_json(storage.join(tmp, self.summary_file), summary)
        self.log_done(summary)
        return summary

    def compute(self, tmp: str) -> dict[str, Any]:
        """Write the stage's files into ``tmp``; return the summary."""
        raise NotImplementedError

    def seconds(self) -> float:
        """Seconds since the compute started (for summaries)."""
        return round(time.perf_counter() - self.started, 2)

    def log_done(self, summary: dict[str, Any]) -> None:
        log.info("%s: done in %.1f s -> %s", self.name, self.seconds(), self.output)

    @classmethod
    def describe(cls, result: StageResult) -> str:
        """Console lines of a result (stages override with their own)."""
        state = " (up to date, skipped)" if result.skipped else ""
        return f"{cls.name}: {result.output}{state}"


def check_local_input(url: str, f: dataclasses.Field, option: str) -> None:
    """``url`` (the value of input option ``f``, named ``option``) exists and, when the option
    takes a stage's output, is that stage's committed output."""
    fs, path = storage.url_to_fs(url)
    found = fs.glob(path) if any(c in path for c in "*?[") else fs.exists(path)
    if not found:
        raise storage.StageInputError(f"{url}: no such file or directory (given as {option})")
    producers = tuple(f.metadata.get("producers") or ())
    if producers and not f.metadata.get("external"):
        wanted = " or ".join(f"{stage_info(p).what} (output of {p})" for p in producers)
        if _manifest_of(url) is None and not storage.exists(storage.join(url, storage.SUCCESS)):
            raise storage.StageInputError(
                f"{url}: is not the output of a stage (it has no {storage.MANIFEST}); {option} "
                f"takes a {wanted}"
            )
        input_identity(url, producers, option)
        storage.require_complete(url, " or ".join(stage_info(p).what for p in producers))


# --- lineage ---------------------------------------------------------------------------------


def _manifest_of(url: str) -> dict[str, Any] | None:
    try:
        manifest = storage.read_json(storage.join(url, storage.MANIFEST))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("stage") not in BY_NAME:
        return None
    return manifest


def input_identity(url: str, producers: tuple[str, ...], option: str) -> dict[str, dict]:
    """The lineage of input ``url`` plus the input itself under its stage's lineage name.

    A stage output of another stage than ``producers`` is refused; a path that is no stage
    output (a user's pool or shards) has an empty identity.
    """
    manifest = _manifest_of(url)
    if manifest is None:
        return {}
    stage = manifest["stage"]
    if producers and stage not in producers:
        wanted = " or ".join(f"{stage_info(p).what} (output of {p})" for p in producers)
        raise LineageError(
            f"{url}: is the output of the {stage} stage ({stage_info(stage).what}); {option} "
            f"takes a {wanted}"
        )
    lineage = manifest.get("lineage") if isinstance(manifest.get("lineage"), dict) else {}
    identity = {k: v for k, v in lineage.items() if isinstance(v, dict)}
    identity[stage_info(stage).lineage] = {"url": url, "fingerprint": storage.fingerprint(url)}
    return identity


def merge_lineage(identities: Iterable[dict[str, dict]]) -> dict[str, dict]:
    """One lineage from several (checked to agree), in pipeline order."""
    merged: dict[str, dict] = {}
    for identity in identities:
        for key, value in identity.items():
            merged.setdefault(key, value)
    order = {k: i for i, k in enumerate(LINEAGE_ORDER)}
    return {k: merged[k] for k in sorted(merged, key=lambda k: (order.get(k, len(order)), k))}


def check_lineage(
    stage: str,
    identities: dict[str, tuple[str, dict[str, dict]]],
    keys: tuple[str, ...] | None = None,
) -> None:
    """Refuse inputs (``{option: (url, identity)}``) that disagree on a shared lineage name."""
    options = list(identities)
    for key in LINEAGE_ORDER:
        if keys is not None and key not in keys:
            continue
        for i, a in enumerate(options):
            for b in options[i + 1 :]:
                url_a, id_a = identities[a]
                url_b, id_b = identities[b]
                if key not in id_a or key not in id_b:
                    continue
                fa, fb = id_a[key].get("fingerprint"), id_b[key].get("fingerprint")
                if fa == fb:
                    continue
                raise LineageError(
                    _mismatch(stage, key, (a, url_a, id_a[key]), (b, url_b, id_b[key]))
                )


def _mismatch(stage: str, key: str, a: tuple[str, str, dict], b: tuple[str, str, dict]) -> str:
    what = LINEAGE_WHAT.get(key, key)

    def side(option: str, url: str, origin: dict) -> str:
        source = origin.get("url")
        run = str(origin.get("fingerprint", ""))[:12]
        if source == url:
            return f"{option} {url} is {what} {run}"
        return f"{option} {url} was made from the {what} {source} ({run})"

    return (
        f"{stage}: the inputs do not belong together: {side(*a)}, but {side(*b)}. Give outputs "
        f"of the same run, or rerun the stages after {what} on the inputs you want"
    )
