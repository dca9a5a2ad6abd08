"""Strict loading of YAML data into typed, frozen dataclasses.

Game definitions and personas are data that designers edit by hand, so every mistake must
come back as a message that names the file, the field and the fix. Each dataclass field may
carry ``metadata={"min": ..., "max": ..., "doc": ...}``; the loader enforces the bounds,
rejects unknown fields, and converts nested mappings into nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class DefinitionError(ValueError):
    """A game definition or persona file is invalid; the message says where and how to fix it."""


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, failing with the file name when it is not one."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{path}: not valid YAML ({exc}). Fix the syntax.") from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"{path}: expected a mapping of fields at the top level.")
    return data


def build(cls: type[T], data: Any, source: str, where: str = "") -> T:
    """Build ``cls`` from ``data``; ``source`` names the file, ``where`` the field path."""
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{source}: {where or 'top level'} must be a mapping of fields.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DefinitionError(
            f"{source}: unknown field {_join(where, unknown[0])!r}. "
            f"Allowed fields here: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        path = _join(where, name)
        if name not in data:
            if _has_default(spec):
                continue
            raise DefinitionError(f"{source}: missing required field {path!r}. {_doc(spec)}")
        values[name] = _convert(hints[name], data[name], source, path)
        _check_bounds(spec, values[name], source, path)
    return cls(**values)


def _convert(hint: Any, value: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, path)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, source, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise DefinitionError(f"{source}: {path!r} must be a list, got {value!r}.")
        item = args[0]
        return tuple(_convert(item, v, source, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or origin is Mapping:
        if not isinstance(value, Mapping):
            raise DefinitionError(f"{source}: {path!r} must be a mapping, got {value!r}.")
        return {k: _convert(args[1], v, source, _join(path, str(k))) for k, v in value.items()}
    return _scalar(hint, value, source, path)


def _scalar(hint: Any, value: Any, source: str, path: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise DefinitionError(
        f"{source}: {path!r} must be a {hint.__name__}, got {value!r} ({type(value).__name__})."
    )


def _check_bounds(spec: dataclasses.Field[Any], value: Any, source: str, path: str) -> None:
    low, high = spec.metadata.get("min"), spec.metadata.get("max")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if math.isnan(value):
        raise DefinitionError(f"{source}: {path!r} is NaN: give a number. {_doc(spec)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = _bounds_text(low, high)
        raise DefinitionError(
            f"{source}: {path!r} = {value} is out of range: {bounds}. {_doc(spec)}"
        )


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"it must be between {low} and {high}"
    return f"it must be >= {low}" if low is not None else f"it must be <= {high}"


def _doc(spec: dataclasses.Field[Any]) -> str:
    doc = spec.metadata.get("doc")
    return f"({spec.name}: {doc})" if doc else ""


def _has_default(spec: dataclasses.Field[Any]) -> bool:
    return (
        spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING
    )


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def spec(doc: str, default: Any = dataclasses.MISSING, *, low: float | None = None,
         high: float | None = None, factory: Any = dataclasses.MISSING) -> Any:
    """A documented dataclass field with optional bounds (used by every schema in envs/)."""
    meta = {"doc": doc, "min": low, "max": high}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
