"""Configs are dataclasses; CLI flags are generated from the same fields.

So the command line and the Python API cannot drift: a new field is a new flag, with its
default and its help text (`field(metadata={"help": ...})`). `Literal[...]` fields and fields with
`metadata["choices"]` become closed sets (listed in --help, checked when parsed), `bool` fields
become `--flag/--no-flag`, `list[...]`/`tuple[...]` fields take several values. `metadata["flag"]`
and `metadata["aliases"]` let a flag's spelling change while the field (and every saved cfg.json
that names it) stays put.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from workbench.errors import WorkbenchError, choices_error
from workbench.io import atomic_write_json

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown_default(default: Any) -> str:
    """How a default reads in --help; "" for an empty one, which is then not shown at all."""
    if default is None or default == "" or default == () or default == []:
        return ""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default)
    return str(default)


def _field_choices(f: dataclasses.Field, tp: Any) -> tuple[Any, ...] | None:
    """The closed set of a field: `metadata["choices"]` (a tuple, or a callable returning one, read
    now so that a registry filled by imports is complete), else the values of a `Literal`."""
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    if choices is None and get_origin(tp) is Literal:
        choices = get_args(tp)
    return None if choices is None else tuple(choices)


def _checked(convert: Callable[[str], Any], choices: tuple[Any, ...], what: str) -> Callable[[str], Any]:
    """A flag's type that also rejects values outside `choices`, naming the value and every choice."""
    def parse(text: str) -> Any:
        value = convert(text)
        if value not in choices:
            raise argparse.ArgumentTypeError(str(choices_error(what, text, choices)))
        return value
    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid int value"
    parse.choices = choices  # type: ignore[attr-defined]  # for whoever lists a parser's closed sets
    return parse


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of the dataclass `cls` to `parser`.

    Field metadata read here: `help`; `choices` (tuple or zero-argument callable: shown in --help,
    checked at parse time); `what` (the noun naming a bad choice, default "value"); `flag` (the
    primary spelling, when the field name must stay as it is for saved configs); `aliases` (old
    spellings that still parse but are not shown).
    """
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        origin = get_origin(tp)
        inner = get_args(tp)[0] if origin in (list, tuple) else tp
        choices = None if tp is bool else _field_choices(f, inner)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if choices is not None:
                base = type(choices[0]) if get_origin(inner) is Literal else inner
                inner = _checked(base, choices, meta.get("what", "value"))
            elif inner not in (int, float, str):
                raise TypeError(f"config field {cls.__name__}.{f.name} has unsupported type {tp!r}")
            elif inner in (int, float):  # short usage lines: --batch-size N, --lr X
                kwargs["metavar"] = "N" if inner is int else "X"
            kwargs["type"] = inner
            if origin in (list, tuple):
                kwargs["nargs"] = "+"
        notes = []
        if choices is not None:
            notes.append("choices: " + ", ".join(str(c) for c in choices))
        shown = "" if required else _shown_default(default)
        if shown:
            notes.append(f"default: {shown}")
        help_text = meta.get("help", "")
        if notes:
            help_text = f"{help_text} ({'; '.join(notes).replace('%', '%%')})".lstrip()
        aliases = tuple(meta.get("aliases", ()))
        if required:
            if aliases:
                raise TypeError(f"config field {cls.__name__}.{f.name}: a required field cannot have aliases")
            kwargs["required"] = True
        action = parser.add_argument(meta.get("flag", _flag(f.name)), **kwargs)
        action.help = help_text  # after construction: BooleanOptionalAction would add its own "(default: )"
        for alias in aliases:
            parser.add_argument(alias, **{**kwargs, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS})


def config_from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """Build the dataclass from parsed flags (fields absent from `ns` keep their defaults)."""
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    values.update(overrides)
    for f in dataclasses.fields(cls):
        if isinstance(values.get(f.name), list) and isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        return v
    return convert(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs, atomically."""
    atomic_write_json(path, config_to_dict(cfg))


def load_config(cls: type[T], path_or_dict: str | Path | dict[str, Any]) -> T:
    """Rebuild a config dataclass from JSON, naming any unknown field."""
    data = path_or_dict if isinstance(path_or_dict, dict) else json.loads(Path(path_or_dict).read_text())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise WorkbenchError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(names)}")
    hints = get_type_hints(cls)
    values = {}
    for k, v in data.items():
        tp, _ = _unwrap_optional(hints[k])
        if get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        values[k] = v
    return cls(**values)
