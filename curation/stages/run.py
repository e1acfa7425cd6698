"""``curate run``: every stage of a run, in order, from one config file, on one Spark session.

    curate run --config run.yaml [--set balance.cap=20000 ...] [--force]

The config file has a ``run`` section and one section per stage (the same sections every stage
command reads with ``--config``)::

    run:
      dir: runs/laion            # every stage's output goes below this directory
      pool: s3://bucket/pool/    # the input pool (match's input)
      stages: [match, count, balance, select, download, report]   # optional
    spark: {master: "local[*]"}
    match: {caption_col: TEXT}
    count: {margins: [language]}
    balance: {method: rake, target_fraction: 0.25}
    select: {seed: 0}
    download: {image_size: 256}

Paths a stage needs and the config leaves empty are filled in from ``run.dir`` (``matched/``,
``counts/``, ``balance/``, ``selected/``, ``shards/``, ``report/``), so a section only holds what
differs from the defaults. Each stage skips itself when its output's manifest matches its inputs
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
    default_paths,
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
            "help": "stages to run, in pipeline order (default: match, count, balance, select, plus download, reshard and report when their sections are present)"
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


def stage_config(
    stage: str, cls: type[Stage], data: dict[str, Any], run: RunSection, ran: set[str], source: str
) -> Any:
    """The options of ``stage``: its section, with the run directory's paths where it has none."""
    name = SECTIONS[stage]
    section = dict(data.get(name) or {})
    names = {f.name for f in fields(cls.options)}
    for key, value in default_paths(stage, run.dir, run.pool, ran).items():
        if key in names and not section.get(key):
            section[key] = value
    return from_mapping(cls.options, section, f"{source}: {name}", path=source, section=name)


@dataclass
class RunResult:
    run_dir: str
    stages: list[dict] = field(default_factory=list)

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
) -> RunResult:
    """Run the stages of ``data`` (a parsed config file) in order on one Spark session."""
    run = from_mapping(
        RunSection, dict(data.get("run") or {}), f"{source}: run", path=source, section="run"
    )
    if not run.dir:
        raise ConfigError(f"{source}: run.dir is required (the directory every stage writes below)")
    known = {"run", "spark", *SECTIONS.values()}
    unknown = sorted(set(data) - known)
    if unknown:
        line = key_line(source, unknown[0])
        raise ConfigError(
            f"{source}: unknown section {unknown[0]!r}{f' (line {line})' if line else ''}; "
            f"sections are {', '.join(sorted(known))}"
        )
    stages = plan_stages(run, data)
    classes = {stage: load_stage(stage) for stage in stages}
    # Every stage's options are checked (types, ranges) before the first stage does any work.
    configs = {
        stage: stage_config(stage, classes[stage], data, run, set(stages[:number]), source)
        for number, stage in enumerate(stages, 1)
    }
    for stage, config in configs.items():
        classes[stage].check(config)
    result = RunResult(run.dir)
    for number, stage in enumerate(stages, 1):
        cls = classes[stage]
        config = configs[stage]
        echo(f"[{number}/{len(stages)}] {stage}")
        started = time.perf_counter()
        outcome = cls(config, get_spark() if cls.needs_spark else None).run(force)
        seconds = time.perf_counter() - started
        skipped = outcome.skipped
        echo(outcome.report())
        echo(
            f"[{number}/{len(stages)}] {stage} {'skipped (up to date)' if skipped else 'done'} in {seconds:.1f} s"
        )
        result.stages.append({"stage": stage, "seconds": round(seconds, 2), "skipped": skipped})
    storage.write_json(storage.join(run.dir, "_run.json"), {"stages": result.stages})
    return result
