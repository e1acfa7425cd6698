"""``curate run``: every stage of a run, in order, from one config file, on one Spark session.

    curate run --config run.yaml [--set balance.cap=20000 ...] [--force]

The config file has a ``run`` section and one section per stage (the same sections every stage
command reads with ``--config``)::

    run:
      dir: runs/laion            # every stage's output goes below this directory
      pool: s3://bucket/pool/    # the input pool (match's input)
      stages: [match, count, balance, select, download, report]   # optional, see below
    spark: {master: "local[*]"}
    match: {caption_col: TEXT}
    count: {margins: [language]}
    balance: {method: rake, target_fraction: 0.25}
    select: {seed: 0}
    download: {image_size: 256}

``run.stages`` lists the stages to run (pipeline order is kept whatever the list's order). Without
it a run is ``match``, ``count``, ``balance``, ``select`` and ``report``, plus ``metadata``,
``download`` or ``reshard`` when the config has their section.

Paths a stage needs and the config leaves empty are filled in from ``run.dir`` (``matched/``,
``counts/``, ``balance/``, ``selected/``, ``shards/``, ``report/``), so a section only holds what
differs from the defaults. A stage of the run feeds the next ones from its configured output
(``metadata.output``, or ``run.dir/metadata`` for per-language lists, reaches ``match.metadata``,
and ``metadata.lang_col`` becomes ``match.lang_col`` unless that is set).

Before the first stage runs (and before Spark starts), every stage's options are checked: types,
ranges, options that must go together, required paths, and every local input that no earlier
stage of the run writes; an error names the file and line, the ``--set``, or ``run.pool``. When a
stage fails, the report is still written (it names the failed stage; the run record
``run.dir/_run.json`` holds it too) and the error is raised. Each stage skips itself when its output's manifest matches its inputs
and options (``--force`` reruns all), so a second ``curate run`` does nothing, and a run killed in
a stage resumes at that stage.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from curation import storage
from curation.config import ConfigError, from_mapping, key_line
from curation.pipeline import (
    DEFAULT_STAGES,
    ORDER,
    SECTIONS,
    SHARD_STAGES,
    WHEN_CONFIGURED,
    path_sources,
    stage_info,
)
from curation.stages.base import Stage

log = logging.getLogger(__name__)


@dataclass
class RunSection:
    """The ``run`` section of a config file."""

    dir: str = field(default="", metadata={"help": "run directory: every stage writes below it"})
    pool: str = field(default="", metadata={"help": "input pool (match's input)"})
    stages: list[str] = field(
        default_factory=list,
        metadata={
            "help": "stages to run, in pipeline order (default: match, count, balance, select and report, plus metadata, download and reshard when their sections are present)"
        },
    )


def load_stage(name: str) -> type[Stage]:
    """The stage class of ``name`` (see :mod:`curation.pipeline`)."""
    return importlib.import_module(stage_info(name).module).STAGE


def plan_stages(run: RunSection, data: dict[str, Any]) -> list[str]:
    """The stages to run, in pipeline order; unknown names are errors."""
    if run.stages:
        unknown = [s for s in run.stages if s not in ORDER]
        if unknown:
            raise ConfigError(
                f"run.stages: unknown stage {unknown[0]!r}; stages are {', '.join(ORDER)}"
            )
        return [s for s in ORDER if s in run.stages]
    extra = [s for s in WHEN_CONFIGURED if SECTIONS[s] in data]
    if all(s in extra for s in SHARD_STAGES):
        raise ConfigError("a run writes one shard set: configure download or reshard, not both")
    return [s for s in ORDER if s in DEFAULT_STAGES or s in extra]


@dataclass
class PlannedStage:
    """One stage of a run: its options, and where each option came from (for errors)."""

    name: str
    cls: type[Stage]
    config: Any
    derived: dict[str, str]  # option -> feed it was filled from (a stage, @pool, @run, @dir)
    origins: dict[str, str]  # option -> the --set that gave it
    source: str

    def name_of(self, key: str) -> str:
        """Option ``key`` as the user gave it (or would give it), for an error."""
        section = SECTIONS[self.name]
        if key in self.origins:
            return self.origins[key]
        feed = self.derived.get(key)
        if feed == "@pool":
            line = key_line(self.source, "run", "pool")
            return f"run.pool at {self.source}{f':{line}' if line else ''}"
        if feed in ("@run", "@dir"):
            return f"{section}.{key} (below run.dir)"
        if feed:
            return f"{section}.{key} (the output of {feed})"
        line = key_line(self.source, section, key)
        if line:
            return f"{section}.{key} at {self.source}:{line}"
        if "@pool" in stage_info(self.name).feeds.get(key, ()):
            return f"run.pool (or {section}.{key}) in {self.source}"
        return f"{section}.{key} in {self.source}"

    def check(self) -> None:
        """The stage's options fit together (:meth:`Stage.check`)."""
        self._named(self.cls.check, self.config)

    def preflight(self, produced_in_run: set[str]) -> None:
        """The stage's checks that need no Spark (:meth:`Stage.preflight`), naming config keys."""
        skip = {k for k, feed in self.derived.items() if feed in produced_in_run or feed == "@run"}
        self._named(self.cls.preflight, self.config, self.name_of, skip)

    def _named(self, check: Callable[..., None], *args: Any) -> None:
        """Run ``check``; its error is prefixed with the config file and section."""
        try:
            check(*args)
        except (ValueError, OSError) as exc:
            text = str(exc)
            if self.source in text or text.startswith("--set"):
                raise
            raise type(exc)(f"{self.source}: {SECTIONS[self.name]}: {text}") from exc


