"""Strict loading of plain data (parsed YAML/JSON) into frozen attrs classes.

Unknown keys and wrong types are errors, never silently coerced ("0.4" is not a number here); every
problem is reported at once with its path, e.g. `$.settings.stable_steps[0]`.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from evs_framework.errors import SpecError

_PRIMITIVES = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}
_TYPE_WORDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _primitive_hook(kind):
    accepts = _PRIMITIVES[kind]

    def structure(value, _):
        if not accepts(value):
            raise TypeError(f"expected {_TYPE_WORDS[kind]}, got {type(value).__name__} {value!r}")
        return float(value) if kind is float else value

    return structure


def _union_parts(t):
    """(primitive members, the one attrs class member or None) of a union, or None for other types."""
    if typing.get_origin(t) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(t)
    primitives = tuple(a for a in args if a in _PRIMITIVES)
    classes = [a for a in args if attrs.has(a)]
    if len(primitives) + len(classes) != len(args) or len(classes) > 1:
        return None
    return primitives, (classes[0] if classes else None)


def _union_hook(t):
    members, record = _union_parts(t)

    def structure(value, _):
        if record is not None and isinstance(value, dict):
            return CONVERTER.structure(value, record)
        for member in members:
            if _PRIMITIVES[member](value):
                return float(value) if member is float and not isinstance(value, float) and int not in members else value
        words = " or ".join([_TYPE_WORDS[m] for m in members] + (["a mapping"] if record else []))
        raise TypeError(f"expected {words}, got {type(value).__name__} {value!r}")

    return structure


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (bool, int, float, str):
        converter.register_structure_hook(kind, _primitive_hook(kind))
    converter.register_structure_hook_factory(lambda t: _union_parts(t) is not None, _union_hook)
    converter.register_structure_hook(Path, lambda v, _: Path(_primitive_hook(str)(v, None)))
    return converter


CONVERTER = make_converter()


def _problems(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' nested errors into 'path: message' lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return [f"{path}: unknown key(s) {', '.join(sorted(map(repr, exc.extra_fields)))}" + _known_keys(exc.cl)]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        lines = []
        for inner in exc.exceptions:
            note = next((n for n in getattr(inner, "__notes__", []) if hasattr(n, "name") or hasattr(n, "index")), None)
            if note is not None and hasattr(note, "name"):
                lines += _problems(inner, f"{path}.{note.name}")
            elif note is not None and hasattr(note, "index"):
                key = note.index
                lines += _problems(inner, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
            else:
                lines += _problems(inner, path)
        return lines
    if isinstance(exc, KeyError):
        return [f"{path}: required key is missing"]
    return [f"{path}: {exc}"]


def _known_keys(cls) -> str:
    if attrs.has(cls):
        return f"; known keys: {', '.join(a.alias for a in attrs.fields(cls))}"
    return ""


def structure(data, cls, source: str, path: str = "$"):
    """`data` as an instance of `cls`, or SpecError listing every problem with its path."""
    try:
        return CONVERTER.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise SpecError(_problems(exc, path), source) from None
    except (TypeError, ValueError) as exc:
        raise SpecError([f"{path}: {exc}"], source) from None
