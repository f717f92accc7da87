"""Configs are dataclasses; CLI flags are generated from the same fields.

So the command line and the Python API cannot drift: a new field is a new flag, with its
default and its help text (`field(metadata={"help": ...})`). `Literal[...]` fields become
choices, `bool` fields become `--flag/--no-flag`, `list[...]` fields take several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from workbench.errors import WorkbenchError
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


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of the dataclass `cls` to `parser`."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "help": f"{help_text} (default: {default})" if not required else help_text}
        origin = get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = default
        elif origin is Literal:
            choices = list(get_args(tp))
            kwargs.update(choices=choices, type=type(choices[0]), default=default)
        elif origin in (list, tuple):
            (inner,) = get_args(tp)[:1]
            kwargs.update(nargs="+", type=inner, default=default)
        elif tp in (int, float, str):
            kwargs.update(type=tp, default=default)
        else:
            raise TypeError(f"config field {cls.__name__}.{f.name} has unsupported type {tp!r}")
        if required:
            kwargs["required"] = True
        parser.add_argument(_flag(f.name), **kwargs)


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