def stage_config(
    stage: str,
    cls: type[Stage],
    data: dict[str, Any],
    run: RunSection,
    earlier: dict[str, PlannedStage],
    source: str,
    origins: dict[str, str] | None = None,
) -> PlannedStage:
    """The options of ``stage``: its section, with the run directory's paths where it has none
    (an earlier stage's configured output where that stage feeds this one)."""
    name = SECTIONS[stage]
    section = dict(data.get(name) or {})
    names = {f.name for f in fields(cls.options)}
    outputs = {s: p.cls(p.config).output for s, p in earlier.items() if p.cls.fields("output")}
    derived: dict[str, str] = {}
    paths = path_sources(stage, run.dir, run.pool, {*earlier, stage}, outputs)
    if stage == "metadata" and section.get("lang_col"):
        paths["output"] = (f"{run.dir.rstrip('/')}/metadata", "@dir")  # a directory of lists
    for key, (value, feed) in paths.items():
        if key in names and not section.get(key):
            section[key] = value
            derived[key] = feed
    if stage == "match" and "metadata" in earlier and not section.get("lang_col"):
        lang_col = earlier["metadata"].config.lang_col
        if lang_col:  # per-language lists need the pool's language column: the corpus's name
            section["lang_col"] = lang_col
    config = from_mapping(
        cls.options, section, f"{source}: {name}", path=source, section=name, origins=origins
    )
    return PlannedStage(stage, cls, config, derived, dict(origins or {}), source)


#: The run record in the run directory: the stages of the last ``curate run`` and the one that
#: failed, if any (the report names it).
RUN_RECORD = "_run.json"


@dataclass
class RunResult:
    run_dir: str
    stages: list[dict] = field(default_factory=list)
    failed: dict[str, str] | None = None

    def report(self) -> str:
        lines = [f"run: {self.run_dir}"]
        for s in self.stages:
            state = "skipped (up to date)" if s["skipped"] else f"done in {s['seconds']:.1f} s"
            lines.append(f"  {s['stage']:<10} {state}")
        return "\n".join(lines)


