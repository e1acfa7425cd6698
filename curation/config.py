"""Typed configuration: dataclasses, loaded from YAML or TOML, overridable from the command line.

Each stage declares its options once, as a dataclass whose fields carry a default and a ``help``
text. From that one declaration this module derives:

- the stage's command-line flags (``--caption-col`` for ``caption_col``), each listed with its default
  in ``--help``;
- loading of the stage's section from a config file (``[match]`` in TOML, ``match:`` in YAML), where an
  unknown key or a value of the wrong type is an error naming the key and the file;
- ``--set section.key=value`` overrides (the value is parsed as YAML, so ``--set count.margins=[lang]``
  works);
- the allowed range of every number: a ``float`` field is always finite (NaN and ±inf are refused),
  and a numeric field's metadata may bound it with ``min``/``max`` (inclusive) and
  ``above``/``below`` (exclusive). The range is shown in ``--help`` and checked once, when the
  options are loaded (:func:`from_mapping`, used for flags, the config file and ``curate run``),
  so a bad value is refused with the option's name and range before any Spark session starts.

Precedence, lowest first: dataclass defaults, the config file, ``--set``, explicit flags. Options
that fix the same thing (``balance``'s size: ``cap``, ``target_size``, ``target_fraction``,
``tail_share``) carry the same ``group`` in their metadata: a layer that sets one of them replaces
the lower layers' values of the others, so ``--set balance.cap=20000`` over a file with
``target_fraction`` means "the cap instead". An error in a value names where it came from: the
file and line, the ``--set`` override, or the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar, get_args, get_origin

import yaml

from curation.storage import read_bytes

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


# A YAML document may reuse a node through aliases (``*name``); each use copies it when the data
# is expanded (JSON round trip, overrides), so nine nested levels of nine aliases expand to 9**9
# values: a "billion laughs" that would take minutes and all memory. Real configs expand to a few
# hundred values.
MAX_YAML_VALUES = 100_000


def _expanded_size(node: yaml.Node, path: str, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` stands for once every alias is copied out (memoised per node)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError(f"{path}: a YAML alias refers to a node that contains it (a cycle)")
    open_.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    size = 1
    for child in children:
        size += _expanded_size(child, path, sizes, open_)
        if size > MAX_YAML_VALUES:
            break
    open_.discard(key)
    sizes[key] = size
    return size


def safe_load_yaml(text: str, path: str) -> Any:
    """``yaml.safe_load``, refusing documents whose aliases expand to more than
    :data:`MAX_YAML_VALUES` values (or refer to themselves) before anything is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, path, {}, set())
        if size > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}: the YAML aliases (*name) expand it to more than {MAX_YAML_VALUES:,} "
                "values (an alias bomb?); write the values out, or use fewer nested aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a mapping."""
    text = read_bytes(path).decode("utf-8")
    try:
        if path.endswith(".toml"):
            import tomllib

            data = tomllib.loads(text)
        else:
            data = safe_load_yaml(text, path) or {}
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - both parsers raise their own error types
        raise ConfigError(f"{path}: cannot parse config: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections")
    return data


