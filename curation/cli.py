"""The ``curate`` command: one subcommand per stage.

The subcommands are the stages of :mod:`curation.pipeline`, in pipeline order; each is the
``STAGE`` class of its module (:mod:`curation.stages`), imported here and nowhere else.

Every stage subcommand takes its options as flags (``curate match --help`` lists them with their
defaults), from a config file (``--config run.yaml``, the stage's section) and from ``--set
section.key=value`` overrides; explicit flags win. The same entry point serves ``spark-submit
jobs/<stage>.py``, which reuses the session spark-submit made.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

from curation import __version__
from curation.config import (
    ConfigError,
    add_dataclass_arguments,
    apply_overrides,
    build_config,
    key_line,
    load_config_file,
    override_origins,
)
from curation.metadata import MetadataError
from curation.pipeline import ORDER, SECTIONS, stage_info
from curation.spark import SparkConfig, get_spark, java_causes, quiet_pyspark_loggers
from curation.storage import StageInputError

log = logging.getLogger("curation")


USER_ERRORS = (StageInputError, MetadataError, ConfigError, ValueError, FileNotFoundError)


def load_stage(name: str) -> Any:
    """The :class:`~curation.stages.base.Stage` class of stage ``name`` (imports its module)."""
    return importlib.import_module(stage_info(name).module).STAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="Curate balanced CLIP training sets from image-text pools, on Spark.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"curation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ORDER:
        stage = load_stage(name)
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        p.add_argument("--config", help="YAML or TOML config file; this stage reads its section")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one config key (repeatable), e.g. --set match.casefold=true",
        )
        p.add_argument(
            "--force", action="store_true", help="rerun even when the output is up to date"
        )
        p.add_argument("--debug", action="store_true", help="show full tracebacks and Spark logs")
        add_dataclass_arguments(p, stage.options, group=f"{SECTIONS[name]} options")
        if stage.needs_spark:
            p.add_argument(
                "--master",
                default=None,
                help="Spark master when not under spark-submit (default: local[*])",
            )
    p = sub.add_parser(
        "run",
        help="run every stage of a config file in order, skipping what is up to date",
        description="Run every stage of a config file in order on one Spark session; "
        "stages whose inputs and options did not change are skipped.",
    )
    p.add_argument(
        "--config",
        required=True,
        help="YAML or TOML config file (run section + one section per stage)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key (repeatable), e.g. --set balance.method=rake",
    )
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and Spark logs")
    p.add_argument(
        "--master",
        default=None,
        help="Spark master when not under spark-submit (default: local[*])",
    )
    _add_inspect_parser(sub)
    return parser


# --- curate inspect: questions about a committed run (Polars, no Spark; writes nothing) ----------


def _add_inspect_parser(sub: Any) -> None:
    from curation.inspect import FORMATS

    p = sub.add_parser(
        "inspect",
        help="answer questions about a committed run (entries, captions, sample, compare)",
        description="Read a run's committed outputs with Polars (no Spark) and print a table.",
    )
    questions = p.add_subparsers(dest="question", required=True, metavar="QUESTION")

    def question(name: str, help: str, run: bool = True) -> argparse.ArgumentParser:
        q = questions.add_parser(name, help=help, description=help)
        if run:
            q.add_argument("--run", required=True, help="run directory (curate run's run.dir)")
            q.add_argument(
                "--balance", default="", help="balance output to use when the run has several"
            )
        q.add_argument("--format", choices=FORMATS, default="table", help="output format")
        q.add_argument("--debug", action="store_true", help="show full tracebacks")
        return q

    q = question("entries", "per entry: count, cap, target, expected after, factor, kept, residual")
    q.add_argument("--match", default="", help="only entries whose text matches this regex")
    q.add_argument("--sort", default="count", help="column to sort by (descending)")
    q.add_argument("--ascending", action="store_true", help="sort ascending")
    q.add_argument("--top", type=int, default=20, help="rows to show (0: all)")
    q = question("captions", "a reproducible sample of captions matched to one entry")
    q.add_argument("--entry", required=True, help="the entry's text, exactly")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--selected", action="store_true", help="only selected captions")
    which.add_argument("--dropped", action="store_true", help="only captions not selected")
    q.add_argument("--limit", type=int, default=10, help="captions to show")
    q.add_argument("--seed", type=int, default=0, help="sampling seed")
    q = question("sample", "why one sample got its inclusion probability, and the draw")
    q.add_argument("--uid", required=True, help="the sample's uid")
    q = question("compare", "entries whose expected share changed most between two runs", False)
    q.add_argument("run_a", help="first run directory")
    q.add_argument("run_b", help="second run directory")
    q.add_argument("--top", type=int, default=20, help="rows to show (0: all)")


class _Printed(str):
    """A text answer; :func:`main` prints what ``report()`` returns."""

    def report(self) -> str:
        return str(self)


def _inspect(argv: Sequence[str]) -> _Printed:
    """``curate inspect ...``, parsed on its own: no stage module (nor Spark) is loaded."""
    from curation import inspect as ins

    parser = argparse.ArgumentParser(prog="curate")
    _add_inspect_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if args.question == "compare":
        answer = ins.compare(
            ins.RunOutputs.find(args.run_a), ins.RunOutputs.find(args.run_b), args.top
        )
        return _Printed(ins.render(answer, args.format))
    out = ins.RunOutputs.find(args.run, args.balance)
    if args.question == "entries":
        answer = ins.entries(out, args.match, args.sort, not args.ascending, args.top)
    elif args.question == "captions":
        which = "selected" if args.selected else "dropped" if args.dropped else "all"
        answer = ins.captions(out, args.entry, which, args.limit, args.seed)
    else:
        answer = ins.sample(out, args.uid)
    return _Printed(ins.render(answer, args.format))


def _spark_config(file_data: dict[str, Any], source: str, args: argparse.Namespace) -> SparkConfig:
    config = build_config(
        SparkConfig,
        "spark",
        argparse.Namespace(),
        file_data,
        source,
        flags=False,
        origins=override_origins(args.overrides),
    )
    if args.master:
        config.master = args.master
    if args.debug:
        config.log_level = "WARN"
    return config


def option_schemas() -> dict[str, type]:
    """``{config section: options dataclass}`` of every stage (for ``--set`` overrides)."""
    return {SECTIONS[name]: load_stage(name).options for name in ORDER}


def check_override_sections(overrides: Sequence[str]) -> None:
    """A ``--set`` of a section that no stage has is a typo: name it (it would be ignored)."""
    known = {"run", "spark", *SECTIONS.values()}
    for section, keys in override_origins(overrides).items():
        if section not in known:
            raise ConfigError(
                f"{next(iter(keys.values()))}: unknown section {section!r}; sections are "
                f"{', '.join(sorted(known))}"
            )


def _run_pipeline(args: argparse.Namespace) -> Any:
    from curation.stages.run import run_pipeline

    check_override_sections(args.overrides)
    file_data = apply_overrides(load_config_file(args.config), args.overrides, option_schemas())
    spark_config = _spark_config(file_data, args.config, args)
    session: list[Any] = []

    def lazy_spark() -> Any:
        if not session:
            session.append(get_spark(spark_config))
        return session[0]

    return run_pipeline(
        file_data,
        lazy_spark,
        args.force,
        args.config,
        origins=override_origins(args.overrides),
    )


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "fsspec", "s3fs", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        quiet_pyspark_loggers()


def option_name(
    args: argparse.Namespace, section: str, source: str, overridden: dict[str, str], key: str
) -> str:
    """How a user gave option ``key`` of a stage command, for errors: its flag when given as one
    (or not given at all), the ``--set`` that set it, or its key and line in the config file."""
    if getattr(args, key, None) is None and key in overridden:
        return overridden[key]
    path = "" if source.startswith("<") else source
    if getattr(args, key, None) is None and path:
        line = key_line(path, section, key)
        if line:
            return f"{section}.{key} at {path}:{line}"
    return "--" + key.replace("_", "-")


def run_command(argv: Sequence[str]) -> Any:
    """Parse ``argv`` and run the subcommand; returns its result (raises on errors)."""
    if list(argv[:1]) == ["inspect"]:
        return _inspect(argv)
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run_pipeline(args)
    stage = load_stage(args.command)
    file_data: dict[str, Any] = {}
    source = "<command line>"
    if args.config:
        file_data = load_config_file(args.config)
        source = args.config
    check_override_sections(args.overrides)
    file_data = apply_overrides(file_data, args.overrides, option_schemas())
    section = SECTIONS[args.command]
    origins = override_origins(args.overrides)
    config = build_config(stage.options, section, args, file_data, source, origins=origins)
    spark_config = _spark_config(file_data, source, args) if stage.needs_spark else None
    # Everything that can fail without Spark fails here, in about a second.
    stage.preflight(config, partial(option_name, args, section, source, origins.get(section, {})))
    # The session starts only when the stage has work to do (an up-to-date output is skipped).
    factory = partial(get_spark, spark_config) if spark_config is not None else None
    return stage(config, spark_factory=factory).run(args.force)


_PYTHON_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.*)$")
# The Java exception of a Py4JJavaError (": org.apache.spark.SparkException: [CLASS] message").
_JAVA_ERROR_LINE = re.compile(r"^: ([\w.$]+): (?:\[([A-Z_.]+)\] )?(.*?)(?:\s+SQLSTATE: \w+)?$")
_READ_FILE = re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s+(.*))?$")
_CAUSED_BY = re.compile(r"^Caused by: ([\w.$]+)(?:: (.*))?$")
# Spark's "[CLASS] " prefix and " SQLSTATE: 58030" suffix: noise in a one-line error.
_CONDITION = re.compile(r"^\[([A-Z_.]+)\] ")
_SQLSTATE = re.compile(r"\s+SQLSTATE: \w+\.?$")
# A job failure repeats the task's error after "most recent failure: Lost task ... (TID n) (...):"
_LOST_TASK = re.compile(r"most recent failure: Lost task .*?\): [\w.$]+: (.*)$")
_MAX_CAUSE_CHARS = 300


def _clean_java_message(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else ""
    lost = _LOST_TASK.search(first)
    if lost:
        first = lost.group(1)
    return _SQLSTATE.sub("", _CONDITION.sub("", first)).strip()


def _short(text: str) -> str:
    return text if len(text) <= _MAX_CAUSE_CHARS else text[:_MAX_CAUSE_CHARS] + "..."


def java_chain(exc: BaseException, lines: list[str]) -> list[tuple[str, str]]:
    """The Java exception and its causes, outermost first: asked of the JVM through Py4J, or,
    when it cannot be asked, read from the error's text (its ": class: message" line and its
    "Caused by:" lines)."""
    chain = java_causes(exc)
    if chain:
        return chain
    top = [m for m in map(_JAVA_ERROR_LINE.match, lines) if m]
    if not top:
        return []
    causes = [(m.group(1), m.group(2) or "") for m in map(_CAUSED_BY.match, lines) if m]
    first = top[0]
    message = (f"[{first.group(2)}] " if first.group(2) else "") + first.group(3)
    return [(first.group(1), message), *causes]


def describe_java_failure(chain: list[tuple[str, str]]) -> str:
    """One line for a failed Spark job: Spark's own message (which names the file or column when
    Spark knows it), then the root cause, e.g. ``Task failed while writing rows to file:/out;
    cause: IOException: No space left on device``."""
    condition = _CONDITION.match(chain[0][1].strip())
    message = _clean_java_message(chain[0][1])
    root_class, root_message = chain[-1]
    root = _clean_java_message(root_message)
    if condition and condition.group(1).startswith("FAILED_READ_FILE"):
        where = _READ_FILE.search(message)
        name = where.group(1) if where else "an input file"
        if root_class.endswith("SchemaColumnConvertNotSupportedException"):
            detail = (where.group(2) if where else "") or root
            return (
                f"cannot read {name}: {_short(detail.rstrip('.'))} (the pool's files disagree "
                "on this column's type: give it the same type in every file)"
            )
        return (
            f"cannot read {name}: {_short(root or message)} (the file is corrupt, truncated or "
            "unreadable: replace or remove it)"
        )
    if len(chain) == 1 or not root or root in message:
        return message
    return f"{message.rstrip('.')}; cause: {root_class.rsplit('.', 1)[-1]}: {_short(root)}"


def describe_exception(exc: BaseException) -> str:
    """One line for an unexpected error: for a failed Spark task, the Python error behind it;
    for a failed Spark job, Spark's message and the root cause of its Java cause chain (a file
    Spark cannot read: the file and the cause)."""
    text = str(exc).strip()
    lines = text.splitlines()
    found = [m for m in map(_PYTHON_ERROR_LINE.match, lines) if m]
    chain = java_chain(exc, lines)
    python_task = "Traceback (most recent call last)" in text or not chain
    if found and python_task:
        name, message = found[-1].groups()
        return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
    if chain and (len(chain) > 1 or any(_JAVA_ERROR_LINE.match(line) for line in lines)):
        return describe_java_failure(chain)
    first = lines[0] if text else ""
    described = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if type(exc).__name__ in _UNREACHABLE:
        described += (
            " (the object store did not answer; every request was retried --s3-retries times: "
            "check --s3-endpoint-url and the network)"
        )
    return described


# botocore's errors for an endpoint that refuses or never answers (matched by name: botocore is
# imported lazily by s3fs).
_UNREACHABLE = frozenset(
    {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _setup_logging(debug)
    try:
        result = run_command(argv)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - Spark/Py4J errors: one line unless --debug
        if debug:
            raise
        print(f"error: {describe_exception(exc)} (rerun with --debug for details)", file=sys.stderr)
        return 1
    printer = getattr(result, "report", None)
    if callable(printer):
        print(printer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