def run_pipeline(
    data: dict[str, Any],
    get_spark: Callable[[], Any],
    force: bool = False,
    source: str = "<config>",
    echo: Callable[[str], None] = print,
    origins: dict[str, dict[str, str]] | None = None,
) -> RunResult:
    """Run the stages of ``data`` (a parsed config file) in order on one Spark session.

    Every stage's options and inputs are checked before the first stage runs. When a stage
    fails, the report (when part of the run) is still written, saying which stage failed, and
    the error is raised again."""
    planned = plan_run(data, source, origins or {})
    run_dir = str((data.get("run") or {}).get("dir") or "")
    fs, path = storage.url_to_fs(run_dir)
    fs.makedirs(path, exist_ok=True)  # for the run record, even when the first stage fails
    result = RunResult(run_dir)
    for number, (stage, plan) in enumerate(planned.items(), 1):
        echo(f"[{number}/{len(planned)}] {stage}")
        if stage == "report":
            write_run_record(run_dir, result)
        started = time.perf_counter()
        try:
            # Spark starts with the first stage that has work to do: a rerun with every stage
            # up to date starts none.
            outcome = plan.cls(plan.config, spark_factory=get_spark).run(force)
        except BaseException as exc:
            result.failed = {"stage": stage, "error": one_line(exc)}
            write_run_record(run_dir, result)
            report_after_failure(planned, stage, run_dir, echo)
            raise
        seconds = time.perf_counter() - started
        skipped = outcome.skipped
        echo(outcome.report())
        state = "skipped (up to date)" if skipped else "done"
        echo(f"[{number}/{len(planned)}] {stage} {state} in {seconds:.1f} s")
        result.stages.append({"stage": stage, "seconds": round(seconds, 2), "skipped": skipped})
    write_run_record(run_dir, result)
    return result


def plan_run(
    data: dict[str, Any], source: str, origins: dict[str, dict[str, str]]
) -> dict[str, PlannedStage]:
    """Every stage of the run with its options, all checked (types, ranges, required paths,
    inputs that exist) before any stage runs or Spark starts."""
    run = from_mapping(
        RunSection,
        dict(data.get("run") or {}),
        f"{source}: run",
        path=source,
        section="run",
        origins=origins.get("run"),
    )
    if not run.dir:
        raise ConfigError(f"{source}: run.dir is required (the directory every stage writes below)")
    known = {"run", "spark", *SECTIONS.values()}
    unknown = sorted(set(data) - known)
    if unknown:
        line = key_line(source, unknown[0]) if unknown[0] not in origins else None
        where = next(iter(origins[unknown[0]].values())) if unknown[0] in origins else source
        raise ConfigError(
            f"{where}: unknown section {unknown[0]!r}{f' (line {line})' if line else ''}; "
            f"sections are {', '.join(sorted(known))}"
        )
    planned: dict[str, PlannedStage] = {}
    for stage in plan_stages(run, data):
        section_origins = origins.get(SECTIONS[stage])
        cls = load_stage(stage)
        planned[stage] = stage_config(stage, cls, data, run, dict(planned), source, section_origins)
    for plan in planned.values():  # every stage's options first, then paths and inputs
        plan.check()
    for number, plan in enumerate(planned.values()):
        plan.preflight(set(list(planned)[:number]))
    return planned


def one_line(exc: BaseException) -> str:
    """A failed stage's error in one line, for the run record and the report."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    first = first if len(first) <= 300 else first[:300] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def write_run_record(run_dir: str, result: RunResult) -> None:
    """``<run>/_run.json``: the stages run so far, and the one that failed (read by the report)."""
    if not storage.exists(run_dir):
        return
    record: dict[str, Any] = {"stages": result.stages}
    if result.failed:
        record["failed"] = result.failed
    storage.write_json(storage.join(run_dir, RUN_RECORD), record)


def report_after_failure(
    planned: dict[str, PlannedStage], failed: str, run_dir: str, echo: Callable[[str], None]
) -> None:
    """After stage ``failed`` failed: write the report of what the run has (it names the failed
    stage), or say how to write it."""
    command = f"curate report --run {run_dir}"
    if "report" not in planned or failed == "report" or not storage.exists(run_dir):
        echo(f"{failed} failed; to see what this run has written so far: {command}")
        return
    plan = planned["report"]
    echo(f"{failed} failed; writing the report of what this run has so far")
    try:
        echo(plan.cls(plan.config).run(force=True).report())
    except Exception as exc:  # noqa: BLE001 - the stage's own error is the one to raise
        echo(f"the report could not be written ({one_line(exc)}); try: {command}")