def override_origins(overrides: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{section: {key: "--set 'section.key=value'"}}``: where each overridden key came from,
    so that an error in it names the ``--set`` that wrote it, not the config file."""
    origins: dict[str, dict[str, str]] = {}
    for item in overrides:
        keys = item.split("=", 1)[0].strip().split(".")
        if "=" in item and len(keys) >= 2:
            origins.setdefault(keys[0], {})[keys[1]] = f"--set {item!r}"
    return origins


def replace_group_mates(cls: type, data: dict[str, Any], newer: Sequence[str]) -> None:
    """Drop from ``data`` the options that share a ``group`` with one of the ``newer`` keys (set
    by a later, more explicit layer: ``--set`` over the file, a flag over both).

    The size options of ``balance`` are such a group: ``--set balance.cap=20000`` over a file
    that sets ``target_fraction`` replaces it, as the later setting wins for a plain key.
    Options set together in one layer are all kept (the stage checks that they fit).
    """
    groups = {f.name: f.metadata.get("group") for f in dataclasses.fields(cls)}
    replaced = {groups.get(k) for k in newer} - {None}
    for key in [k for k in data if k not in newer and groups.get(k) in replaced]:
        del data[key]


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], schemas: dict[str, type] | None = None
) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars/lists) to ``data``.

    ``schemas`` (``{section: options dataclass}``): an override of a grouped option replaces the
    file's options of the same group (:func:`replace_group_mates`)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {key!r} is not a section")
        try:
            node[keys[-1]] = safe_load_yaml(raw, f"--set {item!r}") if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: cannot parse value: {exc}") from exc
    for section, keys in override_origins(overrides).items():
        if schemas and section in schemas and isinstance(data.get(section), dict):
            replace_group_mates(schemas[section], data[section], list(keys))
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int → float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected null")
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (list, Sequence, tuple):
        (item_tp,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, str) and item_tp is str:
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str):
                try:
                    return int(value.replace("_", ""))
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


#: Metadata keys that bound a numeric field: inclusive ``min``/``max``, exclusive ``above``/``below``.
BOUND_KEYS = ("min", "max", "above", "below")


def _number_text(x: float) -> str:
    """A bound as a user reads it: ``2**64`` rather than its 20 digits."""
    if isinstance(x, int) and x >= 2**32 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def _numeric_kind(tp: Any) -> type | None:
    """``int`` or ``float`` for a numeric annotation (also inside ``X | None``), else None."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        kinds = [_numeric_kind(a) for a in get_args(tp) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else None
    return tp if tp in (int, float) else None


def describe_range(f: dataclasses.Field, tp: Any) -> str | None:
    """The allowed values of a numeric field in words (``a finite number with 0 <= x < 1``), or
    None for a field that is not a number."""
    kind = _numeric_kind(tp)
    if kind is None:
        return None
    meta = f.metadata
    lower = [f"{_number_text(meta['min'])} <= " if "min" in meta else ""]
    lower.append(f"{_number_text(meta['above'])} < " if "above" in meta else "")
    upper = [f" <= {_number_text(meta['max'])}" if "max" in meta else ""]
    upper.append(f" < {_number_text(meta['below'])}" if "below" in meta else "")
    what = "an integer" if kind is int else "a finite number"
    low, high = "".join(lower), "".join(upper)
    if not low and not high:
        return what
    if low and not high:  # "x >= 0" reads better than "0 <= x"
        op, bound = (">=", meta["min"]) if "min" in meta else (">", meta["above"])
        return f"{what} {op} {_number_text(bound)}"
    return f"{what} with {low}x{high}"


def out_of_range(value: Any, f: dataclasses.Field, tp: Any) -> str | None:
    """Why ``value`` lies outside the declared range of ``f`` (None when it is inside)."""
    kind = _numeric_kind(tp)
    if kind is None or value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    meta = f.metadata
    checks = (
        ("min", lambda b: value >= b, "below the minimum"),
        ("max", lambda b: value <= b, "above the maximum"),
        ("above", lambda b: value > b, "too small"),
        ("below", lambda b: value < b, "too large"),
    )
    for key, ok, why in checks:
        if key in meta and not ok(meta[key]):
            return why
    return None


def check_ranges(
    obj: Any,
    where: str | typing.Callable[[str], str],
    line_of: typing.Callable[[str], str] = lambda _: "",
    *,
    flags: bool = True,
) -> None:
    """Refuse a numeric option outside its declared range (see the module docstring): the error
    names the option (``section.key``, its line in the config file, and its flag when the
    options have flags) and the range. ``where``: the ``source: section`` prefix, or a function
    of the key giving it (a key set by ``--set`` or a flag names that, not the file)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        why = out_of_range(value, f, hints[f.name])
        if why:
            flag = f" ({_flag(f.name)})" if flags else ""
            prefix = where(f.name) if callable(where) else where
            raise ConfigError(
                f"{prefix}.{f.name}{line_of(f.name)}{flag} = {value!r}: {why}; "
                f"allowed: {describe_range(f, hints[f.name])}"
            )


def key_line(path: str, section: str, key: str | None = None) -> int | None:
    """The 1-based line of ``section.key`` (or of ``section``) in a YAML or TOML config file."""
    try:
        text = read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if path.endswith(".toml"):
        lines = text.splitlines()
        in_section = False
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                in_section = stripped.strip("[] ") == section
                if in_section and key is None:
                    return number
            elif in_section and key and stripped.split("=", 1)[0].strip() == key:
                return number
        return None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return None
    for name in [section] + ([key] if key else []):
        if not isinstance(root, yaml.MappingNode):
            return None
        for key_node, value_node in root.value:
            if key_node.value == name:
                if name == key or key is None:
                    return key_node.start_mark.line + 1
                root = value_node
                break
        else:
            return None
    return None


def from_mapping(
    cls: type[T],
    data: dict[str, Any],
    where: str,
    *,
    path: str = "",
    section: str = "",
    flags: bool = True,
    origins: typing.Mapping[str, str] | None = None,
) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and values out of range
    name ``where.key`` (and its flag, unless ``flags`` is false), and, when the data came from
    the config file ``path``, the key's line in it. ``origins`` names the source of keys that did
    not come from the file (``{key: "--set 'balance.cap=3'"}`` or ``{key: "<command line>"}``):
    their errors name it instead of the file."""
    if not isinstance(data, dict):
        line = key_line(path, section) if path else None
        at = f" (line {line})" if line else ""
        raise ConfigError(f"{where}{at}: expected a mapping of options, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    origins = origins or {}

    def source(key: str) -> str:
        return f"{origins[key]}: {section}" if key in origins else where

    def at(key: str) -> str:
        line = key_line(path, section, key) if path and key not in origins else None
        return f" (line {line})" if line else ""

    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source(unknown[0])}: unknown key {unknown[0]!r}{at(unknown[0])}; known keys: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        try:
            kwargs[name] = _coerce(value, hints[name], f"{source(name)}.{name}")
        except ConfigError as exc:
            raise ConfigError(f"{exc}{at(name)}") from exc
    obj = cls(**kwargs)
    check_ranges(obj, source, at, flags=flags)
    return obj


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, group: str) -> None:
    """Add one flag per field of ``cls`` (defaults shown in ``--help``; unset flags stay ``None``)."""
    hints = typing.get_type_hints(cls)
    arg_group = parser.add_argument_group(group)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        shown = json.dumps(default) if not isinstance(default, str) else repr(default)
        allowed = describe_range(f, tp)
        allowed = f"; allowed: {allowed}" if allowed else ""
        # argparse formats help with %: a literal percent sign must be doubled
        help_text = f"{help_text} (default: {shown}{allowed})".replace("%", "%%")
        origin = get_origin(tp)
        if tp is bool:
            arg_group.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif origin in (list, Sequence):
            arg_group.add_argument(
                _flag(f.name.removesuffix("s")) if f.metadata.get("repeatable") else _flag(f.name),
                dest=f.name,
                action="append",
                default=None,
                help=help_text,
                metavar=f.name.upper().removesuffix("S"),
            )
        elif origin is dict:
            continue  # set through --set or the config file
        else:
            arg_group.add_argument(
                _flag(f.name), dest=f.name, default=None, help=help_text, metavar=f.name.upper()
            )


def build_config(
    cls: type[T],
    section: str,
    args: argparse.Namespace,
    file_data: dict[str, Any] | None = None,
    source: str = "<command line>",
    *,
    flags: bool = True,
    origins: dict[str, dict[str, str]] | None = None,
) -> T:
    """Defaults < config-file section < explicit flags, checked against ``cls`` (``flags``:
    whether ``cls`` has command-line flags, to name them in errors; ``origins``:
    :func:`override_origins` of the ``--set`` overrides already applied to ``file_data``). A flag
    of a grouped option replaces the lower layers' options of its group
    (:func:`replace_group_mates`)."""
    section_data = (file_data or {}).get(section, {}) or {}
    path = "" if source.startswith("<") else source
    where = f"{source}: {section}"
    if not isinstance(section_data, dict):
        return from_mapping(cls, section_data, where, path=path, section=section, flags=flags)
    data = dict(section_data)
    origins = dict((origins or {}).get(section, {}))
    given = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if getattr(args, f.name, None) is not None
    ]
    replace_group_mates(cls, data, given)
    for name in given:
        data[name] = getattr(args, name)
        origins[name] = "<command line>"
    return from_mapping(cls, data, where, path=path, section=section, flags=flags, origins=origins)
