"""The pipeline's stages, in order, and which stage feeds which: the one registry.

``curate`` (:mod:`curation.cli`) builds its subcommands from it, ``curate run`` takes from it the
stage order and the paths a stage reads when its config section leaves them empty, and the report
(:mod:`curation.report`) orders the outputs it finds by it. A stage is implemented by the
``STAGE`` class of its module (a :class:`curation.stages.base.Stage`); this module only names it,
so that importing the registry imports no stage.

A *feed* says where a path option of a stage comes from in a run directory: a stage name (that
stage's output directory), ``@pool`` (``run.pool``) or ``@run`` (the run directory itself). A feed
lists alternatives, first non-empty wins. A feed from an *optional* stage (one that ``curate run``
does not run by default: ``demo-pool``, ``metadata``) applies only when that stage is part of the run.
``curate run`` runs ``match``, ``count``, ``balance``, ``select`` and ``report`` by default, plus
``metadata``, ``download`` and ``reshard`` when the config has their section.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageInfo:
    """One stage of the pipeline."""

    name: str  # the subcommand: curate <name>
    module: str  # where its STAGE class lives
    section: str  # its config-file section
    directory: str  # its output below run.dir ("" when it has no fixed one)
    lineage: str  # the name under which its output appears in later manifests' lineage
    what: str  # what its output is, for messages
    default: bool = False  # run by `curate run` when run.stages is not given
    when_configured: bool = False  # ... or, if not default, when its config section is present
    feeds: dict[str, tuple[str, ...]] = field(default_factory=dict)


STAGES: tuple[StageInfo, ...] = (
    StageInfo("demo-pool", "curation.stages.demo_pool", "demo", "pool", "pool", "demo pool"),
    StageInfo(
        "metadata",
        "curation.stages.metadata",
        "metadata",
        "metadata.json",
        "metadata",
        "metadata list",
        when_configured=True,
    ),
    StageInfo(
        "match",
        "curation.stages.match",
        "match",
        "matched",
        "matched",
        "matched pool",
        default=True,
        feeds={"input": ("@pool", "demo-pool"), "metadata": ("metadata",)},
    ),
    StageInfo(
        "count",
        "curation.stages.count",
        "count",
        "counts",
        "counts",
        "counts",
        default=True,
        feeds={"input": ("match",)},
    ),
    StageInfo(
        "balance",
        "curation.stages.balance",
        "balance",
        "balance",
        "balance",
        "balance output",
        default=True,
        feeds={"input": ("match",), "counts": ("count",)},
    ),
    StageInfo(
        "select",
        "curation.stages.select",
        "select",
        "selected",
        "selected",
        "selection",
        default=True,
        feeds={"input": ("match",), "weights": ("balance",)},
    ),
    StageInfo(
        "download",
        "curation.stages.download",
        "download",
        "shards",
        "shards",
        "shard set",
        when_configured=True,
        feeds={"input": ("select",)},
    ),
    StageInfo(
        "reshard",
        "curation.stages.reshard",
        "reshard",
        "shards",
        "shards",
        "shard set",
        when_configured=True,
        feeds={"selected": ("select",)},
    ),
    StageInfo(
        "report",
        "curation.stages.report",
        "report",
        "report",
        "report",
        "report",
        default=True,
        feeds={"run": ("@run",)},
    ),
)

BY_NAME = {s.name: s for s in STAGES}
#: Stage names in pipeline order.
ORDER = tuple(s.name for s in STAGES)
#: The order the report lists stage outputs in.
STAGE_ORDER = ORDER
#: Config-file sections, by stage.
SECTIONS = {s.name: s.section for s in STAGES}
DEFAULT_STAGES = tuple(s.name for s in STAGES if s.default)
WHEN_CONFIGURED = tuple(s.name for s in STAGES if s.when_configured)
#: Stages that write a shard set (a run configures at most one of them).
SHARD_STAGES = ("download", "reshard")
#: Lineage names in pipeline order (the order in which a lineage check compares them).
LINEAGE_ORDER = tuple(dict.fromkeys(s.lineage for s in STAGES))
LINEAGE_WHAT = {s.lineage: s.what for s in STAGES}


def stage_info(name: str) -> StageInfo:
    """The registry entry of stage ``name``; an unknown name is a ``KeyError`` naming the stages."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(ORDER)}") from None


def default_paths(name: str, run_dir: str, pool: str, in_run: set[str]) -> dict[str, str]:
    """The paths stage ``name`` reads and writes in the run directory ``run_dir``.

    ``in_run`` holds the stages of this run up to and including ``name``; feeds from optional
    stages not among them are left out.
    """
    return {k: v for k, (v, _) in path_sources(name, run_dir, pool, in_run).items()}


def path_sources(
    name: str,
    run_dir: str,
    pool: str,
    in_run: set[str],
    outputs: dict[str, str] | None = None,
) -> dict[str, tuple[str, str]]:
    """:func:`default_paths` with where each path comes from: ``{option: (path, source)}``, the
    source a stage name, ``@pool``, ``@run`` or ``@dir`` (the stage's own output directory).

    ``outputs`` holds the output paths the stages of this run were configured with: a feed from
    such a stage takes its configured output, not the default directory (``metadata.output``
    set in the config reaches ``match.metadata``).
    """
    d = run_dir.rstrip("/")
    info = stage_info(name)
    outputs = outputs or {}
    paths = {"output": (f"{d}/{info.directory}", "@dir")} if name != "report" else {}
    for option, sources in info.feeds.items():
        for source in sources:
            if source == "@pool":
                value = pool
            elif source == "@run":
                value = d
            else:
                upstream = stage_info(source)
                usable = upstream.default or source in in_run
                value = outputs.get(source) or f"{d}/{upstream.directory}" if usable else ""
            if value:
                paths[option] = (value, source)
                break
    return paths


_FEED_NAMES = {"@pool": "run.pool", "@run": "the run directory"}


def make_help() -> str:
    """``make help``: one line per stage target, from this registry (order, output, inputs)."""
    lines = [
        'Stage targets, in pipeline order (each takes CONFIG=<file.yaml|toml> and ARGS="<flags>"):'
    ]
    for s in STAGES:
        feeds = "; ".join(
            f"--{option} from {' or '.join(_FEED_NAMES.get(src, src) for src in sources)}"
            for option, sources in s.feeds.items()
        )
        where = f"{s.directory}/" if s.directory and "." not in s.directory else s.directory
        run = "in `curate run`" if s.default else "optional"
        lines.append(f"  make {s.name:<10} {s.what} -> {where or '(its --output)'} ({run})")
        if feeds:
            lines.append(f"  {'':<15} {feeds}")
    lines += [
        "Other targets: install, demo, run, test, test-cluster, lint, format, lock, test-latest,",
        "  bench-match, bench-balance, bench-shards, clean-demo",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(make_help())
